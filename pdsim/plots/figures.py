"""Figures rendered from result DataFrames (edge ring).

Every public function takes DataFrames (the per-request records or the summary of a run directory) and
returns a :class:`matplotlib.figure.Figure`. They use the object-oriented matplotlib API on the Agg
canvas and never touch ``pyplot`` state, so calls do not leak into each other. Pass ``ax`` to draw into
an existing axes (the function then returns ``ax.figure``).

Colours are deterministic: deployment ``d`` gets ``PALETTE[i % len(PALETTE)]`` where ``i`` is the index
of ``d`` in the sorted list of deployment names of the frame passed in (or pass ``colors`` explicitly,
e.g. from :func:`deployment_colors` over a whole run, so that a deployment keeps its colour in every
figure of a report).

Units: the frames hold seconds; TTFT and TPOT are shown in milliseconds, E2E in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "DERIVED_MARK",
    "PALETTE",
    "WORKLOAD_MARKERS",
    "deployment_colors",
    "derived_deployments",
    "ecdf",
    "latency_cdf",
    "cost_vs_goodput",
    "slo_attainment_bars",
    "throughput_cost_bars",
]

# Tableau 10 followed by the lighter Tableau 20 shades: 20 distinguishable colours.
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
WORKLOAD_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
# Appended to the name of a deployment whose latency comes from a derived (datasheet roofline) profile.
DERIVED_MARK = "(derived)"

# metric column -> (axis label, factor from seconds to the displayed unit, unit)
_METRICS: dict[str, tuple[str, float, str]] = {
    "ttft_s": ("TTFT", 1e3, "ms"),
    "tpot_s": ("TPOT", 1e3, "ms"),
    "e2e_s": ("E2E latency", 1.0, "s"),
}
_CDF_KEEP_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.999)


def derived_deployments(table: pd.DataFrame) -> set[str]:
    """Deployments of ``table`` whose ``latency_sources`` column mentions a derived profile (none without
    the column)."""
    if "latency_sources" not in table.columns:
        return set()
    derived = table["latency_sources"].fillna("").astype(str).str.contains("derived")
    return set(table.loc[derived, "deployment"].astype(str))


def deployment_colors(deployments: Iterable[str]) -> dict[str, str]:
    """Map each deployment name to a palette colour, indexed by the sorted unique names.

    Args:
        deployments: deployment names (duplicates allowed).

    Returns:
        ``{name: "#rrggbb"}``; colours cycle after ``len(PALETTE)`` deployments.
    """
    names = sorted({str(d) for d in deployments})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def workload_markers(workloads: Iterable[str]) -> dict[str, str]:
    """Map each workload name to a marker, indexed by the sorted unique names."""
    names = sorted({str(w) for w in workloads})
    return {name: WORKLOAD_MARKERS[i % len(WORKLOAD_MARKERS)] for i, name in enumerate(names)}


def ecdf(
    values: Sequence[float] | np.ndarray | pd.Series,
    *,
    max_points: int = 2000,
    keep_quantiles: Sequence[float] = _CDF_KEEP_QUANTILES,
) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF of the finite values, downsampled to about ``max_points`` points.

    The points are order statistics ``x[k]`` with their exact ECDF height ``(k + 1) / n``. When
    ``n > max_points``, ranks are taken evenly spaced from 0 to ``n - 1`` (so the exact min and max are
    kept), plus, for each quantile ``q`` in ``keep_quantiles``, both order statistics around rank
    ``q * (n - 1)`` (so ``numpy.quantile``/``numpy.median`` with linear interpolation is reproduced
    exactly from the kept points).

    Args:
        values: samples; NaN and infinities are dropped.
        max_points: target number of points per line (at least 2).
        keep_quantiles: quantiles in [0, 1] whose neighbouring order statistics are always kept.

    Returns:
        ``(x, y)``: sorted values and ECDF heights in (0, 1]; both empty if no finite value.

    Raises:
        ValueError: if ``max_points < 2``.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    arr = np.asarray(values, dtype=float)
    arr = np.sort(arr[np.isfinite(arr)])
    n = arr.size
    if n == 0:
        return arr, arr.copy()
    if n <= max_points:
        ranks = np.arange(n)
    else:
        pos = np.asarray(keep_quantiles, dtype=float) * (n - 1)
        extra = np.concatenate([np.floor(pos), np.ceil(pos)]).astype(np.int64)
        even = np.round(np.linspace(0, n - 1, max(2, max_points - extra.size))).astype(np.int64)
        ranks = np.unique(np.concatenate([even, extra, [0, n - 1]]))
    return arr[ranks], (ranks + 1) / n


def _new_figure(ax: Axes | None, *, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _check_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what} frame lacks column(s) {missing}; has {list(df.columns)}")


def _fmt_s(value_s: float, factor: float, unit: str) -> str:
    return f"{value_s * factor:g} {unit}"


def latency_cdf(
    requests: pd.DataFrame,
    metric: str,
    *,
    workload: str,
    slo_s: float | None,
    percentile: float | None = None,
    colors: Mapping[str, str] | None = None,
    max_points: int = 2000,
    ax: Axes | None = None,
) -> Figure:
    """Empirical CDF of one latency metric, one line per deployment, for one workload.

    Only ``status == "completed"`` rows with a finite metric are used (so 1-token outputs drop out of
    TPOT). The x axis is logarithmic when the plotted values span more than two decades. Each line is
    downsampled with :func:`ecdf`.

    Args:
        requests: per-request records with ``deployment, workload, status`` and ``metric`` (seconds).
        metric: ``"ttft_s"``, ``"tpot_s"`` or ``"e2e_s"``; TTFT/TPOT are shown in ms, E2E in s.
        workload: workload name to select.
        slo_s: SLO target in seconds, drawn as a vertical dashed line; ``None`` for no line.
        percentile: SLO percentile (e.g. 90), drawn as a horizontal dotted line at ``percentile / 100``.
        colors: deployment -> colour; default :func:`deployment_colors` over all of ``requests``.
        max_points: points per line after downsampling.
        ax: axes to draw into; a new figure otherwise.

    Returns:
        The figure. Lines carry the deployment name as label; deployments without any finite value for
        this workload get no line.

    Raises:
        ValueError: unknown ``metric``.
        KeyError: a required column is missing.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    _check_columns(requests, ["deployment", "workload", "status", metric], "requests")
    label, factor, unit = _METRICS[metric]
    colors = dict(colors) if colors is not None else deployment_colors(requests["deployment"])
    sel = requests[(requests["workload"] == workload) & (requests["status"] == "completed")]
    fig, ax = _new_figure(ax, figsize=(7.0, 4.5))

    lo, hi = np.inf, -np.inf
    for deployment in sorted(sel["deployment"].astype(str).unique()):
        x, y = ecdf(
            sel.loc[sel["deployment"] == deployment, metric].to_numpy(dtype=float) * factor,
            max_points=max_points,
        )
        if x.size == 0:
            continue
        positive = x[x > 0]
        if positive.size:
            lo, hi = min(lo, positive[0]), max(hi, positive[-1])
        # Start the step at height 0 at the minimum, so the line is a proper CDF.
        ax.step(
            np.concatenate([[x[0]], x]),
            np.concatenate([[0.0], y]),
            where="post",
            color=colors.get(deployment, "#000000"),
            linewidth=1.6,
            label=deployment,
        )
    if slo_s is not None:
        ax.axvline(slo_s * factor, color="#333333", linestyle="--", linewidth=1.2,
                   label=f"SLO {_fmt_s(slo_s, factor, unit)}")  # fmt: skip
        if np.isfinite(lo):
            lo, hi = min(lo, slo_s * factor), max(hi, slo_s * factor)
    if percentile is not None:
        ax.axhline(percentile / 100.0, color="#777777", linestyle=":", linewidth=1.0,
                   label=f"P{percentile:g}")  # fmt: skip
    if np.isfinite(lo) and hi / lo > 100.0:
        ax.set_xscale("log")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(f"{label} ({unit})")
    ax.set_ylabel("Fraction of completed requests")
    ax.set_title(f"{label} CDF, workload {workload}")
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small", framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no completed requests", transform=ax.transAxes, ha="center")
    return fig


def _scatter_panel(
    ax: Axes,
    summary: pd.DataFrame,
    x_col: str,
    colors: Mapping[str, str],
    markers: Mapping[str, str],
) -> None:
    for workload, group in summary.groupby("workload", sort=True):
        ok = group[np.isfinite(group[x_col].astype(float)) & np.isfinite(group["goodput_rps"].astype(float))]
        if ok.empty:
            continue
        ax.scatter(
            ok[x_col].astype(float),
            ok["goodput_rps"].astype(float),
            c=[colors.get(str(d), "#000000") for d in ok["deployment"]],
            marker=markers[str(workload)],
            s=60,
            edgecolors="black",
            linewidths=0.6,
            zorder=3,
        )
        for _, row in ok.iterrows():
            ax.annotate(
                str(row["deployment"]),
                (float(row[x_col]), float(row["goodput_rps"])),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize="x-small",
            )
    ax.grid(True, alpha=0.3)
    ax.set_ylabel("Goodput (SLO-meeting requests/s)")
    ax.margins(x=0.15, y=0.12)


def cost_vs_goodput(
    summary: pd.DataFrame,
    *,
    colors: Mapping[str, str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Goodput against cost, one marker per deployment x workload, annotated with the deployment.

    Colour is the deployment (see :func:`deployment_colors`), marker shape the workload. Without ``ax``
    the figure has two panels: $/h (left) and $/1M output tokens (right) on x, goodput on y. With
    ``ax`` only the $/h panel is drawn into it.

    Args:
        summary: rows with ``deployment, workload, usd_per_hour, goodput_rps,
            usd_per_million_output_tokens``. Rows with a non-finite x or y are skipped.
        colors: deployment -> colour; default over ``summary``.
        ax: axes for the single $/h panel.

    Returns:
        The figure; each workload is one scatter collection per panel.
    """
    _check_columns(
        summary,
        ["deployment", "workload", "usd_per_hour", "goodput_rps", "usd_per_million_output_tokens"],
        "summary",
    )
    colors = dict(colors) if colors is not None else deployment_colors(summary["deployment"])
    markers = workload_markers(summary["workload"])
    if ax is not None:
        fig, axes = ax.figure, [ax]
    else:
        fig = Figure(figsize=(12.0, 5.0), layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(1, 2))
    _scatter_panel(axes[0], summary, "usd_per_hour", colors, markers)
    axes[0].set_xlabel("Cost ($/h)")
    axes[0].set_title("Goodput vs cluster cost")
    if len(axes) > 1:
        _scatter_panel(axes[1], summary, "usd_per_million_output_tokens", colors, markers)
        axes[1].set_xlabel("Cost ($ per 1M output tokens)")
        axes[1].set_title("Goodput vs token cost")
    handles = [
        Line2D([], [], linestyle="", marker=m, color="#555555", markeredgecolor="black", label=w)
        for w, m in markers.items()
    ]
    axes[0].legend(handles=handles, title="workload", loc="best", fontsize="small")
    return fig


def _grouped_bars(
    ax: Axes,
    summary: pd.DataFrame,
    value_col: str,
    colors: Mapping[str, str],
    scale: float = 1.0,
    fmt: str = "{:.0f}",
) -> None:
    """Bars grouped by workload (order of first appearance), one bar per deployment (sorted)."""
    workloads = list(dict.fromkeys(summary["workload"].astype(str)))
    deployments = sorted(summary["deployment"].astype(str).unique())
    width = 0.8 / max(1, len(deployments))
    for j, deployment in enumerate(deployments):
        xs, hs = [], []
        for i, workload in enumerate(workloads):
            row = summary[(summary["workload"].astype(str) == workload) & (summary["deployment"].astype(str) == deployment)]
            if row.empty:
                continue
            value = float(row[value_col].iloc[0])
            if not np.isfinite(value):
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            hs.append(value * scale)
        if not xs:
            continue
        bars = ax.bar(xs, hs, width=width * 0.92, color=colors.get(deployment, "#000000"), label=deployment,
                      edgecolor="black", linewidth=0.4, zorder=3)  # fmt: skip
        if len(deployments) * len(workloads) <= 24:
            ax.bar_label(bars, labels=[fmt.format(h) for h in hs], fontsize="xx-small", padding=1)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_xlabel("Workload")
    ax.grid(True, axis="y", alpha=0.3, zorder=0)


def _deployment_legend(fig: Figure, ax: Axes, own_figure: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    pairs = [(h, lab) for h, lab in zip(handles, labels, strict=True) if not lab.startswith("target")]
    if not pairs:
        return
    if own_figure:
        # Fit the columns to the figure width: ~0.075 in per character at "small" plus the handle.
        entry_in = 0.6 + 0.075 * max(len(lab) for _, lab in pairs)
        ncols = max(1, min(len(pairs), int(fig.get_figwidth() // entry_in)))
        fig.legend([h for h, _ in pairs], [lab for _, lab in pairs], loc="outside lower center",
                   ncols=ncols, fontsize="small", title="deployment")  # fmt: skip
    else:
        ax.legend(fontsize="small")


def slo_attainment_bars(
    summary: pd.DataFrame,
    *,
    target: float,
    colors: Mapping[str, str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """SLO attainment in %, bars grouped by workload, one bar per deployment, with the target line.

    Args:
        summary: rows with ``deployment, workload, slo_attainment`` (fraction in [0, 1]).
        target: attainment target as a fraction (e.g. 0.9), drawn as a dashed horizontal line.
        colors: deployment -> colour; default over ``summary``.
        ax: axes to draw into; a new figure otherwise.

    Returns:
        The figure; one bar patch per row with a finite attainment.
    """
    _check_columns(summary, ["deployment", "workload", "slo_attainment"], "summary")
    colors = dict(colors) if colors is not None else deployment_colors(summary["deployment"])
    own = ax is None
    fig, ax = _new_figure(ax, figsize=(max(6.0, 1.2 + 0.45 * len(summary)), 4.8))
    _grouped_bars(ax, summary, "slo_attainment", colors, scale=100.0, fmt="{:.0f}")
    ax.axhline(target * 100.0, color="#333333", linestyle="--", linewidth=1.2, zorder=4,
               label=f"target {target * 100:g}%")  # fmt: skip
    ax.set_ylim(0.0, 109.0)
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title(f"SLO attainment (target {target * 100:g}%)")
    _deployment_legend(fig, ax, own)
    return fig


def throughput_cost_bars(
    summary: pd.DataFrame,
    *,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Output tokens/s (left) and $ per 1M output tokens (right), bars grouped by workload.

    Args:
        summary: rows with ``deployment, workload, output_tokens_per_s, usd_per_million_output_tokens``.
        colors: deployment -> colour; default over ``summary``.

    Returns:
        A two-panel figure; each panel has one bar patch per row with a finite value.
    """
    _check_columns(
        summary,
        ["deployment", "workload", "output_tokens_per_s", "usd_per_million_output_tokens"],
        "summary",
    )
    colors = dict(colors) if colors is not None else deployment_colors(summary["deployment"])
    fig = Figure(figsize=(max(10.0, 2.0 + 0.8 * len(summary)), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_tput, ax_cost = fig.subplots(1, 2)
    _grouped_bars(ax_tput, summary, "output_tokens_per_s", colors, fmt="{:,.0f}")
    ax_tput.set_ylabel("Output throughput (tokens/s)")
    ax_tput.set_title("Output throughput")
    _grouped_bars(ax_cost, summary, "usd_per_million_output_tokens", colors, fmt="{:.3g}")
    ax_cost.set_ylabel("Cost ($ per 1M output tokens)")
    ax_cost.set_title("Token cost (lower is better)")
    for ax in (ax_tput, ax_cost):
        ax.margins(y=0.12)
    _deployment_legend(fig, ax_tput, True)
    return fig
