"""Per-request records as a DataFrame (the ``requests.csv`` / ``requests.parquet`` contract).

Columns (times in seconds from the workload's start; NaN where undefined):

- ``deployment, workload, request_id, arrival_s, prompt_tokens, output_tokens``
- ``status``: ``completed`` or ``rejected``; ``reject_reason``: why (empty when completed)
- ``prefill_start_s, first_token_s, finish_s``
- ``ttft_s = first_token_s - arrival_s``; ``e2e_s = finish_s - arrival_s``
- ``tpot_s = (e2e_s - ttft_s) / (output_tokens - 1)``, NaN for one-token outputs
- ``itl_max_s``: longest gap between two consecutive tokens of the request
- ``queue_s = prefill_start_s - arrival_s``: waiting before the first prefill iteration
- ``kv_transfer_s``: KV transfer (port queueing + wire time), NaN for colocated or 1-token requests
- ``decode_wait_s``: from prefill end until the decode instance had KV blocks for the request
- ``prefill_instance, decode_instance``: indices within their pools (-1 if never assigned)
- ``preemptions``: times the request was preempted (by recompute or swap); ``swaps``: of those, by
  swap to host memory
- ``prefix_hit_tokens``: prompt tokens reused from the prefix cache at the first admission (0 without
  prefix caching)
- ``mixed_pool``: True when Splitwise's mixed pool sent the request to a decode instance that
  prefilled and decoded it (disaggregated deployments with ``mixed_pool``); its ``prefill_instance``
  is then -1 and ``decode_instance`` the borrowed instance
- ``decoded_on_prefill``: True when the mixed pool let the prefill instance decode the request itself
  (no decode instance had room for its KV); its ``decode_instance`` is then -1
- KV transfer breakdown (disaggregated; empty / 0 / NaN without a transfer; docs/interconnect.md):
  ``kv_transfer_path`` (``intra_node``, ``network``, ``host_staged``, or the ``kv_link`` kind),
  ``kv_transfer_bytes`` (on the wire, after compression), ``kv_transfer_queue_s`` (waiting for the
  ports), the uncontended steps ``kv_transfer_d2h_s``, ``kv_transfer_network_s`` (link or NIC time,
  with its fixed latency), ``kv_transfer_h2d_s``, ``kv_convert_s`` (layout conversion / re-shard),
  ``kv_compress_s`` (quantize + dequantize), and ``kv_transfer_hidden_s`` (overlapped with the prefill
  by layer-wise streaming). ``kv_transfer_s`` = queue + steps - hidden.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pdsim.core.request import Phase, Request

REQUEST_COLUMNS = [
    "deployment", "workload", "request_id", "arrival_s", "prompt_tokens", "output_tokens", "status",
    "reject_reason", "prefill_start_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s",
    "itl_max_s", "queue_s", "kv_transfer_s", "decode_wait_s", "prefill_instance", "decode_instance",
    "preemptions", "swaps", "prefix_hit_tokens", "mixed_pool", "decoded_on_prefill",
    "kv_transfer_path", "kv_transfer_bytes", "kv_transfer_queue_s", "kv_transfer_d2h_s", "kv_transfer_network_s",
    "kv_transfer_h2d_s", "kv_convert_s", "kv_compress_s", "kv_transfer_hidden_s",
]


def requests_frame(requests: list[Request], deployment: str, workload: str) -> pd.DataFrame:
    """One row per request, columns ``REQUEST_COLUMNS``, in request-id order."""
    n = len(requests)
    arr = lambda attr, dt=np.float64: np.fromiter((getattr(r, attr) for r in requests), dtype=dt, count=n)  # noqa: E731
    arrival = arr("arrival_s")
    prefill_start = arr("prefill_start_s")
    first = arr("first_token_s")
    finish = arr("finish_s")
    output = arr("output_tokens", np.int64)
    ttft = first - arrival
    e2e = finish - arrival
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(output > 1, (e2e - ttft) / (output - 1), np.nan)
    status = np.where(np.fromiter((r.phase is Phase.FINISHED for r in requests), dtype=bool, count=n), "completed", "rejected")
    df = pd.DataFrame({
        "deployment": pd.Series([deployment] * n, dtype="string"),
        "workload": pd.Series([workload] * n, dtype="string"),
        "request_id": arr("id", np.int64),
        "arrival_s": arrival,
        "prompt_tokens": arr("prompt_tokens", np.int64),
        "output_tokens": output,
        "status": pd.Series(status, dtype="string"),
        "reject_reason": pd.Series([r.reject_reason for r in requests], dtype="string"),
        "prefill_start_s": prefill_start,
        "first_token_s": first,
        "finish_s": finish,
        "ttft_s": ttft,
        "tpot_s": tpot,
        "e2e_s": e2e,
        "itl_max_s": arr("itl_max_s"),
        "queue_s": prefill_start - arrival,
        "kv_transfer_s": arr("kv_transfer_s"),
        "decode_wait_s": arr("kv_transfer_wait_s"),
        "prefill_instance": arr("prefill_instance", np.int64),
        "decode_instance": arr("decode_instance", np.int64),
        "preemptions": arr("preemptions", np.int64),
        "swaps": arr("swaps", np.int64),
        "prefix_hit_tokens": arr("prefix_hit_tokens", np.int64),
        "mixed_pool": arr("mixed_pool", bool),
        "decoded_on_prefill": arr("decoded_on_prefill", bool),
        "kv_transfer_path": pd.Series([r.kv_transfer_path for r in requests], dtype="string"),
        "kv_transfer_bytes": arr("kv_transfer_bytes", np.int64),
        "kv_transfer_queue_s": arr("kv_transfer_queue_s"),
        "kv_transfer_d2h_s": arr("kv_transfer_d2h_s"),
        "kv_transfer_network_s": arr("kv_transfer_network_s"),
        "kv_transfer_h2d_s": arr("kv_transfer_h2d_s"),
        "kv_convert_s": arr("kv_convert_s"),
        "kv_compress_s": arr("kv_compress_s"),
        "kv_transfer_hidden_s": arr("kv_transfer_hidden_s"),
    })
    return df.sort_values("request_id", kind="stable").reset_index(drop=True)
