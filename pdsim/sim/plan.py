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
from pdsim.latency.base import LatencyModel
from pdsim.latency.constant import ConstantLatencyModel
from pdsim.latency.oplevel import OpLevelModel
from pdsim.latency.table import GPU_KEYS, MODEL_KEYS, SplitwiseTableModel
from pdsim.models.arch import ModelSpec, dtype_bytes, load_model_catalog, model_from_hf_config
from pdsim.profiles.format import find_profile, load_profile

GIB = 1024**3


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
        price_usd_per_gpu_hour: price used for cost.
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

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.instances

    @property
    def derived(self) -> bool:
        """True when the latency comes from a derived (not measured) profile."""
        return "derived" in self.latency_source_kinds

    @property
    def usd_per_hour(self) -> float:
        return self.gpus * self.price_usd_per_gpu_hour

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.scheduler.block_size

    @property
    def watermark_blocks(self) -> int:
        return int(self.capacity_blocks * self.scheduler.watermark_fraction)

    def build_latency(self) -> LatencyModel:
        kind, *args = self.latency_source
        match kind:
            case "splitwise_table":
                path, model_key, hw_key, scale = args
                return SplitwiseTableModel(Path(path), model_key, hw_key, self.tp, scale)
            case "constant":
                return ConstantLatencyModel(args[0])
            case "op_level":
                return _op_level_model(self.latency_source, self.gpu).fresh()
        raise ConfigError(f"unknown latency kind {kind!r}")  # unreachable: schema restricts kinds

    def describe(self) -> dict:
        return {
            "role": self.role,
            "gpu": self.gpu.name,
            "tp": self.tp,
            "pp": self.pp,
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
            if prompt_tokens + output_tokens - 1 > pool.scheduler.max_num_batched_tokens:
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
        return ("op_level", profiles, model, cfg.tp, cfg.pp, dtype, kv_dtype, lat.iteration_overhead_s, lat.all_reduce_backend)
    raise ConfigError(f"{exp.path}: {where}.latency: unsupported kind")  # unreachable


def plan_pool(exp: LoadedExperiment, cfg: PoolConfig, role: str, model: ModelSpec, where: str) -> PoolPlan:
    """Resolve one pool; builds its latency model once to validate the profile.

    Raises:
        ConfigError: unknown GPU, missing price.
        CapacityError: the model does not fit in the instance's GPUs.
        ProfileError: the latency profile cannot serve this model / GPU / TP.
    """
    gpu = lookup_gpu(load_gpu_catalog(), cfg.gpu, f"{exp.path}: {where}.gpu")
    sched = cfg.scheduler.over(exp.config.scheduler)
    mc = exp.config.model
    nbytes = dtype_bytes(mc.dtype)
    act_bytes = 2 if mc.dtype == "fp8" else nbytes  # fp8 weights run with bf16 activations
    weights = model.weight_bytes_per_gpu(cfg.tp, cfg.pp, nbytes)
    if sched.activation_reserve_gib is not None:
        act = int(sched.activation_reserve_gib * GIB)
    else:
        act = activation_reserve_bytes(model, cfg.tp, sched.max_num_batched_tokens, sched.max_num_seqs, act_bytes)
    kv_tok = model.kv_bytes_per_token_per_gpu(cfg.tp, cfg.pp, dtype_bytes(mc.effective_kv_dtype))
    blocks, budget = kv_capacity_blocks(gpu.memory_bytes, sched.gpu_memory_utilization, weights, act, kv_tok, sched.block_size)
    if blocks < 1:
        raise CapacityError(
            f"{exp.path}: {where}: {model.name} does not fit on {gpu.name} with tp={cfg.tp} pp={cfg.pp}: per GPU "
            f"{gpu.memory_bytes / 1e9:.0f} GB x {sched.gpu_memory_utilization} utilisation - weights "
            f"{weights / 1e9:.1f} GB - activations {act / 1e9:.1f} GB leaves {budget / 1e9:.2f} GB for the KV cache "
            f"(one block needs {kv_tok * sched.block_size / 1e6:.2f} MB)"
        )
    price = cfg.price_usd_per_gpu_hour if cfg.price_usd_per_gpu_hour is not None else gpu.price_usd_per_hour
    if price != price:
        raise ConfigError(f"{exp.path}: {where}.price_usd_per_gpu_hour: the catalog has no price for {gpu.name}; set one")
    source = _latency_source(exp, cfg, model, gpu, where)
    kinds: tuple[str, ...] = {"splitwise_table": ("imported",), "constant": ("constant",)}.get(source[0], ())
    if source[0] == "op_level":
        try:
            kinds = tuple(sorted({p.source_kind for p in _op_level_model(source, gpu).profiles}))
        except ProfileError as exc:
            raise ProfileError(f"{exp.path}: {where}.latency: {exc}") from None
    plan = PoolPlan(
        role=role, config=cfg, gpu=gpu, tp=cfg.tp, pp=cfg.pp, instances=cfg.instances, scheduler=sched,
        capacity_blocks=blocks, weight_bytes_per_gpu=weights, activation_bytes_per_gpu=act,
        kv_bytes_per_token_per_gpu=kv_tok, price_usd_per_gpu_hour=float(price),
        latency_source=source, latency_source_kinds=kinds,
    )
    plan.build_latency()  # validate now, with the config location in any error
    return plan


_OP_LEVEL_CACHE: dict[tuple, OpLevelModel] = {}


def _op_level_model(source: tuple, gpu: GpuSpec) -> OpLevelModel:
    """The op-level model of a latency source, built once per process (construction reads the
    profiles and precomputes curves); callers take ``.fresh()`` copies with their own counters."""
    key = (source, gpu.name)
    model = _OP_LEVEL_CACHE.get(key)
    if model is None:
        _, paths, spec, tp, pp, dtype, kv_dtype, overhead_s, backend = source
        profiles = [load_profile(p) for p in paths]
        model = OpLevelModel(profiles, spec, tp=tp, pp=pp, dtype=dtype, kv_dtype=kv_dtype, gpu=gpu,
                             iteration_overhead_s=overhead_s, all_reduce_backend=backend)
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
        plans.append(DeploymentPlan(d.name, d.kind, model, max_ctx, kv_nbytes, pools, link))
    return plans
