"""``pdsim validate``: simulate the requests of a ``pdsim live`` (or ``pdsim replay``) run directory on the
same deployment and compare the simulated latencies with the measured ones. No torch.

The simulated deployment is one colocated instance with the live run's scheduler knobs
(``max_num_batched_tokens``, ``max_num_seqs``, ``block_size``, the KV capacity in blocks exactly as the
engine had it, ``watermark_fraction``) and the op-level latency model on a CPU profile (default: the
profile under the search roots whose ``device_type`` is ``cpu`` and whose ``num_threads`` equals the live
run's threads) for the live run's model config and dtype, ``iteration_overhead_s = 0``. The plan is built
in code: a CPU is not in ``gpu_specs.csv``, so its ``GpuSpec`` carries the host memory and price 0, and
the op-level model gets ``gpu=None`` (no datasheet roofline fallbacks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer

from pdsim.errors import ConfigError, PdsimError

PERCENTILES = (50, 90, 99)
METRICS = (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("E2E", "e2e_s"))


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# -- inputs ----------------------------------------------------------------------------------------------
def read_run_dir(run_dir: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame | None]:
    """manifest.json, requests.csv and (if present) tokens.csv of a run directory. Raises ConfigError."""
    if not run_dir.is_dir():
        raise ConfigError(f"--live-run {run_dir}: not a directory")
    for f in ("manifest.json", "requests.csv"):
        if not (run_dir / f).is_file():
            raise ConfigError(f"--live-run {run_dir}: {f} not found (not a pdsim live / replay run directory)")
    try:
        man = json.loads((run_dir / "manifest.json").read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{run_dir / 'manifest.json'}: not valid JSON ({exc})") from None
    if not isinstance(man, dict) or man.get("kind") not in ("live", "replay"):
        raise ConfigError(f"{run_dir / 'manifest.json'}: kind must be 'live' or 'replay', got {man.get('kind')!r}")
    req = pd.read_csv(run_dir / "requests.csv")
    need = ["request_id", "arrival_s", "prompt_tokens", "output_tokens", "status", "ttft_s", "tpot_s", "e2e_s"]
    missing = [c for c in need if c not in req.columns]
    if missing:
        raise ConfigError(f"{run_dir / 'requests.csv'}: missing column(s) {missing}")
    if req.empty:
        raise ConfigError(f"{run_dir / 'requests.csv'}: no requests")
    tokens = pd.read_csv(run_dir / "tokens.csv") if (run_dir / "tokens.csv").is_file() else None
    return man, req, tokens


def find_cpu_profile(threads: int | None, name: str | None):
    """The profile named ``name``, else the CPU profile measured with ``threads`` threads. Raises ConfigError."""
    from pdsim.errors import ProfileError
    from pdsim.profiles.format import find_profile, list_profile_dirs, load_profile

    if name is not None:
        try:
            return find_profile(name)
        except ProfileError as exc:
            raise ConfigError(str(exc)) from None
    if threads is None:
        raise ConfigError("the run's manifest records no thread count (a replay run): give --profile")
    matches = []
    for d in list_profile_dirs():
        try:
            p = load_profile(d)
        except PdsimError:
            continue
        if p.meta.device_type == "cpu" and p.meta.num_threads == threads:
            matches.append(p)
    if not matches:
        raise ConfigError(f"no CPU profile with num_threads {threads} under the profile search roots; measure one "
                          "with `pdsim profile --device cpu` or give --profile")
    return matches[0]


# -- the simulated deployment ---------------------------------------------------------------------------
def build_plan(*, model_config: dict, model_name: str, dtype: str, profile, max_num_batched_tokens: int,
               max_num_seqs: int, block_size: int, kv_capacity_blocks: int, watermark_fraction: float):
    """A one-instance colocated ``DeploymentPlan`` on a CPU with the op-level model (gpu=None)."""
    from pdsim.config.schema import OpLevelLatency, PoolConfig, SchedulerConfig
    from pdsim.hardware.gpus import GpuSpec
    from pdsim.latency.oplevel import OpLevelModel
    from pdsim.models.arch import dtype_bytes, model_from_hf_config
    from pdsim.sim.plan import DeploymentPlan, PoolPlan

    spec = model_from_hf_config(model_name, model_config, where="model config")
    nan = float("nan")
    cpu = GpuSpec(name=f"cpu:{profile.meta.device_name}", vendor=profile.meta.vendor,
                  memory_bytes=int(profile.meta.memory_bytes or 0), mem_bw_bytes_per_s=nan, bf16_dense_flops=nan,
                  fp8_dense_flops=nan, intra_node_gbps_unidir=nan, tdp_w=nan, price_usd_per_hour=0.0)
    latency = OpLevelModel([profile], spec, tp=1, pp=1, dtype=dtype, gpu=None, iteration_overhead_s=0.0)

    class _CpuPoolPlan(PoolPlan):
        def build_latency(self):  # gpu=None: the op-level model of a CPU profile
            return latency.fresh()

    sched = SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                            block_size=block_size, watermark_fraction=watermark_fraction)
    cfg = PoolConfig(gpu=cpu.name, instances=1,
                     latency=OpLevelLatency(kind="op_level", profile=str(profile.path), dtype=dtype))
    nbytes = dtype_bytes(dtype)
    pool = _CpuPoolPlan(
        role="colocated", config=cfg, gpu=cpu, tp=1, pp=1, instances=1, scheduler=sched,
        capacity_blocks=kv_capacity_blocks, weight_bytes_per_gpu=spec.weight_bytes_per_gpu(1, 1, nbytes),
        activation_bytes_per_gpu=0, kv_bytes_per_token_per_gpu=spec.kv_bytes_per_token_per_gpu(1, 1, nbytes),
        price_usd_per_gpu_hour=0.0,
        latency_source=("op_level", (str(profile.path),), spec, 1, 1, dtype, None, 0.0, "auto"),
        latency_source_kinds=(profile.meta.source_kind,))
    return DeploymentPlan("sim", "colocated", spec, spec.max_context_tokens, nbytes, (pool,), None), latency


# -- comparison ------------------------------------------------------------------------------------------
def _itl(tokens: pd.DataFrame, ids) -> np.ndarray:
    t = tokens[tokens["request_id"].isin(set(ids))].sort_values(["request_id", "token_index"])
    gaps = t.groupby("request_id")["t_s"].diff().to_numpy(dtype=float)
    return gaps[np.isfinite(gaps)]


def _pct(values, q) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.percentile(v, q)) if v.size else math.nan


def comparison_table(live: pd.DataFrame, sim: pd.DataFrame, live_itl: np.ndarray | None,
                     sim_itl: np.ndarray | None) -> pd.DataFrame:
    """metric x percentile: live, sim and relative error (sim - live) / live, over requests completed in both."""
    ok = set(live.loc[live["status"] == "completed", "request_id"]) & set(sim.loc[sim["status"] == "completed", "request_id"])
    lv = live[live["request_id"].isin(ok)]
    sv = sim[sim["request_id"].isin(ok)]
    rows = []
    for name, col in METRICS:
        if col == "itl_s":
            if live_itl is None or sim_itl is None:
                continue
            a, b = live_itl, sim_itl
        else:
            a, b = lv[col].to_numpy(dtype=float), sv[col].to_numpy(dtype=float)
        for q in PERCENTILES:
            x, y = _pct(a, q), _pct(b, q)
            rows.append({"metric": name, "percentile": f"P{q}", "live_s": x, "sim_s": y,
                         "rel_error": (y - x) / x if x and x == x else math.nan})
    return pd.DataFrame(rows, columns=["metric", "percentile", "live_s", "sim_s", "rel_error"])


def format_table(cmp: pd.DataFrame) -> str:
    """A Markdown table of the comparison (milliseconds)."""
    lines = ["| metric | pct | live ms | sim ms | rel. error |", "|---|---|---:|---:|---:|"]
    for r in cmp.itertuples(index=False):
        lines.append(f"| {r.metric} | {r.percentile} | {r.live_s * 1e3:.2f} | {r.sim_s * 1e3:.2f} | {r.rel_error * 100:+.1f}% |")
    return "\n".join(lines)


def _plots(out: Path, both: pd.DataFrame, live: pd.DataFrame, sim: pd.DataFrame, workload: str) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pdsim.plots.figures import latency_cdf

    colors = {"live": "#d62728", "sim": "#1f77b4"}
    files = []
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        fig = latency_cdf(both, metric, workload=workload, slo_s=None, colors=colors)
        name = f"cdf_{metric[:-2]}.png"
        fig.savefig(out / name, dpi=120)
        files.append(name)
    m = live[["request_id", "e2e_s"]].merge(sim[["request_id", "e2e_s"]], on="request_id", suffixes=("_live", "_sim"))
    m = m[np.isfinite(m["e2e_s_live"]) & np.isfinite(m["e2e_s_sim"])]
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(m["e2e_s_live"], m["e2e_s_sim"], s=10, alpha=0.6, color=colors["sim"])
    if len(m):
        lo = float(min(m["e2e_s_live"].min(), m["e2e_s_sim"].min()))
        hi = float(max(m["e2e_s_live"].max(), m["e2e_s_sim"].max()))
        ax.plot([lo, hi], [lo, hi], color="#333333", linestyle="--", linewidth=1.0, label="sim = live")
        ax.legend(loc="upper left", fontsize="small")
    ax.set_xlabel("live E2E (s)")
    ax.set_ylabel("simulated E2E (s)")
    ax.set_title(f"per-request E2E, workload {workload}")
    ax.grid(True, alpha=0.3)
    fig.savefig(out / "scatter_e2e.png", dpi=120)
    files.append("scatter_e2e.png")
    return files


# -- the command -----------------------------------------------------------------------------------------
def validate(live_run: Path, out: Path, *, profile: str | None = None, overrides: dict[str, Any] | None = None,
             echo=print) -> pd.DataFrame:
    """Simulate the live run's requests on its deployment, write OUT, return the comparison table.

    Raises:
        ConfigError / ProfileError: bad input.
    """
    from pdsim.config.schema import SloConfig
    from pdsim.live.engine import load_model_config
    from pdsim.metrics.records import requests_frame
    from pdsim.metrics.summary import summarize, summarize_one
    from pdsim.sim.cluster import simulate

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    man, live, tokens = read_run_dir(live_run)
    kind = man["kind"]
    engine = dict(man.get("config") or {}) if kind == "live" else {}
    engine.update(overrides)
    threads = overrides.get("threads", man.get("threads"))
    knobs = {"max_num_batched_tokens": 8192, "max_num_seqs": 256, "block_size": 16, "watermark_fraction": 0.01,
             "dtype": "fp32", "model_config": None, "kv_capacity_blocks": None}
    if kind == "replay" and "kv_capacity_blocks" not in engine:
        raise ConfigError("a replay run's manifest has no engine settings: give --kv-capacity-blocks (and the "
                          "other knobs the server used: --max-num-batched-tokens, --max-num-seqs, --block-size, "
                          "--watermark-fraction, --model-config, --dtype)")
    knobs.update({k: engine[k] for k in knobs if k in engine})
    if knobs["kv_capacity_blocks"] is None:
        raise ConfigError(f"{live_run / 'manifest.json'}: config.kv_capacity_blocks missing")
    prof = find_cpu_profile(None if threads is None else int(threads), profile)
    if prof.meta.device_type != "cpu":
        echo(f"warning: profile {prof.name} is a {prof.meta.device_type} profile, not a CPU one")
    mc_path = knobs["model_config"]
    model_cfg = load_model_config(mc_path)
    model_name = Path(mc_path).stem if mc_path else "pdsim-tiny-llama"
    plan, latency = build_plan(
        model_config=model_cfg, model_name=model_name, dtype=knobs["dtype"], profile=prof,
        max_num_batched_tokens=int(knobs["max_num_batched_tokens"]), max_num_seqs=int(knobs["max_num_seqs"]),
        block_size=int(knobs["block_size"]), kv_capacity_blocks=int(knobs["kv_capacity_blocks"]),
        watermark_fraction=float(knobs["watermark_fraction"]))

    live = live.sort_values(["arrival_s", "request_id"]).reset_index(drop=True)
    t0 = float(live["arrival_s"].min())
    workload = pd.DataFrame({
        "request_id": live["request_id"].astype(np.int64), "arrival_s": live["arrival_s"].astype(float) - t0,
        "prompt_tokens": live["prompt_tokens"].astype(np.int64), "output_tokens": live["output_tokens"].astype(np.int64)})
    log: dict[int, list[float]] = {}
    result = simulate(plan, workload, token_times=log)
    name = str(live["workload"].iloc[0]) if "workload" in live.columns else live_run.name
    sim = requests_frame(result.requests, deployment="sim", workload=name)
    # the sim's times are relative to the first arrival; shift them onto the live run's axis
    for c in ("arrival_s", "prefill_start_s", "first_token_s", "finish_s", "last_token_s"):
        if c in sim.columns:
            sim[c] = sim[c] + t0
    slo = SloConfig(**{"ttft_s": 1.0, "tpot_s": 0.1, **(man.get("slo") or {})})
    stats = result.latency_stats.get("colocated", {})
    row = summarize_one(sim, kind="colocated", gpus=0, usd_per_hour=0.0, slo=slo,
                        out_of_range=int(stats.get("out_of_range", 0)), latency_sources=prof.meta.source_kind)
    summary = summarize([{"deployment": "sim", "workload": name, **row}])

    live_itl = sim_itl = None
    if tokens is not None and {"request_id", "token_index", "t_s"} <= set(tokens.columns):
        done = set(live.loc[live["status"] == "completed", "request_id"]) & set(sim.loc[sim["status"] == "completed", "request_id"])
        live_itl = _itl(tokens, done)
        sim_tok = pd.DataFrame([(rid, i, t) for rid, ts in log.items() for i, t in enumerate(ts)],
                               columns=["request_id", "token_index", "t_s"])
        sim_itl = _itl(sim_tok, done)
    cmp = comparison_table(live, sim, live_itl, sim_itl)

    # the engine's own per-iteration figure: measured iteration time minus the model's for the same shapes
    overhead_line = ""
    if kind == "live" and (live_run / "iterations.csv").is_file():
        from pdsim.latency.base import BatchShape

        its = pd.read_csv(live_run / "iterations.csv")
        lm = latency.fresh()
        pred = np.array([lm.iteration_s(BatchShape(int(r.prefill_tokens), int(r.prefill_seqs), int(r.decode_seqs),
                                                   int(r.decode_context_tokens))) for r in its.itertuples(index=False)])
        if len(its):
            gap = its["duration_s"].to_numpy(dtype=float) - pred
            overhead_line = (f"- Same iteration shapes as the live run ({len(its)} iterations): measured mean "
                             f"{its['duration_s'].mean() * 1e3:.2f} ms, op-level model mean {pred.mean() * 1e3:.2f} ms; "
                             f"measured minus modelled per iteration: median {np.median(gap) * 1e3:.2f} ms, "
                             f"mean {gap.mean() * 1e3:.2f} ms (what an `iteration_overhead_s` would have to cover).")

    out.mkdir(parents=True, exist_ok=True)
    sim.to_csv(out / "requests.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    cmp.to_csv(out / "comparison.csv", index=False)
    both = pd.concat([live.assign(deployment="live", workload=name), sim.assign(deployment="sim", workload=name)],
                     ignore_index=True)
    plots = _plots(out, both, live, sim, name)
    n_live_tok = int(live["output_tokens"].sum())
    n_sim_tok = int(sim.loc[sim["status"] == "completed", "output_tokens"].sum())
    report = "\n".join([
        f"# Validation: {live_run}", "",
        f"Simulated the {len(workload)} requests of a `pdsim {kind}` run (arrivals relative to the first, "
        "the run's prompt and output token counts) on one colocated instance with the run's scheduler knobs.", "",
        format_table(cmp), "",
        "Relative error = (sim - live) / live, over requests completed in both runs; ITL from tokens.csv "
        "(every gap between consecutive tokens of a request)" + ("" if live_itl is not None else " (no tokens.csv: skipped)") + ".",
        "", "## Notes", "",
        f"- Live run: kind `{kind}`, threads {threads}, device {man.get('device_name', man.get('device', '?'))}, "
        f"{len(live)} requests ({int((live['status'] == 'completed').sum())} completed), {n_live_tok} output tokens, "
        f"preemptions {man.get('preemptions', 'n/a')}.",
        f"- Simulated: {int(summary.iloc[0]['completed'])}/{len(sim)} completed, {n_sim_tok} output tokens, "
        f"{int(summary.iloc[0]['preemptions'])} preemptions, {int(result.instances.iloc[0]['iterations'])} iterations, "
        f"{int(stats.get('out_of_range', 0))} out-of-range latency lookups.",
        f"- Profile: `{prof.name}` ({prof.path}), source kind {prof.meta.source_kind}, device type "
        f"{prof.meta.device_type}, {prof.meta.num_threads} threads, mode {prof.meta.mode}.",
        f"- Model: {model_name} ({mc_path or 'packaged tiny Llama'}), dtype {knobs['dtype']}; scheduler: "
        f"max_num_batched_tokens {knobs['max_num_batched_tokens']}, max_num_seqs {knobs['max_num_seqs']}, "
        f"block_size {knobs['block_size']}, KV capacity {knobs['kv_capacity_blocks']} blocks, "
        f"watermark_fraction {knobs['watermark_fraction']}.",
        "- `iteration_overhead_s = 0`: the op-level model charges only the kernels the profile measured "
        "(GEMMs, attention, elementwise ops). The engine's per-iteration Python work (scheduling, building "
        "position and mask tensors, sampling) is not modelled, so the simulation should come out faster; "
        "nothing here is fitted to the live run.",
        *([overhead_line] if overhead_line else []),
        f"- Plots: {', '.join(plots)}.", "",
    ])
    (out / "report.md").write_text(report)
    return cmp


def validate_command(
    live_run: Annotated[Path, typer.Option("--live-run", help="Run directory of `pdsim live` or `pdsim replay`.")],
    profile: Annotated[Optional[str], typer.Option("--profile", help="Latency profile (default: the CPU profile with the live run's thread count).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default <live-run>/validate).")] = None,
    model_config: Annotated[Optional[str], typer.Option("--model-config", help="HF config.json (replay runs; overrides the manifest).")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="fp32, bf16 or fp16 (replay runs; overrides the manifest).")] = None,
    max_num_batched_tokens: Annotated[Optional[int], typer.Option("--max-num-batched-tokens", help="Engine knob (replay runs; overrides the manifest).")] = None,
    max_num_seqs: Annotated[Optional[int], typer.Option("--max-num-seqs", help="Engine knob (replay runs; overrides the manifest).")] = None,
    block_size: Annotated[Optional[int], typer.Option("--block-size", help="Engine knob (replay runs; overrides the manifest).")] = None,
    kv_capacity_blocks: Annotated[Optional[int], typer.Option("--kv-capacity-blocks", help="KV blocks of the server (required for replay runs).")] = None,
    watermark_fraction: Annotated[Optional[float], typer.Option("--watermark-fraction", help="Engine knob (replay runs; overrides the manifest).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Threads of the server (picks the CPU profile; replay runs).")] = None,
) -> None:
    """Simulate the requests of a live / replay run on the same deployment (op-level model on a CPU
    profile) and compare TTFT, TPOT, ITL and E2E percentiles; writes comparison.csv, report.md, plots."""
    try:
        cmp = validate(live_run, out or live_run / "validate", profile=profile, echo=typer.echo, overrides={
            "model_config": model_config, "dtype": dtype, "max_num_batched_tokens": max_num_batched_tokens,
            "max_num_seqs": max_num_seqs, "block_size": block_size, "kv_capacity_blocks": kv_capacity_blocks,
            "watermark_fraction": watermark_fraction, "threads": threads})
    except PdsimError as exc:
        _fail(str(exc))
    typer.echo(format_table(cmp))
    typer.echo(f"output directory: {out or live_run / 'validate'}")
