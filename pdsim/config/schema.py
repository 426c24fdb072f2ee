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
        dtype: weight precision (``fp8``: W8A8 weights with bf16 activations).
        kv_dtype: KV-cache precision; default ``dtype`` (``bf16`` when ``dtype`` is ``fp8``).
    """

    name: str
    hf_config: str | None = None
    max_context_tokens: int | None = Field(default=None, ge=1)
    dtype: Literal["fp16", "bf16", "fp8", "fp32"] = "fp16"
    kv_dtype: Literal["fp16", "bf16", "fp8", "fp32"] | None = None

    @property
    def effective_kv_dtype(self) -> str:
        return self.kv_dtype or ("bf16" if self.dtype == "fp8" else self.dtype)


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


class OpLevelLatency(_Strict):
    """Iteration time composed from op-level profiles (``pdsim.latency.oplevel``).

    Attributes:
        profile: a profile name under ``gpu_profiles/`` (or a directory relative to the YAML), or a
            list of them: each table is read from the first profile that has it (e.g. a Vidur profile
            for GEMMs, then an aiconfigurator profile for attention). ``pdsim profiles list`` shows them.
        dtype / kv_dtype: precision of the GEMMs and of the KV cache; default: the model's.
        iteration_overhead_s: time per iteration outside the profiled kernels (scheduling, input
            preparation, sampling); default 0.
        all_reduce_backend: ``auto`` (the fastest measured backend at each message size) or a backend
            name of the profile's collective table (e.g. ``nccl``).
    """

    kind: Literal["op_level"]
    profile: str | list[str]
    dtype: Literal["fp16", "bf16", "fp8", "fp32"] | None = None
    kv_dtype: Literal["fp16", "bf16", "fp8", "fp32"] | None = None
    iteration_overhead_s: float = Field(default=0.0, ge=0)
    all_reduce_backend: str = "auto"

    @property
    def profiles(self) -> list[str]:
        return [self.profile] if isinstance(self.profile, str) else list(self.profile)

    @field_validator("profile")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("at least one profile")
        return v


LatencyConfig = Annotated[Union[SplitwiseTableLatency, ConstantLatency, OpLevelLatency], Field(discriminator="kind")]


class PoolConfig(_Strict):
    """Instances of one GPU type and role.

    Attributes:
        gpu: a GPU name from ``pdsim/data/gpu_specs.csv`` (e.g. ``H100-SXM``).
        tp: tensor-parallel GPUs per instance.
        pp: pipeline-parallel stages per instance (an instance has tp x pp GPUs; the op-level latency
            model charges the stage hand-offs; a batch passes the stages in turn).
        instances: how many instances.
        router: ``jsq`` (join the shortest queue by outstanding tokens) or ``round_robin``.
        latency: the latency model, inline or the name of an entry of the experiment's
            ``latency_models`` (so one ``--set latency_models.NAME=...`` switches every pool using it).
        scheduler: overrides of the experiment's scheduler defaults for this pool.
        price_usd_per_gpu_hour: overrides the catalog price.
    """

    gpu: str
    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    instances: int = Field(ge=1)
    router: Literal["jsq", "round_robin"] = "jsq"
    latency: LatencyConfig | str
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
    """A whole experiment file.

    ``latency_models`` names latency configs that pools refer to by name (``latency: a100``); after
    validation every pool holds the resolved config.
    """

    name: str
    description: str = ""
    seed: int = Field(default=0, ge=0)
    model: ModelConfig
    slo: SloConfig
    scheduler: SchedulerConfig = SchedulerConfig()
    latency_models: dict[str, LatencyConfig] = Field(default_factory=dict)
    deployments: list[DeploymentConfig] = Field(min_length=1)
    workloads: dict[str, WorkloadSpec] = Field(min_length=1)

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_name(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _resolve_latency_names(self):
        def resolve(pool: PoolConfig, where: str) -> PoolConfig:
            if not isinstance(pool.latency, str):
                return pool
            if pool.latency not in self.latency_models:
                raise ValueError(
                    f"{where}.latency: unknown latency model {pool.latency!r}; defined in latency_models: {sorted(self.latency_models)}"
                )
            return pool.model_copy(update={"latency": self.latency_models[pool.latency]})

        resolved = []
        for i, d in enumerate(self.deployments):
            where = f"deployments[{i}]"
            if isinstance(d, ColocatedDeployment):
                d = d.model_copy(update={"pool": resolve(d.pool, where + ".pool")})
            else:
                d = d.model_copy(update={"prefill": resolve(d.prefill, where + ".prefill"), "decode": resolve(d.decode, where + ".decode")})
            resolved.append(d)
        object.__setattr__(self, "deployments", resolved)
        return self

    @model_validator(mode="after")
    def _unique_names(self):
        seen: set[str] = set()
        for i, d in enumerate(self.deployments):
            if d.name in seen:
                raise ValueError(f"deployments[{i}].name: duplicate deployment name {d.name!r}")
            seen.add(d.name)
        return self
