"""Workload section of an experiment: trace replay, synthetic (Poisson / Gamma) arrivals, or closed loop.

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

    workload:
      kind: closed_loop        # N clients, each sends its next request when the previous one ends
      clients: 16
      num_requests: 500
      think_time_s: 0.0
      lengths: {kind: trace, path: ../traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv}

Trace, Poisson and Gamma workloads are *open loop*: arrival times are inputs. A closed-loop workload's
arrival times are outputs of the simulation (docs/workloads.md).

The models are built into a frame of requests by :func:`pdsim.workload.build_workload`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ClosedLoopWorkload",
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
    """(prompt, output) length pairs taken jointly from a trace's rows.

    Only the lengths are used; the trace's arrival times (and Mooncake ``hash_ids``) are ignored.

    Attributes:
        path: trace file, relative to the experiment YAML's directory (or absolute).
        format: trace format (see :func:`pdsim.workload.load_trace`).
        sampling: ``uniform`` (default): rows drawn uniformly with replacement, from the workload's
            seed; ``sequential``: request ``i`` takes the trace's row ``i`` (modulo the row count,
            wrapping around after the last row), no randomness; this sends the same requests, in the
            same order, as ``pdsim replay`` or benchmark_serving given that trace.
    """

    kind: Literal["trace"]
    path: str = Field(min_length=1)
    format: TraceFormat = "auto"
    sampling: Literal["uniform", "sequential"] = "uniform"


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


class ClosedLoopWorkload(_Frozen):
    """Closed loop: ``clients`` concurrent clients, each sending its next request when its previous one ends.

    This is what serving benchmarks measure in concurrency mode: vLLM's ``benchmark_serving.py
    --max-concurrency N`` (with ``--request-rate inf``) and NVIDIA genai-perf / aiperf
    ``--concurrency N``. A request ends when it finishes or is rejected; its client then waits the think
    time and submits the next request, whose ``arrival_s`` is that submission time. Requests are
    numbered in submission order and request ``i`` takes row ``i`` of a pre-drawn sequence of
    (prompt, output, think time) rows (:class:`pdsim.workload.closed_loop.ClosedLoopRequests`): the
    next free client takes the next row, as benchmark_serving's clients take the next prompt of its
    list, so ``num_requests`` runs exactly the same requests on every deployment.

    Stop rule: at least one of ``num_requests`` (submit at most this many in total) and
    ``duration_s`` (submit nothing at or after this time); with both, whichever comes first. Requests
    submitted before the stop all run to completion (nothing is cut off), so the run's span can exceed
    ``duration_s`` by the longest request.

    Attributes:
        clients: concurrent clients N, >= 1; never more than N requests are outstanding.
        lengths: prompt / output lengths of the rows (fixed, or drawn from a trace's rows).
        num_requests: total requests submitted (>= 1); None = no limit (then duration_s is needed).
        duration_s: no request is submitted at t >= duration_s seconds (> 0); None = no limit.
        think_time_s: pause between the end of a client's request and its next submission, seconds,
            >= 0 (default 0, as benchmark_serving and genai-perf, which send back to back).
        think_time_distribution: ``fixed`` (every pause is ``think_time_s``) or ``exponential``
            (i.i.d. exponential pauses with mean ``think_time_s``, the classic interactive-user model
            of closed queueing networks; needs ``think_time_s > 0``).
        ramp_up_s: client ``c`` (0-based) sends its first request at ``c * ramp_up_s / clients``;
            default 0: all clients start at t = 0, as benchmark_serving does.
    """

    kind: Literal["closed_loop"]
    clients: int = Field(ge=1)
    lengths: LengthSpec
    num_requests: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    think_time_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    think_time_distribution: Literal["fixed", "exponential"] = "fixed"
    ramp_up_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> "ClosedLoopWorkload":
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give num_requests, duration_s or both (the stop rule), got neither")
        if self.think_time_distribution == "exponential" and self.think_time_s == 0:
            raise ValueError("think_time_distribution 'exponential' needs think_time_s > 0 (its mean), got 0")
        return self


WorkloadSpec = Annotated[
    Union[TraceWorkload, PoissonWorkload, GammaWorkload, ClosedLoopWorkload], Field(discriminator="kind")
]
