"""From configuration to a deployment plan: resolved model, GPUs, latency models, KV capacity, price.

A plan is built once per deployment and is read-only during a run; ``build_latency`` makes a fresh
latency model per simulation so lookup counts are per run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pdsim.config.load import LoadedExperiment
from pdsim.config.schema import (
    ColocatedDeployment,
    ConstantLatency,
    DisaggregatedDeployment,
    OpLevelLatency,
    PoolConfig,
    SchedulerConfig,
    SplitwiseTableLatency,
)
from pdsim.core.kv import blocks_for
from pdsim.core.request import RejectReason
from pdsim.core.memory import activation_reserve_bytes, kv_capacity_blocks
from pdsim.errors import CapacityError, ConfigError, ProfileError
from pdsim.hardware.gpus import GpuSpec, load_gpu_catalog, lookup_gpu
from pdsim.hardware.links import LINK_DEFAULTS, LinkSpec
from pdsim.hardware.topology import TopologyPlan, resolve_topology
from pdsim.latency.base import LatencyModel, pp_layer_split
from pdsim.latency.constant import ConstantLatencyModel
from pdsim.latency.oplevel import OpLevelModel
from pdsim.latency.stages import StagedLatencyModel
from pdsim.latency.table import GPU_KEYS, MODEL_KEYS, SplitwiseTableModel
from pdsim.models.arch import ModelSpec, dtype_bytes, load_model_catalog, model_from_hf_config
from pdsim.profiles.format import find_profile, load_profile
from pdsim.routing.routers import MixedPool

GIB = 1024**3


@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage of a pool configured with ``stages`` (docs/pipeline.md).

    Attributes:
        gpu: the stage's GPU type (the stage has ``tp`` of them).
        layers: decoder layers it runs.
        weight_bytes_per_gpu, kv_bytes_per_token_per_gpu: its memory arithmetic (its layers only; the
            first stage also holds the embedding, the last the final norm and LM head).
        capacity_blocks: KV blocks its GPUs hold for its layers.
        price_usd_per_gpu_hour: price of one of its GPUs.
        latency_source: its latency model's source (a whole-model model on this GPU type).
    """

    gpu: GpuSpec
    layers: int
    weight_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    capacity_blocks: int
    price_usd_per_gpu_hour: float
    latency_source: tuple


@dataclass(frozen=True)
class PoolPlan:
    """One pool, resolved.

    Attributes:
        role: ``colocated``, ``prefill`` or ``decode``.
        gpu: the GPU spec.
        tp, pp, instances: from the config (an instance has tp x pp GPUs).
        scheduler: the effective scheduler settings.
        capacity_blocks: KV blocks per instance.
        weight_bytes_per_gpu, activation_bytes_per_gpu, kv_bytes_per_token_per_gpu: memory arithmetic.
        price_usd_per_gpu_hour: price used for cost (the mean over stages for ``stages`` pools).
        stage_layers: decoder layers per PP stage (vLLM's split unless ``stages`` gives them).
        stages: per-stage plans when the config gives ``stages`` (then ``gpu`` is stage 0's, memory
            figures are the most loaded stage's, ``capacity_blocks`` the minimum over stages).
    """

    role: str
    config: PoolConfig
    gpu: GpuSpec
    tp: int
    pp: int
    instances: int
    scheduler: SchedulerConfig
    capacity_blocks: int
    weight_bytes_per_gpu: int
    activation_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    price_usd_per_gpu_hour: float
    latency_source: tuple
    latency_source_kinds: tuple[str, ...] = ()
    stage_layers: tuple[int, ...] = ()
    stages: tuple[StagePlan, ...] = ()

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.instances

    @property
    def gpu_label(self) -> str:
        """The GPU type, or the stages' types joined by ``+`` (``H100-SXM+A100-80GB-SXM``)."""
        return "+".join(st.gpu.name for st in self.stages) if self.stages else self.gpu.name

    @property
    def derived(self) -> bool:
        """True when the latency comes from a derived (not measured) profile."""
        return "derived" in self.latency_source_kinds

    @property
    def usd_per_hour(self) -> float:
        if self.stages:  # each stage's tp GPUs at its own price
            return self.instances * self.tp * sum(st.price_usd_per_gpu_hour for st in self.stages)
        return self.gpus * self.price_usd_per_gpu_hour

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.scheduler.block_size

    @property
    def watermark_blocks(self) -> int:
        return int(self.capacity_blocks * self.scheduler.watermark_fraction)

    def build_latency(self) -> LatencyModel:
        if self.stages:
            return StagedLatencyModel([_build_latency(st.latency_source, st.gpu, self.tp, self.stage_layers) for st in self.stages])
        return _build_latency(self.latency_source, self.gpu, self.tp, self.stage_layers or (1,))

    def describe(self) -> dict:
        return {
            "role": self.role,
            "gpu": self.gpu.name,
            "tp": self.tp,
            "pp": self.pp,
            **({"stage_layers": list(self.stage_layers)} if self.pp > 1 else {}),
            **({"stages": [{"gpu": st.gpu.name, "layers": st.layers, "capacity_blocks": st.capacity_blocks,
                            "weight_gib_per_gpu": st.weight_bytes_per_gpu / GIB,
                            "price_usd_per_gpu_hour": st.price_usd_per_gpu_hour} for st in self.stages]}
               if self.stages else {}),
            "instances": self.instances,
            "latency_source_kinds": list(self.latency_source_kinds),
            "latency": self.build_latency().describe(),
            "gpus": self.gpus,
            "capacity_blocks_per_instance": self.capacity_blocks,
            "block_size": self.scheduler.block_size,
            "kv_capacity_tokens_per_instance": self.capacity_tokens,
            "weight_gib_per_gpu": self.weight_bytes_per_gpu / GIB,
            "activation_reserve_gib_per_gpu": self.activation_bytes_per_gpu / GIB,
            "kv_bytes_per_token_per_gpu": self.kv_bytes_per_token_per_gpu,
            "price_usd_per_gpu_hour": self.price_usd_per_gpu_hour,
            "usd_per_hour": self.usd_per_hour,
            "scheduler": self.scheduler.model_dump(),
        }


@dataclass(frozen=True)
class DeploymentPlan:
    """A deployment, resolved: its pools, the KV link (disaggregated) and the model."""

    name: str
    kind: str
    model: ModelSpec
    max_context_tokens: int | None
    kv_dtype_bytes: int
    pools: tuple[PoolPlan, ...]
    link: LinkSpec | None
    mixed_pool: MixedPool | None = None  # Splitwise's mixed pool (disaggregated only; None = off)
    topology: TopologyPlan | None = None  # nodes, links, KV path (disaggregated with ``topology:``; then link is None)

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    @property
    def usd_per_hour(self) -> float:
        return sum(p.usd_per_hour for p in self.pools)

    def kv_transfer_bytes(self, kv_tokens: int) -> int:
        """Bytes of KV moved for ``kv_tokens`` tokens (all layers, all KV heads)."""
        return kv_tokens * self.model.kv_bytes_per_token(self.kv_dtype_bytes)

    def reject_reason(self, prompt_tokens: int, output_tokens: int) -> str:
        """Why a request can never be served by this deployment ('' if it can)."""
        total = prompt_tokens + output_tokens
        if self.max_context_tokens is not None and total > self.max_context_tokens:
            return RejectReason.EXCEEDS_CONTEXT.value
        for pool in self.pools:
            # Without chunked prefill a request preempted late re-prefills prompt + generated tokens
            # (up to prompt + output - 1) in one iteration, so that must fit the token budget; vLLM
            # enforces the same by requiring max_num_batched_tokens >= max_model_len.
            # With chunked prefill any length fits (it is split).
            if (not pool.scheduler.enable_chunked_prefill
                    and prompt_tokens + output_tokens - 1 > pool.scheduler.max_num_batched_tokens):
                return RejectReason.EXCEEDS_TOKEN_BUDGET.value
            need = total if pool.role != "prefill" else prompt_tokens
            if blocks_for(need, pool.scheduler.block_size) > pool.capacity_blocks - pool.watermark_blocks:
                return RejectReason.EXCEEDS_KV_CAPACITY.value
        return ""

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.model.name,
            "max_context_tokens": self.max_context_tokens,
            "gpus": self.gpus,
            "usd_per_hour": self.usd_per_hour,
            "pools": [p.describe() for p in self.pools],
            "kv_link": None if self.link is None else {
                "kind": self.link.kind, "bandwidth_gbps": self.link.bandwidth_gbps, "latency_s": self.link.latency_s},
            **({} if self.topology is None else {"topology": self.topology.describe()}),
        }


def resolve_model(exp: LoadedExperiment) -> ModelSpec:
    """The experiment's model from the catalog or a HF config.json.

    Raises:
        ConfigError: unknown model name or unreadable config.json.
    """
    mc = exp.config.model
    if mc.hf_config:
        path = exp.resolve(mc.hf_config)
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{exp.path}: model.hf_config: file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{exp.path}: model.hf_config: {path} is not valid JSON: {e}") from None
        return model_from_hf_config(mc.name, cfg, where=str(path))
    catalog = load_model_catalog()
    if mc.name not in catalog:
        raise ConfigError(f"{exp.path}: model.name: unknown model {mc.name!r}; known: {', '.join(sorted(catalog))}")
    return model_from_hf_config(mc.name, catalog[mc.name], where=f"{exp.path}: model")


def _latency_source(exp: LoadedExperiment, cfg: PoolConfig, model: ModelSpec, gpu: GpuSpec, where: str) -> tuple:
    lat = cfg.latency
    if isinstance(lat, SplitwiseTableLatency):
        model_key = lat.model_key or MODEL_KEYS.get(model.name)
        hw_key = lat.hardware_key or GPU_KEYS.get(gpu.name)
        if model_key is None:
            raise ConfigError(f"{exp.path}: {where}.latency.model_key: no default for model {model.name!r}; set it")
        if hw_key is None:
            raise ConfigError(f"{exp.path}: {where}.latency.hardware_key: no default for GPU {gpu.name!r}; set it")
        return ("splitwise_table", str(exp.resolve(lat.path)), model_key, hw_key, lat.scale)
    if isinstance(lat, ConstantLatency):
        return ("constant", lat.iteration_s)
    if isinstance(lat, OpLevelLatency):
        profiles = tuple(str(find_profile(p, exp.path.parent).path.resolve()) for p in lat.profiles)
        mc = exp.config.model
        dtype = lat.dtype or mc.dtype
        kv_dtype = lat.kv_dtype or (mc.effective_kv_dtype if lat.dtype is None else None)
        return ("op_level", profiles, model, cfg.tp, cfg.pp, dtype, kv_dtype,
                (lat.iteration_overhead_s, lat.iteration_overhead_prefill_s, _hashable_scale(lat.kernel_time_scale),
                 lat.kernel_time_scale_prefill), lat.all_reduce_backend,
                (lat.host_floor_s, lat.host_floor_per_prefill_seq_s))
    raise ConfigError(f"{exp.path}: {where}.latency: unsupported kind")  # unreachable


def _pool_scheduler(exp: LoadedExperiment, cfg: PoolConfig, where: str) -> SchedulerConfig:
    """The pool's effective scheduler settings (its overrides over the experiment's), checked.

    Raises:
        ConfigError: a prefix unit that is not a whole number of KV blocks.
    """
    sched = cfg.scheduler.over(exp.config.scheduler)
    if sched.enable_prefix_caching and sched.prefix_unit_tokens % sched.block_size:
        raise ConfigError(f"{exp.path}: {where}.scheduler.prefix_unit_tokens: {sched.prefix_unit_tokens} is not a "
                          f"multiple of block_size {sched.block_size}")
    return sched


def _activation_bytes(exp: LoadedExperiment, model: ModelSpec, tp: int, sched: SchedulerConfig) -> int:
    """Activation reserve per GPU: the configured one, else the estimate from the model shape."""
    if sched.activation_reserve_gib is not None:
        return int(sched.activation_reserve_gib * GIB)
    mc = exp.config.model
    act_bytes = 2 if mc.dtype == "fp8" else dtype_bytes(mc.dtype)  # fp8 weights run with bf16 activations
    return activation_reserve_bytes(model, tp, sched.max_num_batched_tokens, sched.max_num_seqs, act_bytes)


def _kv_blocks(gpu: GpuSpec, sched: SchedulerConfig, weights: int, act: int, kv_tok: int, head: str) -> int:
    """KV blocks per GPU after weights and activations.

    Raises:
        CapacityError: not one block fits (``head`` says what does not fit where).
    """
    blocks, budget = kv_capacity_blocks(gpu.memory_bytes, sched.gpu_memory_utilization, weights, act, kv_tok, sched.block_size)
    if blocks < 1:
        raise CapacityError(
            f"{head}: per GPU {gpu.memory_bytes / 1e9:.0f} GB x {sched.gpu_memory_utilization} utilisation - weights "
            f"{weights / 1e9:.1f} GB - activations {act / 1e9:.1f} GB leaves {budget / 1e9:.2f} GB for the KV cache "
            f"(one block needs {kv_tok * sched.block_size / 1e6:.2f} MB)"
        )
    return blocks


def _price(gpu: GpuSpec, override: float | None, where: str) -> float:
    """$/GPU-hour: the override, else the catalog's.

    Raises:
        ConfigError: neither exists.
    """
    price = override if override is not None else gpu.price_usd_per_hour
    if price != price:
        raise ConfigError(f"{where}.price_usd_per_gpu_hour: the catalog has no price for {gpu.name}; set one")
    return float(price)


def _latency_kinds(source: tuple, gpu: GpuSpec, where: str) -> tuple[str, ...]:
    """Kinds of the latency data behind a source (measured / imported / derived / constant).

    Raises:
        ProfileError: an op-level profile cannot serve the source (naming ``where``).
    """
    if source[0] != "op_level":
        return {"splitwise_table": ("imported",), "constant": ("constant",)}[source[0]]
    try:
        return tuple(sorted({p.source_kind for p in _op_level_model(source, gpu).profiles}))
    except ProfileError as exc:
        raise ProfileError(f"{where}.latency: {exc}") from None


def plan_pool(exp: LoadedExperiment, cfg: PoolConfig, role: str, model: ModelSpec, where: str) -> PoolPlan:
    """Resolve one pool; builds its latency model once to validate the profile.

    Raises:
        ConfigError: unknown GPU, missing price.
        CapacityError: the model does not fit in the instance's GPUs.
        ProfileError: the latency profile cannot serve this model / GPU / TP.
    """
    if cfg.stages is not None:
        return _plan_staged_pool(exp, cfg, role, model, where)
    if cfg.pp > model.num_layers:
        raise ConfigError(f"{exp.path}: {where}.pp: {cfg.pp} stages exceed the {model.num_layers} layers of {model.name}")
    gpu = lookup_gpu(load_gpu_catalog(), cfg.gpu, f"{exp.path}: {where}.gpu")
    sched = _pool_scheduler(exp, cfg, where)
    mc = exp.config.model
    weights = model.weight_bytes_per_gpu(cfg.tp, cfg.pp, dtype_bytes(mc.dtype))
    act = _activation_bytes(exp, model, cfg.tp, sched)
    kv_tok = model.kv_bytes_per_token_per_gpu(cfg.tp, cfg.pp, dtype_bytes(mc.effective_kv_dtype))
    blocks = _kv_blocks(gpu, sched, weights, act, kv_tok,
                        f"{exp.path}: {where}: {model.name} does not fit on {gpu.name} with tp={cfg.tp} pp={cfg.pp}")
    price = _price(gpu, cfg.price_usd_per_gpu_hour, f"{exp.path}: {where}")
    source = _latency_source(exp, cfg, model, gpu, where)
    kinds = _latency_kinds(source, gpu, f"{exp.path}: {where}")
    plan = PoolPlan(
        role=role, config=cfg, gpu=gpu, tp=cfg.tp, pp=cfg.pp, instances=cfg.instances, scheduler=sched,
        capacity_blocks=blocks, weight_bytes_per_gpu=weights, activation_bytes_per_gpu=act,
        kv_bytes_per_token_per_gpu=kv_tok, price_usd_per_gpu_hour=price,
        latency_source=source, latency_source_kinds=kinds, stage_layers=pp_layer_split(model.num_layers, cfg.pp),
    )
    plan.build_latency()  # validate now, with the config location in any error
    return plan


def _build_latency(source: tuple, gpu: GpuSpec, tp: int, stage_layers: tuple[int, ...]) -> LatencyModel:
    """A fresh latency model of ``source`` on ``gpu``, split into ``stage_layers`` PP stages."""
    kind, *args = source
    match kind:
        case "splitwise_table":
            path, model_key, hw_key, scale = args
            return SplitwiseTableModel(Path(path), model_key, hw_key, tp, scale, stage_layers=stage_layers)
        case "constant":
            return ConstantLatencyModel(args[0], stage_layers)
        case "op_level":
            return _op_level_model(source, gpu).fresh()
    raise ConfigError(f"unknown latency kind {kind!r}")  # unreachable: schema restricts kinds


def _stage_kv_bytes_per_token_per_gpu(model: ModelSpec, tp: int, layers: int, kv_dtype_bytes: int) -> int:
    """KV bytes per token on one GPU of a stage of ``layers`` layers: 2 x layers x kv_heads_per_gpu x
    head_dim x bytes (``ModelSpec.kv_bytes_per_token_per_gpu`` for one stage)."""
    return 2 * layers * model.kv_heads_per_gpu(tp) * model.head_dim * kv_dtype_bytes


def _plan_staged_pool(exp: LoadedExperiment, cfg: PoolConfig, role: str, model: ModelSpec, where: str) -> PoolPlan:
    """``plan_pool`` for a pool with explicit ``stages`` (possibly of different GPU types).

    Each stage is checked on its own GPU with its own layers (weights, activation reserve, KV); the
    instance holds the fewest blocks any stage holds (every stage stores its layers' share of every
    block). Price is summed per stage; latency is per stage (``StagedLatencyModel``).
    """
    layers = tuple(st.layers for st in cfg.stages)
    if sum(layers) != model.num_layers:
        raise ConfigError(
            f"{exp.path}: {where}.stages: layers {list(layers)} sum to {sum(layers)}; {model.name} has {model.num_layers} layers"
        )
    sched = _pool_scheduler(exp, cfg, where)
    mc = exp.config.model
    nbytes = dtype_bytes(mc.dtype)
    act = _activation_bytes(exp, model, cfg.tp, sched)
    kv_nbytes = dtype_bytes(mc.effective_kv_dtype)
    catalog = load_gpu_catalog()
    pp = len(layers)
    stages = []
    kinds: set[str] = set()
    for i, st in enumerate(cfg.stages):
        w = f"{where}.stages[{i}]"
        gpu = lookup_gpu(catalog, st.gpu or cfg.gpu, f"{exp.path}: {w}.gpu")
        weights = model.stage_weight_bytes_per_gpu(cfg.tp, pp, i, st.layers, nbytes)
        kv_tok = _stage_kv_bytes_per_token_per_gpu(model, cfg.tp, st.layers, kv_nbytes)
        blocks = _kv_blocks(gpu, sched, weights, act, kv_tok,
                            f"{exp.path}: {w}: {st.layers} layers of {model.name} do not fit on {gpu.name} with tp={cfg.tp}")
        override = st.price_usd_per_gpu_hour if st.price_usd_per_gpu_hour is not None else cfg.price_usd_per_gpu_hour
        price = _price(gpu, override, f"{exp.path}: {w}")
        stage_cfg = cfg.model_copy(update={"latency": st.latency if st.latency is not None else cfg.latency})
        source = _latency_source(exp, stage_cfg, model, gpu, w)
        if source[0] == "op_level":
            source = (*source, layers)
        kinds.update(_latency_kinds(source, gpu, f"{exp.path}: {w}"))
        if source[0] == "op_level":
            profiles = _op_level_model(source, gpu).profiles
            measured_on = {p.meta.gpu for p in profiles if p.meta.gpu}
            if measured_on and gpu.name not in measured_on:
                raise ConfigError(
                    f"{exp.path}: {w}.latency: profiles {[p.name for p in profiles]} were measured on {sorted(measured_on)}, "
                    f"not on this stage's {gpu.name}; give the stage its own latency"
                )
        stages.append(StagePlan(gpu, st.layers, weights, kv_tok, blocks, price, source))
    plan = PoolPlan(
        role=role, config=cfg, gpu=stages[0].gpu, tp=cfg.tp, pp=pp, instances=cfg.instances, scheduler=sched,
        capacity_blocks=min(st.capacity_blocks for st in stages),
        weight_bytes_per_gpu=max(st.weight_bytes_per_gpu for st in stages), activation_bytes_per_gpu=act,
        kv_bytes_per_token_per_gpu=max(st.kv_bytes_per_token_per_gpu for st in stages),
        price_usd_per_gpu_hour=sum(st.price_usd_per_gpu_hour for st in stages) / pp,
        latency_source=stages[0].latency_source, latency_source_kinds=tuple(sorted(kinds)),
        stage_layers=layers, stages=tuple(stages),
    )
    plan.build_latency()  # validate now, with the config location in any error
    return plan


_OP_LEVEL_CACHE: dict[tuple, OpLevelModel] = {}


def _hashable_scale(scale):
    """A ``kernel_time_scale`` table as sorted ``(batch size, factor)`` pairs (latency sources are keys)."""
    return tuple(sorted(scale.items())) if isinstance(scale, dict) else scale


def _op_level_model(source: tuple, gpu: GpuSpec) -> OpLevelModel:
    """The op-level model of a latency source, built once per process (construction reads the
    profiles and precomputes curves); callers take ``.fresh()`` copies with their own counters."""
    key = (source, gpu.name)
    model = _OP_LEVEL_CACHE.get(key)
    if model is None:
        _, paths, spec, tp, pp, dtype, kv_dtype, engine, backend, (floor_s, floor_seq_s), *stage_layers = source
        overhead_s, overhead_prefill_s, scale, scale_prefill = engine
        scale = dict(scale) if isinstance(scale, tuple) else scale
        profiles = [load_profile(p) for p in paths]
        model = OpLevelModel(profiles, spec, tp=tp, pp=pp, dtype=dtype, kv_dtype=kv_dtype, gpu=gpu,
                             iteration_overhead_s=overhead_s, all_reduce_backend=backend,
                             stage_layers=stage_layers[0] if stage_layers else None,  # + layers per stage
                             host_floor_s=floor_s, host_floor_per_prefill_seq_s=floor_seq_s,
                             iteration_overhead_prefill_s=overhead_prefill_s, kernel_time_scale=scale,
                             kernel_time_scale_prefill=scale_prefill)
        _OP_LEVEL_CACHE[key] = model
    return model


def plan_deployments(exp: LoadedExperiment) -> list[DeploymentPlan]:
    """Resolve every deployment of an experiment (fails fast, before any simulation)."""
    model = resolve_model(exp)
    max_ctx = exp.config.model.max_context_tokens or model.max_context_tokens
    kv_nbytes = dtype_bytes(exp.config.model.effective_kv_dtype)
    plans = []
    for i, d in enumerate(exp.config.deployments):
        where = f"deployments[{i}]({d.name})"
        match d:
            case ColocatedDeployment():
                pools = (plan_pool(exp, d.pool, "colocated", model, f"{where}.pool"),)
                link = None
            case DisaggregatedDeployment():
                pools = (
                    plan_pool(exp, d.prefill, "prefill", model, f"{where}.prefill"),
                    plan_pool(exp, d.decode, "decode", model, f"{where}.decode"),
                )
                base = LINK_DEFAULTS[d.kv_link.kind]
                link = LinkSpec(
                    kind=base.kind,
                    bandwidth_gbps=d.kv_link.bandwidth_gbps if d.kv_link.bandwidth_gbps is not None else base.bandwidth_gbps,
                    latency_s=d.kv_link.latency_s if d.kv_link.latency_s is not None else base.latency_s,
                )
        topology = None
        if getattr(d, "topology", None) is not None:
            topology = resolve_topology(d.topology, pools[0], pools[1], model, kv_nbytes, f"{exp.path}: {where}")
            link = None
        mixed = getattr(d, "mixed_pool", None)  # only disaggregated deployments have one
        mixed = None if mixed is None else MixedPool(mixed.prefill_queue_tokens, mixed.decode_on_prefill)
        plans.append(DeploymentPlan(d.name, d.kind, model, max_ctx, kv_nbytes, pools, link, mixed, topology))
    return plans
