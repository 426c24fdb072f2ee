"""Plots and the Markdown report, rendered from a run directory's saved data (edge ring).

Figures are pure functions ``fn(df, *, ax=None, ...) -> Figure`` (see :mod:`pdsim.plots.figures`);
:func:`render_run_dir` reads a run directory and writes ``plots/*.png`` and ``report.md`` without
re-simulating.
"""

from pdsim.plots.figures import (
    PALETTE,
    cost_vs_goodput,
    deployment_colors,
    ecdf,
    latency_cdf,
    slo_attainment_bars,
    throughput_cost_bars,
)
from pdsim.plots.render import RunData, SLO, load_run_dir, render_report, render_run_dir

__all__ = [
    "PALETTE",
    "SLO",
    "RunData",
    "cost_vs_goodput",
    "deployment_colors",
    "ecdf",
    "latency_cdf",
    "load_run_dir",
    "render_report",
    "render_run_dir",
    "slo_attainment_bars",
    "throughput_cost_bars",
]
