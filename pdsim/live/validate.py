"""``pdsim validate``: simulate the requests of a ``pdsim live`` (or ``pdsim replay``) run directory on the
same deployment and compare the simulated latencies with the measured ones. No torch.

A disaggregated live run (``manifest.json`` ``mode: disaggregated``) is simulated as one prefill and one
decode instance, each with its worker's knobs and the CPU profile of the worker's thread count, joined
by ``MeasuredLink``: the profile's measured gloo ``send_recv`` table (the transport the engine uses).
Otherwise the simulated deployment is one colocated instance with the live run's scheduler knobs
(``max_num_batched_tokens``, ``max_num_seqs``, ``block_size``, the KV capacity in blocks exactly as the
engine had it, ``watermark_fraction``) and the op-level latency model on a profile of the run's device
(``find_cpu_profile``: for a CPU run the CPU profile of the run's thread count, of the run's CPU model
where one exists; for a GPU run the measured profile of that GPU) for the live run's model config and
dtype, ``iteration_overhead_s`` as given (default 0; see ``docs/live.md`` for how it is measured,
independently of the validation run) and, with ``--overhead-model host_floor``, the engine's host floor
(``pdsim.latency.oplevel``). The plan is built in code: a CPU is not in ``gpu_specs.csv``, so its
``GpuSpec`` carries the host memory and price 0, and the op-level model gets ``gpu=None`` (no datasheet
roofline fallbacks); a GPU profile's catalog GPU serves its datasheet fallbacks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer

from pdsim.errors import ConfigError, PdsimError
from pdsim.live import options as opts

PERCENTILES = (50, 90, 99)
METRICS = (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("E2E", "e2e_s"))


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


def find_cpu_profile(threads: int | None, name: str | None, *, gpu_device_name: str | None = None,
                     cpu_name: str | None = None, weight_bytes: int | None = None):
    """The profile named ``name``; else, for a run on a GPU (``gpu_device_name``, as torch names it), the
    measured profile of that device; else the CPU profile measured with ``threads`` threads, of the CPU
    model ``cpu_name`` (as ``/proc/cpuinfo`` names it) when one is given and such a profile exists (a
    profile of another CPU model is taken only when none of this one exists; ``validate`` warns). Among
    several such CPU profiles, with the model's ``weight_bytes`` given, one whose cache flush suits the
    model (``pdsim.latency.oplevel.suggested_flush_level`` on the LLC the first of them records; a
    profile without ``cache`` metadata flushed the LLC) comes first. Raises ConfigError."""
    from pdsim.errors import ProfileError
    from pdsim.profiles.format import find_profile, list_profile_dirs, load_profile

    if name is not None:
        try:
            return find_profile(name)
        except ProfileError as exc:
            raise ConfigError(str(exc)) from None
    if gpu_device_name is not None:
        for d in list_profile_dirs():
            try:
                p = load_profile(d)
            except PdsimError:
                continue
            if p.meta.device_type != "cpu" and p.meta.source_kind == "measured" and p.meta.device_name == gpu_device_name:
                return p
        raise ConfigError(f"no measured profile of {gpu_device_name!r} under the profile search roots; measure one "
                          "with `pdsim profile --device cuda` or give --profile")
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
    same_cpu = [p for p in matches if cpu_name is not None and p.meta.device_name == cpu_name]
    pool = same_cpu or matches
    if weight_bytes is not None:
        from pdsim.latency.oplevel import suggested_flush_level

        # the LLC of these profiles' CPU, from the first that records it (older profiles do not)
        llc = next((p.meta.cache.llc_bytes for p in pool if p.meta.cache is not None and p.meta.cache.llc_bytes), None)
        want = suggested_flush_level(weight_bytes, llc)
        pool = sorted(pool, key=lambda p: (p.meta.cache.flush_level if p.meta.cache is not None else "llc") != want)
    return pool[0]


# -- the simulated deployment ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MeasuredLink:
    """A KV link whose transfer time is read from a measured point-to-point table (duck-types
    ``pdsim.hardware.links.LinkSpec`` for ``pdsim.sim.cluster``).

    ``transfer_s(nbytes)`` interpolates the median ``latency_s`` of the measured message sizes linearly
    in bytes; below the smallest size it is the smallest size's latency (the fixed cost dominates);
    above the largest it extends the last segment's slope. ``latency_s`` (the smallest message's
    latency) and ``bandwidth_gbps`` (bits, from the largest message: bytes x 8 / latency) describe it.

    Attributes:
        kind: e.g. ``gloo``.
        message_bytes, latency_s_points: the table, ascending in bytes.
        source: where the table came from (profile and table).
    """

    kind: str
    message_bytes: tuple[int, ...]
    latency_s_points: tuple[float, ...]
    source: str

    @classmethod
    def from_profile(cls, profile, backend: str = "gloo") -> "MeasuredLink":
        """The ``send_recv`` rows of ``backend`` in the profile's ``collective`` table.

        Raises:
            ConfigError: the profile has no such measurement.
        """
        from pdsim.errors import ProfileError

        try:
            t = profile.table("collective") if profile.has("collective") else None
        except ProfileError as exc:
            raise ConfigError(str(exc)) from None
        rows = None if t is None else t[(t["op"] == "send_recv") & (t["backend"] == backend)]
        if rows is None or len(rows) < 2:
            raise ConfigError(f"profile {profile.name} ({profile.path}): no {backend} send_recv measurements in its "
                              "collective table (measure them with `pdsim profile --device cpu --tables collective`)")
        rows = rows.groupby("message_bytes", as_index=False)["latency_s"].median().sort_values("message_bytes")
        return cls(backend, tuple(int(b) for b in rows["message_bytes"]), tuple(float(x) for x in rows["latency_s"]),
                   f"{profile.name}: collective.parquet send_recv {backend}")

    @property
    def latency_s(self) -> float:
        return self.latency_s_points[0]

    @property
    def bandwidth_gbps(self) -> float:
        return self.message_bytes[-1] * 8 / self.latency_s_points[-1] / 1e9

    def transfer_s(self, nbytes: int) -> float:
        """Uncontended time to send ``nbytes`` in one message (seconds)."""
        xs, ys = self.message_bytes, self.latency_s_points
        if nbytes <= xs[0]:
            return ys[0]
        if nbytes >= xs[-1]:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            return ys[-1] + max(slope, 0.0) * (nbytes - xs[-1])
        return float(np.interp(nbytes, xs, ys))


def build_plan(*, model_config: dict, model_name: str, dtype: str, profile, max_num_batched_tokens: int,
               max_num_seqs: int, block_size: int, kv_capacity_blocks: int, watermark_fraction: float,
               iteration_overhead_s: float = 0.0, decode: dict[str, Any] | None = None,
               link: MeasuredLink | None = None, host_floor: tuple[float, float] = (0.0, 0.0),
               iteration_overhead_prefill_s: float | None = None, kernel_time_scale: tuple[float, float | None] = (1.0, None),
               chunked_prefill: bool = False):
    """A ``DeploymentPlan`` on the profile's device with the op-level model: one colocated instance, or with
    ``decode`` (that worker's knobs: the same keys as the arguments, ``profile`` included) and ``link``
    one prefill instance (the arguments' knobs) and one decode instance. Returns (plan, the first
    pool's latency model). ``host_floor``: (``host_floor_s``, ``host_floor_per_prefill_seq_s``) of the
    op-level model (``pdsim.latency.oplevel``, "Host floor"); ``iteration_overhead_prefill_s``: the
    overhead of iterations that prefill (None: ``iteration_overhead_s``); ``kernel_time_scale``: the
    op-level model's (``kernel_time_scale``, ``kernel_time_scale_prefill``); ``chunked_prefill``: the
    schedulers' ``enable_chunked_prefill`` (both roles; ``decode`` may override it)."""
    from pdsim.models.arch import dtype_bytes
    from pdsim.sim.plan import DeploymentPlan

    if decode is None:
        pool, latency = _instance_pool("colocated", model_config, model_name, dtype, profile, max_num_batched_tokens,
                                  max_num_seqs, block_size, kv_capacity_blocks, watermark_fraction, iteration_overhead_s,
                                  host_floor, iteration_overhead_prefill_s, kernel_time_scale, chunked_prefill)
        spec = latency.model
        return DeploymentPlan("sim", "colocated", spec, spec.max_context_tokens, dtype_bytes(dtype), (pool,), None), latency
    if link is None:
        raise ConfigError("a disaggregated plan needs a KV link")
    pre, latency = _instance_pool("prefill", model_config, model_name, dtype, profile, max_num_batched_tokens,
                             max_num_seqs, block_size, kv_capacity_blocks, watermark_fraction, iteration_overhead_s,
                             host_floor, iteration_overhead_prefill_s, kernel_time_scale, chunked_prefill)
    d = decode
    dec, _ = _instance_pool("decode", model_config, model_name, dtype, d["profile"], d["max_num_batched_tokens"],
                       d["max_num_seqs"], d["block_size"], d["kv_capacity_blocks"], d["watermark_fraction"],
                       iteration_overhead_s, host_floor, iteration_overhead_prefill_s, kernel_time_scale,
                       bool(d.get("chunked_prefill", chunked_prefill)))
    spec = latency.model
    return DeploymentPlan("sim", "disaggregated", spec, spec.max_context_tokens, dtype_bytes(dtype), (pre, dec),
                          link), latency


def _instance_pool(role, model_config, model_name, dtype, profile, max_num_batched_tokens, max_num_seqs, block_size,
              kv_capacity_blocks, watermark_fraction, iteration_overhead_s, host_floor=(0.0, 0.0),
              iteration_overhead_prefill_s=None, kernel_time_scale=(1.0, None), chunked_prefill=False):
    """One single-instance pool of ``role`` on the profile's device, and its op-level latency model: a CPU
    (gpu=None: no datasheet fallbacks; the host memory, price 0), or the catalog GPU a GPU profile was
    measured on (its datasheet serves the roofline fallbacks; price 0: a validation is not costed)."""
    from pdsim.config.schema import OpLevelLatency, PoolConfig, SchedulerConfig
    from pdsim.hardware.gpus import GpuSpec, load_gpu_catalog
    from pdsim.latency.oplevel import OpLevelModel
    from pdsim.models.arch import dtype_bytes, model_from_hf_config
    from pdsim.sim.plan import PoolPlan

    spec = model_from_hf_config(model_name, model_config, where="model config")
    nan = float("nan")
    catalog = load_gpu_catalog()
    if profile.meta.device_type != "cpu" and profile.meta.gpu in catalog:
        device = dataclasses.replace(catalog[profile.meta.gpu], price_usd_per_hour=0.0)
        gpu = device
    else:
        device = GpuSpec(name=f"cpu:{profile.meta.device_name}", vendor=profile.meta.vendor,
                         memory_bytes=int(profile.meta.memory_bytes or 0), mem_bw_bytes_per_s=nan, bf16_dense_flops=nan,
                         fp8_dense_flops=nan, intra_node_gbps_unidir=nan, tdp_w=nan, price_usd_per_hour=0.0)
        gpu = None
    floor_s, floor_seq_s = (float(v) for v in host_floor)
    latency = OpLevelModel([profile], spec, tp=1, pp=1, dtype=dtype, gpu=gpu,
                           iteration_overhead_s=float(iteration_overhead_s), host_floor_s=floor_s,
                           host_floor_per_prefill_seq_s=floor_seq_s, iteration_overhead_prefill_s=iteration_overhead_prefill_s,
                           kernel_time_scale=kernel_time_scale[0], kernel_time_scale_prefill=kernel_time_scale[1])

    class _CpuPoolPlan(PoolPlan):
        def build_latency(self):  # the model built above (a CPU is not in the catalog)
            return latency.fresh()

    sched = SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                            block_size=block_size, watermark_fraction=watermark_fraction,
                            enable_chunked_prefill=bool(chunked_prefill))
    cfg = PoolConfig(gpu=device.name, instances=1,
                     latency=OpLevelLatency(kind="op_level", profile=str(profile.path), dtype=dtype,
                                            iteration_overhead_s=float(iteration_overhead_s),
                                            iteration_overhead_prefill_s=iteration_overhead_prefill_s,
                                            kernel_time_scale=kernel_time_scale[0],
                                            kernel_time_scale_prefill=kernel_time_scale[1],
                                            host_floor_s=floor_s, host_floor_per_prefill_seq_s=floor_seq_s))
    nbytes = dtype_bytes(dtype)
    pool = _CpuPoolPlan(
        role=role, config=cfg, gpu=device, tp=1, pp=1, instances=1, scheduler=sched,
        capacity_blocks=kv_capacity_blocks, weight_bytes_per_gpu=spec.weight_bytes_per_gpu(1, 1, nbytes),
        activation_bytes_per_gpu=0, kv_bytes_per_token_per_gpu=spec.kv_bytes_per_token_per_gpu(1, 1, nbytes),
        price_usd_per_gpu_hour=0.0,
        latency_source=("op_level", (str(profile.path),), spec, 1, 1, dtype, None,
                        (float(iteration_overhead_s), iteration_overhead_prefill_s,
                         tuple(sorted(kernel_time_scale[0].items())) if isinstance(kernel_time_scale[0], dict)
                         else kernel_time_scale[0], kernel_time_scale[1]), "auto",
                        (floor_s, floor_seq_s)),
        latency_source_kinds=(profile.meta.source_kind,))
    return pool, latency


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


def _modelled_s(its: pd.DataFrame, lm) -> np.ndarray:
    """The op-level model's time for each logged iteration's shape (seconds; prompts of one iteration
    taken as equal-length)."""
    from pdsim.latency.base import BatchShape

    return np.array([lm.iteration_s(BatchShape(int(r.prefill_tokens), int(r.prefill_seqs), int(r.decode_seqs),
                                               int(r.decode_context_tokens))) for r in its.itertuples(index=False)])


def _loop_s(its: pd.DataFrame) -> np.ndarray:
    loop = its["duration_s"].to_numpy(dtype=float)
    if "host_s" in its.columns:
        loop = loop + its["host_s"].to_numpy(dtype=float)
    return loop


def _overhead_line(role: str, its: pd.DataFrame, pred: np.ndarray, overhead_s: float,
                   overhead_prefill_s: float | None = None) -> str:
    """A report line: the live run's own iterations, measured against the op-level model's time for the
    same shapes (``pred``, which includes the overheads)."""
    if its.empty:
        return f"- {role}: no iterations logged."
    loop = _loop_s(its)
    gap = loop - pred
    return (f"- {role}: same iteration shapes as the live run ({len(its)} iterations): measured mean "
            f"{loop.mean() * 1e3:.2f} ms per loop iteration (model step + engine host time), op-level model mean "
            f"{pred.mean() * 1e3:.2f} ms (with iteration_overhead_s {overhead_s * 1e3:.3f} ms"
            + ("" if overhead_prefill_s is None else f", iteration_overhead_prefill_s {overhead_prefill_s * 1e3:.3f} ms")
            + "); measured minus modelled: "
            f"median {np.median(gap) * 1e3:.2f} ms, mean {gap.mean() * 1e3:.2f} ms.")


SPEED_WINDOW_S = 10.0
"""Width of the windows of ``host_speed`` (seconds of the live run)."""
SPEED_MIN_ITERATIONS = 20
"""Windows with fewer logged iterations are left out of ``host_speed``'s spread."""
SPEED_DRIFT_WARN = 0.10
"""A spread of the windows' speed ratios above this is reported as a host that was not stationary."""


def host_speed(its: pd.DataFrame, pred: np.ndarray, window_s: float = SPEED_WINDOW_S) -> pd.DataFrame:
    """How fast the host ran the live iterations, window by window.

    Every iteration's ratio measured / modelled time is divided by the median ratio of its shape class
    over the whole run (class: prefill or pure decode, and the power-of-two buckets of its decode
    sequences and prefill tokens), so that the model's shape-dependent error and the mix of shapes in a
    window cancel out; per ``window_s`` of the run (by iteration start) the median of these normalised
    ratios is the host's speed in that window relative to the whole run (1.2 = iterations took 20 %
    longer than the run's typical time for their shapes). A ratio that moves from one window to the next
    is the host's speed moving (other tenants of a shared machine, clock frequency, memory contention):
    the noise floor of a sim-vs-live comparison of that run. A diagnostic; nothing is fitted with it.

    Returns:
        One row per window: ``window_start_s``, ``iterations``, ``ratio_median`` (measured / modelled,
        raw) and ``speed`` (the normalised median).
    """
    cols = ["window_start_s", "iterations", "ratio_median", "speed"]
    if its.empty:
        return pd.DataFrame(columns=cols)
    ratio = _loop_s(its) / pred
    prefill = its["prefill_tokens"].to_numpy(dtype=int)
    decode = its["decode_seqs"].to_numpy(dtype=int)
    df = pd.DataFrame({
        "w": np.floor(its["start_s"].to_numpy(dtype=float) / window_s).astype(int),
        "ratio": ratio,
        "cls": [(p > 0, int(d).bit_length(), int(p).bit_length()) for p, d in zip(prefill, decode)],
    })
    df["norm"] = df["ratio"] / df.groupby("cls")["ratio"].transform("median")
    g = df.groupby("w").agg(iterations=("ratio", "size"), ratio_median=("ratio", "median"), speed=("norm", "median")).reset_index()
    return pd.DataFrame({"window_start_s": g["w"] * window_s, "iterations": g["iterations"],
                         "ratio_median": g["ratio_median"], "speed": g["speed"]})[cols]


def speed_spread(windows: pd.DataFrame) -> float:
    """Largest over smallest window ``speed`` (``host_speed``), minus 1, over windows with at least
    ``SPEED_MIN_ITERATIONS`` iterations (NaN with fewer than two such windows)."""
    r = windows.loc[windows["iterations"] >= SPEED_MIN_ITERATIONS, "speed"].to_numpy(dtype=float)
    return float(r.max() / r.min() - 1) if r.size >= 2 else math.nan


def _speed_line(role: str, windows: pd.DataFrame) -> str:
    spread = speed_spread(windows)
    kept = windows[windows["iterations"] >= SPEED_MIN_ITERATIONS]
    if not spread == spread:
        return f"- {role}: host speed: too few {SPEED_WINDOW_S:g} s windows with >= {SPEED_MIN_ITERATIONS} iterations to tell drift."
    verdict = (f"the host's speed moved by {spread * 100:.0f} % during the run: sim-vs-live errors of that size "
               "cannot be told from the host's own variation" if spread > SPEED_DRIFT_WARN
               else f"within {SPEED_DRIFT_WARN * 100:.0f} %: the host was steady")
    return (f"- {role}: host speed per {SPEED_WINDOW_S:g} s window (iteration time relative to the run's typical "
            f"time for the same shape class; `host_speed_{role}.csv`, {len(kept)} windows): "
            f"{' '.join(f'{x:.2f}' for x in kept['speed'])}; spread {spread * 100:.0f} % ({verdict}).")


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
    overhead_s = float(overrides.pop("iteration_overhead_s", 0.0))
    if not (overhead_s >= 0 and math.isfinite(overhead_s)):
        raise ConfigError(f"--iteration-overhead-s must be a finite number >= 0, got {overhead_s}")
    overhead_source = overrides.pop("iteration_overhead_source", None)
    host_floor = tuple(overrides.pop("host_floor", (0.0, 0.0)))
    overhead_prefill_s = overrides.pop("iteration_overhead_prefill_s", None)
    scales = tuple(overrides.pop("kernel_time_scale", (1.0, None)))
    if overhead_prefill_s is not None and not (overhead_prefill_s >= 0 and math.isfinite(overhead_prefill_s)):
        raise ConfigError(f"the prefill iterations' overhead must be a finite number >= 0, got {overhead_prefill_s}")
    man, live, tokens = read_run_dir(live_run)
    kind = man["kind"]
    mode = man.get("mode", "colocated") if kind == "live" else "colocated"
    if mode not in ("colocated", "disaggregated"):
        raise ConfigError(f"{live_run / 'manifest.json'}: mode must be colocated or disaggregated, got {mode!r}")
    engine = dict(man.get("config") or {}) if kind == "live" else {}
    engine.update(overrides)
    threads = overrides.get("threads", man.get("threads"))
    knobs = {"max_num_batched_tokens": 8192, "max_num_seqs": 256, "block_size": 16, "watermark_fraction": 0.01,
             "dtype": "fp32", "model_config": None, "kv_capacity_blocks": None, "chunked_prefill": False}
    if kind == "replay" and "kv_capacity_blocks" not in engine:
        raise ConfigError("a replay run's manifest has no engine settings: give --kv-capacity-blocks (and the "
                          "other knobs the server used: --max-num-batched-tokens, --max-num-seqs, --block-size, "
                          "--watermark-fraction, --model-config, --dtype)")
    knobs.update({k: engine[k] for k in knobs if k in engine})
    if knobs["kv_capacity_blocks"] is None:
        raise ConfigError(f"{live_run / 'manifest.json'}: config.kv_capacity_blocks missing")
    device = str(man.get("device", "cpu"))
    run_device_name = man.get("device_name")
    from pdsim.models.arch import dtype_bytes, model_from_hf_config

    weight_bytes = model_from_hf_config("model", load_model_config(knobs["model_config"]),
                                        where="model config").weight_bytes_per_gpu(1, 1, dtype_bytes(knobs["dtype"]))
    prof = find_cpu_profile(None if threads is None else int(threads), profile,
                            gpu_device_name=None if device == "cpu" else run_device_name,
                            cpu_name=run_device_name if device == "cpu" else None, weight_bytes=weight_bytes)
    if (prof.meta.device_type == "cpu") != (device == "cpu"):
        echo(f"warning: profile {prof.name} is a {prof.meta.device_type} profile; the live run ran on {device}")
    elif run_device_name and prof.meta.device_name != run_device_name:
        echo(f"warning: profile {prof.name} was measured on {prof.meta.device_name!r}; the live run ran on "
             f"{run_device_name!r}: the simulated times are another machine's")
    mc_path = knobs["model_config"]
    model_cfg = load_model_config(mc_path)
    model_name = Path(mc_path).stem if mc_path else "pdsim-tiny-llama"
    decode, link = None, None
    if mode == "disaggregated":
        worker = dict((man.get("workers") or {}).get("decode") or {})
        worker.update({k: v for k, v in overrides.items() if k in knobs})
        decode = {k: worker.get(k, knobs[k]) for k in ("max_num_batched_tokens", "max_num_seqs", "block_size",
                                                        "kv_capacity_blocks", "watermark_fraction")}
        decode = {k: (float(v) if k == "watermark_fraction" else int(v)) for k, v in decode.items()}
        decode["chunked_prefill"] = bool(worker.get("chunked_prefill", knobs["chunked_prefill"]))
        decode["profile"] = prof
        link = MeasuredLink.from_profile(prof)
    plan, latency = build_plan(
        model_config=model_cfg, model_name=model_name, dtype=knobs["dtype"], profile=prof,
        max_num_batched_tokens=int(knobs["max_num_batched_tokens"]), max_num_seqs=int(knobs["max_num_seqs"]),
        block_size=int(knobs["block_size"]), kv_capacity_blocks=int(knobs["kv_capacity_blocks"]),
        watermark_fraction=float(knobs["watermark_fraction"]), iteration_overhead_s=overhead_s,
        decode=decode, link=link, host_floor=host_floor, iteration_overhead_prefill_s=overhead_prefill_s,
        kernel_time_scale=scales, chunked_prefill=bool(knobs["chunked_prefill"]))

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
    out_of_range = sum(int(st.get("out_of_range", 0)) for st in result.latency_stats.values())
    row = summarize_one(sim, kind=mode, gpus=0, usd_per_hour=0.0, slo=slo,
                        out_of_range=out_of_range, latency_sources=prof.meta.source_kind)
    summary = summarize([{"deployment": "sim", "workload": name, **row}])

    live_itl = sim_itl = None
    if tokens is not None and {"request_id", "token_index", "t_s"} <= set(tokens.columns):
        done = set(live.loc[live["status"] == "completed", "request_id"]) & set(sim.loc[sim["status"] == "completed", "request_id"])
        live_itl = _itl(tokens, done)
        sim_tok = pd.DataFrame([(rid, i, t) for rid, ts in log.items() for i, t in enumerate(ts)],
                               columns=["request_id", "token_index", "t_s"])
        sim_itl = _itl(sim_tok, done)
    cmp = comparison_table(live, sim, live_itl, sim_itl)

    # the engine's own per-iteration figures: measured iteration time minus the model's for the same shapes
    overhead_lines = []
    speed: dict[str, pd.DataFrame] = {}
    if kind == "live":
        logs = {"colocated": "iterations.csv"} if mode == "colocated" else {
            "prefill": "iterations_prefill.csv", "decode": "iterations_decode.csv"}
        for role, fname in logs.items():
            if (live_run / fname).is_file():
                its = pd.read_csv(live_run / fname)
                pred = _modelled_s(its, latency.fresh())
                overhead_lines.append(_overhead_line(role, its, pred, overhead_s, overhead_prefill_s))
                windows = host_speed(its, pred)
                speed[role] = windows
                overhead_lines.append(_speed_line(role, windows))
    transfer_line = ""
    if mode == "disaggregated":
        a, b = live["kv_transfer_s"].to_numpy(dtype=float), sim["kv_transfer_s"].to_numpy(dtype=float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size and b.size:
            transfer_line = (f"- KV transfers ({a.size} live, {b.size} simulated): kv_transfer_s median live "
                             f"{np.median(a) * 1e3:.2f} ms / sim {np.median(b) * 1e3:.2f} ms, P90 live "
                             f"{np.percentile(a, 90) * 1e3:.2f} ms / sim {np.percentile(b, 90) * 1e3:.2f} ms; link "
                             f"model: {link.source} (interpolated; {link.latency_s * 1e6:.0f} us at "
                             f"{link.message_bytes[0]} B, {link.bandwidth_gbps:.1f} Gb/s at {link.message_bytes[-1]} B).")

    out.mkdir(parents=True, exist_ok=True)
    sim.to_csv(out / "requests.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    cmp.to_csv(out / "comparison.csv", index=False)
    for role, windows in speed.items():
        windows.to_csv(out / f"host_speed_{role}.csv", index=False)
        spread = speed_spread(windows)
        if spread > SPEED_DRIFT_WARN:
            echo(f"warning: {role}: the host's speed moved by {spread * 100:.0f} % during the live run "
                 f"(iteration times per {SPEED_WINDOW_S:g} s window against the run's typical time for their shapes; "
                 f"{out / f'host_speed_{role}.csv'})")
    both = pd.concat([live.assign(deployment="live", workload=name), sim.assign(deployment="sim", workload=name)],
                     ignore_index=True)
    plots = _plots(out, both, live, sim, name)
    n_live_tok = int(live["output_tokens"].sum())
    n_sim_tok = int(sim.loc[sim["status"] == "completed", "output_tokens"].sum())
    report = "\n".join([
        f"# Validation: {live_run}", "",
        f"Simulated the {len(workload)} requests of a `pdsim {kind}` run (arrivals relative to the first, "
        "the run's prompt and output token counts) on "
        + ("one colocated instance" if mode == "colocated" else "one prefill and one decode instance (disaggregated)")
        + " with the run's scheduler knobs.", "",
        format_table(cmp), "",
        "Relative error = (sim - live) / live, over requests completed in both runs; ITL from tokens.csv "
        "(every gap between consecutive tokens of a request)" + ("" if live_itl is not None else " (no tokens.csv: skipped)") + ".",
        "", "## Notes", "",
        f"- Live run: kind `{kind}`, mode {mode}, threads {threads}{' per worker' if mode == 'disaggregated' else ''}, device {man.get('device_name', man.get('device', '?'))}, "
        f"{len(live)} requests ({int((live['status'] == 'completed').sum())} completed), {n_live_tok} output tokens, "
        f"preemptions {man.get('preemptions', 'n/a')}.",
        f"- Simulated: {int(summary.iloc[0]['completed'])}/{len(sim)} completed, {n_sim_tok} output tokens, "
        f"{int(summary.iloc[0]['preemptions'])} preemptions, "
        f"{' + '.join(str(int(i)) for i in result.instances['iterations'])} iterations "
        f"({' + '.join(result.instances['role'])}), {out_of_range} out-of-range latency lookups.",
        f"- Profile: `{prof.name}` ({_shown(prof.path)}), source kind {prof.meta.source_kind}, device type "
        f"{prof.meta.device_type}" + (f", {prof.meta.num_threads} threads" if prof.meta.num_threads else "")
        + f", mode {prof.meta.mode}.",
        f"- Model: {model_name} ({mc_path or 'packaged tiny Llama'}), dtype {knobs['dtype']}; scheduler: "
        f"max_num_batched_tokens {knobs['max_num_batched_tokens']}, max_num_seqs {knobs['max_num_seqs']}, "
        f"block_size {knobs['block_size']}, KV capacity {knobs['kv_capacity_blocks']} blocks, "
        f"watermark_fraction {knobs['watermark_fraction']}, chunked prefill {'on' if knobs['chunked_prefill'] else 'off'}.",
        *([] if overhead_s == 0 and not overhead_prefill_s and tuple(scales) != (1.0, None) else [
            f"- `iteration_overhead_s = {overhead_s:g}`: the op-level model charges only the kernels the profile "
            "measured (GEMMs, attention, elementwise ops). The engine's per-iteration Python work (scheduling, building "
            "position and mask tensors, sampling) is not modelled, so the simulation should come out faster; "
            "nothing here is fitted to the live run." if overhead_s == 0 and not overhead_prefill_s
            and tuple(scales) == (1.0, None) else
            f"- `iteration_overhead_s = {overhead_s * 1e3:.3f} ms` charged per iteration on top of the profiled "
            + ("kernels" if overhead_prefill_s is None else
               f"kernels of a pure decode iteration, `iteration_overhead_prefill_s = {overhead_prefill_s * 1e3:.3f} ms` "
               "per iteration that prefills")
            + f" (the engine's time outside them, measured independently of this run: {overhead_source or 'given'}); "
            "nothing here is fitted to the live run."]),
        *([f"- Kernel time scale: the profiled kernels' time multiplied by {_scale_text(scales[0])} in pure decode iterations "
           f"and {_scale_text(scales[1] if scales[1] is not None else scales[0])} in iterations that prefill (how much slower "
           "than its micro-benchmarks the engine ran them on its synthetic grid, measured independently of this run: "
           f"{overhead_source or 'given'})."] if tuple(scales) != (1.0, None) else []),
        *([f"- Host floor: every iteration takes at least {host_floor[0] * 1e3:.2f} ms + "
           f"{host_floor[1] * 1e3:.2f} ms per prefilled request (the engine's host time to issue it; "
           "pdsim.latency.oplevel, \"Host floor\"), measured on the engine's synthetic grid, not on this run."]
          if any(host_floor) else []),
        *overhead_lines,
        *([transfer_line] if transfer_line else []),
        f"- Plots: {', '.join(plots)}.", "",
    ])
    (out / "report.md").write_text(report)
    return cmp


def _shown(path: Path) -> str:
    """A path relative to the working directory where it lies below it (reports stay portable)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _scale_text(scale) -> str:
    if isinstance(scale, dict):
        return "(" + ", ".join(f"{v:.2f} at {b}" for b, v in sorted(scale.items())) + " sequences, log-linear between)"
    return f"{scale:.3f}"


OVERHEAD_MODELS = ("additive", "by_phase", "scaled", "host_floor")
"""How ``pdsim validate`` charges the engine's time outside the profiled kernels, from a grid
measurement (``pdsim.live.overhead``): ``additive`` its median over all iterations, on every iteration;
``by_phase`` its median over pure decode iterations on those and its median over prefill iterations on
every iteration that prefills (``iteration_overhead_prefill_s``); ``scaled`` no added time but the
profiled kernels' time multiplied by the grid's median of cycle / prediction, over its pure decode
iterations of each batch size on pure decode iterations (read linearly in log batch size; one median
over all of them for a grid file without the per-batch figures) and over its prefill iterations on
iterations that prefill (``kernel_time_scale``, ``kernel_time_scale_prefill``: on a CPU the engine runs the kernels slower than the isolated
micro-benchmarks, by a factor that depends on the kind of iteration and on the host's state);
``host_floor`` the host floor fitted to it (GPU engines that launch every kernel from Python)."""


def _overhead_option(value_s: float, path: Path | None, model: str = "additive") -> dict[str, Any]:
    """``iteration_overhead_s`` (with ``model == "by_phase"`` also ``iteration_overhead_prefill_s``, with
    ``model == "host_floor"`` the host floor) and where they came from: the option, or a measurement file
    written by ``pdsim.live.overhead`` (``OVERHEAD_MODELS``; ConfigError if unreadable or without the
    asked-for model)."""
    if model not in OVERHEAD_MODELS:
        raise ConfigError(f"--overhead-model must be one of {list(OVERHEAD_MODELS)}, got {model!r}")
    if path is None:
        if model != "additive":
            raise ConfigError(f"--overhead-model {model} needs --overhead-file (a grid measurement of pdsim.live.overhead)")
        return {"iteration_overhead_s": value_s, "iteration_overhead_source": "--iteration-overhead-s"}
    need = {"additive": "iteration_overhead_s",
            "by_phase": "overhead_decode_median_s, overhead_prefill_median_s",
            "scaled": "kernel_time_scale_prefill and kernel_time_scale_decode_by_batch or kernel_time_scale_decode "
                      "(a grid measured since 2026-12-04)",
            "host_floor": "host_floor_model.{iteration_overhead_s, host_floor_s, host_floor_per_prefill_seq_s}"}[model]
    try:
        data = json.loads(Path(path).read_text())
        block = data["host_floor_model"] if model == "host_floor" else data
        out: dict[str, Any] = {}
        if model == "by_phase":
            out["iteration_overhead_s"] = float(block["overhead_decode_median_s"])
            out["iteration_overhead_prefill_s"] = float(block["overhead_prefill_median_s"])
        elif model == "scaled":
            out["iteration_overhead_s"] = 0.0
            by_batch = block.get("kernel_time_scale_decode_by_batch")
            decode = ({int(b): float(v) for b, v in by_batch.items()} if by_batch
                      else float(block["kernel_time_scale_decode"]))
            out["kernel_time_scale"] = (decode, float(block["kernel_time_scale_prefill"]))
            values = [*(decode.values() if isinstance(decode, dict) else [decode]), out["kernel_time_scale"][1]]
            if not all(v > 0 and math.isfinite(v) for v in values) or (isinstance(decode, dict) and min(decode) < 1):
                raise ValueError(f"kernel time scales must be finite and > 0 at batch sizes >= 1, got {out['kernel_time_scale']}")
        else:
            out["iteration_overhead_s"] = float(block["iteration_overhead_s"])
        if model == "host_floor":
            out["host_floor"] = (float(block["host_floor_s"]), float(block["host_floor_per_prefill_seq_s"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"--overhead-file {path}: need a JSON object with numbers {need} ({exc})") from None
    method = block.get("method", data.get("method", "no method recorded"))
    if model == "by_phase":
        method = f"medians over the grid's decode and prefill iterations; {method}"
    elif model == "scaled":
        method = ("medians of cycle / profiled kernels over the grid's decode iterations"
                  + (" per batch size" if isinstance(out["kernel_time_scale"][0], dict) else "")
                  + " and over its prefill iterations; pdsim.live.overhead")
    out["iteration_overhead_source"] = f"{path} ({method})"
    return out


def validate_command(
    experiment: Annotated[Optional[Path], typer.Argument(help="A validation experiment YAML (e.g. experiments/validate_cpu.yaml): profile or pick a profile, run the trace live, simulate it, report. Instead of --live-run.")] = None,
    live_run: Annotated[Optional[Path], typer.Option("--live-run", help="Run directory of `pdsim live` or `pdsim replay`.")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="Latency profile (default: the CPU profile with the live run's thread count).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default <live-run>/validate).")] = None,
    model_config: Annotated[Optional[str], typer.Option("--model-config", help="HF config.json (replay runs; overrides the manifest).")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="fp32, bf16 or fp16 (replay runs; overrides the manifest).")] = None,
    max_num_batched_tokens: Annotated[Optional[int], typer.Option("--max-num-batched-tokens", help="Engine knob (replay runs; overrides the manifest).")] = None,
    max_num_seqs: Annotated[Optional[int], typer.Option("--max-num-seqs", help="Engine knob (replay runs; overrides the manifest).")] = None,
    block_size: Annotated[Optional[int], typer.Option("--block-size", help="Engine knob (replay runs; overrides the manifest).")] = None,
    kv_capacity_blocks: Annotated[Optional[int], typer.Option("--kv-capacity-blocks", help="KV blocks of the server (required for replay runs).")] = None,
    watermark_fraction: Annotated[Optional[float], typer.Option("--watermark-fraction", help="Engine knob (replay runs; overrides the manifest).")] = None,
    chunked_prefill: Annotated[Optional[bool], typer.Option("--chunked-prefill/--no-chunked-prefill", help="Whether the server chunks prefills (replay runs; overrides the manifest).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Threads of the server (picks the CPU profile; replay runs).")] = None,
    iteration_overhead_s: Annotated[float, typer.Option("--iteration-overhead-s", help="Per-iteration engine host time charged by the op-level model (s), measured independently (benchmarks/measure_cpu_iterations.py --engine-overhead). Default 0.")] = 0.0,
    overhead_file: Annotated[Optional[Path], typer.Option("--overhead-file", help="JSON written by benchmarks/measure_cpu_iterations.py --engine-overhead or benchmarks/compare_grid.py: its iteration_overhead_s is used (instead of --iteration-overhead-s).")] = None,
    overhead_model: Annotated[str, typer.Option("--overhead-model", help="additive (the file's iteration_overhead_s on top of the kernels of every iteration), by_phase (its decode median on pure decode iterations, its prefill median on iterations that prefill), scaled (the kernels' time multiplied by the grid's median cycle / kernels, per phase) or host_floor (the file's host_floor_model: an iteration takes at least the host's time to issue it; for GPU engines that launch every kernel from Python).")] = "additive",
) -> None:
    """Simulate the requests of a live / replay run on the same deployment (op-level model on a CPU
    profile) and compare TTFT, TPOT, ITL and E2E percentiles; writes comparison.csv, report.md, plots.
    With EXPERIMENT.yaml, first run the live side as the file says (pdsim.live.validate_experiment)."""
    if (experiment is None) == (live_run is None):
        opts.fail("give a validation experiment YAML or --live-run DIR (one of them)")
    if experiment is not None:
        from pdsim.live.validate_experiment import run_validation_experiment

        try:
            cmp, where = run_validation_experiment(experiment, out, echo=typer.echo)
        except PdsimError as exc:
            opts.fail(str(exc))
        typer.echo(format_table(cmp))
        typer.echo(f"output directory: {where} (live run: {where / 'live'}, report: {where / 'validate' / 'report.md'})")
        return
    try:
        cmp = validate(live_run, out or live_run / "validate", profile=profile, echo=typer.echo, overrides={
            "model_config": model_config, "dtype": dtype, "max_num_batched_tokens": max_num_batched_tokens,
            "max_num_seqs": max_num_seqs, "block_size": block_size, "kv_capacity_blocks": kv_capacity_blocks,
            "watermark_fraction": watermark_fraction, "chunked_prefill": chunked_prefill, "threads": threads,
            **_overhead_option(iteration_overhead_s, overhead_file, overhead_model)})
    except PdsimError as exc:
        opts.fail(str(exc))
    typer.echo(format_table(cmp))
    typer.echo(f"output directory: {out or live_run / 'validate'}")
