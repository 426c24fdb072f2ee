"""Turn a workload spec (config) into the requests a simulation runs: a frame (open loop) or a
:class:`~pdsim.workload.closed_loop.ClosedLoopRequests` (closed loop)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.config.workload import (
    ClosedLoopWorkload,
    FixedLengths,
    GammaWorkload,
    LengthSpec,
    PoissonWorkload,
    TraceLengths,
    TraceWorkload,
    WorkloadSpec,
)
from pdsim.errors import ConfigError
from pdsim.workload.closed_loop import ClosedLoopRequests
from pdsim.workload.synthetic import gamma_arrivals_s, poisson_arrivals_s
from pdsim.workload.traces import load_trace

__all__ = ["Workload", "build_workload", "describe_workload", "planned_requests"]

Workload = pd.DataFrame | ClosedLoopRequests
"""What :func:`build_workload` returns and ``pdsim.sim.cluster.simulate`` runs: an open-loop frame of
requests with their arrival times, or the pre-drawn rows of a closed loop."""


def build_workload(spec: WorkloadSpec, base_dir: Path | str, seed_seq: np.random.SeedSequence) -> Workload:
    """Build the requests of one workload.

    Trace workloads (:class:`~pdsim.config.workload.TraceWorkload`): the trace is loaded with
    :func:`~pdsim.workload.traces.load_trace` (its axis starts at 0 at its first request); rows with
    ``window_start_s <= t < window_start_s + window_duration_s`` are kept; **arrivals are re-based to
    the window start, keeping their offset from it** (``t - window_start_s``, so the first request of a
    window need not arrive at 0, as with the synthetic generators); times are then divided by
    ``rate_scale``; finally the first ``max_requests`` are kept. Trace workloads use no randomness.

    Synthetic workloads (Poisson, Gamma): arrivals come from
    :mod:`pdsim.workload.synthetic` (first arrival at the first gap, not 0); lengths are fixed or
    taken jointly from a trace's (prompt, output) pairs: sampled uniformly with replacement, or the
    trace's rows in order (``sampling: sequential``, wrapping around). Arrivals and
    lengths use two independent streams derived from ``seed_seq`` (children ``spawn_key + (0,)`` and
    ``spawn_key + (1,)``, exactly what ``seed_seq.spawn(2)`` would give on a fresh sequence) without
    mutating ``seed_seq``, so calling this twice with the same arguments gives identical frames. Give
    it a seed sequence dedicated to the workload (e.g. one child of the run's root sequence). Synthetic
    frames never carry ``hash_ids`` (resampled prompts have no real prefix-block identity).

    Closed-loop workloads (:class:`~pdsim.config.workload.ClosedLoopWorkload`) have no arrival times
    before the simulation: they become a :class:`~pdsim.workload.closed_loop.ClosedLoopRequests`, whose
    row ``i`` (lengths drawn jointly, uniformly with replacement, from the trace's pairs, or fixed;
    think time) is the ``i``-th request submitted. It keeps ``seed_seq`` (not mutated) and draws rows in
    chunks from its children (see that module); with ``sampling: sequential`` row ``i`` has the
    trace's row ``i`` lengths (wrapping around).

    Args:
        spec: the workload section of an experiment.
        base_dir: directory that relative trace paths are resolved against (the experiment YAML's).
        seed_seq: seed sequence for this workload.

    Returns:
        For a closed loop, a ``ClosedLoopRequests``; otherwise a DataFrame with RangeIndex and columns
        ``request_id`` (int64, 0..n-1 in arrival order),
        ``arrival_s`` (float64 seconds, non-decreasing), ``prompt_tokens`` (int64 >= 1),
        ``output_tokens`` (int64 >= 1), and ``hash_ids`` (object, lists of int) when the trace has them.

    Raises:
        TraceError: a trace file is missing or invalid (see ``load_trace``).
        ConfigError: the trace window holds no requests, or a synthetic workload with ``duration_s``
            produced no arrival.
    """
    base_dir = Path(base_dir)
    match spec:
        case TraceWorkload():
            return _trace_workload(spec, base_dir)
        case PoissonWorkload() | GammaWorkload():
            return _synthetic_workload(spec, base_dir, seed_seq)
        case ClosedLoopWorkload():
            return _closed_loop_workload(spec, base_dir, seed_seq)
        case _:
            raise ConfigError(f"unknown workload kind {getattr(spec, 'kind', type(spec).__name__)!r}")


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base_dir / p


def _child_seed_sequences(seed_seq: np.random.SeedSequence, n: int) -> list[np.random.SeedSequence]:
    """The first ``n`` children of ``seed_seq``, as ``spawn`` would make them, without mutating it."""
    return [
        np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, i), pool_size=seed_seq.pool_size)
        for i in range(n)
    ]


def _trace_workload(spec: TraceWorkload, base_dir: Path) -> pd.DataFrame:
    path = _resolve(base_dir, spec.path)
    trace = load_trace(path, spec.format)
    start_s = spec.window_start_s
    end_s = math.inf if spec.window_duration_s is None else start_s + spec.window_duration_s
    t = trace["arrival_s"].to_numpy()
    in_window = (t >= start_s) & (t < end_s)
    if not in_window.any():
        raise ConfigError(
            f"{path}: workload window [{start_s}, {end_s}) s holds no requests; "
            f"the trace spans 0 to {t[-1]} s"
        )
    frame = trace.loc[in_window].reset_index(drop=True)
    frame["arrival_s"] = (frame["arrival_s"].to_numpy() - start_s) / spec.rate_scale
    if spec.max_requests is not None:
        frame = frame.iloc[: spec.max_requests].reset_index(drop=True)
    return _with_request_ids(frame)


def _synthetic_workload(
    spec: PoissonWorkload | GammaWorkload, base_dir: Path, seed_seq: np.random.SeedSequence
) -> pd.DataFrame:
    arrival_ss, lengths_ss = _child_seed_sequences(seed_seq, 2)
    arrival_rng = np.random.default_rng(arrival_ss)
    kwargs = {"n": spec.num_requests, "duration_s": spec.duration_s}
    match spec:
        case PoissonWorkload():
            arrivals_s = poisson_arrivals_s(spec.rate_rps, arrival_rng, **kwargs)
        case GammaWorkload():
            arrivals_s = gamma_arrivals_s(spec.rate_rps, spec.cv, arrival_rng, **kwargs)
    if len(arrivals_s) == 0:
        raise ConfigError(
            f"{spec.kind} workload with rate_rps={spec.rate_rps} produced no arrival within "
            f"duration_s={spec.duration_s}; increase duration_s or rate_rps"
        )
    prompt, output = _lengths(spec.lengths, len(arrivals_s), base_dir, np.random.default_rng(lengths_ss))
    frame = pd.DataFrame({"arrival_s": arrivals_s, "prompt_tokens": prompt, "output_tokens": output})
    return _with_request_ids(frame)


def planned_requests(workload: Workload) -> int | None:
    """Requests a run of ``workload`` submits: the frame's length, a closed loop's ``num_requests``, or
    None when only its ``duration_s`` bounds it (the count is then an outcome of the simulation)."""
    match workload:
        case ClosedLoopRequests():
            return workload.max_requests
        case _:
            return len(workload)


def describe_workload(workload: Workload) -> dict:
    """For the run manifest: ``{"arrival_process": "open_loop", "requests": n}`` for a frame, the
    clients, stop rule and think time for a closed loop (``ClosedLoopRequests.describe``)."""
    match workload:
        case ClosedLoopRequests():
            return workload.describe()
        case _:
            return {"arrival_process": "open_loop", "requests": len(workload)}


def _closed_loop_workload(spec: ClosedLoopWorkload, base_dir: Path, seed_seq: np.random.SeedSequence) -> ClosedLoopRequests:
    sampling = "uniform"
    match spec.lengths:
        case FixedLengths():
            prompt_pool = np.array([spec.lengths.prompt_tokens], dtype=np.int64)
            output_pool = np.array([spec.lengths.output_tokens], dtype=np.int64)
        case TraceLengths():
            trace = load_trace(_resolve(base_dir, spec.lengths.path), spec.lengths.format)
            prompt_pool = trace["prompt_tokens"].to_numpy(dtype=np.int64)
            output_pool = trace["output_tokens"].to_numpy(dtype=np.int64)
            sampling = spec.lengths.sampling
        case _:
            raise ConfigError(f"unknown lengths kind {getattr(spec.lengths, 'kind', type(spec.lengths).__name__)!r}")
    return ClosedLoopRequests(
        clients=spec.clients, num_requests=spec.num_requests, duration_s=spec.duration_s,
        think_time_s=spec.think_time_s, think_time_distribution=spec.think_time_distribution,
        ramp_up_s=spec.ramp_up_s, prompt_pool=prompt_pool, output_pool=output_pool, seed_seq=seed_seq,
        sampling=sampling,
    )


def _lengths(
    spec: LengthSpec, n: int, base_dir: Path, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_tokens, output_tokens), int64 arrays of length ``n``."""
    match spec:
        case FixedLengths():
            return (np.full(n, spec.prompt_tokens, dtype=np.int64), np.full(n, spec.output_tokens, dtype=np.int64))
        case TraceLengths():
            trace = load_trace(_resolve(base_dir, spec.path), spec.format)
            if spec.sampling == "sequential":
                idx = np.arange(n, dtype=np.int64) % len(trace)
            else:
                idx = rng.integers(0, len(trace), size=n)
            return (
                trace["prompt_tokens"].to_numpy(dtype=np.int64)[idx],
                trace["output_tokens"].to_numpy(dtype=np.int64)[idx],
            )
        case _:
            raise ConfigError(f"unknown lengths kind {getattr(spec, 'kind', type(spec).__name__)!r}")


def _with_request_ids(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame.insert(0, "request_id", np.arange(len(frame), dtype=np.int64))
    frame["arrival_s"] = frame["arrival_s"].astype(np.float64)
    return frame
