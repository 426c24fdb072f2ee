"""Workload section of an experiment: trace replay or synthetic (Poisson / Gamma) arrivals.

YAML examples (paths are relative to the experiment YAML's directory)::

    workload:
      kind: trace
      path: ../traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv
      rate_scale: 2.0          # twice the trace's request rate (arrival times halved)
      window_start_s: 600
      window_duration_s: 300

    workload:
      kind: gamma
      rate_rps: 4.0
      cv: 2.0
      duration_s: 600
      lengths: {kind: trace, path: ../traces/mooncake/conversation_trace.jsonl}

The models are built into a frame of requests by :func:`pdsim.workload.build_workload`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FixedLengths",
    "GammaWorkload",
    "LengthSpec",
    "PoissonWorkload",
    "TraceFormat",
    "TraceLengths",
    "TraceWorkload",
    "WorkloadSpec",
]

TraceFormat = Literal["auto", "azure", "mooncake", "csv", "jsonl"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FixedLengths(_Frozen):
    """Every request has the same prompt and output length.

    Attributes:
        prompt_tokens: prompt length in tokens, >= 1.
        output_tokens: generated tokens per request, >= 1.
    """

    kind: Literal["fixed"]
    prompt_tokens: int = Field(ge=1)
    output_tokens: int = Field(ge=1)


class TraceLengths(_Frozen):
    """(prompt, output) length pairs sampled jointly, uniformly with replacement, from a trace's rows.

    Only the lengths are used; the trace's arrival times (and Mooncake ``hash_ids``) are ignored.

    Attributes:
        path: trace file, relative to the experiment YAML's directory (or absolute).
        format: trace format (see :func:`pdsim.workload.load_trace`).
    """

    kind: Literal["trace"]
    path: str = Field(min_length=1)
    format: TraceFormat = "auto"


LengthSpec = Annotated[Union[FixedLengths, TraceLengths], Field(discriminator="kind")]


class TraceWorkload(_Frozen):
    """Open-loop replay of a request trace.

    The window ``[window_start_s, window_start_s + window_duration_s)`` is taken on the trace's own
    time axis (seconds since its first request); arrivals keep their offset from ``window_start_s``
    (the window start becomes t = 0), are then divided by ``rate_scale``, and the first
    ``max_requests`` are kept.

    Attributes:
        path: trace file, relative to the experiment YAML's directory (or absolute).
        format: trace format (see :func:`pdsim.workload.load_trace`).
        rate_scale: request-rate multiplier, > 0; arrival times are divided by it.
        window_start_s: start of the replayed window on the trace's time axis, seconds, >= 0.
        window_duration_s: length of the window in trace seconds (> 0); None = to the end.
        max_requests: keep at most this many requests (>= 1); None = all in the window.
    """

    kind: Literal["trace"]
    path: str = Field(min_length=1)
    format: TraceFormat = "auto"
    rate_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    window_start_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    window_duration_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_requests: int | None = Field(default=None, ge=1)


class _SyntheticWorkload(_Frozen):
    """Fields shared by the synthetic arrival processes; exactly one of duration_s / num_requests."""

    rate_rps: float = Field(gt=0, allow_inf_nan=False)
    duration_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    num_requests: int | None = Field(default=None, ge=1)
    lengths: LengthSpec

    @model_validator(mode="after")
    def _exactly_one_stop(self) -> "_SyntheticWorkload":
        if (self.duration_s is None) == (self.num_requests is None):
            raise ValueError(
                f"give exactly one of duration_s or num_requests, got duration_s={self.duration_s}, "
                f"num_requests={self.num_requests}"
            )
        return self


class PoissonWorkload(_SyntheticWorkload):
    """Poisson arrivals (exponential gaps with mean 1 / rate_rps).

    Attributes:
        rate_rps: mean arrival rate, requests per second, > 0.
        duration_s: generate arrivals with t < duration_s seconds; exclusive with num_requests.
        num_requests: generate exactly this many requests (>= 1); exclusive with duration_s.
        lengths: prompt / output lengths.
    """

    kind: Literal["poisson"]


class GammaWorkload(_SyntheticWorkload):
    """Gamma renewal arrivals: gaps with mean 1 / rate_rps and coefficient of variation cv.

    Shape = 1 / cv**2, scale = 1 / (rate_rps * shape); cv > 1 is burstier than Poisson.

    Attributes:
        rate_rps: mean arrival rate, requests per second, > 0.
        cv: coefficient of variation of the inter-arrival gaps, > 0.
        duration_s: generate arrivals with t < duration_s seconds; exclusive with num_requests.
        num_requests: generate exactly this many requests (>= 1); exclusive with duration_s.
        lengths: prompt / output lengths.
    """

    kind: Literal["gamma"]
    cv: float = Field(gt=0, allow_inf_nan=False)


WorkloadSpec = Annotated[Union[TraceWorkload, PoissonWorkload, GammaWorkload], Field(discriminator="kind")]
