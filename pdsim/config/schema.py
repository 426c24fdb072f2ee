"""The experiment YAML, as pydantic models (unknown keys are errors; ``kind`` picks a variant).

An experiment is a model, SLOs, a list of deployments and a mapping of named workloads; ``pdsim run``
simulates every deployment x workload pair. See ``experiments/tiny.yaml`` for a small example and
``experiments/splitwise.yaml`` for the flagship. Paths are relative to the YAML file's directory.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from pdsim.config.workload import WorkloadSpec
from pdsim.routing.routers import DEFAULT_BALANCE_REL, DEFAULT_CACHE_THRESHOLD, DEFAULT_PREFILL_QUEUE_TOKENS


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
        enable_chunked_prefill: split prefills into chunks within ``max_num_batched_tokens`` and mix
            them with decodes (Sarathi-Serve; vLLM v1 semantics, see ``pdsim.scheduling.batch``). Off
            by default, as in the Splitwise study this project reproduces (vLLM v1 turns it on).
        long_prefill_token_threshold: with chunking, the most tokens one request prefills in one
            iteration (vLLM's knob of the same name); 0 = no cap but the budget.
        preemption_mode: ``recompute`` (vLLM v1) or ``swap`` (vLLM v0: KV copied to host memory over
            the GPU's PCIe link and back; the copy time is charged to the iteration).
        swap_space_gib: host memory per GPU for swapped KV (vLLM's ``swap_space``, default 4 GiB).
        swap_link_gbps: host link bandwidth per GPU per direction in Gb/s for swapping; default the
            GPU's PCIe x16 rate (``GpuSpec.host_link_gbps``).
        enable_prefix_caching: keep computed prompt KV by prefix unit and reuse it (``pdsim.core.kv``);
            requests need ``hash_ids`` (Mooncake traces have them; other workloads get no hits).
        prefix_unit_tokens: tokens each ``hash_ids`` entry covers (512 in the Mooncake traces); a
            multiple of ``block_size``.
    """

    max_num_batched_tokens: int = Field(default=8192, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)
    block_size: int = Field(default=16, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    watermark_fraction: float = Field(default=0.01, ge=0, lt=0.5)
    activation_reserve_gib: float | None = Field(default=None, ge=0)
    max_window_iterations: int = Field(default=1_000_000, ge=1)
    enable_chunked_prefill: bool = False
    long_prefill_token_threshold: int = Field(default=0, ge=0)
    preemption_mode: Literal["recompute", "swap"] = "recompute"
    swap_space_gib: float = Field(default=4.0, ge=0)
    swap_link_gbps: float | None = Field(default=None, gt=0)
    enable_prefix_caching: bool = False
    prefix_unit_tokens: int = Field(default=512, ge=1)



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
    enable_chunked_prefill: bool | None = None
    long_prefill_token_threshold: int | None = Field(default=None, ge=0)
    preemption_mode: Literal["recompute", "swap"] | None = None
    swap_space_gib: float | None = Field(default=None, ge=0)
    swap_link_gbps: float | None = Field(default=None, gt=0)
    enable_prefix_caching: bool | None = None
    prefix_unit_tokens: int | None = Field(default=None, ge=1)

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
        iteration_overhead_prefill_s: the same for an iteration that prefills any token; default
            (None) ``iteration_overhead_s``.
        kernel_time_scale, kernel_time_scale_prefill: factors on the profiled kernels' time of a pure
            decode iteration (a number, or a table ``{decode batch size: factor}``, read linearly in
            log(batch size)) and of an iteration that prefills (default 1 and ``kernel_time_scale``; a
            table needs it given): an engine calibrated against the profile on a synthetic grid
            (``pdsim.live.overhead``).
        all_reduce_backend: ``auto`` (the fastest measured backend at each message size) or a backend
            name of the profile's collective table (e.g. ``nccl``).
        host_floor_s, host_floor_per_prefill_seq_s: the serving engine's host time to issue one
            iteration, fixed and per prefilled request (an eager engine launching every kernel from
            Python; ``pdsim.latency.oplevel``, "Host floor"); the iteration takes at least that long.
            Default 0 (an engine that replays CUDA graphs).
    """

    kind: Literal["op_level"]
    profile: str | list[str]
    dtype: Literal["fp16", "bf16", "fp8", "fp32"] | None = None
    kv_dtype: Literal["fp16", "bf16", "fp8", "fp32"] | None = None
    iteration_overhead_s: float = Field(default=0.0, ge=0)
    iteration_overhead_prefill_s: float | None = Field(default=None, ge=0)
    kernel_time_scale: Annotated[float, Field(gt=0)] | dict[Annotated[int, Field(ge=1)], Annotated[float, Field(gt=0)]] = 1.0
    kernel_time_scale_prefill: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _scale_table_needs_prefill(self):
        if isinstance(self.kernel_time_scale, dict) and (not self.kernel_time_scale or self.kernel_time_scale_prefill is None):
            raise ValueError("kernel_time_scale as a table {decode batch size: factor} needs at least one point and "
                             "kernel_time_scale_prefill")
        return self
    all_reduce_backend: str = "auto"
    host_floor_s: float = Field(default=0.0, ge=0)
    host_floor_per_prefill_seq_s: float = Field(default=0.0, ge=0)

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

RouterName = Literal["least_tokens", "jsq", "round_robin", "power_of_two", "prefix_aware"]


class PrefixAwareRouterConfig(_Strict):
    """The ``prefix_aware`` router with its parameters (``pdsim.routing.routers.PrefixAwareRouter``).

    Attributes:
        balance_abs_tokens: outstanding tokens by which the cache holder may exceed the least loaded
            instance before routing falls back to ``least_tokens``; default: the pool's
            ``max_num_batched_tokens`` (one full iteration of work).
        balance_rel: ... and the factor by which it may exceed it (both must be exceeded to fall
            back); default 1.5 (SGLang Model Gateway's ``balance_rel_threshold``).
        cache_threshold: least cached fraction of the prompt for cache affinity; default 0.3 (SGLang
            Model Gateway's ``cache_threshold``).
    """

    kind: Literal["prefix_aware"]
    balance_abs_tokens: int | None = Field(default=None, ge=0)
    balance_rel: float = Field(default=DEFAULT_BALANCE_REL, ge=1)
    cache_threshold: float = Field(default=DEFAULT_CACHE_THRESHOLD, ge=0, lt=1)


RouterConfig = Annotated[
    Union[Annotated[RouterName, Tag("name")], Annotated[PrefixAwareRouterConfig, Tag("prefix_aware")]],
    Discriminator(lambda v: "name" if isinstance(v, str) else "prefix_aware"),
]


def _router_spec(v):
    """Plain router names stay strings; ``{kind: NAME}`` without parameters becomes ``NAME``."""
    names = RouterName.__args__
    if isinstance(v, str) and v not in names:
        raise ValueError(f"unknown router {v!r}; expected one of {', '.join(names)}")
    if isinstance(v, dict) and v.get("kind") != "prefix_aware":
        kind = v.get("kind")
        if kind not in names:
            raise ValueError(f"unknown router kind {kind!r}; expected one of {', '.join(names)}")
        if set(v) != {"kind"}:
            raise ValueError(f"router {kind!r} takes no parameters, got {sorted(set(v) - {'kind'})}")
        return kind
    return v


class StageConfig(_Strict):
    """One pipeline stage of a pool's instances (``PoolConfig.stages``; docs/pipeline.md).

    Attributes:
        gpu: GPU type of the stage's ``tp`` GPUs; default the pool's ``gpu``.
        layers: decoder layers the stage runs (the stages' layers must sum to the model's).
        latency: the stage's latency model, inline or by name: a model of the whole model on this
            stage's GPU type, of which the stage takes its own part; default the pool's ``latency``.
        price_usd_per_gpu_hour: overrides the catalog price of the stage's GPU.
    """

    gpu: str | None = None
    layers: int = Field(ge=1)
    latency: LatencyConfig | str | None = None
    price_usd_per_gpu_hour: float | None = Field(default=None, ge=0)


class PoolConfig(_Strict):
    """Instances of one GPU type and role.

    Attributes:
        gpu: a GPU name from ``pdsim/data/gpu_specs.csv`` (e.g. ``H100-SXM``); may be left out when
            every stage names its own.
        tp: tensor-parallel GPUs per instance.
        pp: pipeline-parallel stages per instance (an instance has tp x pp GPUs). Up to ``pp`` batches
            are in flight, one per stage (docs/pipeline.md); layers split as vLLM does by default.
        stages: explicit stages (``[{gpu: H100-SXM, layers: 48}, {gpu: A100-80GB-SXM, layers: 32}]``):
            their layers and GPU types, possibly different (each stage is ``tp`` GPUs of its type);
            ``pp`` is then their count.
        instances: how many instances.
        router: how the pool's instances share requests: ``least_tokens`` (fewest outstanding
            tokens; the default), ``jsq`` (fewest outstanding requests), ``round_robin``,
            ``power_of_two`` (the lighter of two random instances), ``prefix_aware`` (longest cached
            prefix unless that unbalances the pool), or ``{kind: prefix_aware, ...}`` with parameters.
            See docs/routing.md.
        latency: the latency model, inline or the name of an entry of the experiment's
            ``latency_models`` (so one ``--set latency_models.NAME=...`` switches every pool using it).
        scheduler: overrides of the experiment's scheduler defaults for this pool.
        price_usd_per_gpu_hour: overrides the catalog price.
    """

    gpu: str | None = None
    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    stages: list[StageConfig] | None = None
    instances: int = Field(ge=1)
    router: RouterConfig = "least_tokens"
    latency: LatencyConfig | str
    scheduler: SchedulerOverrides = SchedulerOverrides()
    price_usd_per_gpu_hour: float | None = Field(default=None, ge=0)

    _check_router = field_validator("router", mode="before")(_router_spec)

    @model_validator(mode="after")
    def _gpu_and_stages(self):
        if self.stages is None:
            if self.gpu is None:
                raise ValueError("gpu: required (or give every stage its gpu under stages)")
            return self
        n = len(self.stages)
        if n < 2:
            raise ValueError(f"stages: at least 2 stages, got {n} (one stage is a pool without PP: set gpu)")
        if "pp" in self.model_fields_set and self.pp != n:
            raise ValueError(f"pp: {self.pp} does not match the {n} stages given")
        for i, st in enumerate(self.stages):
            if st.gpu is None and self.gpu is None:
                raise ValueError(f"stages[{i}].gpu: required when the pool has no gpu")
        gpus = {st.gpu or self.gpu for st in self.stages}
        if self.price_usd_per_gpu_hour is not None and len(gpus) > 1:
            raise ValueError(
                f"price_usd_per_gpu_hour: ambiguous for stages of GPU types {sorted(gpus)}; set it per stage"
            )
        object.__setattr__(self, "pp", n)
        return self


class LinkConfig(_Strict):
    """The KV-transfer link of each instance port (see ``pdsim.hardware.links`` for the defaults)."""

    kind: Literal["nvlink", "infiniband", "ethernet"] = "infiniband"
    bandwidth_gbps: float | None = Field(default=None, gt=0)
    latency_s: float | None = Field(default=None, ge=0)


class TopologyConfig(_Strict):
    """Nodes, intra-node links, NICs and the KV transfer path (``pdsim.hardware.topology``,
    docs/interconnect.md). Replaces ``kv_link`` on a disaggregated deployment.

    Attributes:
        gpus_per_node: GPUs per node (default 8, as DGX/HGX H100 and MI300X platforms).
        placement: ``pack`` (prefill instances, then decode instances, fill nodes in order; a pool of
            another GPU type starts a new node) or ``separate`` (the decode pool always starts a new node).
        intra_node: ``auto`` (from the GPU: NVIDIA NVLink or PCIe, AMD xGMI), ``nvlink``, ``xgmi``, ``pcie``.
        intra_node_gbytes_per_s: GB/s per GPU pair and direction (default per kind and GPU).
        intra_node_latency_s: fixed cost of an intra-node transfer (default 2 us).
        nic: ``infiniband``, ``roce`` or ``ethernet``; ``nic_gbps``: Gb/s of one NIC (default 400 / 400 /
            100); ``nics_per_node``: default ``gpus_per_node`` (one NIC per GPU); ``nic_latency_s``: fixed
            cost per transfer (default 5 / 5 / 20 us).
        path: ``auto`` (``host_staged`` when the two pools' GPU vendors differ, else ``direct``),
            ``direct`` (GPU-direct: intra-node link or RDMA NICs) or ``host_staged`` (d2h, NICs, h2d).
        layerwise: stream the KV layer by layer during the prefill (only the tail remains after it).
        kv_compression_bits: quantize the KV to 8 or 4 bits on the wire (below the KV dtype's bits).
    """

    gpus_per_node: int = Field(default=8, ge=1)
    placement: Literal["pack", "separate"] = "pack"
    intra_node: Literal["auto", "nvlink", "xgmi", "pcie"] = "auto"
    intra_node_gbytes_per_s: float | None = Field(default=None, gt=0)
    intra_node_latency_s: float | None = Field(default=None, ge=0)
    nic: Literal["infiniband", "roce", "ethernet"] = "infiniband"
    nic_gbps: float | None = Field(default=None, gt=0)
    nics_per_node: int | None = Field(default=None, ge=1)
    nic_latency_s: float | None = Field(default=None, ge=0)
    path: Literal["auto", "direct", "host_staged"] = "auto"
    layerwise: bool = False
    kv_compression_bits: Literal[4, 8] | None = None

    @model_validator(mode="after")
    def _nics_fit(self):
        if self.nics_per_node is not None and self.nics_per_node > self.gpus_per_node:
            raise ValueError(f"nics_per_node ({self.nics_per_node}) must be <= gpus_per_node ({self.gpus_per_node})")
        return self


class ColocatedDeployment(_Strict):
    """Every instance prefills and decodes (continuous batching)."""

    kind: Literal["colocated"]
    name: str
    pool: PoolConfig


class MixedPoolConfig(_Strict):
    """Splitwise's mixed pool (``pdsim.routing.routers.MixedPool``; docs/routing.md).

    When every prefill instance's outstanding tokens plus the new prompt exceed
    ``prefill_queue_tokens``, the request is prefilled and decoded by the least loaded decode
    instance (no KV transfer); the ``mixed_pool`` request column marks it.

    Attributes:
        prefill_queue_tokens: overload threshold, tokens; default 8192 (splitwise-sim's
            ``prompt_max_pending_batch_tokens`` in ``configs/orchestrator_repo/schedulers/mixed_pool.yml``).
        decode_on_prefill: the other direction: when no decode instance can reserve a prefilled
            request's KV, the prefill instance decodes it itself if it has room for all of it
            (``decoded_on_prefill`` request column).
    """

    prefill_queue_tokens: int = Field(default=DEFAULT_PREFILL_QUEUE_TOKENS, ge=1)
    decode_on_prefill: bool = True


class DisaggregatedDeployment(_Strict):
    """Prefill pool and decode pool; the KV cache moves over ``kv_link`` after prefill.

    ``mixed_pool`` (default off) lets decode instances take whole requests when the prefill pool is
    overloaded (Splitwise's mixed pool)."""

    kind: Literal["disaggregated"]
    name: str
    prefill: PoolConfig
    decode: PoolConfig
    kv_link: LinkConfig = LinkConfig()
    mixed_pool: MixedPoolConfig | None = None
    topology: TopologyConfig | None = None  # nodes, links, NICs, KV path (replaces kv_link when set)

    @model_validator(mode="after")
    def _link_or_topology(self):
        if self.topology is not None and "kv_link" in self.model_fields_set:
            raise ValueError("set either kv_link (one link per instance port) or topology, not both")
        return self


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


class SweepConfig(_Strict):
    """The ``sweep:`` block of an experiment: the grid ``pdsim sweep`` runs (see docs/sweep.md).

    ``grid`` maps a dotted key (the same paths as ``--set`` / ``--grid``: list items by ``name`` or
    index) to the non-empty list of its values; the points are the cross product, in file order with
    the last key varying fastest. ``pdsim run`` ignores the block (it runs the base experiment). The
    block is not part of a run's resolved config (``exclude=True`` on ``Experiment.sweep``), so a point
    hashes the same whether its values came from this block or from ``--grid``.
    """

    grid: dict[str, Annotated[list, Field(min_length=1)]] = Field(min_length=1)

    @field_validator("grid")
    @classmethod
    def _keys(cls, v: dict) -> dict:
        for key in v:
            if not key.strip() or any(not part for part in key.split(".")):
                raise ValueError(f"grid key {key!r}: expected a dotted path such as scheduler.max_num_seqs")
            if key.split(".")[0] == "sweep":
                raise ValueError(f"grid key {key!r}: the sweep block cannot sweep itself")
        return v


class ExperimentHeader(_Strict):
    """What every experiment-like file (``pdsim run`` experiments, ``pdsim search`` files) starts with:
    a name, the seed, the model, the SLOs, scheduler defaults and named latency models."""

    name: str
    description: str = ""
    seed: int = Field(default=0, ge=0)
    model: ModelConfig
    slo: SloConfig
    scheduler: SchedulerConfig = SchedulerConfig()
    latency_models: dict[str, LatencyConfig] = Field(default_factory=dict)

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_name(cls, v):
        return {"name": v} if isinstance(v, str) else v

    def named_latency(self, value, where: str):
        """``value`` itself, or the ``latency_models`` entry it names.

        Raises:
            ValueError: an unknown name (naming ``where`` and the defined names).
        """
        if not isinstance(value, str):
            return value
        if value not in self.latency_models:
            raise ValueError(
                f"{where}: unknown latency model {value!r}; defined in latency_models: {sorted(self.latency_models)}")
        return self.latency_models[value]


class Experiment(ExperimentHeader):
    """A whole experiment file.

    ``latency_models`` names latency configs that pools refer to by name (``latency: a100``); after
    validation every pool holds the resolved config.
    """

    deployments: list[DeploymentConfig] = Field(min_length=1)
    workloads: dict[str, WorkloadSpec] = Field(min_length=1)
    # Only `pdsim sweep` reads it; excluded from model_dump, so resolved configs and point hashes ignore it.
    sweep: SweepConfig | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _resolve_latency_names(self):
        def resolve(pool: PoolConfig, where: str) -> PoolConfig:
            if pool.stages is not None and any(isinstance(st.latency, str) for st in pool.stages):
                stages = [st.model_copy(update={"latency": self.named_latency(st.latency, f"{where}.stages[{j}].latency")})
                          if isinstance(st.latency, str) else st for j, st in enumerate(pool.stages)]
                pool = pool.model_copy(update={"stages": stages})
            if not isinstance(pool.latency, str):
                return pool
            return pool.model_copy(update={"latency": self.named_latency(pool.latency, f"{where}.latency")})

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
