"""The request stream of a live run or a replay: a trace read with pdsim's trace loaders, optionally
capped in length, and the SLOs it is judged against. No torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from pdsim.config.schema import SloConfig
from pdsim.config.workload import TraceWorkload
from pdsim.errors import ConfigError
from pdsim.workload import build_workload


def trace_requests(*, trace: Path, trace_format: str | None, rate_scale: float, window_start_s: float,
                   window_duration_s: float | None, max_requests: int | None, max_prompt_tokens: int | None,
                   max_output_tokens: int | None, seed: int) -> tuple[TraceWorkload, pd.DataFrame]:
    """The workload spec and the trace's requests (columns of ``pdsim.workload.build_workload``), prompts
    and outputs capped at ``max_prompt_tokens`` / ``max_output_tokens`` when given.

    Raises:
        ConfigError: an invalid option value (named), or a trace error; an empty result.
    """
    for name, v in (("--max-prompt-tokens", max_prompt_tokens), ("--max-output-tokens", max_output_tokens)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    try:
        spec = TraceWorkload(kind="trace", path=str(trace), format=trace_format, rate_scale=rate_scale,
                             window_start_s=window_start_s, window_duration_s=window_duration_s,
                             max_requests=max_requests)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None
    workload = build_workload(spec, Path.cwd(), np.random.SeedSequence(seed))
    if max_prompt_tokens is not None:
        workload["prompt_tokens"] = workload["prompt_tokens"].clip(upper=max_prompt_tokens)
    if max_output_tokens is not None:
        workload["output_tokens"] = workload["output_tokens"].clip(upper=max_output_tokens)
    if workload.empty:
        raise ConfigError("the workload holds no requests")
    return spec, workload


def slo_config(ttft_s: float, tpot_s: float, percentile: float) -> SloConfig:
    """The SLOs from command-line values. Raises ConfigError naming a bad value."""
    try:
        return SloConfig(ttft_s=ttft_s, tpot_s=tpot_s, percentile=percentile)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(map(str, err['loc']))}: {err['msg']}, got {err.get('input')!r}"
