"""Simulation ring: the only package that imports SimPy."""
