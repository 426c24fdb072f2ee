"""Deployment search: ``pdsim search`` (see docs/search.md).

``config`` (the search YAML), ``capacity`` (analytic per-instance bounds) and ``allocate`` (the integer
program) and ``goodput`` (the rate bisection) are pure; ``run`` builds experiments, runs the simulations
on the ``pdsim sweep`` executors and writes the search directory; ``cli`` is the typer command.
"""
