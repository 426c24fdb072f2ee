"""A compact, real Llama-architecture decoder in torch: the compute core of pdsim's reference engine.

``LlamaModel`` builds a Llama decoder (RMSNorm, rotary position embeddings, grouped-query attention,
SwiGLU MLP; Hugging Face ``LlamaForCausalLM`` semantics, ``transformers/models/llama/modeling_llama.py``)
from a HF ``config.json`` dict, with random weights drawn from a seed, and runs engine iterations on it::

    model = LlamaModel(json.loads(Path("pdsim/data/model_configs/pdsim-tiny-llama.json").read_text()))
    model.step(prefill=[("a", [1, 2, 3]), ("b", [4, 5])])   # -> {"a": 1234, "b": 77}
    model.step(prefill=[("c", [9, 9, 9, 9])], decode=[("a", 1234), ("b", 77)])

One ``step`` is one iteration, executed the way vLLM / SGLang execute it:

- All tokens of the iteration (the prefill chunks, concatenated in order, then one token per decode
  request) form ONE flattened ``[total_tokens, hidden]`` batch through the embedding, the RMSNorms and
  the QKV / O / gate_up / down GEMMs (``torch.nn.functional.linear`` with m = total tokens). Weights are
  fused as in vLLM: QKV ``[(heads + 2 kv_heads) * head_dim, hidden]``, gate_up ``[2 * intermediate,
  hidden]`` (gate rows first).
- Rotary embeddings use precomputed cos/sin tables indexed by each token's position (rotate-half form;
  ``rope_scaling`` of type ``llama3`` and ``linear`` supported).
- Attention depends on the request kind. Each prefill request runs its own causal
  ``scaled_dot_product_attention`` with q ``[1, heads, L, d]`` and k/v ``[1, kv_heads, P + L, d]``
  (GQA via ``enable_gqa=True``), where P is the request's cached prefix (0 for a fresh prompt: a
  plain causal kernel; P > 0 for a later chunk of a chunked prefill: an explicit mask lets new token t
  see keys ``j <= P + t``). Decode requests run together: q ``[b, heads, 1, d]`` against K/V
  ``[b, kv_heads, ctx_max, d]`` (``ctx_max`` = the longest context in the batch + 1), with a boolean
  mask (position j attends iff ``j <= len``; omitted when all contexts are equal). The new tokens' K/V
  are written into the cache first. **In place** (the common case): when the batch's sequences occupy a
  contiguous range of the KV pool's slots (see below; in any order: the rows are run in slot order and
  the outputs mapped back), K and V are views of the pool, ``pool[l, 0, s0:s0 + b, :, :ctx_max]``, read
  by the attention kernel where they lie, like a paged-attention kernel, so decode attention costs what
  the kernel on contiguous ``[b, kv_heads, ctx_max, d]`` K/V costs (what ``profile_tools`` measures).
  **Fallback** (otherwise, or with ``decode_fast_path = False``): the batch's KV (all layers) is
  gathered into a padded workspace reused across iterations, costing one extra read and write of those
  bytes per iteration (on this CPU, at b = 64 and c = 1024, about 2/3 of the attention kernel's time)
  and a second copy of them in memory (``workspace_bytes``). ``decode_path_counts`` counts the
  iterations of each path. **Cost**: either way decode attention grows with ``b x ctx_max`` rather than
  with the sum of the contexts, so one long request in a batch of short ones is expensive (grouping
  decode requests by context length, or a ragged paged kernel, are the refinements).
- The final RMSNorm and the LM head run ONLY on the last token of each sequence (vLLM computes logits
  only for sampled positions); the next token is the greedy argmax. A non-final chunk of a chunked
  prefill still yields a token, which the engine discards (as vLLM does).

Everything runs under ``torch.inference_mode()``. The same seed and the same inputs give the same
outputs (on a given device, dtype and thread count).

The KV cache (``KVCache``) is a pool, one tensor ``[layers, 2, num_slots, kv_heads, slot_capacity,
head_dim]`` (per layer a K and a V ``[num_slots, kv_heads, slot_capacity, head_dim]``), zero-filled,
one slot per sequence. The sequences held occupy slots ``0 .. n - 1``: a new one takes the next slot,
and freeing one moves the last slot's sequence into the freed slot (one copy of that sequence's KV), so
sequences created together stay a contiguous slot range. The pool is re-allocated (copying it) when it
lacks a slot (it grows by about 25 %) or a sequence outgrows the slot capacity (grown in multiples of
``block_tokens``; ``kv_reserve`` ahead keeps that out of timed iterations). Every slot has the capacity
of the longest reservation, so the pool's memory is ``slots x slot_capacity``, more than the sum of
the sequences' reservations when their lengths differ (a paged pool would not pay that).
``kv_export`` / ``kv_import`` move one sequence's KV ``[layers, kv_heads, tokens, head_dim]`` between
instances (prefill/decode disaggregation). ``kv_bytes_used`` counts exactly
``2 * layers * kv_heads * head_dim * dtype_bytes`` per cached token (the formula of
``pdsim.models.arch.ModelSpec.kv_bytes_per_token``); ``kv_bytes_allocated`` counts a sequence's
reserved capacity, or the whole pool.

Errors: malformed configs raise ``ValueError`` naming the field and value; misuse of ``step`` (unknown
sequence, empty prompt, token id out of the vocabulary, position beyond the RoPE table, a sequence twice
in one iteration) raises ``ValueError`` / ``KeyError`` before any state changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

SeqId = Hashable
"""A sequence (request) id: any hashable, e.g. an int or a request-id string."""

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch floating dtype from a dtype or a name (``fp32``, ``bf16``, ``fp16``, or the long forms).

    Raises:
        ValueError: unknown name, or a dtype that is not fp32 / bf16 / fp16.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}") from None


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    """The fields of a HF Llama ``config.json`` that the live model uses.

    Attributes:
        hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim, vocab_size: shapes.
        max_position_embeddings: length of the RoPE tables; positions must stay below it.
        rms_norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base.
        rope_scaling: HF ``rope_scaling`` dict (``llama3`` or ``linear``) or None.
        tie_word_embeddings: LM head shares the embedding matrix.
        initializer_range: std of the normal init of every matrix (HF default 0.02).
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Mapping[str, Any] | None
    tie_word_embeddings: bool
    initializer_range: float

    @property
    def q_size(self) -> int:
        """Width of the query projection: heads x head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection: kv_heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> LlamaConfig:
        """Read a HF ``config.json`` dict of a Llama-architecture model.

        ``num_key_value_heads`` defaults to ``num_attention_heads`` and ``head_dim`` to
        ``hidden_size // num_attention_heads``, as in HF ``LlamaConfig``.

        Raises:
            ValueError: a required field is missing, a shape is inconsistent, or the config asks for
                something this model does not implement (biases, a non-SiLU activation, an unknown
                ``rope_scaling`` type); the message names the field and value.
        """

        def need(key: str) -> Any:
            if key not in cfg:
                raise ValueError(f"model config: missing required field {key!r}")
            return cfg[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"model config: hidden_act must be 'silu' (SwiGLU), got {act!r}")
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key, False):
                raise ValueError(f"model config: {key}=true is not supported by the live model")
        if heads % kv_heads:
            raise ValueError(f"model config: num_attention_heads ({heads}) must be a multiple of "
                             f"num_key_value_heads ({kv_heads})")
        if head_dim % 2:
            raise ValueError(f"model config: head_dim must be even for RoPE, got {head_dim}")
        scaling = cfg.get("rope_scaling")
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in ("llama3", "linear", "default"):
                raise ValueError(f"model config: rope_scaling type {kind!r} is not supported "
                                 "(supported: llama3, linear, default)")
        out = cls(
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=int(need("vocab_size")),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rope_scaling=dict(scaling) if scaling is not None else None,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
        )
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "vocab_size", "max_position_embeddings"):
            if getattr(out, name) < 1:
                raise ValueError(f"model config: {name} must be >= 1, got {getattr(out, name)}")
        return out


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """RoPE inverse frequencies ``[head_dim // 2]`` (fp32), with ``rope_scaling`` applied.

    ``inv_freq_i = theta ** (-2i / head_dim)``. ``linear`` divides by ``factor``; ``llama3`` follows HF
    ``_compute_llama3_parameters`` (low frequencies divided by ``factor``, high ones kept, a smooth
    blend between).
    """
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, blended, scaled)
    return inv_freq  # "default"


# ---------------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------------


class KVCache:
    """Pooled KV cache: one tensor ``[layers, 2, num_slots, kv_heads, slot_capacity, head_dim]``, one slot
    per sequence.

    ``pool[l, 0, s]`` is layer l's K and ``pool[l, 1, s]`` its V of the sequence in slot s, each
    ``[kv_heads, slot_capacity, head_dim]``; its first ``num_tokens(seq_id)`` positions are valid. The
    sequences held occupy slots ``0 .. len(cache) - 1``: a new sequence takes slot ``len(cache)``, and
    ``free`` moves the sequence of the last slot into the freed one (one copy of that sequence's valid
    KV), so a decode batch of sequences created in order is a contiguous slot range that attention reads
    in place (``pool[l, 0, s0:s0 + b, :, :ctx]``).

    Each sequence has a capacity (its reservation, a multiple of ``block_tokens``); the pool's slot
    capacity is at least the largest of them. The pool grows (is re-allocated, zero-filled, with the valid
    slots copied over) when a new sequence finds no free slot (by about 25 % of the slots) or a sequence
    outgrows the slot capacity (to its new capacity); ``reserve`` ahead of time keeps that out of timed
    code. Positions past a sequence's length are always finite (zeros, or stale KV of an earlier
    sequence or step), so masked attention scores over them stay finite. The pool is dropped when the
    last sequence is freed.

    Args:
        num_layers, num_kv_heads, head_dim: shapes.
        dtype, device: of the pool.
        block_tokens: capacity granularity in tokens (>= 1).
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, block_tokens: int = 16) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        self.block_tokens = block_tokens
        self._pool: torch.Tensor | None = None
        self._slot_of: dict[SeqId, int] = {}  # insertion order
        self._seq_in_slot: list[SeqId] = []  # slot -> sequence, for slots 0 .. len - 1
        self._num_tokens: dict[SeqId, int] = {}
        self._capacity: dict[SeqId, int] = {}

    @property
    def bytes_per_token(self) -> int:
        """KV bytes per cached token: 2 (K and V) x layers x kv_heads x head_dim x bytes per element."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem

    def __contains__(self, seq_id: SeqId) -> bool:
        return seq_id in self._slot_of

    def __len__(self) -> int:
        return len(self._slot_of)

    def seq_ids(self) -> list[SeqId]:
        """Ids of the sequences held, in insertion order."""
        return list(self._slot_of)

    @property
    def pool(self) -> torch.Tensor:
        """The whole pool ``[layers, 2, num_slots, kv_heads, slot_capacity, head_dim]`` (not a copy).

        Raises:
            RuntimeError: the cache holds no sequence (no pool is allocated).
        """
        if self._pool is None:
            raise RuntimeError("the KV cache holds no sequence: no pool is allocated")
        return self._pool

    @property
    def num_slots(self) -> int:
        """Slots allocated in the pool (>= ``len(cache)``; 0 without a pool)."""
        return 0 if self._pool is None else self._pool.shape[2]

    @property
    def slot_capacity(self) -> int:
        """Token capacity of every slot (0 without a pool)."""
        return 0 if self._pool is None else self._pool.shape[4]

    def slot(self, seq_id: SeqId) -> int:
        """The pool slot of a sequence. Raises KeyError for an unknown sequence."""
        return self._slot_of[self._known(seq_id)]

    def num_tokens(self, seq_id: SeqId) -> int:
        """Cached tokens of a sequence. Raises KeyError for an unknown sequence."""
        return self._num_tokens[self._known(seq_id)]

    def capacity(self, seq_id: SeqId) -> int:
        """Reserved token capacity of a sequence (<= ``slot_capacity``). Raises KeyError if unknown."""
        return self._capacity[self._known(seq_id)]

    def buffer(self, seq_id: SeqId) -> torch.Tensor:
        """The sequence's slot ``[layers, 2, kv_heads, slot_capacity, head_dim]`` (a view of the pool)."""
        return self.pool[:, :, self.slot(seq_id)]

    def layer(self, seq_id: SeqId, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the valid K and V of one layer, each ``[kv_heads, num_tokens, head_dim]``."""
        buf, n = self.buffer(seq_id), self._num_tokens[seq_id]
        return buf[layer, 0, :, :n], buf[layer, 1, :, :n]

    @torch.inference_mode()
    def reserve(self, seq_id: SeqId, tokens: int) -> None:
        """Make room for ``tokens`` tokens (creating the sequence, empty, in the next slot if it is new).

        The sequence's capacity becomes ``tokens`` rounded up to a multiple of ``block_tokens`` when it is
        smaller (never shrinks); the pool is re-allocated when it lacks a slot or slot capacity.
        """
        need = -(-max(tokens, 1) // self.block_tokens) * self.block_tokens
        if seq_id in self._slot_of:
            if self._capacity[seq_id] >= tokens:
                return
            self._capacity[seq_id] = need
            self._grow(len(self._seq_in_slot), need)
            return
        self._grow(len(self._seq_in_slot) + 1, need)
        self._slot_of[seq_id] = len(self._seq_in_slot)
        self._seq_in_slot.append(seq_id)
        self._num_tokens[seq_id] = 0
        self._capacity[seq_id] = need

    def _grow(self, slots: int, capacity: int) -> None:
        """Ensure the pool has at least ``slots`` slots of at least ``capacity`` tokens."""
        old = self._pool
        have_slots, have_cap = self.num_slots, self.slot_capacity
        if old is not None and have_slots >= slots and have_cap >= capacity:
            return
        new_slots = slots if have_slots >= slots else max(slots, have_slots + max(have_slots // 4, 1))
        new_cap = max(capacity, have_cap)
        new = torch.zeros(self.num_layers, 2, new_slots, self.num_kv_heads, new_cap, self.head_dim,
                          dtype=self.dtype, device=self.device)
        used = len(self._seq_in_slot)
        if old is not None and used:
            new[:, :, :used, :, :have_cap] = old[:, :, :used]
        self._pool = new

    def set_num_tokens(self, seq_id: SeqId, tokens: int) -> None:
        """Mark the first ``tokens`` positions valid (the model calls this after writing them).

        Raises:
            ValueError: ``tokens`` negative or above the capacity.
        """
        cap = self.capacity(seq_id)
        if not 0 <= tokens <= cap:
            raise ValueError(f"sequence {seq_id!r}: num_tokens must be in [0, {cap}], got {tokens}")
        self._num_tokens[seq_id] = tokens

    def truncate(self, seq_id: SeqId, tokens: int) -> None:
        """Drop cached tokens beyond the first ``tokens`` (e.g. to roll back a step). Keeps capacity.

        Raises:
            ValueError: ``tokens`` negative or above the current length.
        """
        n = self.num_tokens(seq_id)
        if not 0 <= tokens <= n:
            raise ValueError(f"sequence {seq_id!r}: cannot truncate {n} cached tokens to {tokens}")
        self._num_tokens[seq_id] = tokens

    @torch.inference_mode()
    def free(self, seq_id: SeqId) -> None:
        """Release a sequence's slot, moving the last slot's sequence into it (one copy of its valid KV)
        so that the sequences keep occupying slots ``0 .. len - 1``. Raises KeyError if unknown."""
        slot = self._slot_of.pop(self._known(seq_id))
        del self._num_tokens[seq_id], self._capacity[seq_id]
        last = len(self._seq_in_slot) - 1
        if slot != last:
            moved = self._seq_in_slot[last]
            n = self._num_tokens[moved]
            pool = self.pool
            pool[:, :, slot, :, :n] = pool[:, :, last, :, :n]
            self._seq_in_slot[slot] = moved
            self._slot_of[moved] = slot
        self._seq_in_slot.pop()
        if not self._seq_in_slot:
            self._pool = None

    @torch.inference_mode()
    def export(self, seq_id: SeqId) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of a sequence's valid K and V, each ``[layers, kv_heads, num_tokens, head_dim]``
        (contiguous, on the cache's device and dtype): what a KV transfer sends."""
        buf, n = self.buffer(seq_id), self._num_tokens[seq_id]
        return buf[:, 0, :, :n].contiguous(), buf[:, 1, :, :n].contiguous()

    @torch.inference_mode()
    def load(self, seq_id: SeqId, k: torch.Tensor, v: torch.Tensor) -> None:
        """Install K and V ``[layers, kv_heads, tokens, head_dim]`` as a new sequence's cache (moved to
        this cache's device; the dtype must match: no silent conversion).

        Raises:
            ValueError: the sequence exists already, or a shape or dtype does not match.
        """
        if seq_id in self._slot_of:
            raise ValueError(f"sequence {seq_id!r} is already in the KV cache; free it first")
        expect = (self.num_layers, self.num_kv_heads, k.shape[2] if k.dim() == 4 else -1, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if tuple(t.shape) != expect or t.shape != k.shape:
                raise ValueError(f"sequence {seq_id!r}: {name} must have shape [layers={self.num_layers}, "
                                 f"kv_heads={self.num_kv_heads}, tokens, head_dim={self.head_dim}] like k, "
                                 f"got {tuple(t.shape)}")
            if t.dtype != self.dtype:
                raise ValueError(f"sequence {seq_id!r}: {name} has dtype {t.dtype}, the cache holds {self.dtype}")
        n = k.shape[2]
        self.reserve(seq_id, n)
        buf = self.buffer(seq_id)
        buf[:, 0, :, :n] = k.to(self.device)
        buf[:, 1, :, :n] = v.to(self.device)
        self._num_tokens[seq_id] = n

    def bytes_used(self, seq_id: SeqId | None = None) -> int:
        """KV bytes of the cached tokens (one sequence, or all): tokens x ``bytes_per_token``."""
        tokens = self.num_tokens(seq_id) if seq_id is not None else sum(self._num_tokens.values())
        return tokens * self.bytes_per_token

    def bytes_allocated(self, seq_id: SeqId | None = None) -> int:
        """Bytes allocated: for one sequence its capacity x ``bytes_per_token``; for all, the whole pool
        (every slot at the slot capacity, spare slots included)."""
        if seq_id is not None:
            return self.capacity(seq_id) * self.bytes_per_token
        pool = self._pool
        return 0 if pool is None else pool.numel() * pool.element_size()

    def _known(self, seq_id: SeqId) -> SeqId:
        if seq_id not in self._slot_of:
            raise KeyError(f"sequence {seq_id!r} is not in the KV cache")
        return seq_id


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerWeights:
    """One decoder layer's weights (``F.linear`` layout: ``[out_features, in_features]``).

    Attributes:
        qkv: ``[(heads + 2 kv_heads) * head_dim, hidden]``, rows Q then K then V.
        o: ``[hidden, heads * head_dim]``.
        gate_up: ``[2 * intermediate, hidden]``, gate rows then up rows.
        down: ``[hidden, intermediate]``.
        input_norm, post_attention_norm: RMSNorm weights ``[hidden]``.
    """

    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    input_norm: torch.Tensor
    post_attention_norm: torch.Tensor


@dataclass(frozen=True, slots=True)
class _PrefillPlan:
    seq_id: SeqId
    offset: int  # first row of this chunk in the flattened batch
    length: int  # tokens in this chunk
    start: int  # cached prefix before this chunk (its first position)


class LlamaModel:
    """A Llama decoder with random weights and a KV cache, stepping one engine iteration at a time.

    Args:
        config: a HF ``config.json`` dict (see ``LlamaConfig.from_hf``).
        dtype: weights, activations and KV dtype (``torch.float32`` default; bf16 / fp16 for GPUs).
        device: torch device (``"cpu"`` default).
        seed: seed of the weights. They are drawn with a ``torch.Generator`` in a fixed order
            (embedding, then per layer qkv, o, gate_up, down, then the LM head) from
            ``normal(0, initializer_range)`` as HF initialises Llama; norms are ones. On a CPU the
            generator is the CPU's; on an accelerator it is the device's own (drawing 8 billion fp32
            values on a host takes a minute or more, on the device milliseconds). So the same seed gives
            the same weights on every device of one type (CPU, or one GPU vendor and torch version).
        kv_block_tokens: KV capacity granularity (of a sequence's reservation and of the pool's slot
            capacity), in tokens.
        max_positions: length of the RoPE tables (default ``max_position_embeddings``).

    Raises:
        ValueError: bad config, dtype, or sizes.
    """

    def __init__(self, config: Mapping[str, Any], dtype: torch.dtype | str = torch.float32,
                 device: torch.device | str = "cpu", seed: int = 0, kv_block_tokens: int = 16,
                 max_positions: int | None = None) -> None:
        self.config = LlamaConfig.from_hf(config)
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        self.seed = seed
        cfg = self.config
        gen = torch.Generator(device=self.device).manual_seed(seed)
        std = cfg.initializer_range

        def normal(*shape: int) -> torch.Tensor:
            w = torch.randn(shape, generator=gen, dtype=torch.float32, device=self.device) * std
            return w.to(dtype=self.dtype)

        def ones(n: int) -> torch.Tensor:
            return torch.ones(n, dtype=self.dtype, device=self.device)

        self.embed = normal(cfg.vocab_size, cfg.hidden_size)
        self.layers: list[LayerWeights] = [
            LayerWeights(
                qkv=normal(cfg.q_size + 2 * cfg.kv_size, cfg.hidden_size),
                o=normal(cfg.hidden_size, cfg.q_size),
                gate_up=normal(2 * cfg.intermediate_size, cfg.hidden_size),
                down=normal(cfg.hidden_size, cfg.intermediate_size),
                input_norm=ones(cfg.hidden_size),
                post_attention_norm=ones(cfg.hidden_size),
            )
            for _ in range(cfg.num_layers)
        ]
        self.final_norm = ones(cfg.hidden_size)
        self.lm_head = self.embed if cfg.tie_word_embeddings else normal(cfg.vocab_size, cfg.hidden_size)

        self.max_positions = cfg.max_position_embeddings if max_positions is None else int(max_positions)
        if self.max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got {self.max_positions}")
        freqs = torch.outer(torch.arange(self.max_positions, dtype=torch.float32), rope_inv_freq(cfg))
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
        self._cos = emb.cos().to(device=self.device, dtype=self.dtype)
        self._sin = emb.sin().to(device=self.device, dtype=self.dtype)

        self.kv = KVCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.dtype, self.device,
                          block_tokens=kv_block_tokens)
        self._decode_workspace: torch.Tensor | None = None  # reused padded decode KV (see _gather_decode_kv)
        self.last_enqueue_s = 0.0
        """Host seconds the last ``step`` took to issue its forward pass, before waiting for the sampled
        tokens: on a CPU the whole forward pass; on a GPU the time to launch its kernels, so
        ``last_enqueue_s`` close to the step's wall time means the step was bound by the host."""
        self.decode_fast_path = True
        """Read a decode batch occupying a contiguous slot range in place (False: always gather)."""
        self.decode_path_counts = {"in_place": 0, "gather": 0}
        """Decode iterations run by each attention path (for tests and diagnostics)."""

    # -- weights ------------------------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        """All weight tensors by HF-like name (a tied LM head appears once, as the embedding)."""
        out = {"embed_tokens": self.embed}
        for i, w in enumerate(self.layers):
            for name in LayerWeights.__slots__:
                out[f"layers.{i}.{name}"] = getattr(w, name)
        out["norm"] = self.final_norm
        if not self.config.tie_word_embeddings:
            out["lm_head"] = self.lm_head
        return out

    def num_parameters(self) -> int:
        """Number of parameters (a tied LM head counted once)."""
        return sum(t.numel() for t in self.weights().values())

    # -- KV cache -----------------------------------------------------------------------------------

    def kv_export(self, seq_id: SeqId) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one sequence, each ``[layers, kv_heads, tokens, head_dim]`` (copies)."""
        return self.kv.export(seq_id)

    @torch.inference_mode()
    def kv_export_packed(self, seq_id: SeqId) -> torch.Tensor:
        """K and V of one sequence as ONE contiguous tensor ``[layers, 2, kv_heads, tokens, head_dim]``
        (a copy; ``[:, 0]`` is K, ``[:, 1]`` V): a KV transfer sends it as a single message, and
        ``kv_import(seq_id, (t[:, 0], t[:, 1]))`` installs it."""
        n = self.kv.num_tokens(seq_id)
        return self.kv.buffer(seq_id)[:, :, :, :n].contiguous()

    def kv_import(self, seq_id: SeqId, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Install ``(k, v)`` from ``kv_export`` (of a model with the same config and dtype) as a new
        sequence; the next ``step`` can decode it. Raises ValueError on a shape/dtype mismatch or an
        existing sequence."""
        k, v = kv
        self.kv.load(seq_id, k, v)

    def kv_reserve(self, seq_id: SeqId, tokens: int) -> None:
        """Pre-allocate a sequence's KV capacity (creating it empty, in the next pool slot, if new), so
        later steps never re-allocate the pool for it."""
        self.kv.reserve(seq_id, tokens)

    def kv_truncate(self, seq_id: SeqId, tokens: int) -> None:
        """Keep only the first ``tokens`` cached tokens of a sequence (roll back)."""
        self.kv.truncate(seq_id, tokens)

    def free(self, seq_id: SeqId) -> None:
        """Drop a finished (or transferred) sequence's KV cache; the pool's last sequence moves into its
        slot (one copy of that sequence's KV)."""
        self.kv.free(seq_id)

    def kv_num_tokens(self, seq_id: SeqId) -> int:
        """Cached tokens of a sequence (its next position)."""
        return self.kv.num_tokens(seq_id)

    def kv_bytes_used(self, seq_id: SeqId | None = None) -> int:
        """Exactly ``2 * layers * kv_heads * head_dim * dtype_bytes * cached tokens`` (one or all)."""
        return self.kv.bytes_used(seq_id)

    def kv_bytes_allocated(self, seq_id: SeqId | None = None) -> int:
        """KV bytes allocated including unused capacity: one sequence's reservation, or (None) the whole
        pool with its spare slots (not the decode workspace)."""
        return self.kv.bytes_allocated(seq_id)

    def workspace_bytes(self) -> int:
        """Bytes of the reused decode workspace of the gather fallback (the largest padded decode batch
        it has seen so far; 0 while every decode ran in place)."""
        ws = self._decode_workspace
        return 0 if ws is None else ws.numel() * ws.element_size()

    def release_workspace(self) -> None:
        """Drop the decode workspace (it is re-allocated by the next decode iteration)."""
        self._decode_workspace = None

    # -- one iteration ------------------------------------------------------------------------------

    def step(self, prefill: Sequence[tuple[SeqId, Sequence[int]]] = (),
             decode: Sequence[tuple[SeqId, int]] = ()) -> dict[SeqId, int]:
        """Run one iteration and return the greedy next token of every sequence in it.

        Args:
            prefill: ``(seq_id, token_ids)`` chunks. A new sequence starts at position 0; a sequence
                already in the cache continues after its cached tokens (chunked prefill).
            decode: ``(seq_id, token_id)``: the last sampled token of a cached sequence, processed at
                position ``kv_num_tokens(seq_id)``.

        Returns:
            ``{seq_id: next_token_id}``, prefill sequences first, in input order.

        Raises:
            ValueError / KeyError: see the module docstring; nothing is changed when raised.
        """
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            with _sdpa_backends():
                ids, logits = self._forward(prefill, decode)
        else:
            ids, logits = self._forward(prefill, decode)
        t1 = time.perf_counter()
        out = dict(zip(ids, logits.argmax(dim=-1).tolist()))  # .tolist() waits for the device
        self.last_enqueue_s = t1 - t0
        return out

    def step_logits(self, prefill: Sequence[tuple[SeqId, Sequence[int]]] = (),
                    decode: Sequence[tuple[SeqId, int]] = ()) -> dict[SeqId, torch.Tensor]:
        """Like ``step`` but return each sequence's last-token logits ``[vocab]`` (fp32)."""
        ids, logits = self._forward(prefill, decode)
        logits = logits.float()
        return {sid: logits[i] for i, sid in enumerate(ids)}

    @torch.inference_mode()
    def _forward(self, prefill: Sequence[tuple[SeqId, Sequence[int]]],
                 decode: Sequence[tuple[SeqId, int]]) -> tuple[list[SeqId], torch.Tensor]:
        cfg, dev = self.config, self.device
        plans, tokens, positions = self._plan(prefill, decode)
        seq_ids = [p.seq_id for p in plans] + [sid for sid, _ in decode]
        if not seq_ids:
            return [], torch.empty(0, cfg.vocab_size, dtype=self.dtype, device=dev)
        n_prefill_tokens = len(tokens)

        # Capacity first (may re-allocate the pool), then slots and views into it.
        for p in plans:
            self.kv.reserve(p.seq_id, p.start + p.length)
        for sid, _ in decode:
            self.kv.reserve(sid, self.kv.num_tokens(sid) + 1)
        # Decode rows run in slot order when the batch is a permutation of a contiguous slot range
        # (attention then reads the pool in place); row_of[i] is the row of input decode i.
        slots = [self.kv.slot(sid) for sid, _ in decode]
        in_place = bool(decode) and self.decode_fast_path and max(slots) - min(slots) == len(slots) - 1
        order = sorted(range(len(decode)), key=slots.__getitem__) if in_place else list(range(len(decode)))
        row_of = [0] * len(decode)
        for row, i in enumerate(order):
            row_of[i] = row
        run = [decode[i] for i in order]
        dec_lens = [self.kv.num_tokens(sid) for sid, _ in run]
        tokens.extend(int(tok) for _, tok in run)
        positions.extend(dec_lens)

        tok_t = torch.tensor(tokens, dtype=torch.long, device=dev)
        pos_t = torch.tensor(positions, dtype=torch.long, device=dev)
        # the sampled rows, built before the layers are issued: a host-to-device copy made after them would
        # wait for them on a GPU (last_enqueue_s then measures the launches alone)
        last = [p.offset + p.length - 1 for p in plans] + [n_prefill_tokens + r for r in row_of]
        last_t = torch.tensor(last, dtype=torch.long, device=dev)
        cos = self._cos[pos_t].unsqueeze(1)  # [T, 1, head_dim]
        sin = self._sin[pos_t].unsqueeze(1)
        if decode:
            b, ctx_max = len(run), max(dec_lens) + 1
            dec_pos = torch.tensor(dec_lens, dtype=torch.long, device=dev)  # this token's position per row
            dec_rows = torch.arange(b, device=dev)
            if in_place:
                s0 = slots[order[0]]
                dec_mask = None
                if min(dec_lens) != max(dec_lens):
                    dec_mask = (torch.arange(ctx_max, device=dev)[None, :] <= dec_pos[:, None]).view(b, 1, 1, ctx_max)
                self.decode_path_counts["in_place"] += 1
            else:
                past, dec_mask = self._gather_decode_kv(run, dec_lens)
                dec_slots = torch.tensor([slots[i] for i in order], dtype=torch.long, device=dev)
                self.decode_path_counts["gather"] += 1

        T, H, KVH, D = len(tokens), cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = F.embedding(tok_t, self.embed)  # [T, hidden]
        for li, w in enumerate(self.layers):
            x = _rms_norm(h, w.input_norm, cfg.rms_norm_eps)
            q, k, v = F.linear(x, w.qkv).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
            q = _rope(q.view(T, H, D), cos, sin)
            k = _rope(k.view(T, KVH, D), cos, sin)
            v = v.view(T, KVH, D)
            attn = q.new_empty(T, H, D)
            for p in plans:
                attn[p.offset:p.offset + p.length] = self._prefill_attention(li, p, q, k, v)
            if decode:
                kd, vd = k[n_prefill_tokens:], v[n_prefill_tokens:]
                pool = self.kv.pool
                if in_place:  # views of the pool [b, kv_heads, ctx_max, head_dim]: no copy
                    pk = pool[li, 0, s0:s0 + b, :, :ctx_max]
                    pv = pool[li, 1, s0:s0 + b, :, :ctx_max]
                else:  # the padded workspace; the new token also goes into the pool
                    pool[li, 0][dec_slots, :, dec_pos] = kd
                    pool[li, 1][dec_slots, :, dec_pos] = vd
                    pk, pv = past[:, li, 0], past[:, li, 1]
                pk[dec_rows, :, dec_pos] = kd
                pv[dec_rows, :, dec_pos] = vd
                if dev.type == "cpu":  # the call pdsim profile times on a CPU (profile_tools.ops)
                    qd = q[n_prefill_tokens:].unsqueeze(2)  # [b, heads, 1, head_dim]
                    od = F.scaled_dot_product_attention(qd, pk, pv, attn_mask=dec_mask, enable_gqa=True)
                    attn[n_prefill_tokens:] = od.squeeze(2)
                else:
                    # One query token per sequence: the query heads that share a KV head become that KV
                    # head's query rows ([b, kv_heads, heads / kv_heads, head_dim]; HF's repeat_kv maps
                    # query head h to KV head h // group), so GQA needs no repeated K/V and the key mask
                    # [b, 1, 1, ctx] broadcasts: GPU kernels that take a mask but not enable_gqa run it.
                    qd = q[n_prefill_tokens:].view(b, KVH, H // KVH, D)
                    od = F.scaled_dot_product_attention(qd, pk, pv, attn_mask=dec_mask)
                    attn[n_prefill_tokens:] = od.reshape(b, H, D)
            h = h + F.linear(attn.view(T, H * D), w.o)
            x = _rms_norm(h, w.post_attention_norm, cfg.rms_norm_eps)
            gate, up = F.linear(x, w.gate_up).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, w.down)

        # Commit the new lengths (the K/V are already in the pool).
        for (sid, _), n in zip(run, dec_lens):
            self.kv.set_num_tokens(sid, n + 1)
        for p in plans:
            self.kv.set_num_tokens(p.seq_id, p.start + p.length)

        h_last = h[last_t]
        logits = F.linear(_rms_norm(h_last, self.final_norm, cfg.rms_norm_eps), self.lm_head)
        return seq_ids, logits

    def _plan(self, prefill: Sequence[tuple[SeqId, Sequence[int]]],
              decode: Sequence[tuple[SeqId, int]]) -> tuple[list[_PrefillPlan], list[int], list[int]]:
        """Validate the iteration and lay out the prefill chunks (no state change)."""
        vocab = self.config.vocab_size
        seen: set[SeqId] = set()
        plans: list[_PrefillPlan] = []
        tokens: list[int] = []
        positions: list[int] = []

        def check_new(sid: SeqId) -> None:
            if sid in seen:
                raise ValueError(f"sequence {sid!r} appears twice in one iteration")
            seen.add(sid)

        def check_tokens(sid: SeqId, ids: Sequence[int]) -> None:
            lo, hi = min(ids), max(ids)
            if lo < 0 or hi >= vocab:
                bad = lo if lo < 0 else hi
                raise ValueError(f"sequence {sid!r}: token id {bad} outside the vocabulary [0, {vocab})")

        for sid, ids in prefill:
            check_new(sid)
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError(f"sequence {sid!r}: prefill chunk is empty")
            check_tokens(sid, ids)
            start = self.kv.num_tokens(sid) if sid in self.kv else 0
            if start + len(ids) > self.max_positions:
                raise ValueError(f"sequence {sid!r}: positions up to {start + len(ids) - 1} exceed "
                                 f"max_positions {self.max_positions}")
            plans.append(_PrefillPlan(sid, len(tokens), len(ids), start))
            tokens.extend(ids)
            positions.extend(range(start, start + len(ids)))
        for sid, tok in decode:
            check_new(sid)
            if sid not in self.kv:
                raise KeyError(f"decode of sequence {sid!r}, which is not in the KV cache")
            check_tokens(sid, [int(tok)])
            if self.kv.num_tokens(sid) >= self.max_positions:
                raise ValueError(f"sequence {sid!r}: position {self.kv.num_tokens(sid)} exceeds "
                                 f"max_positions {self.max_positions}")
        return plans, tokens, positions

    def _prefill_attention(self, li: int, p: _PrefillPlan, q: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor) -> torch.Tensor:
        """Write one prefill chunk's K/V into its cache and attend causally over cached + new.

        Returns ``[length, heads, head_dim]``.
        """
        buf = self.kv.buffer(p.seq_id)
        end, rows = p.start + p.length, slice(p.offset, p.offset + p.length)
        buf[li, 0, :, p.start:end] = k[rows].transpose(0, 1)
        buf[li, 1, :, p.start:end] = v[rows].transpose(0, 1)
        qi = q[rows].transpose(0, 1).unsqueeze(0)  # [1, heads, L, head_dim]
        ki = buf[li, 0, :, :end].unsqueeze(0)  # [1, kv_heads, P + L, head_dim]
        vi = buf[li, 1, :, :end].unsqueeze(0)
        if p.start == 0:
            out = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, enable_gqa=True)
        else:
            # new token t (position P + t) sees keys j <= P + t; is_causal would align top-left.
            key_pos = torch.arange(end, device=self.device)
            query_pos = torch.arange(p.start, end, device=self.device)
            mask = key_pos[None, :] <= query_pos[:, None]  # [L, P + L]
            out = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, enable_gqa=True)
        return out[0].transpose(0, 1)

    def _gather_decode_kv(self, decode: Sequence[tuple[SeqId, int]],
                          lens: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fallback decode path: a padded copy of the decode batch's cached KV, all layers:
        ``[b, layers, 2, kv_heads, ctx_max, head_dim]`` with ``ctx_max = max(len) + 1`` (room for this
        iteration's token, which the caller writes into both this copy and the pool), and the mask
        ``[b, 1, 1, ctx_max]`` (True = attend), or None when every context has the same length.
        Padding is zeroed so masked scores stay finite.

        The copy lives in a workspace kept across iterations (grown by 25 % steps when too small, so its
        pages are touched once rather than faulted in every iteration, like an engine's preallocated
        buffers); ``workspace_bytes`` reports it and ``release_workspace`` frees it."""
        cfg = self.config
        ctx_max = max(lens) + 1
        shape = (len(decode), cfg.num_layers, 2, cfg.num_kv_heads, ctx_max, cfg.head_dim)
        numel = math.prod(shape)
        ws = self._decode_workspace
        if ws is None or ws.numel() < numel:
            grown = numel if ws is None else max(numel, ws.numel() * 5 // 4)
            ws = self._decode_workspace = torch.empty(grown, dtype=self.dtype, device=self.device)
        past = ws[:numel].view(shape)
        for i, ((sid, _), n) in enumerate(zip(decode, lens)):
            past[i, :, :, :, :n] = self.kv.buffer(sid)[:, :, :, :n]
            if n + 1 < ctx_max:
                past[i, :, :, :, n + 1:] = 0
        if min(lens) == max(lens):
            return past, None
        ctx = torch.tensor(lens, device=self.device)
        mask = torch.arange(ctx_max, device=self.device)[None, :] <= ctx[:, None]
        return past, mask.view(len(decode), 1, 1, ctx_max)


def _sdpa_backends():
    """The attention kernels a GPU step may use: flash, memory-efficient and math, not cuDNN's. torch
    2.11 picks cuDNN attention for the decode call's shapes on an H200, and cuDNN builds a new execution
    plan for every new key length on the host: 2.4 ms of host time per call, per layer, every decode
    iteration (measured with torch.profiler on an H200, 2026-12-04; benchmarks/device_h200.sh). An
    engine with fixed-shape graphs (vLLM's) pays that once; this engine steps shapes that change every
    iteration."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32, cast back, then scaled (HF ``LlamaRMSNorm``)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: ``x * cos + rotate_half(x) * sin`` on ``[T, heads, head_dim]``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
