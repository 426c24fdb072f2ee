"""Render a run directory's saved data into PNG plots and a Markdown report (edge ring).

Reads only what the simulator wrote (never re-simulates):

- ``requests.parquet`` (preferred) or ``requests.csv``: one row per request per deployment x workload.
- ``summary.csv``: one row per deployment x workload.
- ``config.resolved.yaml``: the ``slo`` mapping (``ttft_s``, ``tpot_s``, ``percentile``,
  ``attainment_target``) and, if present, the experiment ``name``.
- ``manifest.json``: pdsim version, seed, git sha (shown in the report when present).

Writes ``plots/{ttft,tpot,e2e}_cdf_<workload>.png``, ``plots/cost_vs_goodput.png``,
``plots/slo_attainment.png``, ``plots/throughput_cost.png`` and ``report.md``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from pdsim.errors import PdsimError
from pdsim.plots.figures import (
    DERIVED_MARK,
    cost_vs_goodput,
    deployment_colors,
    derived_deployments,
    latency_cdf,
    slo_attainment_bars,
    throughput_cost_bars,
)

__all__ = ["SLO", "RunData", "load_run_dir", "render_report", "render_run_dir"]

REQUEST_COLUMNS: tuple[str, ...] = ("deployment", "workload", "status", "ttft_s", "tpot_s", "e2e_s")
SUMMARY_COLUMNS: tuple[str, ...] = (
    "deployment", "workload", "kind", "requests", "completed", "rejected",
    "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
    "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "output_tokens_per_s", "slo_attainment", "goodput_rps",
    "gpus", "usd_per_hour", "usd_per_million_output_tokens",
)  # fmt: skip
SLO_KEYS: tuple[str, ...] = ("ttft_s", "tpot_s", "percentile", "attainment_target")
CDF_METRICS: tuple[tuple[str, str], ...] = (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("e2e_s", "e2e"))
PLOT_DPI = 120


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency targets of a run (seconds), the percentile they apply at, and the attainment target."""

    ttft_s: float
    tpot_s: float
    percentile: float
    attainment_target: float


@dataclass(frozen=True, slots=True)
class RunData:
    """What a run directory holds, loaded into memory."""

    run_dir: Path
    name: str
    requests: pd.DataFrame
    summary: pd.DataFrame
    slo: SLO
    manifest: dict[str, Any] = field(default_factory=dict)


def _require(run_dir: Path, *names: str) -> Path:
    """Return the first existing file among ``names`` in ``run_dir``, or raise naming them."""
    for name in names:
        path = run_dir / name
        if path.is_file():
            return path
    raise PdsimError(f"{run_dir}: incomplete run directory, missing {' or '.join(names)}")


def _check_columns(df: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PdsimError(f"{path}: missing column(s) {', '.join(missing)}")


def _load_slo(path: Path, config: Any) -> SLO:
    slo = config.get("slo") if isinstance(config, dict) else None
    if not isinstance(slo, dict):
        raise PdsimError(f"{path}: missing 'slo' mapping (with {', '.join(SLO_KEYS)})")
    values: dict[str, float] = {}
    for key in SLO_KEYS:
        if key not in slo:
            raise PdsimError(f"{path}: slo.{key} is missing")
        try:
            values[key] = float(slo[key])
        except (TypeError, ValueError):
            raise PdsimError(f"{path}: slo.{key} must be a number, got {slo[key]!r}") from None
        if not math.isfinite(values[key]) or values[key] <= 0:
            raise PdsimError(f"{path}: slo.{key} must be a positive number, got {slo[key]!r}")
    if values["attainment_target"] > 1:
        raise PdsimError(
            f"{path}: slo.attainment_target is a fraction in (0, 1], got {slo['attainment_target']!r}"
        )
    return SLO(**values)


def _experiment_name(config: Any, manifest: dict[str, Any], run_dir: Path) -> str:
    candidates = []
    if isinstance(config, dict):
        candidates.append(config.get("name"))
        experiment = config.get("experiment")
        candidates.append(experiment.get("name") if isinstance(experiment, dict) else experiment)
    candidates += [manifest.get("experiment"), manifest.get("name")]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return run_dir.resolve().name


def load_run_dir(run_dir: Path) -> RunData:
    """Load the saved records, summary, SLOs and manifest of a run directory.

    Args:
        run_dir: directory written by the simulator.

    Returns:
        The loaded :class:`RunData`; ``requests`` holds only the columns the plots need.

    Raises:
        PdsimError: the directory or a file is missing or malformed; the message names the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PdsimError(f"{run_dir}: run directory does not exist")
    requests_path = _require(run_dir, "requests.parquet", "requests.csv")
    summary_path = _require(run_dir, "summary.csv")
    config_path = _require(run_dir, "config.resolved.yaml")
    manifest_path = _require(run_dir, "manifest.json")

    try:
        if requests_path.suffix == ".parquet":
            import pyarrow.parquet as pq

            present = set(pq.read_schema(requests_path).names)
            _check_columns(pd.DataFrame(columns=list(present)), REQUEST_COLUMNS, requests_path)
            requests = pd.read_parquet(requests_path, columns=list(REQUEST_COLUMNS))
        else:
            header = pd.read_csv(requests_path, nrows=0)
            _check_columns(header, REQUEST_COLUMNS, requests_path)
            requests = pd.read_csv(
                requests_path,
                usecols=list(REQUEST_COLUMNS),
                dtype={"deployment": str, "workload": str, "status": str},
                keep_default_na=False,
                na_values={c: ["", "nan", "NaN"] for c in ("ttft_s", "tpot_s", "e2e_s")},
            )
        summary = pd.read_csv(summary_path, dtype={"deployment": str, "workload": str, "kind": str})
    except PdsimError:
        raise
    except Exception as exc:  # pyarrow / pandas parse errors: report the file
        raise PdsimError(f"{run_dir}: cannot read run data: {exc}") from exc
    _check_columns(summary, SUMMARY_COLUMNS, summary_path)
    if summary.empty:
        raise PdsimError(f"{summary_path}: no rows")
    for column in ("deployment", "workload", "status"):
        requests[column] = requests[column].astype(str)
    # Deployments whose latency comes from a derived (datasheet roofline) profile are labelled as such
    # in every plot and table rendered from the run.
    if "latency_sources" not in summary.columns:  # run directories written before the column existed
        summary["latency_sources"] = ""
    derived = sorted(derived_deployments(summary))
    if derived:
        relabel = {d: f"{d} {DERIVED_MARK}" for d in derived}
        summary["deployment"] = summary["deployment"].replace(relabel)
        requests["deployment"] = requests["deployment"].replace(relabel)

    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise PdsimError(f"{config_path}: invalid YAML: {exc}") from exc
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise PdsimError(f"{manifest_path}: invalid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise PdsimError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    return RunData(
        run_dir=run_dir,
        name=_experiment_name(config, manifest, run_dir),
        requests=requests,
        summary=summary,
        slo=_load_slo(config_path, config),
        manifest=manifest,
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "workload"


def _workload_slugs(workloads: list[str]) -> dict[str, str]:
    """File-safe, unique slug per workload (a suffix disambiguates names that sanitise alike)."""
    slugs: dict[str, str] = {}
    used: set[str] = set()
    for workload in workloads:
        base = slug = _slug(workload)
        k = 2
        while slug in used:
            slug, k = f"{base}_{k}", k + 1
        used.add(slug)
        slugs[workload] = slug
    return slugs


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def render_run_dir(run_dir: Path) -> list[Path]:
    """Write ``plots/*.png`` and ``report.md`` for a run directory from its saved data.

    Args:
        run_dir: directory written by the simulator (see module docstring for the files read).

    Returns:
        Paths written: the PNGs (CDFs per workload, then the cost/goodput, SLO attainment and
        throughput/cost figures), then ``report.md``.

    Raises:
        PdsimError: the run directory is incomplete or malformed (the message names the file).
    """
    data = load_run_dir(Path(run_dir))
    plots_dir = data.run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    colors = deployment_colors(list(data.summary["deployment"]) + list(data.requests["deployment"]))
    workloads = list(dict.fromkeys(list(data.summary["workload"]) + list(data.requests["workload"])))
    slugs = _workload_slugs(workloads)
    slo_by_metric = {"ttft_s": data.slo.ttft_s, "tpot_s": data.slo.tpot_s, "e2e_s": None}

    written: list[Path] = []
    for workload in workloads:
        for metric, stem in CDF_METRICS:
            fig = latency_cdf(
                data.requests,
                metric,
                workload=workload,
                slo_s=slo_by_metric[metric],
                percentile=data.slo.percentile,
                colors=colors,
            )
            written.append(_save(fig, plots_dir / f"{stem}_cdf_{slugs[workload]}.png"))
    written.append(_save(cost_vs_goodput(data.summary, colors=colors), plots_dir / "cost_vs_goodput.png"))
    written.append(
        _save(
            slo_attainment_bars(data.summary, target=data.slo.attainment_target, colors=colors),
            plots_dir / "slo_attainment.png",
        )
    )
    written.append(_save(throughput_cost_bars(data.summary, colors=colors), plots_dir / "throughput_cost.png"))

    report = data.run_dir / "report.md"
    report.write_text(render_report(data, plot_slugs=slugs))
    written.append(report)
    return written


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: Any, *, scale: float = 1.0, digits: int | None = None) -> str:
    """Number for a table cell: ``n/a`` for missing, else about three significant digits."""
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    if digits is not None:
        return f"{v:,.{digits}f}"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.3g}"


def _usd(value: Any) -> str:
    """Dollar amount: cents from $1 up, three significant digits below (so $0.0512 != $0.0587)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    return f"{v:,.2f}" if abs(v) >= 1 else f"{v:.3g}"


def _int(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{int(v):,}" if math.isfinite(v) else "n/a"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_TABLE_HEADER = (
    "Deployment", "Kind", "GPUs", "Completed / requests", "Rejected",
    "TTFT P50 (ms)", "TTFT P90 (ms)", "TTFT P99 (ms)",
    "TPOT P50 (ms)", "TPOT P90 (ms)", "TPOT P99 (ms)",
    "E2E P50 (s)", "E2E P90 (s)", "E2E P99 (s)",
    "SLO attainment (%)", "Goodput (req/s)", "Output tok/s", "$/h", "$/1M output tokens",
)  # fmt: skip


def _table(rows: pd.DataFrame) -> list[str]:
    lines = [
        "| " + " | ".join(_TABLE_HEADER) + " |",
        "|" + "|".join([":---", ":---"] + ["---:"] * (len(_TABLE_HEADER) - 2)) + "|",
    ]
    for _, r in rows.iterrows():
        cells = [
            _cell(r["deployment"]),
            _cell(r["kind"]),
            _int(r["gpus"]),
            f"{_int(r['completed'])} / {_int(r['requests'])}",
            _int(r["rejected"]),
            *(_fmt(r[f"ttft_p{p}_s"], scale=1e3) for p in (50, 90, 99)),
            *(_fmt(r[f"tpot_p{p}_s"], scale=1e3) for p in (50, 90, 99)),
            *(_fmt(r[f"e2e_p{p}_s"]) for p in (50, 90, 99)),
            _fmt(r["slo_attainment"], scale=100.0, digits=1),
            _fmt(r["goodput_rps"]),
            _fmt(r["output_tokens_per_s"]),
            _fmt(r["usd_per_hour"], digits=2),
            _usd(r["usd_per_million_output_tokens"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _names(deployments: list[str]) -> str:
    return ", ".join(f"**{_cell(d)}**" for d in deployments)


def _comparison(rows: pd.DataFrame, slo: SLO) -> str:
    """Short factual comparison of the deployments of one workload, computed from the summary rows."""
    sentences: list[str] = []
    goodput = rows["goodput_rps"].astype(float)
    usd_h = rows["usd_per_hour"].astype(float)
    valid = np.isfinite(goodput) & np.isfinite(usd_h) & (usd_h > 0)
    per_usd_h = (goodput / usd_h).where(valid)
    if not valid.any():
        sentences.append("Goodput per $/h cannot be compared: goodput or $/h is missing.")
    elif float(per_usd_h.max()) <= 0:
        sentences.append("No deployment completed any request within all SLOs (goodput is 0 everywhere).")
    else:
        order = per_usd_h.dropna().sort_values(ascending=False, kind="stable")
        best_value = float(order.iloc[0])
        best = [str(rows.loc[i, "deployment"]) for i in order.index if float(order[i]) == best_value]
        text = (
            f"Best goodput per $/h: {_names(best)} with {_fmt(best_value)} SLO-meeting req/s per $/h "
            f"({_fmt(best_value * 3600.0, digits=0)} SLO-meeting requests per dollar)"
        )
        rest = order[order < best_value]
        if not rest.empty:
            runner = str(rows.loc[rest.index[0], "deployment"])
            runner_value = float(rest.iloc[0])
            ratio = f"; the best is {best_value / runner_value:.2f}x that" if runner_value > 0 else ""
            text += f"; next is {_names([runner])} with {_fmt(runner_value)}{ratio}"
        sentences.append(text + ".")

    cost = rows["usd_per_million_output_tokens"].astype(float)
    finite_cost = cost[np.isfinite(cost) & (cost > 0)].sort_values(kind="stable")
    if finite_cost.empty:
        sentences.append("$/1M output tokens cannot be compared: no deployment has a finite value.")
    else:
        low = float(finite_cost.iloc[0])
        cheapest = [str(rows.loc[i, "deployment"]) for i in finite_cost.index if float(finite_cost[i]) == low]
        attainment = _fmt(rows.loc[finite_cost.index[0], "slo_attainment"], scale=100.0, digits=1)
        text = (
            f"Lowest cost per 1M output tokens: {_names(cheapest)} at ${_usd(low)} "
            f"(SLO attainment {attainment}%)"
        )
        more = finite_cost[finite_cost > low]
        if not more.empty:
            text += f"; next is {_names([str(rows.loc[more.index[0], 'deployment'])])} at ${_usd(float(more.iloc[0]))}"
        sentences.append(text + ".")

    attainment = rows["slo_attainment"].astype(float)
    meets = [str(d) for d, a in zip(rows["deployment"], attainment, strict=True) if a >= slo.attainment_target]
    misses = [
        f"**{_cell(d)}** ({_fmt(a, scale=100.0, digits=1)}%)"
        for d, a in zip(rows["deployment"], attainment, strict=True)
        if not a >= slo.attainment_target
    ]
    target = f"{slo.attainment_target * 100:g}%"
    if meets:
        sentences.append(f"Meets the {target} SLO attainment target: {_names(meets)}.")
    if misses:
        sentences.append(f"Misses the {target} target: {', '.join(misses)}.")

    rejected = [
        f"**{_cell(r['deployment'])}** rejected {_int(r['rejected'])} of {_int(r['requests'])} requests"
        for _, r in rows.iterrows()
        if np.isfinite(float(r["rejected"])) and float(r["rejected"]) > 0
    ]
    if rejected:
        sentences.append("; ".join(rejected) + ".")
    return " ".join(sentences)


def render_report(data: RunData, *, plot_slugs: dict[str, str] | None = None) -> str:
    """Markdown report of a loaded run: SLOs, per-workload summary tables, comparisons, plot links.

    Args:
        data: a loaded run directory.
        plot_slugs: workload -> file-name slug of its CDF plots (as written by :func:`render_run_dir`).

    Returns:
        The report text. Latencies: TTFT/TPOT in ms, E2E in s; goodput is the rate of requests that
        met every SLO (from ``summary.csv``).
    """
    slo = data.slo
    summary = data.summary
    workloads = list(dict.fromkeys(summary["workload"].astype(str)))
    slugs = plot_slugs if plot_slugs is not None else _workload_slugs(workloads)
    lines = [f"# pdsim report: {_cell(data.name)}", ""]
    meta = []
    version = data.manifest.get("pdsim_version", data.manifest.get("version"))
    if version is not None:
        meta.append(f"pdsim {version}")
    if "seed" in data.manifest:
        meta.append(f"seed {data.manifest['seed']}")
    sha = data.manifest.get("git_sha", data.manifest.get("git_commit"))
    if sha:
        meta.append(f"git {str(sha)[:12]}")
    meta.append(f"rendered from `{data.run_dir.resolve().name}` (summary.csv, requests)")
    if data.summary["deployment"].astype(str).str.endswith(DERIVED_MARK).any():
        meta.append(f"deployments marked {DERIVED_MARK} use latencies from a derived profile (datasheet roofline), not a measurement")
    lines += [", ".join(meta) + ".", ""]

    lines += [
        "## SLOs",
        "",
        f"- TTFT <= {slo.ttft_s * 1e3:g} ms ({slo.ttft_s:g} s)",
        f"- TPOT <= {slo.tpot_s * 1e3:g} ms ({slo.tpot_s:g} s)",
        f"- Percentile: P{slo.percentile:g}",
        f"- SLO attainment target: {slo.attainment_target * 100:g}% of requests meeting every target",
        "",
        "SLO attainment is the fraction of requests that met every target; goodput is the rate of such "
        "requests (req/s), both as recorded in `summary.csv`. TTFT and TPOT in ms, E2E in s; "
        "percentiles over completed requests.",
        "",
    ]
    for workload in workloads:
        rows = summary[summary["workload"].astype(str) == workload].sort_values("deployment", kind="stable")
        slug = slugs.get(workload, _slug(workload))
        lines += [f"## Workload `{_cell(workload)}`", ""]
        process = (data.manifest.get("workloads") or {}).get(workload) or {}
        if process.get("arrival_process") == "closed_loop":  # docs/workloads.md
            lines += [f"Closed loop of {process.get('clients')} clients: request rates are achieved "
                      "throughput (an outcome), not an offered load.", ""]
        lines += _table(rows)
        lines += ["", _comparison(rows, slo), ""]
        lines += [
            f"![TTFT CDF, {workload}](plots/ttft_cdf_{slug}.png)",
            f"![TPOT CDF, {workload}](plots/tpot_cdf_{slug}.png)",
            f"![E2E CDF, {workload}](plots/e2e_cdf_{slug}.png)",
            "",
        ]
    lines += [
        "## Cost and goodput",
        "",
        "![Goodput vs cost](plots/cost_vs_goodput.png)",
        "",
        "![SLO attainment](plots/slo_attainment.png)",
        "",
        "![Throughput and token cost](plots/throughput_cost.png)",
        "",
    ]
    return "\n".join(lines)
