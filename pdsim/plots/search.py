"""Figures of a ``pdsim search`` directory (edge ring), in the style of ``pdsim.plots.figures``:
DataFrames in, a :class:`matplotlib.figure.Figure` out, Agg canvas, no ``pyplot`` state, ``ax`` to draw
into an existing axes.

- :func:`attainment_vs_rate`: SLO attainment of every probe against the offered rate, one line per
  simulated deployment (``probes.csv``), the attainment target dashed; the goodput of a deployment is its
  highest passing rate (``pdsim.search.goodput``).
- :func:`cost_goodput_pareto`: $/h against goodput for the simulated deployments and against analytic
  capacity for the estimated ones (``candidates.csv``), with the Pareto front of the simulated ones
  (no other simulated deployment is cheaper with at least the goodput).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from pdsim.plots.figures import DERIVED_MARK, _check_columns, _new_figure, deployment_colors
from pdsim.search.allocate import pareto_mask

__all__ = ["attainment_vs_rate", "cost_goodput_pareto"]

_KIND_MARKERS = {"colocated": "o", "disaggregated": "s"}


def attainment_vs_rate(probes: pd.DataFrame, *, target: float, highlight: str | None = None,
                       ax: Axes | None = None) -> Figure:
    """SLO attainment (%) vs request rate, one line per candidate.

    Args:
        probes: rows with ``candidate, rate_rps, slo_attainment, passed`` (and optionally
            ``latency_sources``: candidates whose latency is derived are labelled so).
        target: the attainment target (fraction), drawn as a dashed line.
        highlight: a candidate drawn thicker (the chosen deployment).
        ax: axes to draw into; a new figure otherwise.

    Returns:
        The figure; each candidate's line carries its name as label; passing probes are filled markers.
    """
    _check_columns(probes, ["candidate", "rate_rps", "slo_attainment", "passed"], "probes")
    colors = deployment_colors(probes["candidate"])
    fig, ax = _new_figure(ax, figsize=(8.0, 5.0))
    for name in sorted(probes["candidate"].astype(str).unique()):
        g = probes[probes["candidate"] == name].sort_values("rate_rps")
        x = g["rate_rps"].to_numpy(float)
        y = g["slo_attainment"].to_numpy(float) * 100
        passed = g["passed"].to_numpy(bool)
        lw = 2.6 if name == highlight else 1.2
        derived = "latency_sources" in g and g["latency_sources"].astype(str).str.contains("derived").any()
        label = name + (f" {DERIVED_MARK}" if derived else "") + (" (chosen)" if name == highlight else "")
        ax.plot(x, y, color=colors[name], linewidth=lw, label=label)
        ax.scatter(x[passed], y[passed], color=colors[name], s=22, zorder=3)
        ax.scatter(x[~passed], y[~passed], facecolors="white", edgecolors=colors[name], s=22, zorder=3)
    ax.axhline(target * 100, color="#333333", linestyle="--", linewidth=1.2, label=f"target {target * 100:g} %")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("Request rate (req/s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("SLO attainment vs request rate (filled: meets the target)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize="x-small", framealpha=0.9)
    return fig


def cost_goodput_pareto(deployments: pd.DataFrame, *, highlight: str | None = None, ax: Axes | None = None) -> Figure:
    """Cost ($/h) vs goodput: simulated deployments (filled, by kind), estimated ones (analytic capacity,
    grey), and the Pareto front of the simulated ones (step line).

    Args:
        deployments: ``candidates.csv`` rows with ``level == "deployment"``: ``candidate, kind, status,
            usd_per_hour, analytic_capacity_rps, goodput_rps``.
        highlight: a candidate annotated as chosen.
        ax: axes to draw into.
    """
    _check_columns(deployments, ["candidate", "kind", "status", "usd_per_hour", "analytic_capacity_rps", "goodput_rps"],
                   "deployments")
    fig, ax = _new_figure(ax, figsize=(8.0, 5.0))
    est = deployments[deployments["status"] == "estimated"]
    for kind, g in est.groupby("kind", sort=True):
        ax.scatter(g["usd_per_hour"].astype(float), g["analytic_capacity_rps"].astype(float), marker=_KIND_MARKERS.get(kind, "x"),
                   s=14, color="#bbbbbb", label=f"{kind}: analytic capacity (estimated)", zorder=1)
    sim = deployments[deployments["goodput_rps"].notna()]
    colors = {"colocated": "#1f77b4", "disaggregated": "#ff7f0e"}
    for kind, g in sim.groupby("kind", sort=True):
        ax.scatter(g["usd_per_hour"].astype(float), g["goodput_rps"].astype(float), marker=_KIND_MARKERS.get(kind, "x"),
                   s=46, color=colors.get(kind, "#2ca02c"), edgecolors="black", linewidths=0.6,
                   label=f"{kind}: simulated goodput", zorder=3)
    if len(sim):
        c = sim["usd_per_hour"].to_numpy(float)
        v = sim["goodput_rps"].to_numpy(float)
        m = pareto_mask(c, v)
        order = np.argsort(c[m])
        ax.step(c[m][order], v[m][order], where="post", color="#2ca02c", linewidth=1.5, label="Pareto front (simulated)",
                zorder=2)
    if highlight is not None and (sim["candidate"] == highlight).any():
        row = sim[sim["candidate"] == highlight].iloc[0]
        ax.annotate(f"chosen: {highlight}", (float(row["usd_per_hour"]), float(row["goodput_rps"])),
                    textcoords="offset points", xytext=(8, -14), fontsize="x-small",
                    arrowprops={"arrowstyle": "-", "color": "#555555"})
    ax.set_xlabel("Cost ($/h)")
    ax.set_ylabel("Goodput (req/s at SLO attainment target)")
    ax.set_title("Cost vs goodput")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="x-small", framealpha=0.9)
    return fig
