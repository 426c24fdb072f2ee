"""Measure the live engine's per-iteration time that the op-level model does not charge
(``iteration_overhead_s``), independently of any validation run.

Method (``measure_engine_overhead``): the real engine (``LiveEngine.run``, the simulator's scheduler, the
real model) serves a synthetic closed-loop grid: for every (batch size b, prompt length L) of the grid,
b requests of L prompt tokens and ``output_tokens`` output tokens all arrive at t = 0 and run to the end
(one prefill iteration of b x L tokens, then ``output_tokens - 1`` decode iterations of b requests with
growing context), one grid point after the other. The engine is never idle inside a point, so one loop
iteration costs ``cycle = start of the next iteration - start of this one`` (scheduling, input
preparation, the forward pass, sampling, bookkeeping). For the same batch shape the op-level model with
``iteration_overhead_s = 0`` predicts the profiled kernels' time; ``cycle - prediction`` is the time the
model does not charge, and ``cycle / prediction`` how much slower than its micro-benchmarks the engine
runs them (``kernel_time_scale_decode`` / ``_prefill``: its medians over the grid's pure decode and
prefill iterations; ``kernel_time_scale_decode_by_batch``: the decode median per batch size; for
``pdsim validate --overhead-model scaled``). ``iteration_overhead_s`` is the **median** over all iterations of the grid (the
last iteration of every point is left out: it has no successor). Also recorded: the median of the log's
``host_s`` (engine time outside ``LlamaModel.step``) and of ``duration_s - prediction`` (time inside the
step beyond the profiled kernels: Python, tensor set-up, small unprofiled ops), whose sum is about the
overhead, so the split is visible.

The two halves can run apart: ``run_grid`` needs torch and the device (on a borrowed GPU,
``benchmarks/engine_grid.py``), ``compare_grid`` only the saved frame and a profile
(``benchmarks/compare_grid.py``). ``grid_drift`` compares two runs of the grid, one before and one after
a live run, to tell whether the host kept its speed in between. ``compare_grid`` also fits the op-level model's host floor
(``fit_host_floor``: the step time as ``max(kernels, floor)``), the model for an engine whose host cannot
launch kernels as fast as the device runs them (``pdsim validate --overhead-model host_floor``).

Nothing here looks at a trace or at TTFT / TPOT: the grid is fixed, so the figure can be given to a
validation (``pdsim validate --overhead-file``) without fitting the simulation to the run it checks.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from pdsim.errors import ConfigError

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
DEFAULT_PROMPT_LENS = (64, 256)
DEFAULT_OUTPUT_TOKENS = 33


def grid_workload(batch_sizes, prompt_lens, output_tokens: int) -> list[pd.DataFrame]:
    """One closed-loop workload per (b, L) grid point (all arrivals at 0), ids unique across points."""
    out, rid = [], 0
    for L in prompt_lens:
        for b in batch_sizes:
            out.append(pd.DataFrame({"request_id": np.arange(rid, rid + b, dtype=np.int64), "arrival_s": 0.0,
                                     "prompt_tokens": int(L), "output_tokens": int(output_tokens)}))
            rid += b
    return out


def run_grid(engine, *, batch_sizes=DEFAULT_BATCH_SIZES, prompt_lens=DEFAULT_PROMPT_LENS,
             output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> pd.DataFrame:
    """Run the grid on ``engine`` (a ``LiveEngine``; torch) and return one row per iteration that has a
    successor in its grid point: ``b, prompt_tokens, iteration, phase, cycle_s`` and the iteration log's
    columns (``pdsim.live.engine.ITERATION_COLUMNS``). No latency model is needed, so the grid can be run
    on a borrowed machine and compared later (``compare_grid``).

    Raises:
        ConfigError: an empty grid or ``output_tokens < 2``.
    """
    from pdsim.live.engine import ITERATION_COLUMNS

    if output_tokens < 2 or not batch_sizes or not prompt_lens:
        raise ConfigError(f"the grid needs batch sizes, prompt lengths and output_tokens >= 2, got "
                          f"{batch_sizes}, {prompt_lens}, {output_tokens}")
    frames = []
    for wl in grid_workload(batch_sizes, prompt_lens, output_tokens):
        its = engine.run(wl).iterations_frame()
        starts = its["start_s"].to_numpy(dtype=float)
        its = its.iloc[:-1].copy()  # the last iteration of a point has no successor
        its.insert(0, "cycle_s", starts[1:] - starts[:-1])
        its.insert(0, "phase", np.where(its["prefill_seqs"].to_numpy() > 0, "prefill", "decode"))
        its.insert(0, "prompt_tokens", int(wl["prompt_tokens"].iloc[0]))
        its.insert(0, "b", len(wl))
        frames.append(its)
    cols = ["b", "prompt_tokens", "phase", "cycle_s", *ITERATION_COLUMNS]
    return pd.concat(frames, ignore_index=True)[cols]


def compare_grid(grid: pd.DataFrame, latency, *, engine_config: dict | None = None,
                 load_before=None, load_after=None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Compare a ``run_grid`` frame with ``latency`` (an ``OpLevelModel`` with
    ``iteration_overhead_s = 0``): per iteration ``predicted_s`` and ``overhead_s = cycle_s -
    predicted_s``, and the summary (see the module docstring). No torch.

    Raises:
        ConfigError: a latency model that charges an overhead, or an empty grid.
    """
    from pdsim.latency.base import BatchShape

    if getattr(latency, "iteration_overhead_s", 0.0) != 0.0:
        raise ConfigError("measure against a latency model with iteration_overhead_s = 0")
    if grid.empty:
        raise ConfigError("the grid frame holds no iteration")
    df = grid.copy()
    df["predicted_s"] = [latency.iteration_s(BatchShape(int(r.prefill_tokens), int(r.prefill_seqs),
                                                        int(r.decode_seqs), int(r.decode_context_tokens)))
                         for r in df.itertuples(index=False)]
    df["overhead_s"] = df["cycle_s"] - df["predicted_s"]
    summary = {
        "iteration_overhead_s": float(df["overhead_s"].median()),
        "method": ("median over a synthetic closed-loop grid of (engine loop cycle - op-level prediction of the "
                   "profiled kernels for the same batch shape); pdsim.live.overhead"),
        "iterations": len(df),
        "overhead_p10_s": float(df["overhead_s"].quantile(0.1)),
        "overhead_p90_s": float(df["overhead_s"].quantile(0.9)),
        "overhead_decode_median_s": float(df.loc[df["phase"] == "decode", "overhead_s"].median()),
        "overhead_prefill_median_s": float(df.loc[df["phase"] == "prefill", "overhead_s"].median()),
        "kernel_time_scale_decode": float((df["cycle_s"] / df["predicted_s"])[df["phase"] == "decode"].median()),
        "kernel_time_scale_prefill": float((df["cycle_s"] / df["predicted_s"])[df["phase"] == "prefill"].median()),
        "kernel_time_scale_decode_by_batch": _decode_scale_by_batch(df),
        "host_outside_step_median_s": float(df["host_s"].median()),
        "inside_step_beyond_kernels_median_s": float((df["duration_s"] - df["predicted_s"]).median()),
        "grid": {"batch_sizes": sorted(int(b) for b in df["b"].unique()),
                 "prompt_lens": sorted(int(p) for p in df["prompt_tokens"].unique())},
        "engine": engine_config,
        "load_average_before": None if load_before is None else list(load_before),
        "load_average_after": None if load_after is None else list(load_after),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host_floor_model": fit_host_floor(df),
    }
    return summary, df


def _decode_scale_by_batch(df: pd.DataFrame) -> dict[int, float]:
    """Median of cycle / prediction over the grid's pure decode iterations, per decode batch size."""
    dec = df[df["phase"] == "decode"]
    ratio = (dec["cycle_s"] / dec["predicted_s"]).groupby(dec["decode_seqs"]).median()
    return {int(b): float(v) for b, v in ratio.items()}


def fit_host_floor(df: pd.DataFrame) -> dict[str, Any]:
    """The host-floor parameters of ``pdsim.latency.oplevel`` ("Host floor") from a compared grid frame
    (columns ``duration_s``, ``host_s``, ``predicted_s``, ``prefill_seqs``).

    An engine that launches every kernel from the host runs an iteration's step in
    ``max(kernels, floor_s + per_prefill_seq_s x prefill_seqs)``, and spends ``host_s`` outside the step.
    ``iteration_overhead_s`` is the median ``host_s`` (measured directly); ``host_floor_s`` and
    ``host_floor_per_prefill_seq_s`` minimise the summed absolute log error of that max against the
    measured step times (``duration_s``), by Nelder-Mead from (median step time of pure decodes, 0), with
    both held >= 0. The errors of the fitted model over the grid are returned with it.
    """
    from scipy.optimize import minimize

    dur = df["duration_s"].to_numpy(dtype=float)
    pred = df["predicted_s"].to_numpy(dtype=float)
    seqs = df["prefill_seqs"].to_numpy(dtype=float)
    decode = seqs == 0
    a0 = float(np.median(dur[decode])) if decode.any() else float(np.median(dur))

    def model(x) -> np.ndarray:
        return np.maximum(pred, abs(x[0]) + abs(x[1]) * seqs)

    def loss(x) -> float:
        return float(np.abs(np.log(model(x)) - np.log(dur)).sum())

    res = minimize(loss, x0=[a0, 0.0], method="Nelder-Mead",
                   options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 4000})
    floor_s, per_seq_s = abs(float(res.x[0])), abs(float(res.x[1]))
    rel = model(res.x) / dur - 1.0
    kernels_rel = pred / dur - 1.0
    return {
        "iteration_overhead_s": float(df["host_s"].median()),
        "host_floor_s": floor_s,
        "host_floor_per_prefill_seq_s": per_seq_s,
        "step_abs_error_median": float(np.median(np.abs(rel))),
        "step_abs_error_p90": float(np.percentile(np.abs(rel), 90)),
        "kernels_only_abs_error_median": float(np.median(np.abs(kernels_rel))),
        "host_bound_share": float(np.mean(floor_s + per_seq_s * seqs > pred)),
        "method": ("step time = max(profiled kernels, host_floor_s + host_floor_per_prefill_seq_s x prefill_seqs), "
                   "fitted on the grid's step times (least absolute log error, Nelder-Mead); iteration_overhead_s = "
                   "median engine time outside the step; pdsim.live.overhead.fit_host_floor"),
    }


def measure_engine_overhead(engine, latency, *, batch_sizes=DEFAULT_BATCH_SIZES, prompt_lens=DEFAULT_PROMPT_LENS,
                            output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run the grid on ``engine`` (a ``LiveEngine``) and compare with ``latency`` (an ``OpLevelModel``
    built with ``iteration_overhead_s = 0``): ``run_grid`` then ``compare_grid``.

    Returns:
        (summary dict with ``iteration_overhead_s`` and its method, per-iteration frame with columns
        ``b, prompt_tokens, phase, cycle_s``, the iteration log's, ``predicted_s, overhead_s``).

    Raises:
        ConfigError: an empty grid, ``output_tokens < 2``, or a latency model that charges an overhead.
    """
    if getattr(latency, "iteration_overhead_s", 0.0) != 0.0:
        raise ConfigError("measure against a latency model with iteration_overhead_s = 0")
    load_before = os.getloadavg()
    grid = run_grid(engine, batch_sizes=batch_sizes, prompt_lens=prompt_lens, output_tokens=output_tokens)
    load_after = os.getloadavg()
    summary, df = compare_grid(grid, latency, engine_config=asdict(engine.config), load_before=load_before,
                               load_after=load_after)
    summary["grid"]["output_tokens"] = output_tokens
    return summary, df


GRID_KEYS = ["b", "prompt_tokens", "phase", "prefill_tokens", "decode_seqs", "decode_context_tokens"]


def grid_drift(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """How much the host's speed moved between two runs of the same grid (frames of ``compare_grid``,
    e.g. one measured right before a live run and one right after): per phase, the median of
    ``cycle_after / cycle_before`` over the iterations of identical shape in both (the n-th iteration of
    a shape in one grid paired with the n-th in the other). 1.0 = the same speed;
    1.3 = the same iterations took 30 % longer afterwards.

    Returns:
        ``{"decode_ratio_median", "prefill_ratio_median", "iterations"}`` (NaN where a phase has no
        common iteration).

    Raises:
        ConfigError: a frame lacks a column, or the two grids have no iteration in common.
    """
    need = [*GRID_KEYS, "cycle_s"]
    for label, df in (("before", before), ("after", after)):
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ConfigError(f"grid {label}: missing column(s) {missing}")
    # the n-th iteration of a shape in one grid pairs with the n-th of that shape in the other
    a, b = (df[need].assign(nth=df.groupby(GRID_KEYS).cumcount()) for df in (before, after))
    both = a.merge(b, on=[*GRID_KEYS, "nth"], suffixes=("_before", "_after"))
    if both.empty:
        raise ConfigError("the two grids have no iteration of the same shape in common")
    both["ratio"] = both["cycle_s_after"] / both["cycle_s_before"]
    med = both.groupby("phase")["ratio"].median()
    return {"decode_ratio_median": float(med.get("decode", np.nan)),
            "prefill_ratio_median": float(med.get("prefill", np.nan)), "iterations": int(len(both))}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The figures of a ``compare_grid`` summary as printable lines (ms): the additive overhead with its
    spread and split, and the host floor where the summary has one."""
    ms = {k: v * 1e3 for k, v in summary.items() if k.endswith("_s") and isinstance(v, float)}
    lines = [f"iteration_overhead_s = {ms['iteration_overhead_s']:.3f} ms (median of {summary['iterations']} iterations; "
             f"p10 {ms['overhead_p10_s']:.3f}, p90 {ms['overhead_p90_s']:.3f}; decode {ms['overhead_decode_median_s']:.3f}, "
             f"prefill {ms['overhead_prefill_median_s']:.3f}; host outside the step {ms['host_outside_step_median_s']:.3f}, "
             f"inside the step beyond the kernels {ms['inside_step_beyond_kernels_median_s']:.3f})"]
    if "kernel_time_scale_decode" in summary:
        by_batch = summary.get("kernel_time_scale_decode_by_batch") or {}
        lines.append(f"kernel time scale (median cycle / profiled kernels): decode x{summary['kernel_time_scale_decode']:.3f}"
                     + (f" ({', '.join(f'b={b}: x{v:.2f}' for b, v in by_batch.items())})" if by_batch else "")
                     + f", prefill x{summary['kernel_time_scale_prefill']:.3f}")
    hf = summary.get("host_floor_model")
    if hf:
        lines.append(f"host floor: {hf['host_floor_s'] * 1e3:.2f} ms + {hf['host_floor_per_prefill_seq_s'] * 1e3:.2f} ms per "
                     f"prefilled request, iteration_overhead_s {hf['iteration_overhead_s'] * 1e3:.3f} ms; step time error "
                     f"median {hf['step_abs_error_median'] * 100:.1f} % (P90 {hf['step_abs_error_p90'] * 100:.1f} %), kernels "
                     f"alone {hf['kernels_only_abs_error_median'] * 100:.1f} %; host-bound in "
                     f"{hf['host_bound_share'] * 100:.0f} % of iterations")
    before, after = summary.get("load_average_before"), summary.get("load_average_after")
    if before and after:
        lines.append(f"load average {before[0]:.2f} -> {after[0]:.2f}")
    return lines
