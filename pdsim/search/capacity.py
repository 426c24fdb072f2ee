"""Analytic per-instance capacity bounds, from the latency model alone (pure ring: no SimPy).

These numbers only rank and prune candidates; simulations decide. For an instance of one type and
role, with the workload's mean prompt length ``P``, mean squared prompt length ``P2``, mean output
length ``O`` and the SLO percentile's prompt length ``Pq``:

- **TTFT floor** (prefill, colocated): ``t_pre(1 x Pq)``, one prefill of the percentile prompt alone;
  above ``slo.ttft_s`` the instance can never meet the TTFT target at that percentile: pruned.
- **Prefill rate** (prefill, colocated), requests/s: ``n / t_pre(n x P)``, with ``n`` the largest batch
  of mean prompts that fits the token budget and the sequence cap and whose iteration still takes
  ``<= slo.ttft_s`` (a larger batch would by itself push TTFT above the target). With ``P2`` for the
  attention work (``BatchShape.prefill_square_tokens = n x P2``).
- **TPOT floor** (decode, colocated): ``t_dec(1, C)`` with ``C = P + O / 2``, the mean context while a
  request decodes; above ``slo.tpot_s``: pruned.
- **Decode rate** (decode, colocated), requests/s: ``B / (t_dec(B, B x C) x O)``, with ``B`` the largest
  batch ``<= max_num_seqs`` whose iteration takes ``<= slo.tpot_s`` and whose KV (``B x C`` tokens, the
  mean occupancy by Little's law) fits the KV capacity less the watermark.
- **Colocated rate**: one instance does both. With ``t_p = t_pre(n x P) / n`` the prefill time per
  request and a decode batch ``B``, two necessary conditions: time sharing,
  ``rate <= 1 / (t_p + O x t_dec(B, B x C) / B)``, and the mean TPOT, stretched by the prefills
  interleaved with the decodes (the instance prefills a fraction ``rate x t_p`` of the time, so
  ``TPOT = t_dec(B) / (1 - rate x t_p) <= slo.tpot_s``), ``rate <= (1 - t_dec(B) / tpot_s) / t_p``.
  The estimate is the best ``B`` (``1 .. B_max`` as for decode): ``max_B min(both)``. It is usually
  optimistic (a mean, not the SLO percentile, and no queueing) but not a strict bound (measured: 0.97-1.5x
  the simulated goodput of the colocated finalists of experiments/search_llama70b.yaml).
- **KV egress** (prefill of a disaggregated deployment): at most ``link_bytes_per_s / (P x kv_bytes)``
  requests/s leave one prefill instance (its link port; ``DESIGN.md`` "KV transfer time").

Deployment capacity (``pdsim.search.allocate``): colocated ``n x colocated rate``; disaggregated
``min(sum prefill rates, sum decode rates)`` (rate matching between the pools, as DistServe's
placement and Splitwise's provisioning balance the phases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pdsim.latency.base import BatchShape, LatencyModel

__all__ = ["InstanceCapacity", "WorkloadStats", "instance_capacity", "workload_stats"]


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """Length statistics of the search workload (tokens).

    Attributes:
        prompt_mean / prompt_sq_mean / output_mean: means of P, P^2 and O.
        prompt_pct: the SLO percentile of P.
        requests: requests in the workload.
        native_rate_rps: (n - 1) / (last - first arrival) of the workload as written (the trace's own
            rate, for scaling ``rate_scale``).
    """

    prompt_mean: float
    prompt_sq_mean: float
    output_mean: float
    prompt_pct: float
    requests: int
    native_rate_rps: float


def workload_stats(requests: pd.DataFrame, percentile: float) -> WorkloadStats:
    """Statistics of a request frame (``prompt_tokens``, ``output_tokens``, ``arrival_s``)."""
    p = requests["prompt_tokens"].to_numpy(dtype=float)
    o = requests["output_tokens"].to_numpy(dtype=float)
    t = requests["arrival_s"].to_numpy(dtype=float)
    span = float(t.max() - t.min()) if len(t) > 1 else 0.0
    return WorkloadStats(
        prompt_mean=float(p.mean()), prompt_sq_mean=float((p**2).mean()), output_mean=float(o.mean()),
        prompt_pct=float(np.percentile(p, percentile)), requests=len(p),
        native_rate_rps=(len(t) - 1) / span if span > 0 else float("nan"),
    )


@dataclass(frozen=True, slots=True)
class InstanceCapacity:
    """Analytic bounds of one instance (see the module docstring). ``nan`` where the role has none.

    Attributes:
        ttft_floor_s / tpot_floor_s: the fastest TTFT of the percentile prompt / TPOT of one request.
        prefill_rps / decode_rps: requests per second the instance can prefill / decode.
        prefill_batch / decode_batch: the batch sizes behind those rates.
        rate_rps: the role's capacity (colocated: time-shared; prefill: with the KV egress bound).
        pruned: '' or why the instance type cannot meet the SLOs.
    """

    ttft_floor_s: float
    tpot_floor_s: float
    prefill_rps: float
    decode_rps: float
    prefill_batch: int
    decode_batch: int
    rate_rps: float
    pruned: str


def _prefill(lat: LatencyModel, w: WorkloadStats, sched, ttft_s: float) -> tuple[float, float, int]:
    pq = max(1, round(w.prompt_pct))
    floor_s = lat.iteration_s(BatchShape(prefill_tokens=pq, prefill_seqs=1, prefill_square_tokens=pq * pq))
    p = max(1.0, w.prompt_mean)
    n_max = max(1, min(sched.max_num_seqs, int(sched.max_num_batched_tokens // p)))

    def t(n: int) -> float:
        return lat.iteration_s(BatchShape(prefill_tokens=max(1, round(n * p)), prefill_seqs=n,
                                          prefill_square_tokens=max(1, round(n * w.prompt_sq_mean))))

    n = n_max
    if t(n) > ttft_s:  # the largest batch whose iteration alone stays within the TTFT target
        lo, hi = 1, n_max
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if t(mid) <= ttft_s else (lo, mid - 1)
        n = lo
    return floor_s, n / t(n), n


def _decode(lat: LatencyModel, w: WorkloadStats, sched, capacity_tokens: int, tpot_s: float) -> tuple[float, float, int]:
    ctx = max(1.0, w.prompt_mean + w.output_mean / 2.0)
    floor_s = lat.decode_s(1, max(1, round(ctx)))
    usable = capacity_tokens * (1.0 - sched.watermark_fraction)
    b_max = max(1, min(sched.max_num_seqs, int(usable // ctx)))

    def t(b: int) -> float:
        return lat.decode_s(b, max(1, round(b * ctx)))

    b = b_max
    if t(b) > tpot_s:
        lo, hi = 1, b_max
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if t(mid) <= tpot_s else (lo, mid - 1)
        b = lo
    return floor_s, b / (t(b) * max(1.0, w.output_mean)), b


def _colocated(lat: LatencyModel, w: WorkloadStats, tpot_s: float, t_p: float, b_max: int) -> float:
    """``max_B min(1 / (t_p + O t_dec(B) / B), (1 - t_dec(B) / tpot_s) / t_p)`` (module docstring)."""
    ctx = max(1.0, w.prompt_mean + w.output_mean / 2.0)
    out = max(1.0, w.output_mean)
    best = 0.0
    for b in range(1, max(1, b_max) + 1):
        t_dec = lat.decode_s(b, max(1, round(b * ctx)))
        share = 1.0 / (t_p + out * t_dec / b)
        stall = (1.0 - t_dec / tpot_s) / t_p
        best = max(best, min(share, stall))
    return best


def instance_capacity(
    role: str,
    lat: LatencyModel,
    w: WorkloadStats,
    sched,
    capacity_tokens: int,
    slo,
    kv_egress_bytes_per_s: float = math.inf,
    kv_bytes_per_token: int = 0,
) -> InstanceCapacity:
    """Bounds of one instance of ``role`` (``colocated``, ``prefill`` or ``decode``).

    Args:
        lat: the instance's latency model (read only).
        w: workload statistics.
        sched: the effective ``SchedulerConfig``.
        capacity_tokens: KV capacity of the instance in tokens.
        slo: the ``SloConfig``.
        kv_egress_bytes_per_s / kv_bytes_per_token: a prefill instance's link port and the model's KV
            bytes per token (all layers and heads), for the KV egress bound.
    """
    nan = float("nan")
    ttft_floor = tpot_floor = pre = dec = nan
    n_pre = n_dec = 0
    reasons = []
    if role in ("colocated", "prefill"):
        ttft_floor, pre, n_pre = _prefill(lat, w, sched, slo.ttft_s)
        if ttft_floor > slo.ttft_s:
            reasons.append(f"ttft_floor {ttft_floor:.3g}s > slo {slo.ttft_s:g}s")
    if role in ("colocated", "decode"):
        tpot_floor, dec, n_dec = _decode(lat, w, sched, capacity_tokens, slo.tpot_s)
        if tpot_floor > slo.tpot_s:
            reasons.append(f"tpot_floor {tpot_floor:.3g}s > slo {slo.tpot_s:g}s")
    if role == "colocated":
        rate = _colocated(lat, w, slo.tpot_s, 1.0 / pre, n_dec)
    elif role == "prefill":
        egress = kv_egress_bytes_per_s / (max(1.0, w.prompt_mean) * kv_bytes_per_token) if kv_bytes_per_token else math.inf
        rate = min(pre, egress)
    else:
        rate = dec
    return InstanceCapacity(ttft_floor, tpot_floor, pre, dec, n_pre, n_dec, float(rate), "; ".join(reasons))
