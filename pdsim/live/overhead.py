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
model does not charge. ``iteration_overhead_s`` is the **median** over all iterations of the grid (the
last iteration of every point is left out: it has no successor). Also recorded: the median of the log's
``host_s`` (engine time outside ``LlamaModel.step``) and of ``duration_s - prediction`` (time inside the
step beyond the profiled kernels: Python, tensor set-up, small unprofiled ops), whose sum is about the
overhead, so the split is visible.

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


def measure_engine_overhead(engine, latency, *, batch_sizes=DEFAULT_BATCH_SIZES, prompt_lens=DEFAULT_PROMPT_LENS,
                            output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run the grid on ``engine`` (a ``LiveEngine``) and compare with ``latency`` (an ``OpLevelModel``
    built with ``iteration_overhead_s = 0``).

    Returns:
        (summary dict with ``iteration_overhead_s`` and its method, per-iteration frame with columns
        ``b, prompt_tokens, iteration, cycle_s, duration_s, host_s, predicted_s, overhead_s``).

    Raises:
        ConfigError: an empty grid, ``output_tokens < 2``, or a latency model that charges an overhead.
    """
    from pdsim.latency.base import BatchShape

    if output_tokens < 2 or not batch_sizes or not prompt_lens:
        raise ConfigError(f"the grid needs batch sizes, prompt lengths and output_tokens >= 2, got "
                          f"{batch_sizes}, {prompt_lens}, {output_tokens}")
    if getattr(latency, "iteration_overhead_s", 0.0) != 0.0:
        raise ConfigError("measure against a latency model with iteration_overhead_s = 0")
    rows = []
    load_before = os.getloadavg()
    for wl in grid_workload(batch_sizes, prompt_lens, output_tokens):
        res = engine.run(wl)
        its = res.iterations_frame()
        starts = its["start_s"].to_numpy(dtype=float)
        for i, r in enumerate(its.itertuples(index=False)):
            if i + 1 >= len(its):
                break
            pred = latency.iteration_s(BatchShape(int(r.prefill_tokens), int(r.prefill_seqs), int(r.decode_seqs),
                                                  int(r.decode_context_tokens)))
            cycle = starts[i + 1] - starts[i]
            rows.append({"b": len(wl), "prompt_tokens": int(wl["prompt_tokens"].iloc[0]), "iteration": i,
                         "phase": "prefill" if r.prefill_seqs else "decode", "cycle_s": cycle,
                         "duration_s": float(r.duration_s), "host_s": float(r.host_s), "predicted_s": pred,
                         "overhead_s": cycle - pred})
    load_after = os.getloadavg()
    df = pd.DataFrame(rows)
    summary = {
        "iteration_overhead_s": float(df["overhead_s"].median()),
        "method": ("median over a synthetic closed-loop grid of (engine loop cycle - op-level prediction of the "
                   "profiled kernels for the same batch shape); pdsim.live.overhead"),
        "iterations": len(df),
        "overhead_p10_s": float(df["overhead_s"].quantile(0.1)),
        "overhead_p90_s": float(df["overhead_s"].quantile(0.9)),
        "overhead_decode_median_s": float(df.loc[df["phase"] == "decode", "overhead_s"].median()),
        "overhead_prefill_median_s": float(df.loc[df["phase"] == "prefill", "overhead_s"].median()),
        "host_outside_step_median_s": float(df["host_s"].median()),
        "inside_step_beyond_kernels_median_s": float((df["duration_s"] - df["predicted_s"]).median()),
        "grid": {"batch_sizes": list(batch_sizes), "prompt_lens": list(prompt_lens), "output_tokens": output_tokens},
        "engine": asdict(engine.config),
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return summary, df
