"""What ``pdsim profile`` times: the sweep grids and op shapes, per device kind and mode.

Pure Python (no torch), so the grids can be checked without a device. Shapes are those of one GPU of a
tensor-parallel instance (already divided by TP), as ``pdsim.profiles.format`` requires:

- GEMM shard shapes follow Megatron-LM / vLLM column- and row-parallel linear layers: fused QKV
  ``n = (heads/TP + 2 * max(1, kv_heads/TP)) * head_dim, k = hidden``; O ``n = hidden,
  k = heads/TP * head_dim``; fused gate_up ``n = 2 * intermediate/TP`` (non-gated MLPs:
  ``intermediate/TP``), ``k = hidden``; down ``n = hidden, k = intermediate/TP``; LM head
  ``n = vocab/TP, k = hidden`` (vocabulary-parallel). KV heads are replicated when TP > kv_heads
  (``ModelSpec.kv_heads_per_gpu``).
- Attention runs at each model's per-GPU head counts ``(ceil(heads/TP), kv_heads_per_gpu(TP),
  head_dim)``.
- Elementwise widths: ``rmsnorm``/``layernorm``, ``add`` and ``embedding`` at ``hidden``; ``silu_mul``
  (gated MLPs) or ``gelu`` (non-gated) at ``intermediate/TP``; ``rope`` at
  ``(heads/TP + kv_heads/TP) * head_dim`` (models with rotary embeddings only).

Token grids are log-spaced: every power of two plus the 1.5x points between them (full mode), or
every other power of two (quick mode), capped at ``max_tokens``; in full mode the model GEMMs are also
timed at every m from 1 to ``DENSE_GEMM_M`` (32).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from pdsim.errors import ConfigError
from pdsim.models.arch import ModelSpec, load_model_catalog, model_from_hf_config

DENSE_GEMM_M = 32
"""Full mode times the model GEMMs at every m from 1 to this (decode batches), not only on the
log grid: GEMM libraries pick kernels by m, and small-m latency is far from monotonic. On the project's
2-vCPU AMD EPYC (torch 2.13.0, 2 threads) the tiny Llama's LM head ([m, 512] x [512, 32000], fp32) took
4.4 / 8.4 / 12.6 / 6.1 / 6.6 / 8.3 / 12.1 / 6.6 ms at m = 1..8 and 11.9 ms at m = 11 against 7.2 ms at
m = 12; above about m = 20 it rises smoothly. Interpolating m = 7 between 6 and 8 predicted a decode
step of 7 sequences 38 % too fast."""

Mode = Literal["quick", "full"]
DeviceKind = Literal["cpu", "gpu"]

TABLE_ORDER = ("gemm", "attention_prefill", "attention_decode", "elementwise", "memcpy", "collective")
GPU_DEFAULT_MODELS = ("Llama-3.1-8B", "Llama-3.1-70B", "Llama-2-70b-hf", "Qwen2.5-72B", "Mistral-7B-v0.1")
GPU_QUICK_MODELS = ("Llama-3.1-8B", "Llama-3.1-70B")
GPU_DEFAULT_TPS = (1, 2, 4, 8)
TINY_MODEL_CONFIG = "model_configs/pdsim-tiny-llama.json"  # under pdsim/data
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True, slots=True)
class TimingPolicy:
    """How many times one point is run.

    Attributes:
        warmup_calls: untimed calls before timing (caches, allocator, thread pool, autotuning).
        min_repeats, max_repeats: bounds on timed calls.
        min_total_s: repeat until the timed calls add up to this (adaptive repeat count).
        max_attempts: host-timed points are re-measured (up to this many attempts in all) when other
            processes used the CPU during the attempt (see ``profile_tools.timing``).
        contention_wait_budget_s: total seconds a run may spend waiting for a busy host to calm down.
    """

    warmup_calls: int
    min_repeats: int
    max_repeats: int
    min_total_s: float
    max_attempts: int
    contention_wait_budget_s: float

    def repeats_for(self, estimate_s: float) -> int:
        """Timed calls for an op whose single call takes about ``estimate_s`` seconds."""
        if estimate_s <= 0:
            return self.max_repeats
        return max(self.min_repeats, min(self.max_repeats, math.ceil(self.min_total_s / estimate_s)))


QUICK_TIMING = TimingPolicy(warmup_calls=2, min_repeats=3, max_repeats=15, min_total_s=0.02, max_attempts=2,
                            contention_wait_budget_s=5.0)
FULL_TIMING = TimingPolicy(warmup_calls=3, min_repeats=7, max_repeats=60, min_total_s=0.15, max_attempts=10,
                           contention_wait_budget_s=600.0)


@dataclass(frozen=True, slots=True)
class GemmShape:
    """A weight of shape ``(n, k)``; ``labels`` say where it comes from (``Llama-3.1-8B tp2 qkv``)."""

    n: int
    k: int
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HeadConfig:
    """Per-GPU attention heads: ``num_heads`` query heads, ``num_kv_heads`` KV heads of ``head_dim``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True, slots=True)
class ElementwiseCase:
    """One elementwise op at one width (per GPU).

    Attributes:
        op: a name in ``pdsim.profiles.format.ELEMENTWISE_OPS``.
        width: the table's ``width`` (see the module docstring).
        q_heads, kv_heads, head_dim: head split of ``rope``'s width (0 for other ops).
        rows: rows of the ``embedding`` table (vocab / TP; 0 for other ops).
    """

    op: str
    width: int
    q_heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    rows: int = 0


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """Everything one ``pdsim profile`` run times."""

    device_kind: DeviceKind
    mode: Mode
    models: tuple[ModelSpec, ...]
    tps: tuple[int, ...]
    dtypes: tuple[str, ...]
    max_tokens: int
    gemm_m: tuple[int, ...]
    gemm_shapes: tuple[GemmShape, ...]
    generic_gemm_m: tuple[int, ...]
    generic_gemm_shapes: tuple[GemmShape, ...]
    heads: tuple[HeadConfig, ...]
    prefill_batches: tuple[int, ...]
    prefill_seq_lens: tuple[int, ...]
    prefill_max_batch_tokens: int
    decode_batches: tuple[int, ...]
    decode_context_lens: tuple[int, ...]
    decode_max_batch_tokens: int
    elementwise_tokens: tuple[int, ...]
    elementwise_cases: tuple[ElementwiseCase, ...]
    collective_bytes: tuple[int, ...]
    memcpy_bytes: tuple[int, ...]
    timing: TimingPolicy
    notes: tuple[str, ...] = field(default=())


# ---- models ---------------------------------------------------------------------------------------

def tiny_model_path() -> Path:
    """The tiny validation model's config.json (``pdsim/data/model_configs/pdsim-tiny-llama.json``)."""
    return Path(str(resources.files("pdsim.data").joinpath(TINY_MODEL_CONFIG)))


def resolve_model(name_or_path: str) -> ModelSpec:
    """A catalog name (``pdsim/data/models.yaml``) or a path to a HF ``config.json`` (or its folder).

    Raises:
        ConfigError: unknown name, unreadable or malformed config, or an architecture pdsim cannot model.
    """
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read model config: {exc}") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: model config must be a JSON object")
        name = path.parent.name if path.name == "config.json" else path.stem
        return model_from_hf_config(name, cfg, where=str(path))
    catalog = load_model_catalog()
    if name_or_path in catalog:
        return model_from_hf_config(name_or_path, catalog[name_or_path], where="pdsim/data/models.yaml")
    lowered = {k.lower(): k for k in catalog}
    if name_or_path.lower() in lowered:
        key = lowered[name_or_path.lower()]
        return model_from_hf_config(key, catalog[key], where="pdsim/data/models.yaml")
    raise ConfigError(
        f"--models: unknown model {name_or_path!r} (not a file, not in pdsim/data/models.yaml); "
        f"known: {sorted(catalog)}"
    )


def uses_rope(spec: ModelSpec) -> bool:
    """Rotary position embeddings: every catalog architecture except OPT (learned) and BLOOM (ALiBi)."""
    return spec.learned_positions == 0 and not spec.embedding_norm


def shard_ok(spec: ModelSpec, tp: int) -> bool:
    """TP must split the query heads evenly (vLLM refuses otherwise)."""
    return spec.num_attention_heads % tp == 0


def gemm_shapes_for(spec: ModelSpec, tp: int) -> list[tuple[str, int, int]]:
    """``(label, n, k)`` of the five linear layers of ``spec`` on one GPU of a TP group."""
    q_heads = spec.num_attention_heads // tp
    kv_heads = spec.kv_heads_per_gpu(tp)
    d = spec.head_dim
    inter = math.ceil(spec.intermediate_size / tp)
    h = spec.hidden_size
    tag = f"{spec.name} tp{tp}"
    return [
        (f"{tag} qkv", (q_heads + 2 * kv_heads) * d, h),
        (f"{tag} o", h, q_heads * d),
        (f"{tag} gate_up" if spec.gated_mlp else f"{tag} up", (2 if spec.gated_mlp else 1) * inter, h),
        (f"{tag} down", h, inter),
        (f"{tag} lm_head", math.ceil(spec.vocab_size / tp), h),
    ]


def elementwise_cases_for(spec: ModelSpec, tp: int) -> list[ElementwiseCase]:
    """The memory-bound ops of one decoder layer of ``spec`` (plus the embedding) at TP ``tp``."""
    h = spec.hidden_size
    inter = math.ceil(spec.intermediate_size / tp)
    q_heads = spec.num_attention_heads // tp
    kv_heads = spec.kv_heads_per_gpu(tp)
    cases = [
        ElementwiseCase("layernorm" if spec.norm_bias else "rmsnorm", h),
        ElementwiseCase("silu_mul" if spec.gated_mlp else "gelu", inter),
        ElementwiseCase("add", h),
        ElementwiseCase("embedding", h, rows=math.ceil(spec.vocab_size / tp)),
    ]
    if uses_rope(spec):
        cases.append(ElementwiseCase("rope", (q_heads + kv_heads) * spec.head_dim, q_heads, kv_heads, spec.head_dim))
    return cases


# ---- grids ---------------------------------------------------------------------------------------

def token_grid(max_tokens: int, mode: Mode) -> tuple[int, ...]:
    """1 .. ``max_tokens``: powers of two and the 1.5x points between them (full), or powers of four
    (quick); ``max_tokens`` itself is always included."""
    out: set[int] = set()
    p = 1
    while p <= max_tokens:
        out.add(p)
        if mode == "full" and p >= 2 and p * 3 // 2 <= max_tokens:
            out.add(p * 3 // 2)
        p *= 2 if mode == "full" else 4
    out.add(max_tokens)
    return tuple(sorted(out))


def pow2_range(lo: int, hi: int, step: int = 2) -> tuple[int, ...]:
    """``lo, lo*step, ...`` up to ``hi`` inclusive (``hi`` appended when the steps miss it)."""
    out = []
    v = lo
    while v <= hi:
        out.append(v)
        v *= step
    if out and out[-1] != hi and hi > lo:
        out.append(hi)
    return tuple(out)


def default_max_tokens(device_kind: DeviceKind, mode: Mode) -> int:
    """Largest m / num_tokens swept: GPU 16384 (full) / 4096 (quick); CPU 4096 / 1024."""
    if device_kind == "gpu":
        return 16384 if mode == "full" else 4096
    return 4096 if mode == "full" else 1024


def _dedupe_shapes(entries: list[tuple[str, int, int]]) -> tuple[GemmShape, ...]:
    labels: dict[tuple[int, int], list[str]] = {}
    for label, n, k in entries:
        labels.setdefault((n, k), []).append(label)
    return tuple(GemmShape(n, k, tuple(v)) for (n, k), v in labels.items())


def build_plan(
    device_kind: DeviceKind,
    mode: Mode,
    models: list[ModelSpec],
    tps: list[int],
    dtypes: list[str],
    max_tokens: int | None = None,
) -> SweepPlan:
    """The sweep of one run.

    Args:
        device_kind: ``cpu`` or ``gpu`` (CUDA or ROCm).
        mode: ``quick`` (CI smoke run, seconds on a CPU) or ``full``.
        models: model architectures whose per-GPU shapes are timed.
        tps: tensor-parallel degrees.
        dtypes: activation/weight dtypes (table names: fp32, bf16, fp16, fp8).
        max_tokens: cap on the tokens of one batch: GEMM m, elementwise num_tokens and prefill seq_len
            (default ``default_max_tokens``); decode context lengths are not capped by it.

    Raises:
        ConfigError: no model, no TP, or a TP below 1.
    """
    if not models:
        raise ConfigError("--models: at least one model is needed")
    if not tps or any(t < 1 for t in tps):
        raise ConfigError(f"--tp: TP degrees must be >= 1, got {list(tps)}")
    cap = max_tokens if max_tokens is not None else default_max_tokens(device_kind, mode)
    if cap < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {cap}")
    gpu = device_kind == "gpu"
    full = mode == "full"
    notes: list[str] = []

    gemm_entries: list[tuple[str, int, int]] = []
    heads: dict[tuple[int, int, int], HeadConfig] = {}
    ew: dict[tuple[str, int], ElementwiseCase] = {}
    for spec in models:
        for tp in tps:
            if not shard_ok(spec, tp):
                notes.append(f"{spec.name} at TP {tp} skipped: {spec.num_attention_heads} heads do not split {tp} ways")
                continue
            gemm_entries.extend(gemm_shapes_for(spec, tp))
            hc = HeadConfig(spec.num_attention_heads // tp, spec.kv_heads_per_gpu(tp), spec.head_dim)
            heads.setdefault((hc.num_heads, hc.num_kv_heads, hc.head_dim), hc)
            for case in elementwise_cases_for(spec, tp):
                ew.setdefault((case.op, case.width), case)
    if not gemm_entries:
        raise ConfigError(f"--tp {list(tps)}: no model splits at these TP degrees")

    tokens = token_grid(cap, mode)
    if gpu and not full:
        tokens = tuple(sorted(set(pow2_range(1, cap))))  # quick GPU: every power of two (GPUs are fast)
    gemm_m = tokens
    if full:  # every decode batch size up to DENSE_GEMM_M (see its docstring)
        gemm_m = tuple(sorted(set(tokens) | set(range(1, min(cap, DENSE_GEMM_M) + 1))))

    generic: list[tuple[str, int, int]] = []
    generic_m: tuple[int, ...] = ()
    if full:
        sizes = (512, 1024, 2048, 4096, 8192, 16384) if gpu else (256, 1024, 4096)
        n_sizes = (*sizes, 32768) if gpu else sizes
        generic = [("generic", n, k) for n in n_sizes for k in sizes]
        generic_m = tokens if gpu else token_grid(cap, "quick")
    model_shapes = _dedupe_shapes(gemm_entries)
    model_keys = {(s.n, s.k) for s in model_shapes}
    generic_shapes = tuple(s for s in _dedupe_shapes(generic) if (s.n, s.k) not in model_keys)

    if gpu:
        prefill_batches = pow2_range(1, 64) if full else (1, 4, 16)
        prefill_seqs = pow2_range(16, min(cap, 16384)) if full else pow2_range(16, min(cap, 4096), 4)
        prefill_tokens = 4 * cap
        decode_batches = pow2_range(1, 512) if full else (1, 8, 64, 256)
        decode_ctx = pow2_range(16, 32768) if full else pow2_range(16, 16384, 4)
        decode_tokens = 2**21 if full else 2**19
        coll = pow2_range(KIB, GIB) if full else pow2_range(KIB, 64 * MIB, 4)
        memcpy = pow2_range(4 * KIB, GIB) if full else pow2_range(4 * KIB, 256 * MIB, 4)
    else:
        prefill_batches = (1, 2, 4, 8) if full else (1, 4)
        prefill_seqs = pow2_range(16, min(cap, 2048)) if full else pow2_range(16, min(cap, 256), 4)
        prefill_tokens = 8 * 2048 if full else 1024
        decode_batches = pow2_range(1, 64) if full else (1, 8)
        decode_ctx = pow2_range(16, 4096) if full else pow2_range(16, 1024, 8)
        decode_tokens = 64 * 4096 if full else 8 * 1024
        coll = pow2_range(4 * KIB, 64 * MIB) if full else pow2_range(4 * KIB, MIB, 16)
        memcpy = pow2_range(4 * KIB, 256 * MIB) if full else pow2_range(4 * KIB, 16 * MIB, 16)
    return SweepPlan(
        device_kind=device_kind,
        mode=mode,
        models=tuple(models),
        tps=tuple(tps),
        dtypes=tuple(dtypes),
        max_tokens=cap,
        gemm_m=gemm_m,
        gemm_shapes=model_shapes,
        generic_gemm_m=generic_m,
        generic_gemm_shapes=generic_shapes,
        heads=tuple(heads.values()),
        prefill_batches=prefill_batches,
        prefill_seq_lens=tuple(s for s in prefill_seqs if s <= cap) or (min(16, cap),),
        prefill_max_batch_tokens=prefill_tokens,
        decode_batches=decode_batches,
        decode_context_lens=decode_ctx,
        decode_max_batch_tokens=decode_tokens,
        elementwise_tokens=tokens,
        elementwise_cases=tuple(ew.values()),
        collective_bytes=coll,
        memcpy_bytes=memcpy,
        timing=FULL_TIMING if full else QUICK_TIMING,
        notes=tuple(notes),
    )
