"""Op-level latency model: the iteration time of a batch composed from a profile's per-op curves.

For a dense or GQA decoder (``ModelSpec``) on an instance of TP ``t`` x PP ``p`` GPUs of one type, an
iteration that prefills ``P`` prompt tokens of ``n_p`` requests and decodes one token for each of ``D``
sequences processes ``T = P + D`` tokens and samples ``S = n_p + D`` of them. Its time is

    t_iter = iteration_overhead_s
           + L x [ gemm(T, qkv) + gemm(T, o) + gemm(T, gate_up) + gemm(T, down)       (TP shard shapes)
                   + 2 norm(T) + rope(T) + act(T) + 2 add(T)
                   + 2 all_reduce(T x hidden x bytes, world t) ]                        (t > 1)
           + L x attention_prefill(n_p, s_eq) + L x attention_decode(D, c_mean)
           + embedding(T) + norm(S) + gemm(S, lm_head) + all_gather(S x vocab/t x bytes)
           + (p - 1) x send_recv(T x hidden x bytes)                                  (stage hand-offs)

as vLLM executes a step: every token of the step goes through the linear layers as one flattened
batch (m = T), the LM head runs only on the sampled positions, and attention is the only op that
depends on how tokens are grouped into requests. With PP, ``iteration_s`` is one pass of the batch
through all stages (all ``L`` layers and the ``p - 1`` hand-offs on its path); ``stage_times_s`` splits
it: stage ``i`` with ``L_i`` layers (vLLM's split, ``pdsim.latency.base.pp_layer_split``, or the pool's
``stages``) is busy for

    t_i = L_i x [per-layer ops at T, as above] + L_i x (attention_prefill + attention_decode)
        + [i = 0] (iteration_overhead_s + embedding(T))
        + [i < p-1] send_recv(T x hidden x bytes)                 (hand-off to stage i+1)
        + [i = p-1] (norm(S) + gemm(S, lm_head) + all_gather(...))

so ``sum_i t_i`` is ``t_iter`` (tests/test_pipeline.py checks it); the engine keeps one batch per stage
in flight (pdsim/sim/instance.py, docs/pipeline.md). Shard shapes per GPU: QKV ``n = (ceil(h/t) + 2 max(1, ceil(kv/t))) d``,
``k = hidden``; O ``n = hidden, k = ceil(h/t) d``; gate_up ``n = 2 ceil(I/t)`` (``ceil(I/t)`` for a non-gated
MLP), ``k = hidden``; down ``n = hidden, k = ceil(I/t)``; LM head ``n = ceil(V/t), k = hidden``
(Megatron-LM's column/row-parallel layers, Shoeybi et al. 2019, as vLLM implements them).

Mixture-of-experts models (``ModelSpec.is_moe``, every layer an MoE layer; docs/moe.md): the MLP terms
``gemm(T, gate_up) + gemm(T, down) + act(T)`` become

    gemm_bf16(T, router: n = E, k = hidden)                   (replicated, unquantised in vLLM)
    + moe(T)                                                  (the profile's ``moe`` table)
    + gemm(T, shared_gate_up) + gemm(T, shared_down) + act(T, shared)   (shared experts, if any)

where ``moe(T)`` is vLLM's fused routed-expert kernel for ``T`` tokens at the model's (hidden,
``moe_intermediate_size``, top-k, E), ``moe_tp_size = t``, ``moe_ep_size = 1`` and balanced routing,
exact at the measured token counts and a power law (log-log) between them (``MOE_SAMPLES_PER_INTERVAL``);
above the largest measured count it follows the per-token out-of-range policy below. The all-reduce after
the MLP stays (vLLM's ``FusedMoE`` reduces its output over TP). A profile list without a ``moe`` table, or
without the model's shape in it, is an error (no dense fallback). ``breakdown_s`` returns the named parts.

Attention grouping: prefill attention of ``n_p`` requests is looked up as ``n_p`` sequences of equal
length ``s_eq = sqrt(sum chunk (chunk + 2 cached) / n_p)`` (``BatchShape.prefill_square_tokens``), which
preserves the causal attention work (query-key pairs) of the batch; Vidur (Agrawal et al., MLSys 2024)
uses the same work-preserving reduction with one sequence of ``sqrt(sum p_i^2)``. Decode attention of
``D`` sequences is looked up at their mean context ``c_mean = decode_context_tokens / D`` (paged and
flash-decoding kernels read each sequence's KV once, so their time follows the total KV read).

Where the numbers come from, per op: the first profile in ``profiles`` that has the op's table. A GEMM
shape the table lacks is interpolated in (log n, log k) between the four surrounding measured shapes
(log-log linear: exact for time proportional to n x k); a shape outside the measured (n, k) grid is
scaled from the nearest measured one by ``n k / (n0 k0)`` and noted. An attention head configuration the
table lacks is taken from the nearest measured one (same head_dim first) and scaled by the ratio of
query heads (prefill, compute-bound) or of KV heads x head_dim (decode, bound by the KV read), noted.
fp16 and bf16 stand in for each other (same tensor-core rate on every GPU pdsim knows), noted.
Ops a profile has no table for: elementwise ops fall back to a memory roofline on the GPU's datasheet
bandwidth, ``bytes / (mem_bw x 0.8) + 3 us`` (aiconfigurator's ``mem_bw_empirical_scaling_factor`` and
``mem_empirical_constant_latency``, ai-dynamo/aiconfigurator@095f58a5 systems/*.yaml); collectives fall
back to a ring all-reduce ``2 (t-1)/t x bytes / bw + 10 us`` (all-gather ``(t-1) x`` the per-rank part; send/recv
``bytes / bw + 10 us``) on the datasheet's intra-node bandwidth per GPU and direction (``p2p_latency``
from the same files). Every fallback is listed in ``describe()``. A measured profile records how its GEMM and
attention calls were flushed (``ProfileMeta.cache``: the whole cache, or only the per-core caches of a
CPU whose last-level cache holds the model); ``notes`` says when that does not suit the model served
(``suggested_flush_level``).

``all_reduce_backend: auto`` takes, at each message size, the fastest backend the profile measured
(vLLM picks its custom all-reduce over NCCL where it is faster and eligible); a named backend uses only
that backend's rows.

Out-of-range policy (counted in ``stats`` and reported in the run summary): the token count above the
largest measured m of any per-token op: each op's time grows in proportion to its size from its last
measured point (compute- or bandwidth-bound there; a slope from the last two points is not used because
dense grids end in close, noisy points); batch sizes
above the attention tables' largest batch: linear in the batch; sequence length / context above the
measured range: power law with exponent 2 (prefill) or 1 (decode). Values below the smallest measured
point are clamped to it (not counted: measured grids start at 1 token).

Host floor (engines that launch every kernel from the host, eager mode): the host issues each
iteration's kernels one by one, so an iteration cannot end before the host has issued them all. With
``host_floor_s`` > 0 the iteration takes

    t_iter = iteration_overhead_s + max(kernels, host_floor_s + host_floor_per_prefill_seq_s x n_p)

where ``kernels`` is the sum above without the overhead: the GPU runs the kernels while the host issues
the next ones, and whichever is slower sets the pace (the reason engines capture CUDA graphs: vLLM's
decode steps replay one graph, so their host floor is small). ``host_floor_per_prefill_seq_s`` is the
host work per prefilled request (its attention call and cache writes in every layer). With PP, stage
``i`` gets ``L_i / L`` of the floor. Both default to 0 (no floor), and are engine parameters measured,
not fitted: ``pdsim.live.overhead.compare_grid`` takes them from the live engine's synthetic grid
(docs/live.md); on an H200 the eager reference engine's decode iterations of Llama-3.1-8B took 17-38 ms
against 5-8 ms of kernels (benchmarks/results/h200/, 2026-12-04).

Engine calibration: a serving engine can run the profiled kernels slower (or faster) than the isolated
micro-benchmarks that timed them, by a factor that depends on the kind of iteration: on a CPU whose
last-level cache holds the model, decode reads weights the previous iteration left there, or that other
processes evicted. ``kernel_time_scale`` multiplies the kernels of a pure decode iteration and
``kernel_time_scale_prefill`` those of an iteration that prefills (PP: every stage's kernels; the host
floor and the overheads are not scaled):

    t_iter = overhead + max(scale x kernels, host floor)

``kernel_time_scale`` is a number, or a table ``{decode batch size: factor}`` read piecewise linearly
in log(batch size) and held constant beyond its ends (a memory-bound small batch suffers more from a
cold cache than a large one: on the Xeon VM with two threads 1.7-2.3 up to 8 sequences, 1.4-1.7 at
16-32).
Both default to 1. They are measured, not fitted: ``pdsim.live.overhead.compare_grid`` gives the
medians of (engine cycle / kernels) over a synthetic grid's decode and prefill iterations
(``pdsim validate --overhead-model scaled``; 1.4-2.2 for decode and 1.2-1.5 for prefill on a 2-vCPU
Intel Xeon VM, docs/live.md).

Precision: ``dtype`` is the weight and GEMM precision (``fp8`` = W8A8 GEMMs with bf16 activations and
attention), ``kv_dtype`` the KV cache's (defaults to ``dtype``, bf16 for fp8). The per-iteration
overhead (scheduling, input preparation, sampling, and kernel launches the profile's kernel timings do
not include) is the named parameter ``iteration_overhead_s``; see ``DEFAULT_ITERATION_OVERHEAD_S``. With
``iteration_overhead_prefill_s`` set, an iteration that prefills any token pays that instead (pure
decode iterations keep ``iteration_overhead_s``): an engine's time outside the profiled kernels differs
between the two kinds of iteration (the live CPU engine's grid: docs/live.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.interpolate import RegularGridInterpolator

from pdsim.errors import ProfileError
from pdsim.hardware.gpus import GpuSpec
from pdsim.latency.base import BatchShape, LookupStats, pp_layer_split
from pdsim.latency.interp import ColumnTable, Curve, LogCurve
from pdsim.models.arch import ModelSpec, dtype_bytes
from pdsim.profiles.format import LATENCY, Profile

# aiconfigurator systems/*.yaml (ai-dynamo/aiconfigurator@095f58a51c4c, Apache-2.0), used only where a
# profile lacks a table: achieved fraction of datasheet memory bandwidth, constant per memory-bound
# kernel, and point-to-point latency.
MEM_BW_EFFICIENCY = 0.8
MEM_CONSTANT_LATENCY_S = 3e-6
P2P_LATENCY_S = 10e-6

# Per-iteration time outside the profiled kernels (engine scheduling, input preparation, sampling).
# Default 0: a profile's kernel timings are all the model charges unless the experiment sets it (e.g.
# from a live run of the engine being modelled; ``pdsim validate`` reports the engine's own figure).
DEFAULT_ITERATION_OVERHEAD_S = 0.0

_SUBSTITUTE = {"fp16": ("fp16", "bf16"), "bf16": ("bf16", "fp16"), "fp32": ("fp32",), "fp8": ("fp8",)}

# MoE lookups: expert parallelism 1 (vLLM's default: ``enable_expert_parallel`` off, every TP rank holds
# a 1/TP slice of every expert) and balanced routing (the ``moe`` tables' ``balanced`` rows; docs/moe.md).
MOE_EP_SIZE = 1
MOE_DISTRIBUTION = "balanced"
# Points per measured interval at which the log-log MoE curve is sampled into the per-token curve
# (piecewise linear between samples; a power law x^a between samples a factor r apart deviates from its
# chord by at most about |a (a - 1)| (ln r)^2 / 8 relative; with r <= 2^(1/8) on the shipped moe tables that is
# < 0.1% on all but 267 of their 72,423 measured intervals and at most 2.8%, where a curve jumps between points).
MOE_SAMPLES_PER_INTERVAL = 8


@dataclass(frozen=True, slots=True)
class GemmShape:
    """One linear layer's per-GPU shape: ``Y[m, n] = X[m, k] W[k, n]``."""

    name: str
    n: int
    k: int


def layer_shapes(model: ModelSpec, tp: int) -> tuple[list[GemmShape], GemmShape]:
    """The per-GPU GEMM shapes of one decoder layer and of the LM head under TP ``tp``."""
    h, d = model.hidden_size, model.head_dim
    q_heads = math.ceil(model.num_attention_heads / tp)
    kv_heads = model.kv_heads_per_gpu(tp)
    layers = [
        GemmShape("qkv", (q_heads + 2 * kv_heads) * d, h),
        GemmShape("o", h, q_heads * d),
    ]
    if model.is_moe:  # routed experts: the ``moe`` table's fused kernel, not GEMMs (module docstring)
        layers.append(GemmShape("router", model.num_experts, h))  # replicated on every rank
        if model.shared_expert_intermediate_size:
            shared = math.ceil(model.shared_expert_intermediate_size / tp)
            layers += [GemmShape("shared_gate_up", 2 * shared, h), GemmShape("shared_down", h, shared)]
        if model.shared_expert_gate:
            layers.append(GemmShape("shared_expert_gate", 1, h))
        return layers, GemmShape("lm_head", math.ceil(model.vocab_size / tp), h)
    inter = math.ceil(model.intermediate_size / tp)
    layers += [
        GemmShape("gate_up" if model.gated_mlp else "up", (2 if model.gated_mlp else 1) * inter, h),
        GemmShape("down", h, inter),
    ]
    return layers, GemmShape("lm_head", math.ceil(model.vocab_size / tp), h)


# GEMMs vLLM builds without quantisation (``quant_config=None``) whatever the checkpoint's precision: the
# MoE router (Mixtral, Qwen2-MoE ``gate``) and Qwen2-MoE's ``shared_expert_gate``; aiconfigurator times
# its ``router_gemm`` in bf16 likewise (ai-dynamo/aiconfigurator@095f58a5, sdk/models).
UNQUANTISED_GEMMS = ("router", "shared_expert_gate")


class OpLevelModel:
    """Iteration latency composed from op curves (see module docstring).

    Args:
        profiles: profiles to read, in order of preference per table (e.g. a Vidur profile with GEMMs
            first, an aiconfigurator profile for attention second).
        model: the served model.
        tp, pp: tensor- and pipeline-parallel degrees of one instance.
        stage_layers: layers per PP stage (``pp`` entries summing to the model's layers); default
            vLLM's split (``pp_layer_split``).
        dtype, kv_dtype: precisions (``bf16``, ``fp16``, ``fp8``, ``fp32``); ``kv_dtype`` None = ``dtype``
            (bf16 for fp8).
        gpu: the GPU's datasheet (roofline fallbacks); None for a CPU.
        iteration_overhead_s: per-iteration overhead (seconds).
        iteration_overhead_prefill_s: the overhead of an iteration that prefills (seconds); None: the
            same as ``iteration_overhead_s``.
        kernel_time_scale, kernel_time_scale_prefill: factors on the profiled kernels' time of a pure
            decode iteration (a number, or ``{decode batch size: factor}``) and of one that prefills
            (None: ``kernel_time_scale``, which must then be a number); 1 = the profile as measured
            (module docstring, "Engine calibration").
        all_reduce_backend: ``auto`` or a backend name of the profile's collective table.
        host_floor_s, host_floor_per_prefill_seq_s: the host's time to issue one iteration, fixed and
            per prefilled request (seconds; module docstring, "Host floor"); 0 = no floor.

    Raises:
        ProfileError: a required table is in no profile (GEMM, attention), the dtype is not measured,
            or a fallback needs a datasheet figure that is missing.
    """

    def __init__(
        self,
        profiles: Sequence[Profile],
        model: ModelSpec,
        tp: int = 1,
        pp: int = 1,
        dtype: str = "bf16",
        kv_dtype: str | None = None,
        gpu: GpuSpec | None = None,
        iteration_overhead_s: float = DEFAULT_ITERATION_OVERHEAD_S,
        all_reduce_backend: str = "auto",
        stage_layers: tuple[int, ...] | None = None,
        host_floor_s: float = 0.0,
        host_floor_per_prefill_seq_s: float = 0.0,
        iteration_overhead_prefill_s: float | None = None,
        kernel_time_scale: float | Mapping[int, float] = 1.0,
        kernel_time_scale_prefill: float | None = None,
    ):
        if not profiles:
            raise ProfileError("op-level latency model: no profile given")
        if tp < 1 or pp < 1:
            raise ProfileError(f"op-level latency model: tp and pp must be >= 1, got tp={tp} pp={pp}")
        if pp > model.num_layers:
            raise ProfileError(f"op-level latency model: pp={pp} exceeds the model's {model.num_layers} layers")
        if stage_layers is None:
            stage_layers = pp_layer_split(model.num_layers, pp)
        if len(stage_layers) != pp or sum(stage_layers) != model.num_layers or min(stage_layers) < 1:
            raise ProfileError(
                f"op-level latency model: stage_layers {list(stage_layers)} must be {pp} stages of >= 1 layer "
                f"summing to the model's {model.num_layers} layers"
            )
        self.stage_layers = tuple(int(n) for n in stage_layers)
        self.profiles = tuple(profiles)
        self.model, self.tp, self.pp, self.gpu = model, tp, pp, gpu
        self.dtype = dtype
        self.kv_dtype = kv_dtype or ("bf16" if dtype == "fp8" else dtype)
        self.attn_dtype = "bf16" if dtype == "fp8" else dtype
        self.act_bytes = 2 if dtype == "fp8" else dtype_bytes(dtype)
        self.iteration_overhead_s = float(iteration_overhead_s)
        self.iteration_overhead_prefill_s = (self.iteration_overhead_s if iteration_overhead_prefill_s is None
                                             else float(iteration_overhead_prefill_s))
        table = dict(kernel_time_scale) if isinstance(kernel_time_scale, Mapping) else None
        if table is not None:
            if not table or kernel_time_scale_prefill is None:
                raise ProfileError("op-level latency model: a kernel_time_scale table needs at least one point and "
                                   f"a kernel_time_scale_prefill, got {table} and {kernel_time_scale_prefill}")
            if min(int(b) for b in table) < 1:
                raise ProfileError(f"op-level latency model: kernel_time_scale batch sizes must be >= 1, got {sorted(table)}")
            factors = list(table.values())
        else:
            factors = [kernel_time_scale]
        scale_prefill = kernel_time_scale if kernel_time_scale_prefill is None else kernel_time_scale_prefill
        factors.append(scale_prefill)
        if not all(isinstance(f, (int, float)) and f > 0 and math.isfinite(f) for f in factors):
            raise ProfileError(f"op-level latency model: kernel time scales must be finite and > 0, got "
                               f"{kernel_time_scale} and {scale_prefill} (prefill)")
        if table is not None:
            points = sorted((int(b), float(f)) for b, f in table.items())
            self.kernel_time_scale = {b: f for b, f in points}
            self._scale_log_b = np.log([b for b, _ in points])
            self._scale_f = np.array([f for _, f in points])
        else:
            self.kernel_time_scale = float(kernel_time_scale)
            self._scale_log_b = None
        self.kernel_time_scale_prefill = float(scale_prefill)
        if host_floor_s < 0 or host_floor_per_prefill_seq_s < 0:
            raise ProfileError(f"op-level latency model: host floor must be >= 0, got {host_floor_s} s + "
                               f"{host_floor_per_prefill_seq_s} s per prefilled request")
        self.host_floor_s = float(host_floor_s)
        self.host_floor_per_prefill_seq_s = float(host_floor_per_prefill_seq_s)
        self.all_reduce_backend = all_reduce_backend
        self.name = f"op_level:{self.profiles[0].name}/{model.name}/tp{tp}pp{pp}/{dtype}"
        self.stats = LookupStats()
        self.notes: list[str] = []
        self.sources: dict[str, str] = {}
        self._build()

    # -- construction ------------------------------------------------------------------------------
    def _table(self, name: str) -> tuple[Profile, pd.DataFrame] | None:
        for p in self.profiles:
            if p.has(name):
                return p, p.table(name)
        return None

    def _where(self, profile: Profile, table: str) -> str:
        return f"profile {profile.name!r} ({profile.source_kind}) table {table!r}"

    def _pick_dtype(self, df: pd.DataFrame, column: str, want: str, where: str) -> str:
        have = set(df[column])
        for cand in _SUBSTITUTE.get(want, (want,)):
            if cand in have:
                if cand != want:
                    self.notes.append(f"{where}: {column} {want} not measured; {cand} used in its place")
                return cand
        raise ProfileError(f"{where}: {column} {want!r} not measured (has {sorted(have)})")

    def _build(self) -> None:
        m = self.model
        layers = m.num_layers
        shapes, lm_head = layer_shapes(m, self.tp)

        # GEMMs -------------------------------------------------------------------------------------
        found = self._table("gemm")
        if found is None:
            raise ProfileError(f"no GEMM table in profiles {[p.name for p in self.profiles]}")
        gp, gemm = found
        where = self._where(gp, "gemm")
        gdt = self._pick_dtype(gemm, "dtype", self.dtype, where)
        gemm_all, gemm = gemm, gemm[gemm.dtype == gdt]
        self.sources["gemm"] = gp.name
        self._note_cache_state(gp)
        curves = {s.name: self._gemm_curve(gemm, s, where) for s in [*shapes, lm_head] if s.name not in UNQUANTISED_GEMMS}
        unquantised = [s for s in shapes if s.name in UNQUANTISED_GEMMS]
        if unquantised:
            rdt = self._pick_dtype(gemm_all, "dtype", self.attn_dtype, where)
            for s in unquantised:
                curves[s.name] = self._gemm_curve(gemm_all[gemm_all.dtype == rdt], s, where)

        # Elementwise -------------------------------------------------------------------------------
        q_heads = math.ceil(m.num_attention_heads / self.tp)
        kv_heads = m.kv_heads_per_gpu(self.tp)
        # MLP activation width: the dense MLP's, or the shared experts' (the routed experts' activation
        # is inside the fused MoE kernel); none for an MoE model without shared experts
        inter = math.ceil((m.shared_expert_intermediate_size if m.is_moe else m.intermediate_size) / self.tp)
        norm = "layernorm" if m.norm_bias else "rmsnorm"
        act = "silu_mul" if m.gated_mlp else "gelu"
        ew = {
            "norm": self._elementwise(norm, m.hidden_size),
            "add": self._elementwise("add", m.hidden_size),
            **({"act": self._elementwise(act, inter)} if inter else {}),
            "embedding": self._elementwise("embedding", m.hidden_size),
        }
        if m.rotary:
            ew["rope"] = self._elementwise("rope", (q_heads + kv_heads) * m.head_dim)

        # Collectives -------------------------------------------------------------------------------
        h_bytes = m.hidden_size * self.act_bytes
        ar = self._collective("all_reduce", self.tp) if self.tp > 1 else None
        ag = self._collective("all_gather", self.tp) if self.tp > 1 else None
        handoff = self._collective("send_recv", 2) if self.pp > 1 else None

        # Per-token curve F_T(T) on the union of every component's breakpoints ------------------------
        comps_t: list[tuple[float, object]] = [(layers, curves[s.name]) for s in shapes]
        comps_t += [(2 * layers, ew["norm"]), (2 * layers, ew["add"])]
        comps_t += [(layers, ew["act"])] if "act" in ew else []
        comps_t.append((1, ew["embedding"]))
        if "rope" in ew:
            comps_t.append((layers, ew["rope"]))
        names_t = [s.name for s in shapes] + ["norm", "add"] + (["act"] if "act" in ew else []) + ["embedding"]
        names_t += ["rope"] if "rope" in ew else []
        if m.is_moe:
            comps_t.append((layers, self._moe()))
            names_t.append("moe")
        grid_t = set()
        limits_t = []
        for _, c in comps_t:
            xs, top = c.grid()
            grid_t.update(xs)
            limits_t.append(top)
        per_token_bytes_ops: list[tuple[float, _Op, float]] = []
        if ar is not None:
            per_token_bytes_ops.append((2 * layers, ar, h_bytes))
        if handoff is not None:
            per_token_bytes_ops.append((self.pp - 1, handoff, h_bytes))
        for _, op, bytes_per_token in per_token_bytes_ops:
            xs, top = op.grid()
            grid_t.update(max(1.0, x / bytes_per_token) for x in xs)
            limits_t.append(top / bytes_per_token)
        self.tokens_measured_max = min(limits_t)
        grid = sorted(v for v in grid_t if v >= 1.0)
        if grid[0] > 1.0:
            grid.insert(0, 1.0)
        total = np.zeros(len(grid))
        for mult, c in comps_t:
            total += mult * np.asarray(c.values(grid))
        for mult, op, bpt in per_token_bytes_ops:
            total += mult * np.asarray(op.values([g * bpt for g in grid]))
        self._per_token = Curve(tuple(grid), tuple(float(v) for v in total))
        # named parts of F_T (``breakdown_s``): (name, multiplicity, op, size units per token)
        self._parts_t = [(n, mult, c, 1.0) for n, (mult, c) in zip(names_t, comps_t)]
        self._parts_t += [("all_reduce" if op is ar else "send_recv", mult, op, bpt) for mult, op, bpt in per_token_bytes_ops]
        if self.pp > 1:  # per-stage parts on the same grid (``stage_times_s``)
            layer = np.zeros(len(grid))
            for mult, c in comps_t:
                if c is not ew["embedding"]:
                    layer += (mult / layers) * np.asarray(c.values(grid))
            if ar is not None:
                layer += 2 * np.asarray(ar.values([g * h_bytes for g in grid]))
            self._stage_curves = tuple(
                Curve(tuple(grid), tuple(float(v) for v in vals))
                for vals in (layer, np.asarray(ew["embedding"].values(grid)),
                             np.asarray(handoff.values([g * h_bytes for g in grid])))
            )

        # Per-sampled-sequence curve F_S(S): final norm, LM head, logits all-gather -------------------
        comps_s: list[object] = [ew["norm"], curves["lm_head"]]
        grid_s = set()
        for c in comps_s:
            grid_s.update(c.grid()[0])
        logits_bytes = lm_head.n * self.act_bytes
        if ag is not None:
            grid_s.update(max(1.0, x / logits_bytes) for x in ag.grid()[0])
        gs = sorted(v for v in grid_s if v >= 1.0)
        if gs[0] > 1.0:
            gs.insert(0, 1.0)
        tot_s = np.zeros(len(gs))
        for c in comps_s:
            tot_s += np.asarray(c.values(gs))
        if ag is not None:
            tot_s += np.asarray(ag.values([g * logits_bytes for g in gs]))
        self._per_sampled = Curve(tuple(gs), tuple(float(v) for v in tot_s))
        self._parts_s = [("final_norm", 1, ew["norm"], 1.0), ("lm_head", 1, curves["lm_head"], 1.0)]
        self._parts_s += [("logits_all_gather", 1, ag, float(logits_bytes))] if ag is not None else []
        self.sampled_measured_max = min(c.grid()[1] for c in comps_s)

        # Attention ---------------------------------------------------------------------------------
        self._prefill_attn, self._prefill_attn_scale = self._attention("attention_prefill", "seq_len", q_heads, kv_heads, 2.0)
        self._decode_attn, self._decode_attn_scale = self._attention("attention_decode", "context_len", q_heads, kv_heads, 1.0)
        self._layers = layers
        # batch size -> (time outside decode attention, out-of-range axis or None, kernel time scale); shared by fresh()
        # copies (pure); _decode_oor and _probe are per copy
        self._decode_cache: dict[int, tuple[float, str | None, float]] = {}
        self._decode_oor: dict[int, str] = {}
        self._probe = LookupStats()
        self._components = {"gemm": {s.name: (s.n, s.k) for s in [*shapes, lm_head]}}
        if m.is_moe:
            self._components["moe"] = dict(self._moe_key)

    def _note_cache_state(self, profile: Profile) -> None:
        """Note when the GEMM profile's cache flush does not suit this model (``ProfileMeta.cache``,
        ``profile_tools.ops.FLUSH_LEVELS``): a profile flushed to the last-level cache charges the model's
        GEMMs as if their weights came from memory, which over-charges memory-bound ones (decode) when
        the weights fit in half that cache; one that flushed only the per-core caches charges them as if
        the weights came from the last-level cache, which under-charges them when the weights take more
        than half of it (``suggested_flush_level``)."""
        cache = profile.meta.cache
        if cache is None or not cache.llc_bytes:
            return
        weights = self.model.weight_bytes_per_gpu(self.tp, self.pp, dtype_bytes(self.dtype))
        mib, llc = 2**20, cache.llc_bytes
        where = f"profile {profile.name!r}"
        suits = suggested_flush_level(weights, llc)
        if cache.flush_level == suits:
            return
        if cache.flush_level == "l2":
            self.notes.append(
                f"{where} flushed only the per-core caches (operands from its {llc / mib:.0f} MiB last-level cache), "
                f"but {self.model.name}'s weights per device are {weights / mib:.0f} MiB, more than half of it: "
                "memory-bound GEMMs are "
                "likely under-charged; a profile measured with --flush-level llc suits this model")
        elif cache.flush_level == "llc":
            self.notes.append(
                f"{where} flushed the last-level cache ({llc / mib:.0f} MiB) before each call, but "
                f"{self.model.name}'s weights per device ({weights / mib:.0f} MiB) fit in it: memory-bound GEMMs "
                "(decode) are likely over-charged; a profile measured with --flush-level l2 suits this model")

    def _moe(self) -> "_Op":
        """The fused routed-expert kernel of one MoE layer over tokens, from the first profile whose
        ``moe`` table has the model's shape (module docstring: log-log in tokens between measured points).

        Raises:
            ProfileError: no profile has a ``moe`` table, or none has rows at the model's shape, dtype,
                TP and expert parallelism (the message names the profiles, the model and the shape).
        """
        m = self.model
        key = {"hidden_size": m.hidden_size, "inter_size": m.moe_intermediate_size, "topk": m.experts_per_token,
               "num_experts": m.num_experts, "moe_tp_size": self.tp, "moe_ep_size": MOE_EP_SIZE}
        self._moe_key = {"distribution": MOE_DISTRIBUTION, **key}
        shape = ", ".join(f"{k}={v}" for k, v in self._moe_key.items())
        names = [p.name for p in self.profiles]
        with_table = [p for p in self.profiles if p.has("moe")]
        if not with_table:
            raise ProfileError(
                f"model {m.name!r} is a mixture-of-experts model and profiles {names} have no 'moe' table "
                f"(needed: dtype={self.dtype}, {shape}); use a profile with one, e.g. h100_sxm-aiconfigurator "
                "(gpu_profiles/README.md)"
            )
        tried = []
        for prof in with_table:
            df = prof.table("moe")
            dts = [d for d in _SUBSTITUTE.get(self.dtype, (self.dtype,)) if d in set(df.dtype)]
            rows = df[df.distribution == MOE_DISTRIBUTION]
            for c, v in key.items():
                rows = rows[rows[c] == v]
            for dt in dts:
                sel = rows[rows.dtype == dt].sort_values("num_tokens")
                if len(sel):
                    where = self._where(prof, "moe")
                    if dt != self.dtype:
                        self.notes.append(f"{where}: dtype {self.dtype} not measured; {dt} used in its place")
                    self.sources["moe"] = prof.name
                    self._moe_key["dtype"] = dt
                    return _Op.loglog(sel.num_tokens.to_numpy(float), sel[LATENCY].to_numpy(float))
            near = df[(df.hidden_size == m.hidden_size) & (df.num_experts == m.num_experts)]
            have = sorted({(str(r.dtype), int(r.moe_tp_size), int(r.moe_ep_size)) for r in near.itertuples()})
            tried.append(f"{prof.name!r} (same hidden size and experts measured at (dtype, moe_tp_size, moe_ep_size) {have or 'none'})")
        raise ProfileError(
            f"model {m.name!r}: no 'moe' rows at dtype={self.dtype}, {shape} in profiles {', '.join(tried)}"
        )

    def _gemm_curve(self, gemm: pd.DataFrame, shape: GemmShape, where: str) -> "_Op":
        """Time of ``shape`` over m, from the table (exact, interpolated or scaled; see module docstring)."""
        exact = gemm[(gemm.n == shape.n) & (gemm.k == shape.k)]
        if len(exact):
            c = exact.sort_values("m")
            return _Op.piecewise(c.m.to_numpy(float), c[LATENCY].to_numpy(float))
        ns = np.array(sorted(set(gemm.n)))
        ks = np.array(sorted(set(gemm.k)))
        inside = ns[0] <= shape.n <= ns[-1] and ks[0] <= shape.k <= ks[-1]
        if inside:
            i = int(np.searchsorted(ns, shape.n))
            j = int(np.searchsorted(ks, shape.k))
            n_pts = ns[max(i - 1, 0): i + 1]
            k_pts = ks[max(j - 1, 0): j + 1]
            sub = gemm[gemm.n.isin(n_pts) & gemm.k.isin(k_pts)]
            cube = sub.pivot_table(index="m", columns=["n", "k"], values=LATENCY, aggfunc="median")
            need = [(a, b) for a in n_pts for b in k_pts]
            if all(c in cube.columns for c in need):
                cube = cube[need].dropna()
                if len(cube) >= 2:
                    m_pts = cube.index.to_numpy(float)
                    vals = np.log(cube.to_numpy(float)).reshape(len(m_pts), len(n_pts), len(k_pts))
                    axes = (np.log(m_pts), np.log(n_pts.astype(float)), np.log(k_pts.astype(float)))
                    # scipy needs >= 2 points per axis; a single n or k value is an exact match on that axis
                    if len(n_pts) == 1:
                        vals = np.concatenate([vals, vals], axis=1)
                        axes = (axes[0], np.array([axes[1][0], axes[1][0] + 1.0]), axes[2])
                    if len(k_pts) == 1:
                        vals = np.concatenate([vals, vals], axis=2)
                        axes = (axes[0], axes[1], np.array([axes[2][0], axes[2][0] + 1.0]))
                    f = RegularGridInterpolator(axes, vals, method="linear")
                    pts = np.column_stack([axes[0], np.full(len(m_pts), math.log(shape.n)), np.full(len(m_pts), math.log(shape.k))])
                    ys = np.exp(f(pts))
                    self.notes.append(f"{where}: GEMM {shape.name} n={shape.n} k={shape.k} interpolated (log-log) between n={list(map(int, n_pts))} k={list(map(int, k_pts))}")
                    return _Op.piecewise(m_pts, ys)
        # nearest measured shape in log distance, scaled by n k
        pairs = gemm[["n", "k"]].drop_duplicates().to_numpy()
        dist = np.abs(np.log(pairs[:, 0] / shape.n)) + np.abs(np.log(pairs[:, 1] / shape.k))
        n0, k0 = (int(v) for v in pairs[int(np.argmin(dist))])
        c = gemm[(gemm.n == n0) & (gemm.k == k0)].sort_values("m")
        factor = (shape.n * shape.k) / (n0 * k0)
        self.notes.append(f"{where}: GEMM {shape.name} n={shape.n} k={shape.k} not in the measured grid; scaled from n={n0} k={k0} by {factor:.3g}")
        return _Op.piecewise(c.m.to_numpy(float), c[LATENCY].to_numpy(float) * factor)

    def _elementwise(self, op: str, width: int) -> "_Op":
        found = self._table("elementwise")
        if found is not None:
            prof, df = found
            where = self._where(prof, "elementwise")
            rows = df[df.op == op]
            if len(rows):
                dt = self._pick_dtype(rows, "dtype", self.attn_dtype, where)
                rows = rows[rows.dtype == dt]
                widths = np.array(sorted(set(rows.width)))
                w0 = int(widths[np.argmin(np.abs(np.log(widths / width)))])
                c = rows[rows.width == w0].sort_values("num_tokens")
                factor = width / w0
                if w0 != width:
                    self.notes.append(f"{where}: {op} width {width} not measured; scaled from width {w0} by {factor:.3g}")
                self.sources[f"elementwise.{op}"] = prof.name
                return _Op.piecewise(c.num_tokens.to_numpy(float), c[LATENCY].to_numpy(float) * factor)
        if self.gpu is None or not (self.gpu.mem_bw_bytes_per_s > 0):
            raise ProfileError(
                f"profiles {[p.name for p in self.profiles]} have no elementwise {op!r} timings and no GPU datasheet "
                "bandwidth is known for a roofline estimate"
            )
        # bytes moved per token: reads + writes (module docstring)
        per_token = {
            "rmsnorm": 2, "layernorm": 2, "add": 3, "embedding": 2, "rope": 2, "gelu": 2, "silu_mul": 3,
        }[op] * width * self.act_bytes
        bw = self.gpu.mem_bw_bytes_per_s * MEM_BW_EFFICIENCY
        self.sources[f"elementwise.{op}"] = f"roofline({self.gpu.name})"
        self.notes.append(f"elementwise {op}: no profile timings; memory roofline on {self.gpu.name} datasheet bandwidth")
        return _Op.linear(MEM_CONSTANT_LATENCY_S, per_token / bw)

    def _collective(self, op: str, world: int) -> "_Op":
        for prof in self.profiles:  # the first profile that measured this op at this world size
            if not prof.has("collective"):
                continue
            df = prof.table("collective")
            where = self._where(prof, "collective")
            rows = df[(df.op == op) & (df.world_size == world)]
            if len(rows):
                # message sizes are in bytes, so 16-bit dtypes pool (e.g. NCCL fp16 with custom bf16 rows)
                dt = self._pick_dtype(rows, "dtype", self.attn_dtype, where)
                same_width = [d for d in _SUBSTITUTE.get(dt, (dt,)) if d in set(rows.dtype)]
                rows = rows[rows.dtype.isin(same_width)]
                if self.all_reduce_backend != "auto" and op == "all_reduce":
                    rows = rows[rows.backend == self.all_reduce_backend]
                    if rows.empty:
                        raise ProfileError(f"{where}: no all_reduce rows for backend {self.all_reduce_backend!r} at world size {world}")
                curves = []
                for backend, g in rows.groupby("backend", sort=True):
                    g = g.groupby("message_bytes", as_index=False)[LATENCY].min().sort_values("message_bytes")
                    curves.append((str(backend), g.message_bytes.to_numpy(float), g[LATENCY].to_numpy(float)))
                self.sources[f"collective.{op}"] = f"{prof.name}:{'+'.join(b for b, _, _ in curves)}"
                return _Op.lower_envelope([(x, y) for _, x, y in curves])
        if self.gpu is None or not (self.gpu.intra_node_gbps_unidir > 0):
            raise ProfileError(
                f"profiles {[p.name for p in self.profiles]} have no {op} timings for {world} ranks and no GPU "
                "datasheet link bandwidth is known for an analytic estimate"
            )
        bw = self.gpu.intra_node_gbps_unidir * 1e9
        # message_bytes is what each rank contributes: a ring all-reduce moves 2 (t-1)/t of it per rank,
        # an all-gather receives the other (t-1) ranks' parts
        factor = {"all_reduce": 2 * (world - 1) / world, "all_gather": float(world - 1), "send_recv": 1.0}[op]
        self.sources[f"collective.{op}"] = f"analytic ring({self.gpu.name})"
        self.notes.append(f"{op} x{world}: no profile timings; analytic ring on {self.gpu.name} datasheet link bandwidth")
        return _Op.linear(P2P_LATENCY_S, factor / bw)

    def _attention(self, table: str, length_col: str, q_heads: int, kv_heads: int, exponent: float) -> tuple[ColumnTable, float]:
        found = self._table(table)
        if found is None:
            raise ProfileError(
                f"no {table!r} table in profiles {[p.name for p in self.profiles]}; add a profile that has one "
                "(e.g. an aiconfigurator import) to the latency's profile list"
            )
        prof, df = found
        where = self._where(prof, table)
        dt = self._pick_dtype(df, "dtype", self.attn_dtype, where)
        df = df[df.dtype == dt]
        kdt = self._pick_dtype(df, "kv_dtype", self.kv_dtype, where)
        df = df[df.kv_dtype == kdt]
        d = self.model.head_dim
        configs = df[["num_heads", "num_kv_heads", "head_dim"]].drop_duplicates().to_numpy()
        def cost(c):
            return (0 if c[2] == d else 10) + abs(math.log(c[2] / d)) + abs(math.log(c[0] / q_heads)) + abs(math.log(c[1] / kv_heads))
        best = min(configs.tolist(), key=lambda c: (cost(c), c))
        h0, kv0, d0 = (int(v) for v in best)
        if table == "attention_prefill":
            scale = (q_heads * d) / (h0 * d0)
        else:
            scale = (kv_heads * d) / (kv0 * d0)
        if (h0, kv0, d0) != (q_heads, kv_heads, d):
            self.notes.append(
                f"{where}: heads {q_heads}/{kv_heads} x {d} not measured; taken from {h0}/{kv0} x {d0}, scaled by {scale:.3g}"
            )
        sub = df[(df.num_heads == h0) & (df.num_kv_heads == kv0) & (df.head_dim == d0)]
        batches, curves = [], []
        for b, g in sub.groupby("batch_size", sort=True):
            g = g.sort_values(length_col)
            batches.append(int(b))
            curves.append(LogCurve.from_points(g[length_col].to_numpy(float), g[LATENCY].to_numpy(float), exponent))
        self.sources[table] = prof.name
        return ColumnTable(tuple(batches), tuple(curves)), scale

    def fresh(self) -> "OpLevelModel":
        """A copy sharing the precomputed curves, with its own lookup counters (one per simulation)."""
        twin = copy.copy(self)
        twin.stats = LookupStats()
        twin._decode_oor = {}
        twin._probe = LookupStats()
        return twin

    # -- protocol ----------------------------------------------------------------------------------
    def _tokens_s(self, tokens: int, stats: LookupStats | None) -> float:
        if stats is not None and tokens > self.tokens_measured_max:
            stats.out_of_range("tokens_above")
        return _proportional_above(self._per_token, float(tokens))

    def _sampled_s(self, seqs: int, stats: LookupStats | None) -> float:
        if stats is not None and seqs > self.sampled_measured_max:
            stats.out_of_range("sampled_above")
        return _proportional_above(self._per_sampled, float(seqs))

    def _prefill_attn_at(self, shape: BatchShape, stats: LookupStats | None) -> float:
        """The prefill attention table at the batch's prompts taken as equal-length sequences with the
        same query-key work (``BatchShape.prefill_square_tokens``); unscaled, one layer."""
        n = max(shape.prefill_seqs, 1)
        square = shape.prefill_square_tokens or shape.prefill_tokens ** 2 / n
        return self._prefill_attn.at(n, math.sqrt(square / n), stats, "prefill_attention")

    def decode_s(self, batch_size: int, context_tokens: int) -> float:
        """Pure-decode iteration time (pure apart from remembering, per batch size, whether the last
        lookup was out of range, which ``record_decode`` then counts)."""
        cached = self._decode_cache.get(batch_size)
        if cached is None:  # per-token and per-sampled part: a function of the batch size only
            probe = LookupStats()
            base = self._tokens_s(batch_size, probe) + self._sampled_s(batch_size, probe)
            cached = (base, next(iter(probe.by_axis)) if probe.extrapolated else None, self.decode_scale(batch_size))
            self._decode_cache[batch_size] = cached
        base, axis, scale = cached
        probe = self._probe
        probe.extrapolated = 0
        probe.by_axis.clear()
        attn = self._decode_attn.at(batch_size, context_tokens / batch_size, probe, "decode_attention")
        if probe.extrapolated:
            axis = next(iter(probe.by_axis))
        if axis is not None:
            self._decode_oor[batch_size] = axis
        kernels = base + self._layers * self._decode_attn_scale * attn
        return self.iteration_overhead_s + max(scale * kernels, self.host_floor_s)

    def record_decode(self, batch_size: int, iterations: int) -> None:
        """Count ``iterations`` executed pure-decode lookups at ``batch_size``."""
        self.stats.lookups += iterations
        axis = self._decode_oor.pop(batch_size, None)
        if axis is not None:
            self.stats.extrapolated += iterations
            self.stats.by_axis[axis] = self.stats.by_axis.get(axis, 0) + iterations

    def iteration_s(self, shape: BatchShape) -> float:
        if shape.prefill_tokens == 0:
            if shape.decode_seqs == 0:
                raise ValueError("empty batch")
            t = self.decode_s(shape.decode_seqs, shape.decode_context_tokens)
            self.record_decode(shape.decode_seqs, 1)
            return t
        st = self.stats
        st.lookups += 1
        n_p, d = shape.prefill_seqs, shape.decode_seqs
        t = self._tokens_s(shape.prefill_tokens + d, st) + self._sampled_s(n_p + d, st)
        t += self._layers * self._prefill_attn_scale * self._prefill_attn_at(shape, st)
        if d:
            t += self._layers * self._decode_attn_scale * self._decode_attn.at(d, shape.decode_context_tokens / d, st, "decode_attention")
        return self.iteration_overhead_prefill_s + max(self.kernel_time_scale_prefill * t, self.host_floor_at(n_p))

    def _overhead_for(self, shape: BatchShape) -> float:
        return self.iteration_overhead_prefill_s if shape.prefill_tokens else self.iteration_overhead_s

    def decode_scale(self, batch_size: int) -> float:
        """The factor on a pure decode iteration's kernels at ``batch_size`` (``kernel_time_scale``)."""
        if self._scale_log_b is None:
            return self.kernel_time_scale
        return float(np.interp(math.log(max(batch_size, 1)), self._scale_log_b, self._scale_f))

    def _scale_for(self, shape: BatchShape) -> float:
        return self.kernel_time_scale_prefill if shape.prefill_tokens else self.decode_scale(shape.decode_seqs)

    def host_floor_at(self, prefill_seqs: int) -> float:
        """The host's time to issue an iteration with ``prefill_seqs`` prefilled requests (seconds;
        0 without a floor)."""
        return self.host_floor_s + self.host_floor_per_prefill_seq_s * prefill_seqs

    def stage_times_s(self, shape: BatchShape) -> tuple[float, ...]:
        """Time each PP stage is busy with one pass of ``shape`` (module docstring); ``(iteration_s,)``
        without PP. Counts one lookup."""
        if self.pp == 1:
            return (self.iteration_s(shape),)
        n_p, d = shape.prefill_seqs, shape.decode_seqs
        if n_p == 0 and d == 0:
            raise ValueError("empty batch")
        st = self.stats
        st.lookups += 1
        tokens = shape.prefill_tokens + d
        if tokens > self.tokens_measured_max:
            st.out_of_range("tokens_above")
        layer_c, embed_c, handoff_c = self._stage_curves
        per_layer = _proportional_above(layer_c, float(tokens))
        if shape.prefill_tokens:
            per_layer += self._prefill_attn_scale * self._prefill_attn_at(shape, st)
        if d:
            per_layer += self._decode_attn_scale * self._decode_attn.at(d, shape.decode_context_tokens / d, st, "decode_attention")
        first = _proportional_above(embed_c, float(tokens))
        handoff = _proportional_above(handoff_c, float(tokens))
        last = self._sampled_s(n_p + d, st)
        end = self.pp - 1
        floor = self.host_floor_at(n_p) / self.model.num_layers
        scale = self._scale_for(shape)
        return tuple(
            (self._overhead_for(shape) if i == 0 else 0.0)
            + max(scale * (n * per_layer + (first if i == 0 else 0.0) + (handoff if i < end else last)), n * floor)
            for i, n in enumerate(self.stage_layers)
        )

    def breakdown_s(self, shape: BatchShape) -> dict[str, float]:
        """The parts of ``iteration_s(shape)`` in seconds, each summed over the layers it runs in: the
        overhead, every per-token op at ``T`` tokens (GEMMs by name, ``moe``, elementwise ops,
        ``all_reduce``, ``send_recv``), every per-sampled op at ``S`` sequences (``final_norm``, ``lm_head``,
        ``logits_all_gather``) and the attention of the batch. Their sum is ``iteration_s(shape)`` up to
        rounding (each op is piecewise linear on the breakpoints its sum is tabulated on). Counts nothing."""
        n_p, d = shape.prefill_seqs, shape.decode_seqs
        tokens, seqs = shape.prefill_tokens + d, n_p + d
        out = {"iteration_overhead": self._overhead_for(shape)}
        scale = self._scale_for(shape)
        for parts, size in ((self._parts_t, tokens), (self._parts_s, seqs)):
            for name, mult, op, unit in parts:
                out[name] = out.get(name, 0.0) + scale * mult * op.values([size * unit])[0]
        if shape.prefill_tokens:
            out["attention_prefill"] = scale * self._layers * self._prefill_attn_scale * self._prefill_attn_at(shape, None)
        if d:
            out["attention_decode"] = scale * self._layers * self._decode_attn_scale * self._decode_attn.at(d, shape.decode_context_tokens / d, None, "")
        kernels = sum(v for k, v in out.items() if k != "iteration_overhead")
        out["host_floor_excess"] = max(0.0, self.host_floor_at(n_p) - kernels)
        return out

    def prefill_s(self, prompt_tokens: int, batch_size: int = 1) -> float:
        """Time of a pure-prefill iteration of ``batch_size`` prompts of ``prompt_tokens`` each."""
        return self.iteration_s(
            BatchShape(prefill_tokens=prompt_tokens * batch_size, prefill_seqs=batch_size, prefill_square_tokens=prompt_tokens**2 * batch_size)
        )

    def describe(self) -> dict:
        return {
            "kind": "op_level",
            "profiles": [p.describe() for p in self.profiles],
            "source_kinds": sorted({p.source_kind for p in self.profiles}),
            "model": self.model.name,
            "tp": self.tp,
            "pp": self.pp,
            **({"stage_layers": list(self.stage_layers)} if self.pp > 1 else {}),
            "dtype": self.dtype,
            "kv_dtype": self.kv_dtype,
            "iteration_overhead_s": self.iteration_overhead_s,
            "iteration_overhead_prefill_s": self.iteration_overhead_prefill_s,
            "kernel_time_scale": (dict(self.kernel_time_scale) if isinstance(self.kernel_time_scale, dict)
                                  else self.kernel_time_scale),
            "kernel_time_scale_prefill": self.kernel_time_scale_prefill,
            "host_floor_s": self.host_floor_s,
            "host_floor_per_prefill_seq_s": self.host_floor_per_prefill_seq_s,
            "all_reduce_backend": self.all_reduce_backend,
            "sources": dict(self.sources),
            "gemm_shapes": self._components["gemm"],
            **({"moe_shape": self._components["moe"]} if "moe" in self._components else {}),
            "tokens_measured_max": self.tokens_measured_max,
            "notes": list(self.notes),
        }


def suggested_flush_level(weight_bytes: int, llc_bytes: int | None) -> str:
    """The ``pdsim profile --flush-level`` whose timings a model's forward pass sees: ``l2`` when the
    model's weights per device (``weight_bytes``) fit in half the last-level cache (``llc_bytes``: they
    stay in it from one iteration to the next, the other half left for the KV cache, activations and
    other processes), ``llc`` otherwise or when the cache size is unknown (``profile_tools.ops.FLUSH_LEVELS``)."""
    return "l2" if llc_bytes and weight_bytes <= llc_bytes / 2 else "llc"


_SINK = LookupStats()  # absorbs counts of precomputed curves (their range is checked by the caller)


def _proportional_above(curve: Curve, x: float) -> float:
    """The curve inside its range (clamped below); above it, proportional to x from the last point."""
    if x > curve.x[-1]:
        return curve.y[-1] * x / curve.x[-1]
    return curve.at(x, _SINK, "", clamp_low=True)


class _Op:
    """A latency curve over one size axis (tokens or bytes), before it is summed into F_T / F_S."""

    def __init__(self, curve: Curve | None, const_s: float = 0.0, slope_s: float = 0.0):
        self.curve, self.const_s, self.slope_s = curve, const_s, slope_s

    @classmethod
    def piecewise(cls, xs, ys) -> "_Op":
        xs = np.asarray(xs, float)
        ys = np.asarray(ys, float)
        order = np.argsort(xs, kind="stable")
        return cls(Curve(tuple(float(v) for v in xs[order]), tuple(float(v) for v in ys[order])))

    @classmethod
    def loglog(cls, xs, ys, samples: int = MOE_SAMPLES_PER_INTERVAL) -> "_Op":
        """Measured points (x increasing, > 0) joined by power laws (linear in log x, log y), sampled
        ``samples`` times per interval; exact at the measured points."""
        xs = [float(v) for v in xs]
        ys = [float(v) for v in ys]
        out_x, out_y = [xs[0]], [ys[0]]
        for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
            slope = math.log(y1 / y0) / math.log(x1 / x0)
            for j in range(1, samples):
                x = x0 * (x1 / x0) ** (j / samples)
                out_x.append(x)
                out_y.append(y0 * (x / x0) ** slope)
            out_x.append(x1)
            out_y.append(y1)
        return cls(Curve(tuple(out_x), tuple(out_y)))

    @classmethod
    def linear(cls, const_s: float, slope_s: float) -> "_Op":
        return cls(None, const_s, slope_s)

    @classmethod
    def lower_envelope(cls, curves: list[tuple[np.ndarray, np.ndarray]]) -> "_Op":
        """At each size, the fastest of several backends (evaluated on the union of their sizes, each
        within its own measured range only)."""
        grid = sorted(set().union(*[set(x.tolist()) for x, _ in curves]))
        best = []
        for g in grid:
            vals = [np.interp(g, x, y) for x, y in curves if x[0] <= g <= x[-1]]
            best.append(min(vals))
        return cls.piecewise(grid, best)

    def grid(self) -> tuple[list[float], float]:
        """Breakpoints and the largest measured size (inf for analytic ops)."""
        if self.curve is None:
            return [], math.inf
        return list(self.curve.x), self.curve.x[-1]

    def values(self, xs) -> list[float]:
        """Values at sizes ``xs``; above the largest measured size, proportional to the size from the
        last point (compute- or bandwidth-bound regime; robust where the last points are close and noisy)."""
        if self.curve is None:
            return [self.const_s + self.slope_s * float(x) for x in xs]
        x_max, y_max = self.curve.x[-1], self.curve.y[-1]
        inside = self.curve.eval_many([min(float(x), x_max) for x in xs])
        return [y if x <= x_max else y_max * float(x) / x_max for x, y in zip(xs, inside)]
