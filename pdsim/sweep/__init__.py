"""Sweeps over experiment overrides: ``pdsim sweep`` (see docs/sweep.md).

``pdsim.sweep.core`` is pure (grid, hashing, store); ``pdsim.sweep.cli`` runs points (local processes).
"""
