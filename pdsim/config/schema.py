"""The experiment YAML, as pydantic models (unknown keys are errors; ``kind`` picks a variant).

An experiment is a model, SLOs, a list of deployments and a mapping of named workloads; ``pdsim run``
simulates every deployment x workload pair. See ``experiments/tiny.yaml`` for a small example and
``experiments/splitwise.yaml`` for the flagship. Paths are relative to the YAML file's directory.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pdsim.config.workload import WorkloadSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """The served model.

    Attributes:
        name: a name from ``pdsim/data/models.yaml`` (e.g. ``Llama-2-70b-hf``), or any name when
            ``hf_config`` is given.
        hf_config: path to a HF ``config.json`` (overrides the catalog).
        max_context_tokens: like vLLM's ``max_model_len``; defaults to the model's
            ``max_position_embeddings``. Requests with prompt + output above it are rejected.
        dtype: weight and KV-cache precision.
    """

    name: str
    hf_config: str | None = None
    max_context_tokens: int | None = Field(default=None, ge=1)
    dtype: Literal["fp16", "bf16"] = "fp16"


class SchedulerConfig(_Strict):
    """Batch scheduler and KV cache of each instance (vLLM's knobs and defaults).

    Attributes:
        max_num_batched_tokens: token budget of one iteration. Without chunked prefill a request must
            fit it whole, including a re-prefill after preemption: requests with
            prompt + output - 1 above it are rejected (reason ``exceeds_max_num_batched_tokens``).
        max_num_seqs: most requests in one iteration.
        block_size: tokens per KV block.
        gpu_memory_utilization: fraction of GPU memory the engine may use.
        watermark_fraction: fraction of KV blocks kept free when admitting new prefills.
        activation_reserve_gib: activation memory per GPU; default: an estimate from the model shape
            and ``max_num_batched_tokens`` (see ``pdsim.sim.cluster.activation_reserve_bytes``).
        max_window_iterations: most decode iterations simulated as one event when the batch does not
            change; 1 steps every iteration (results are identical; larger is faster).
    """

    max_num_batched_tokens: int = Field(default=8192, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)
    block_size: int = Field(default=16, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    watermark_fraction: float = Field(default=0.01, ge=0, lt=0.5)
    activation_reserve_gib: float | None = Field(default=None, ge=0)
    max_window_iterations: int = Field(default=1_000_000, ge=1)


class SplitwiseTableLatency(_Strict):
    """Latency interpolated from Splitwise's measured ``perf_model.csv`` (``pdsim.latency.table``).

    Attributes:
        path: the CSV.
        model_key / hardware_key: the file's ``model`` / ``hardware`` values; default from the model
            and GPU names (``Llama-2-70b-hf`` -> ``llama2-70b``, ``A100-80GB-SXM`` -> ``a100-80gb``,
            ``H100-SXM`` -> ``h100-80gb``, ``bloom`` -> ``bloom-176b``).
        scale: a named multiplicative correction, recorded in the manifest (default 1).
    """

    kind: Literal["splitwise_table"]
    path: str
    model_key: str | None = None
    hardware_key: str | None = None
    scale: float = Field(default=1.0, gt=0)


class SchedulerOverrides(_Strict):
    """Per-pool overrides of ``SchedulerConfig`` (same fields, all optional)."""

    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    block_size: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    watermark_fraction: float | None = Field(default=None, ge=0, lt=0.5)
    activation_reserve_gib: float | None = Field(default=None, ge=0)
    max_window_iterations: int | None = Field(default=None, ge=1)

    def over(self, base: SchedulerConfig) -> SchedulerConfig:
        return base.model_copy(update={k: v for k, v in self.model_dump().items() if v is not None})


class ConstantLatency(_Strict):
    """Every iteration takes ``iteration_s`` (analytic checks; see ``pdsim.latency.constant``)."""

    kind: Literal["constant"]
    iteration_s: float = Field(gt=0)


LatencyConfig = Annotated[Union[SplitwiseTableLatency, ConstantLatency], Field(discriminator="kind")]


class PoolConfig(_Strict):
    """Instances of one GPU type and role.

    Attributes:
        gpu: a GPU name from ``pdsim/data/gpu_specs.csv`` (e.g. ``H100-SXM``).
        tp: tensor-parallel GPUs per instance.
        instances: how many instances.
        router: ``jsq`` (join the shortest queue by outstanding tokens) or ``round_robin``.
        latency: the latency model.
        scheduler: overrides of the experiment's scheduler defaults for this pool.
        price_usd_per_gpu_hour: overrides the catalog price.
    """

    gpu: str
    tp: int = Field(default=1, ge=1)
    instances: int = Field(ge=1)
    router: Literal["jsq", "round_robin"] = "jsq"
    latency: LatencyConfig
    scheduler: SchedulerOverrides = SchedulerOverrides()
    price_usd_per_gpu_hour: float | None = Field(default=None, ge=0)


class LinkConfig(_Strict):
    """The KV-transfer link of each instance port (see ``pdsim.hardware.links`` for the defaults)."""

    kind: Literal["nvlink", "infiniband", "ethernet"] = "infiniband"
    bandwidth_gbps: float | None = Field(default=None, gt=0)
    latency_s: float | None = Field(default=None, ge=0)


class ColocatedDeployment(_Strict):
    """Every instance prefills and decodes (continuous batching)."""

    kind: Literal["colocated"]
    name: str
    pool: PoolConfig


class DisaggregatedDeployment(_Strict):
    """Prefill pool and decode pool; the KV cache moves over ``kv_link`` after prefill."""

    kind: Literal["disaggregated"]
    name: str
    prefill: PoolConfig
    decode: PoolConfig
    kv_link: LinkConfig = LinkConfig()


DeploymentConfig = Annotated[Union[ColocatedDeployment, DisaggregatedDeployment], Field(discriminator="kind")]


class SloConfig(_Strict):
    """Latency targets.

    A request meets the SLOs when its TTFT <= ``ttft_s`` and its TPOT <= ``tpot_s`` (a 1-token request
    has no TPOT and is judged on TTFT). SLO attainment is the fraction of all requests (rejected ones
    count as misses) that meet them. The deployment meets the SLOs when the ``percentile``-th
    percentiles of TTFT and TPOT are within target, i.e. attainment of each >= percentile.
    """

    ttft_s: float = Field(gt=0)
    tpot_s: float = Field(gt=0)
    percentile: float = Field(default=90.0, gt=0, le=100)
    attainment_target: float = Field(default=0.9, gt=0, le=1)


class Experiment(_Strict):
    """A whole experiment file."""

    name: str
    description: str = ""
    seed: int = Field(default=0, ge=0)
    model: ModelConfig
    slo: SloConfig
    scheduler: SchedulerConfig = SchedulerConfig()
    deployments: list[DeploymentConfig] = Field(min_length=1)
    workloads: dict[str, WorkloadSpec] = Field(min_length=1)

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_name(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _unique_names(self):
        seen: set[str] = set()
        for i, d in enumerate(self.deployments):
            if d.name in seen:
                raise ValueError(f"deployments[{i}].name: duplicate deployment name {d.name!r}")
            seen.add(d.name)
        return self
