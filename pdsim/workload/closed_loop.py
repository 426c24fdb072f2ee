"""The requests of a closed-loop workload, drawn before the simulation (pure domain: no SimPy).

A closed loop has no arrival times to draw: each of ``clients`` clients submits its next request when its
previous one ends (plus a think time), so arrivals are outputs of the simulation
(:class:`pdsim.sim.arrivals.ClosedLoopArrivals`). What *can* be drawn beforehand, and is, so that a
run is reproducible and two deployments see the same requests, is the sequence of rows: row ``i`` is
the (prompt tokens, output tokens, think time) of the ``i``-th request submitted, whichever client
submits it. The next free client takes the next row, as the clients of vLLM's
``benchmark_serving.py --max-concurrency N`` take the next prompt of one shared list (they wait on one
semaphore in request order) and as ``pdsim replay --concurrency N`` does.

Rows are made in chunks of :data:`CHUNK_ROWS`; chunk ``j`` draws from its own seed sequences (children
``spawn_key + (0, j)`` for the lengths and ``spawn_key + (1, j)`` for the think times of the workload's
sequence), so row ``i`` depends only on the seed and ``i``: not on the stop rule, on how many rows a
run used, or on the think-time settings (changing the think time keeps the lengths). A run with only
``duration_s`` as stop rule therefore needs no bound on its request count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["CHUNK_ROWS", "ClosedLoopRequests"]

CHUNK_ROWS = 4096
"""Rows drawn at once. Any value gives the same rows for a given seed *and* chunk size; changing it
changes the draws, so it is fixed here (not a tunable)."""


@dataclass(frozen=True, slots=True, eq=False)
class ClosedLoopRequests:
    """Everything a closed-loop arrival process needs, fixed before the simulation.

    Attributes:
        clients: concurrent clients N, >= 1.
        num_requests: at most this many requests are submitted in total; None = no limit.
        duration_s: no request is submitted at t >= duration_s; None = no limit.
        think_time_s: think time (``fixed``) or its mean (``exponential``), seconds, >= 0.
        think_time_distribution: ``"fixed"`` or ``"exponential"``.
        ramp_up_s: client ``c`` starts at ``c * ramp_up_s / clients`` seconds.
        prompt_pool: int64 prompt lengths to draw from, jointly with ``output_pool`` (one entry for
            fixed lengths: then no random draw is made).
        output_pool: int64 output lengths, same length as ``prompt_pool``.
        seed_seq: the seed sequence of the workload (not mutated).
        sampling: ``"uniform"`` (row lengths drawn uniformly with replacement from the pools) or
            ``"sequential"`` (row ``i`` takes pool entry ``i`` modulo the pool size; no randomness).
    """

    clients: int
    num_requests: int | None
    duration_s: float | None
    think_time_s: float
    think_time_distribution: str
    ramp_up_s: float
    prompt_pool: np.ndarray
    output_pool: np.ndarray
    seed_seq: np.random.SeedSequence
    sampling: str = "uniform"

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError(f"clients must be >= 1, got {self.clients}")
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("a closed loop needs num_requests or duration_s as stop rule")
        if not (math.isfinite(self.think_time_s) and self.think_time_s >= 0):
            raise ValueError(f"think_time_s must be finite and >= 0, got {self.think_time_s}")
        if self.think_time_distribution not in ("fixed", "exponential"):
            raise ValueError(f"think_time_distribution must be fixed or exponential, got {self.think_time_distribution!r}")
        if self.sampling not in ("uniform", "sequential"):
            raise ValueError(f"sampling must be uniform or sequential, got {self.sampling!r}")
        if len(self.prompt_pool) == 0 or len(self.prompt_pool) != len(self.output_pool):
            raise ValueError(
                f"length pools must be non-empty and equally long, got {len(self.prompt_pool)} prompts "
                f"and {len(self.output_pool)} outputs"
            )

    @property
    def max_requests(self) -> int | None:
        """The most requests a run can submit (``num_requests``), None when only ``duration_s`` bounds it."""
        return self.num_requests

    def start_s(self, client: int) -> float:
        """When ``client`` (0-based) submits its first request: ``client * ramp_up_s / clients``."""
        return client * self.ramp_up_s / self.clients

    def may_submit(self, index: int, now_s: float) -> bool:
        """The stop rule: may the request with 0-based submission index ``index`` be sent at ``now_s``?"""
        if self.num_requests is not None and index >= self.num_requests:
            return False
        return self.duration_s is None or now_s < self.duration_s

    def chunk(self, j: int) -> tuple[list[int], list[int], list[float]]:
        """Rows ``j * CHUNK_ROWS`` to ``(j + 1) * CHUNK_ROWS - 1``: (prompt tokens, output tokens, think s).

        Plain Python lists (the simulation reads them one by one). Deterministic in (seed, ``j``).
        """
        entropy, key, pool = self.seed_seq.entropy, tuple(self.seed_seq.spawn_key), self.seed_seq.pool_size
        n_pool = len(self.prompt_pool)
        if n_pool == 1:
            idx = np.zeros(CHUNK_ROWS, dtype=np.int64)
        elif self.sampling == "sequential":
            idx = (j * CHUNK_ROWS + np.arange(CHUNK_ROWS, dtype=np.int64)) % n_pool
        else:
            lengths_rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(*key, 0, j), pool_size=pool))
            idx = lengths_rng.integers(0, n_pool, size=CHUNK_ROWS)
        if self.think_time_distribution == "exponential":
            think_rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(*key, 1, j), pool_size=pool))
            think = think_rng.exponential(self.think_time_s, size=CHUNK_ROWS)
        else:
            think = np.full(CHUNK_ROWS, self.think_time_s, dtype=np.float64)
        return (self.prompt_pool[idx].tolist(), self.output_pool[idx].tolist(), think.tolist())

    def head(self, n: int) -> pd.DataFrame:
        """The first ``n`` rows as a frame: ``request_id`` (int64 0..n-1), ``prompt_tokens``,
        ``output_tokens`` (int64) and ``think_s`` (float64: the pause after that request ends)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        chunks = [self.chunk(j) for j in range(-(-n // CHUNK_ROWS))]
        prompt = [v for c in chunks for v in c[0]][:n]
        output = [v for c in chunks for v in c[1]][:n]
        think = [v for c in chunks for v in c[2]][:n]
        return pd.DataFrame({
            "request_id": np.arange(n, dtype=np.int64),
            "prompt_tokens": np.asarray(prompt, dtype=np.int64),
            "output_tokens": np.asarray(output, dtype=np.int64),
            "think_s": np.asarray(think, dtype=np.float64),
        })

    def describe(self) -> dict:
        """For the run manifest: the arrival process and its parameters."""
        return {
            "arrival_process": "closed_loop", "clients": self.clients, "num_requests": self.num_requests,
            "duration_s": self.duration_s, "think_time_s": self.think_time_s,
            "think_time_distribution": self.think_time_distribution, "ramp_up_s": self.ramp_up_s,
        }
