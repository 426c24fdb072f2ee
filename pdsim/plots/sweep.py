"""Figures across a ``pdsim sweep`` (edge ring), rendered from ``OUT/sweep.csv`` without re-simulating.

In the style of :mod:`pdsim.plots.figures`: DataFrames in, a :class:`matplotlib.figure.Figure` out, Agg
canvas, no ``pyplot`` state.

- :func:`metric_vs_axis`: one summary metric against one numeric grid axis, one line per deployment x
  workload (x value of the other axes, see below); ``ax`` draws into an existing axes.
- :func:`sweep_axis_figure`: the key metrics against one axis, one panel each (:data:`SWEEP_METRICS`:
  TTFT P90, TPOT P90, SLO attainment, goodput, $/1M output tokens).
- :func:`render_sweep_dir`: ``OUT/plots/sweep_<axis>.png`` for every numeric axis with at least two
  values (``pdsim sweep`` at the end of a run, ``pdsim plot OUT``).

Other axes: with ``MAX_OTHER_COMBOS`` or fewer combinations of the other axes' values, each combination
is its own line (same colour and marker per deployment x workload, one line style per combination,
labelled ``key=value``). With more, the figure shows the slice where every other axis is at its first
value (in grid order) and says so in its title; the full table is ``sweep.csv``. A ``seed`` axis is
never an x axis (its order means nothing) but, like any axis, varies the line style.

Deployments whose latency comes from a derived profile (the summary's ``latency_sources`` contains
``derived``) are labelled ``(derived)``, as in ``pdsim run``'s plots.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from pdsim.errors import PdsimError
from pdsim.plots.figures import (
    _check_columns,
    DERIVED_MARK,
    _new_figure,
    deployment_colors,
    derived_deployments,
    workload_markers,
)

__all__ = [
    "MAX_OTHER_COMBOS",
    "SWEEP_METRICS",
    "grid_columns",
    "metric_vs_axis",
    "plot_axes",
    "render_sweep_dir",
    "sweep_axis_figure",
]

# summary column -> (panel title, factor to the displayed unit, axis label)
SWEEP_METRICS: dict[str, tuple[str, float, str]] = {
    "ttft_p90_s": ("TTFT P90", 1e3, "TTFT P90 (ms)"),
    "tpot_p90_s": ("TPOT P90", 1e3, "TPOT P90 (ms)"),
    "slo_attainment": ("SLO attainment", 100.0, "SLO attainment (%)"),
    "goodput_rps": ("Goodput", 1.0, "Goodput (req/s meeting the SLOs)"),
    "usd_per_million_output_tokens": ("Cost", 1.0, "$ / 1M output tokens"),
}
MAX_OTHER_COMBOS = 4  # lines per deployment x workload before the figure falls back to one slice
_LINESTYLES = ("-", "--", ":", "-.")


def grid_columns(table: pd.DataFrame) -> list[str]:
    """The grid columns of a sweep table: those before ``deployment`` (the first summary column)."""
    if "deployment" not in table.columns:
        raise KeyError(f"sweep table lacks column 'deployment'; has {list(table.columns)}")
    return list(table.columns[: list(table.columns).index("deployment")])


def plot_axes(table: pd.DataFrame) -> list[str]:
    """Grid columns that get a figure: numeric (not boolean), not ``seed``, at least two distinct values."""
    out = []
    for col in grid_columns(table):
        s = table[col]
        if col == "seed" or pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            continue
        if s.dropna().nunique() >= 2:
            out.append(col)
    return out


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``(derived)`` appended to the deployments whose latency is from a derived profile."""
    table = table.copy()
    table["deployment"] = table["deployment"].astype(str)
    table["workload"] = table["workload"].astype(str)
    names = derived_deployments(table)
    if names:
        table["deployment"] = table["deployment"].map(lambda d: f"{d} {DERIVED_MARK}" if d in names else d)
    return table


def _other_slices(table: pd.DataFrame, axis: str) -> tuple[list[dict], str]:
    """The combinations of the other grid axes drawn as separate lines, and a title note.

    Returns ``([{key: value}, ...], note)``: every combination (in order of appearance) when there are at
    most ``MAX_OTHER_COMBOS``, else the single combination of each other axis's first value.
    """
    others = [c for c in grid_columns(table) if c != axis]
    if not others:
        return [{}], ""
    combos = table[others].drop_duplicates().to_dict("records")
    if len(combos) <= MAX_OTHER_COMBOS:
        return combos, ""
    first = {k: table[k].iloc[0] for k in others}
    shown = ", ".join(f"{k}={v}" for k, v in first.items())
    return [first], f"other axes fixed at {shown} ({len(combos)} combinations; all in sweep.csv)"


def _select(table: pd.DataFrame, combo: dict) -> pd.DataFrame:
    mask = np.ones(len(table), dtype=bool)
    for k, v in combo.items():
        mask &= (table[k] == v).to_numpy() if not (isinstance(v, float) and np.isnan(v)) else table[k].isna().to_numpy()
    return table[mask]


def _x_scale(ax: Axes, x: np.ndarray) -> None:
    """Log x axis when the values are positive and span more than a factor of 10, else linear."""
    x = x[np.isfinite(x)]
    if len(x) and x.min() > 0 and x.max() / x.min() > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def metric_vs_axis(table: pd.DataFrame, axis: str, metric: str, *, ax: Axes | None = None,
                   legend: bool = True) -> Figure:
    """One summary metric against one grid axis.

    Args:
        table: ``sweep.csv`` rows (grid columns, then the summary columns).
        axis: a numeric grid column (the x axis).
        metric: a key of :data:`SWEEP_METRICS`.
        ax: axes to draw into; a new figure otherwise.
        legend: draw the legend in ``ax``.

    Returns:
        The figure; one line per deployment x workload (x other-axis combination, see the module
        docstring), each labelled ``deployment / workload[ / key=value ...]``, points sorted by ``axis``.

    Raises:
        KeyError: a missing column or an unknown metric.
    """
    if metric not in SWEEP_METRICS:
        raise KeyError(f"unknown sweep metric {metric!r}; known: {list(SWEEP_METRICS)}")
    _check_columns(table, [axis, metric, "deployment", "workload"], "sweep")
    title, factor, label = SWEEP_METRICS[metric]
    data = _labelled(table)
    colors = deployment_colors(data["deployment"])
    markers = workload_markers(data["workload"])
    combos, note = _other_slices(data, axis)
    fig, ax = _new_figure(ax, figsize=(7.0, 4.5))
    for ci, combo in enumerate(combos):
        part = _select(data, combo)
        for (dep, wl), g in part.groupby(["deployment", "workload"], sort=True):
            g = g.sort_values(axis)
            x = g[axis].to_numpy(float)
            y = g[metric].to_numpy(float) * factor
            name = f"{dep} / {wl}" + ("".join(f" / {k}={v}" for k, v in combo.items()) if len(combos) > 1 else "")
            ax.plot(x, y, color=colors[dep], marker=markers[wl], linestyle=_LINESTYLES[ci % len(_LINESTYLES)],
                    linewidth=1.4, markersize=5, label=name)
    _x_scale(ax, data[axis].to_numpy(float))
    ax.set_xlabel(axis)
    ax.set_ylabel(label)
    ax.set_title(title if not note else f"{title}\n({note})", fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize="x-small", framealpha=0.9)
    return fig


def sweep_axis_figure(table: pd.DataFrame, axis: str, *, targets: dict[str, float] | None = None) -> Figure:
    """The key metrics (:data:`SWEEP_METRICS`) against one grid axis, one panel each, one shared legend.

    Args:
        table: ``sweep.csv`` rows.
        axis: a numeric grid column.
        targets: optional dashed reference lines per metric column, in the column's unit (seconds for
            latencies, a fraction for ``slo_attainment``), e.g. the SLO when every point shares it.
    """
    fig = Figure(figsize=(15.0, 8.0), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(2, 3).ravel()
    for ax, metric in zip(panels, SWEEP_METRICS):
        metric_vs_axis(table, axis, metric, ax=ax, legend=False)
        if targets and metric in targets:
            ax.axhline(targets[metric] * SWEEP_METRICS[metric][1], color="#333333", linestyle="--", linewidth=1.0,
                       label="SLO target")
    handles, labels = panels[0].get_legend_handles_labels()
    panels[-1].axis("off")
    panels[-1].legend(handles, labels, loc="center", fontsize="small", frameon=False)
    _, note = _other_slices(_labelled(table), axis)
    fig.suptitle(f"Sweep: metrics vs {axis}" + (f" ({note})" if note else ""))
    return fig


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "axis"


def _shared_targets(sweep_dir: Path, table: pd.DataFrame) -> dict[str, float]:
    """SLO reference lines when every point of the table has the same SLO (read from each point's
    ``config.resolved.yaml``): TTFT/TPOT targets when the SLO percentile is 90 (the panels show P90),
    and the attainment target. Empty when the SLO varies or a point's config is unreadable."""
    slos = set()
    for h in table["point"].astype(str).unique() if "point" in table.columns else []:
        path = sweep_dir / "points" / h / "config.resolved.yaml"
        try:
            slo = yaml.safe_load(path.read_text()).get("slo", {})
            slos.add((float(slo["ttft_s"]), float(slo["tpot_s"]), float(slo["percentile"]), float(slo["attainment_target"])))
        except (OSError, AttributeError, KeyError, TypeError, ValueError, yaml.YAMLError):
            return {}
    if len(slos) != 1:
        return {}
    ttft_s, tpot_s, percentile, attainment = slos.pop()
    out = {"slo_attainment": attainment}
    if percentile == 90:
        out.update(ttft_p90_s=ttft_s, tpot_p90_s=tpot_s)
    return out


def render_sweep_dir(sweep_dir: Path) -> list[Path]:
    """Write ``plots/sweep_<axis>.png`` for every plotted axis (:func:`plot_axes`) of ``sweep_dir/sweep.csv``.

    Earlier ``plots/sweep_*.png`` are removed first, so the directory matches the current table.

    Returns:
        The PNG paths written (none when no grid axis is numeric with two or more values).

    Raises:
        PdsimError: no ``sweep.csv``, an unreadable one, or one without rows (every point failed).
    """
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "sweep.csv"
    if not path.is_file():
        raise PdsimError(f"{sweep_dir}: not a sweep directory (no sweep.csv)")
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # pandas parse errors: report the file
        raise PdsimError(f"{path}: cannot read: {exc}") from exc
    if table.empty:
        raise PdsimError(f"{path}: no rows (every point failed?); nothing to plot")
    try:
        axes = plot_axes(table)
        _check_columns(table, [*SWEEP_METRICS, "workload"], str(path))
    except KeyError as exc:
        raise PdsimError(f"{path}: {exc.args[0]}") from None
    plots = sweep_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("sweep_*.png"):
        old.unlink()
    targets = _shared_targets(sweep_dir, table)
    written = []
    used: set[str] = set()
    for axis in axes:
        slug = base = _slug(axis)
        for k in itertools.count(2):
            if slug not in used:
                break
            slug = f"{base}_{k}"
        used.add(slug)
        out = plots / f"sweep_{slug}.png"
        sweep_axis_figure(table, axis, targets=targets).savefig(out, dpi=110)
        written.append(out)
    return written
