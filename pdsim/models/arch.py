"""Decoder-only transformer architectures and the arithmetic pdsim needs from them.

A ``ModelSpec`` holds the fields of a Hugging Face ``config.json`` that decide memory and compute:
layers, hidden size, attention heads and KV heads (grouped-query attention aware), head dim, MLP size,
vocabulary, and whether the MLP is gated (SwiGLU, Llama family) or not (GELU/ReLU, BLOOM and OPT).

Formulas (all exact integer arithmetic, no rounding):

- KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x bytes per element. Under tensor
  parallelism TP each GPU holds ``ceil(kv_heads / TP)`` heads (heads are replicated when
  ``TP > kv_heads``, as vLLM does), so the per-GPU figure is not always total / TP.
- Parameters = embeddings (+ untied LM head) + layers x (attention + MLP + norms) + final norm, with
  biases where the architecture has them. Checked to the parameter against the counts in
  ``pdsim/data/models.yaml`` (tests/test_models.py).
- Mixture-of-experts (every decoder layer an MoE layer, e.g. Mixtral, Qwen2-MoE): the MLP is a router
  ``hidden x num_experts`` (no bias, replicated on every TP rank: vLLM's ``ReplicatedLinear`` gate),
  ``num_experts`` gated experts of ``3 x hidden x moe_intermediate_size`` each, all resident, and
  optional shared experts (a gated MLP of ``shared_expert_intermediate_size``, plus a ``hidden x 1``
  sigmoid gate in Qwen2-MoE). Under TP every GPU holds ``ceil(moe_intermediate_size / TP)`` of each
  expert (vLLM's ``FusedMoE`` without expert parallelism shards the intermediate dimension). Active
  parameters per token count ``experts_per_token`` experts and the whole router. Mixtral-8x7B:
  46,702,792,704 total, as in the catalog, and 12,879,925,248 active (the catalog's 12,879,138,816 also
  leaves out 6/8 of the router; tests/test_moe.py).

The catalog ``pdsim/data/models.yaml`` is copied from the project's shared data (values from each
model's HF config.json; sources listed per model in that file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pdsim.errors import ConfigError

DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1, "float8": 1, "fp32": 4, "float32": 4}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name (``bf16``, ``fp16``, ``fp8``, ``fp32``).

    Raises:
        ConfigError: unknown dtype name.
    """
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {sorted(set(DTYPE_BYTES))}") from None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Architecture of a dense decoder-only transformer (GQA aware).

    Attributes:
        name: catalog name, e.g. ``Llama-2-70b-hf``.
        num_layers, hidden_size, num_attention_heads, num_kv_heads, head_dim, intermediate_size,
        vocab_size: as in the HF config.json.
        max_context_tokens: ``max_position_embeddings`` (None when the model has no fixed limit, e.g.
            ALiBi); requests longer than this are rejected.
        gated_mlp: True for SwiGLU MLPs (three matrices), False for two-matrix MLPs.
        tie_word_embeddings: LM head shares the embedding matrix.
        attention_bias, mlp_bias, norm_bias: whether those layers carry biases.
        learned_positions: number of learned position embeddings (OPT), 0 otherwise.
        embedding_norm: a LayerNorm after the embedding (BLOOM).
        rotary: rotary position embedding applied to q and k in every layer (Llama family); False for
            ALiBi (BLOOM) and learned absolute positions (OPT, GPT-2).
        num_experts: routed experts per MoE layer (0: a dense model); HF ``num_local_experts``
            (Mixtral), ``num_experts`` (Qwen MoE), ``n_routed_experts`` (DeepSeek).
        experts_per_token: experts each token is routed to (HF ``num_experts_per_tok``).
        moe_intermediate_size: intermediate size of one routed expert (HF ``moe_intermediate_size``;
            Mixtral's experts use ``intermediate_size``).
        shared_expert_intermediate_size: total intermediate size of the always-active shared experts
            (0: none); HF ``shared_expert_intermediate_size`` (Qwen2-MoE) or ``n_shared_experts x
            moe_intermediate_size`` (DeepSeek).
        shared_expert_gate: a ``hidden x 1`` sigmoid gate on the shared experts' output (Qwen2-MoE).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context_tokens: int | None
    gated_mlp: bool = True
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qkv_bias_only: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False
    learned_positions: int = 0
    embedding_norm: bool = False
    rotary: bool = True
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False

    @property
    def is_moe(self) -> bool:
        """Every decoder layer's MLP is a mixture of experts."""
        return self.num_experts > 0

    # ---- parameters -------------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def attention_params(self) -> int:
        h = self.hidden_size
        weights = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        bias = 0
        if self.attention_bias:
            bias = self.q_size + 2 * self.kv_size + (0 if self.qkv_bias_only else h)
        return weights + bias

    def mlp_params(self) -> int:
        if self.is_moe:
            return self._moe_params(self.num_experts)
        h, i = self.hidden_size, self.intermediate_size
        mats = 3 if self.gated_mlp else 2
        bias = (i + h) if self.mlp_bias else 0
        return mats * h * i + bias

    def _moe_params(self, experts: int) -> int:
        """Router + ``experts`` routed experts + shared experts (and their gate) of one MoE layer."""
        h = self.hidden_size
        shared = 3 * h * self.shared_expert_intermediate_size + (h if self.shared_expert_gate else 0)
        return h * self.num_experts + experts * 3 * h * self.moe_intermediate_size + shared

    def active_params(self) -> int:
        """Parameters one token's forward pass uses: ``experts_per_token`` routed experts per MoE
        layer instead of all of them (equal to ``total_params`` for a dense model)."""
        if not self.is_moe:
            return self.total_params()
        unused = self.num_layers * (self.num_experts - self.experts_per_token) * 3 * self.hidden_size * self.moe_intermediate_size
        return self.total_params() - unused

    def norm_params(self) -> int:
        """Parameters of one normalisation layer (RMSNorm: weight; LayerNorm: weight and bias)."""
        return self.hidden_size * (2 if self.norm_bias else 1)

    def layer_params(self) -> int:
        return self.attention_params() + self.mlp_params() + 2 * self.norm_params()

    def embedding_params(self) -> int:
        emb = self.vocab_size * self.hidden_size + self.learned_positions * self.hidden_size
        if self.embedding_norm:
            emb += self.norm_params()
        return emb

    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        """All parameters, exact."""
        return (
            self.embedding_params()
            + self.num_layers * self.layer_params()
            + self.norm_params()
            + self.lm_head_params()
        )

    # ---- memory per GPU ----------------------------------------------------------------------
    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads each GPU holds under tensor parallelism ``tp`` (replicated when tp > kv_heads)."""
        return max(1, math.ceil(self.num_kv_heads / tp))

    def kv_bytes_per_token(self, dtype_bytes_: int = 2) -> int:
        """KV cache bytes per token for the whole model: 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes_

    def kv_bytes_per_token_per_gpu(self, tp: int, pp: int = 1, dtype_bytes_: int = 2) -> int:
        """KV cache bytes per token on one GPU of a TP x PP instance.

        Layers are split over PP stages (``ceil(layers / pp)`` on the largest stage) and KV heads over
        TP (at least one per GPU).
        """
        layers = math.ceil(self.num_layers / pp)
        return 2 * layers * self.kv_heads_per_gpu(tp) * self.head_dim * dtype_bytes_

    def weight_bytes_per_gpu(self, tp: int, pp: int = 1, dtype_bytes_: int = 2) -> int:
        """Weight bytes on the most loaded GPU of a TP x PP instance.

        Attention and MLP matrices are sharded over TP (vLLM's column/row parallel layers); KV
        projections are replicated when tp > kv_heads; norms are replicated; the embedding and LM head
        are vocabulary-parallel (sharded over TP). With PP the first stage holds the embedding and the
        last the LM head; we size the larger of the two end stages.
        """
        layer, first, last = self._shard_params_per_gpu(tp, pp)
        layers_per_stage = math.ceil(self.num_layers / pp)
        ends = first + last if pp == 1 else max(first, last)
        return (layers_per_stage * layer + ends) * dtype_bytes_

    def stage_weight_bytes_per_gpu(self, tp: int, pp: int, stage: int, layers: int, dtype_bytes_: int = 2) -> int:
        """Weight bytes on one GPU of PP stage ``stage`` (of ``pp``) that runs ``layers`` decoder layers.

        Same shards as ``weight_bytes_per_gpu``; the first stage also holds the embedding, the last the
        final norm and the LM head (its own copy when PP > 1, even with tied embeddings).
        """
        layer, first, last = self._shard_params_per_gpu(tp, pp)
        ends = (first if stage == 0 else 0) + (last if stage == pp - 1 else 0)
        return (layers * layer + ends) * dtype_bytes_

    def _shard_params_per_gpu(self, tp: int, pp: int) -> tuple[int, int, int]:
        """Parameters per GPU under TP ``tp``: of one decoder layer, of the first stage's extras
        (embedding) and of the last stage's (final norm, LM head)."""
        h = self.hidden_size
        kv_per_gpu = self.kv_heads_per_gpu(tp) * self.head_dim
        q_per_gpu = math.ceil(self.num_attention_heads / tp) * self.head_dim
        attn = h * q_per_gpu + 2 * h * kv_per_gpu + q_per_gpu * h
        if self.attention_bias:
            attn += q_per_gpu + 2 * kv_per_gpu + (0 if self.qkv_bias_only else h)
        if self.is_moe:  # replicated router; every expert (and the shared MLP) sharded over TP
            e_per_gpu = math.ceil(self.moe_intermediate_size / tp)
            s_per_gpu = math.ceil(self.shared_expert_intermediate_size / tp)
            mlp = (h * self.num_experts + self.num_experts * 3 * h * e_per_gpu + 3 * h * s_per_gpu
                   + (h if self.shared_expert_gate else 0))
        else:
            i_per_gpu = math.ceil(self.intermediate_size / tp)
            mlp = (3 if self.gated_mlp else 2) * h * i_per_gpu + ((i_per_gpu + h) if self.mlp_bias else 0)
        layer = attn + mlp + 2 * self.norm_params()
        vocab_shard = math.ceil(self.vocab_size / tp) * h
        first = vocab_shard + self.learned_positions * h + (self.norm_params() if self.embedding_norm else 0)
        last = self.norm_params() + (vocab_shard if not self.tie_word_embeddings or pp > 1 else 0)
        return layer, first, last


def _require(entry: dict[str, Any], key: str, where: str) -> Any:
    if key not in entry or entry[key] is None:
        raise ConfigError(f"{where}: missing field {key!r}")
    return entry[key]


def model_from_hf_config(name: str, cfg: dict[str, Any], where: str = "model config") -> ModelSpec:
    """Build a ``ModelSpec`` from a HF ``config.json``-shaped mapping (or a models.yaml entry).

    Accepts both HF key names (``num_hidden_layers``, ``num_key_value_heads``, ``n_embed`` ...) and the
    catalog's (``num_layers``, ``num_kv_heads``).

    Mixture-of-experts fields: ``num_local_experts`` / ``num_experts`` / ``n_routed_experts`` /
    ``num_routed_experts``, ``num_experts_per_tok`` / ``experts_per_token``, ``moe_intermediate_size``
    (default ``intermediate_size``, as Mixtral), ``shared_expert_intermediate_size`` or
    ``n_shared_experts`` / ``num_shared_experts`` x ``moe_intermediate_size``.

    Raises:
        ConfigError: a required field is missing, or the architecture is one pdsim cannot model yet
            (MLA attention; MoE models with dense layers among the MoE layers, ``first_k_dense_replace``,
            ``decoder_sparse_step`` != 1 or ``mlp_only_layers``), naming the model and the field.
    """
    def pick(*keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in cfg and cfg[k] is not None:
                return cfg[k]
        return default

    if cfg.get("attention") == "MLA" or "kv_lora_rank" in cfg:
        raise ConfigError(
            f"{where}: model {name!r} uses MLA attention (multi-head latent attention: a compressed KV latent "
            "of kv_lora_rank + qk_rope_head_dim per token instead of per-head K/V), which pdsim does not model "
            "yet: its KV arithmetic and attention tables are for MHA/GQA only"
        )
    moe = _moe_fields(name, pick, where)
    layers = pick("num_layers", "num_hidden_layers", "n_layer")
    hidden = pick("hidden_size", "n_embed", "d_model")
    heads = pick("num_attention_heads", "n_head")
    for key, val in (("num_layers", layers), ("hidden_size", hidden), ("num_attention_heads", heads)):
        if val is None:
            raise ConfigError(f"{where}: model {name!r}: missing field {key!r}")
    kv_heads = pick("num_kv_heads", "num_key_value_heads", default=heads)
    head_dim = pick("head_dim", default=hidden // heads)
    intermediate = pick("intermediate_size", "ffn_dim", default=4 * hidden)
    vocab = _require(cfg, "vocab_size", f"{where}: model {name!r}")
    model_type = str(pick("model_type", default="llama")).lower()
    non_gated = model_type in ("bloom", "opt", "gpt2", "gpt_neox", "falcon")
    spec = ModelSpec(
        name=name,
        num_layers=int(layers),
        hidden_size=int(hidden),
        num_attention_heads=int(heads),
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate_size=int(intermediate),
        vocab_size=int(vocab),
        max_context_tokens=pick("max_position_embeddings"),
        gated_mlp=not non_gated,
        tie_word_embeddings=bool(pick("tie_word_embeddings", default=False)),
        attention_bias=bool(pick("qkv_bias", "attention_bias", default=False)) or non_gated,
        qkv_bias_only=bool(pick("qkv_bias", default=False)) and not non_gated,
        mlp_bias=non_gated,
        norm_bias=non_gated,
        learned_positions=(int(pick("max_position_embeddings")) + 2) if model_type == "opt" else 0,
        embedding_norm=model_type == "bloom",
        rotary=model_type not in ("bloom", "opt", "gpt2"),
        **moe,
    )
    for field_ in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size"):
        if getattr(spec, field_) <= 0:
            raise ConfigError(f"{where}: model {name!r}: {field_} must be >= 1, got {getattr(spec, field_)}")
    if spec.num_attention_heads % spec.num_kv_heads:
        raise ConfigError(
            f"{where}: model {name!r}: num_attention_heads ({spec.num_attention_heads}) is not a multiple of "
            f"num_kv_heads ({spec.num_kv_heads})"
        )
    return spec


def _moe_fields(name: str, pick: Any, where: str) -> dict[str, Any]:
    """The ``ModelSpec`` MoE fields of a config (empty for a dense model); see ``model_from_hf_config``."""
    experts = pick("num_local_experts", "num_experts", "n_routed_experts", "num_routed_experts")
    if not experts:
        return {}
    topk = pick("num_experts_per_tok", "experts_per_token")
    if not topk:
        raise ConfigError(f"{where}: model {name!r}: MoE model without 'num_experts_per_tok' (experts per token)")
    if pick("first_k_dense_replace", default=0) or pick("mlp_only_layers", default=[]) or pick("decoder_sparse_step", default=1) != 1:
        raise ConfigError(
            f"{where}: model {name!r} mixes dense and MoE layers (first_k_dense_replace / mlp_only_layers / "
            "decoder_sparse_step), which pdsim does not model yet: every layer must be an MoE layer"
        )
    inter = pick("moe_intermediate_size", "intermediate_size")
    if inter is None:
        raise ConfigError(f"{where}: model {name!r}: MoE model without 'moe_intermediate_size' or 'intermediate_size'")
    shared = pick("shared_expert_intermediate_size")
    if shared is None:
        shared = int(pick("n_shared_experts", "num_shared_experts", default=0)) * int(inter)
    model_type = str(pick("model_type", default="")).lower()
    out = {
        "num_experts": int(experts),
        "experts_per_token": int(topk),
        "moe_intermediate_size": int(inter),
        "shared_expert_intermediate_size": int(shared),
        "shared_expert_gate": model_type == "qwen2_moe" and int(shared) > 0,
    }
    if not 1 <= out["experts_per_token"] <= out["num_experts"] or out["moe_intermediate_size"] < 1:
        raise ConfigError(
            f"{where}: model {name!r}: experts per token must be in 1..{out['num_experts']} and the expert "
            f"intermediate size >= 1, got {out['experts_per_token']} and {out['moe_intermediate_size']}"
        )
    return out


def load_model_catalog(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Read the model catalog (``pdsim/data/models.yaml`` by default) as raw entries by name."""
    if path is None:
        text = resources.files("pdsim.data").joinpath("models.yaml").read_text()
    else:
        text = Path(path).read_text()
    # libyaml's safe loader when present: same result, ~30x faster (this runs once per planned experiment)
    return dict(yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["models"])
