"""Workload ring: request traces (Azure LLM 2023, Mooncake, generic CSV / JSONL) and synthetic arrivals.

Public API:

- :func:`load_trace` — read and validate a trace file into a frame of (arrival_s, prompt_tokens,
  output_tokens[, hash_ids]).
- :func:`poisson_arrivals_s`, :func:`gamma_arrivals_s` — synthetic arrival times from a passed-in
  ``numpy.random.Generator``.
- :func:`build_workload` — a workload spec from the experiment config -> the frame of requests to replay.

Nothing here is cached or loaded at import time.
"""

from pdsim.workload.build import build_workload
from pdsim.workload.synthetic import gamma_arrivals_s, poisson_arrivals_s
from pdsim.workload.traces import TRACE_FORMATS, load_trace

__all__ = ["TRACE_FORMATS", "build_workload", "gamma_arrivals_s", "load_trace", "poisson_arrivals_s"]
