"""Summary of a run: one row per deployment x workload (the ``summary.csv`` contract).

Definitions (DESIGN.md vocabulary):

- Percentiles (``ttft_p50_s`` ...) over completed requests (numpy ``linear`` method); TPOT over
  completed requests with more than one output token.
- ``slo_attainment``: fraction of *all* requests (rejected ones count as misses) with
  TTFT <= ``slo.ttft_s`` and TPOT <= ``slo.tpot_s`` (one-token requests judged on TTFT alone).
- ``slo_met``: the ``slo.percentile``-th percentiles of TTFT and TPOT are both within target and
  attainment >= ``slo.attainment_target``.
- ``goodput_rps``: requests that met the SLOs per second of the run (span from the first arrival to
  the last finish). This is the *SLO-meeting throughput at the offered load*; DistServe's goodput
  (the highest offered rate at which attainment stays >= target) comes from a rate search.
- ``requests_per_s``: completed requests per second of the span. Under an open-loop workload it
  tracks the offered rate (an input) as long as the deployment keeps up; under a closed-loop workload
  (``kind: closed_loop``, N clients) there is no offered rate: arrivals follow completions, and this
  is the *achieved* throughput, an output (N / (mean E2E + mean think time) by Little's law, up to the
  ramp-up and drain at the span's ends). ``goodput_rps`` is then the SLO-meeting throughput at
  concurrency N. The client count is in the run's ``manifest.json`` (``workloads``).
- ``output_tokens_per_s``: output tokens of completed requests per second of the span.
- ``decode_wait_p90_s``: P90 over completed requests of ``decode_wait_s`` (disaggregated: prefill
  output waiting for decode KV blocks, the decode pool's back-pressure; NaN for colocated).
- ``swaps``: preemptions by swap (``preemptions`` counts both kinds).
- ``prefix_hit_rate``: prompt tokens reused from prefix caches / prompt tokens, over all requests.
- ``mixed_pool_requests``: requests Splitwise's mixed pool served on one instance: prefilled and
  decoded by a borrowed decode instance (``mixed_pool`` request column) or decoded by the prefill
  instance that prefilled them (``decoded_on_prefill``); 0 without ``mixed_pool``.
- ``kv_transfer_bytes_mean``, ``kv_transfer_queue_mean_s``, ``kv_transfer_d2h_mean_s``,
  ``kv_transfer_network_mean_s``, ``kv_transfer_h2d_mean_s``, ``kv_convert_mean_s``, ``kv_compress_mean_s``,
  ``kv_transfer_hidden_mean_s``: means of the request columns of the same names over completed requests
  that had a KV transfer (NaN when none did; see ``pdsim.metrics.records``).
- ``usd_per_hour``: GPUs x $/GPU-hour; ``usd_per_million_output_tokens`` =
  usd_per_hour / (output_tokens_per_s x 3600) x 1e6 (DESIGN.md, "Formulas").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = [
    "deployment", "workload", "kind", "requests", "completed", "rejected",
    "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
    "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "queue_p90_s", "kv_transfer_p50_s", "kv_transfer_p90_s",
    "span_s", "requests_per_s", "output_tokens_per_s", "slo_attainment", "slo_met", "goodput_rps",
    "preemptions", "gpus", "usd_per_hour", "usd_per_million_output_tokens", "latency_out_of_range",
    "latency_sources", "decode_wait_p90_s", "swaps", "prefix_hit_rate", "mixed_pool_requests",
    "kv_transfer_bytes_mean", "kv_transfer_queue_mean_s", "kv_transfer_d2h_mean_s", "kv_transfer_network_mean_s",
    "kv_transfer_h2d_mean_s", "kv_convert_mean_s", "kv_compress_mean_s", "kv_transfer_hidden_mean_s",
]


def _pct(values: np.ndarray, q: float) -> float:
    values = values[~np.isnan(values)]
    return float(np.percentile(values, q)) if values.size else float("nan")


def meets_slo(df: pd.DataFrame, ttft_s: float, tpot_s: float) -> np.ndarray:
    """Per request: completed, TTFT within target and (if it has one) TPOT within target."""
    ok_ttft = df["ttft_s"].to_numpy() <= ttft_s
    tpot = df["tpot_s"].to_numpy()
    ok_tpot = np.isnan(tpot) | (tpot <= tpot_s)
    return (df["status"].to_numpy() == "completed") & ok_ttft & ok_tpot


def summarize_one(df: pd.DataFrame, *, kind: str, gpus: int, usd_per_hour: float, slo, out_of_range: int = 0,
                  latency_sources: str = "") -> dict:
    """Summary row of one deployment x workload frame (see module docstring for definitions).

    ``latency_sources`` names the kinds of latency data behind the deployment's pools (``imported``,
    ``measured``, ``derived``, ``constant``, joined by ``+``) so a derived (not measured) latency is
    visible wherever the row goes."""
    done = df[df["status"] == "completed"]
    n = len(df)
    ttft = done["ttft_s"].to_numpy(dtype=float)
    tpot = done["tpot_s"].to_numpy(dtype=float)
    e2e = done["e2e_s"].to_numpy(dtype=float)
    start = float(df["arrival_s"].min()) if n else 0.0
    end = float(done["finish_s"].max()) if len(done) else start
    span = end - start
    out_tokens = float(done["output_tokens"].sum())
    tok_per_s = out_tokens / span if span > 0 else float("nan")
    met = meets_slo(df, slo.ttft_s, slo.tpot_s)
    attainment = float(met.mean()) if n else float("nan")
    p = slo.percentile
    ttft_pq, tpot_pq = _pct(ttft, p), _pct(tpot, p)
    slo_met = bool(
        n and (ttft_pq <= slo.ttft_s) and (np.isnan(tpot_pq) or tpot_pq <= slo.tpot_s) and attainment >= slo.attainment_target
    )
    return {
        "kind": kind,
        "requests": n,
        "completed": int(len(done)),
        "rejected": int(n - len(done)),
        "ttft_p50_s": _pct(ttft, 50), "ttft_p90_s": _pct(ttft, 90), "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50), "tpot_p90_s": _pct(tpot, 90), "tpot_p99_s": _pct(tpot, 99),
        "e2e_p50_s": _pct(e2e, 50), "e2e_p90_s": _pct(e2e, 90), "e2e_p99_s": _pct(e2e, 99),
        "queue_p90_s": _pct(done["queue_s"].to_numpy(dtype=float), 90),
        "kv_transfer_p50_s": _pct(done["kv_transfer_s"].to_numpy(dtype=float), 50),
        "kv_transfer_p90_s": _pct(done["kv_transfer_s"].to_numpy(dtype=float), 90),
        "span_s": span,
        "requests_per_s": len(done) / span if span > 0 else float("nan"),
        "output_tokens_per_s": tok_per_s,
        "slo_attainment": attainment,
        "slo_met": slo_met,
        "goodput_rps": float(met.sum()) / span if span > 0 else float("nan"),
        "preemptions": int(df["preemptions"].sum()),
        "decode_wait_p90_s": _pct(done["decode_wait_s"].to_numpy(dtype=float), 90),
        "swaps": int(df["swaps"].sum()),
        "prefix_hit_rate": float(df["prefix_hit_tokens"].sum() / df["prompt_tokens"].sum()) if n else float("nan"),
        "gpus": gpus,
        "usd_per_hour": usd_per_hour,
        "latency_sources": latency_sources,
        "usd_per_million_output_tokens": usd_per_hour / (tok_per_s * 3600.0) * 1e6 if tok_per_s and tok_per_s == tok_per_s else float("nan"),
        "latency_out_of_range": int(out_of_range),
        "mixed_pool_requests": int(df["mixed_pool"].sum() + df["decoded_on_prefill"].sum()) if "mixed_pool" in df else 0,
        **_transfer_means(done),
    }


_TRANSFER_MEANS = {
    "kv_transfer_bytes_mean": "kv_transfer_bytes", "kv_transfer_queue_mean_s": "kv_transfer_queue_s",
    "kv_transfer_d2h_mean_s": "kv_transfer_d2h_s", "kv_transfer_network_mean_s": "kv_transfer_network_s",
    "kv_transfer_h2d_mean_s": "kv_transfer_h2d_s", "kv_convert_mean_s": "kv_convert_s",
    "kv_compress_mean_s": "kv_compress_s", "kv_transfer_hidden_mean_s": "kv_transfer_hidden_s",
}


def _transfer_means(done: pd.DataFrame) -> dict:
    """Means of the KV transfer breakdown over completed requests that had a transfer (NaN if none)."""
    moved = done[done["kv_transfer_s"].notna()] if "kv_transfer_queue_s" in done else done.iloc[:0]
    return {out: float(moved[col].mean()) if len(moved) else float("nan") for out, col in _TRANSFER_MEANS.items()}


def summarize(rows: list[dict]) -> pd.DataFrame:
    """Assemble summary rows (each with ``deployment`` and ``workload``) into ``SUMMARY_COLUMNS`` order."""
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
