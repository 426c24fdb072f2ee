"""Memory budget of an instance: weights, activation reserve and the KV cache that remains.

Per GPU (vLLM's accounting, ``vllm/worker/worker.py: determine_num_available_blocks``):

    kv_budget_bytes = memory_bytes x gpu_memory_utilization - weight_bytes - activation_reserve_bytes
    capacity_blocks = floor(kv_budget_bytes / (kv_bytes_per_token_per_gpu x block_size))

All GPUs of a TP group hold the same number of blocks (each holds its share of every block's heads),
so the instance's capacity is the per-GPU figure.

The activation reserve, when the config does not give one, is estimated as the peak of one layer's
forward over ``max_num_batched_tokens`` tokens in the weight dtype: residual and normalised hidden
states (2 x hidden), the QKV output ((q + 2 kv) / TP), the MLP intermediate (2 x intermediate / TP for a
gated MLP, 1 x otherwise) and the attention output (hidden), plus FP32 logits for ``max_num_seqs``
sequences over the TP shard of the vocabulary. vLLM measures this with a profiling run; the estimate
is a stated approximation, and ``activation_reserve_gib`` overrides it.
"""

from __future__ import annotations

import math

from pdsim.models.arch import ModelSpec


def activation_reserve_bytes(model: ModelSpec, tp: int, max_num_batched_tokens: int, max_num_seqs: int, dtype_bytes: int) -> int:
    """Estimated peak activation bytes per GPU (see module docstring)."""
    h = model.hidden_size
    q = math.ceil(model.num_attention_heads / tp) * model.head_dim
    kv = model.kv_heads_per_gpu(tp) * model.head_dim
    inter = math.ceil(model.intermediate_size / tp) * (2 if model.gated_mlp else 1)
    per_token = 2 * h + (q + 2 * kv) + inter + h
    logits = max_num_seqs * math.ceil(model.vocab_size / tp) * 4
    return max_num_batched_tokens * per_token * dtype_bytes + logits


def kv_capacity_blocks(
    memory_bytes: int,
    gpu_memory_utilization: float,
    weight_bytes: int,
    activation_bytes: int,
    kv_bytes_per_token_per_gpu: int,
    block_size: int,
) -> tuple[int, int]:
    """KV blocks an instance holds, and the per-GPU KV budget in bytes (may be <= 0: does not fit)."""
    budget = int(memory_bytes * gpu_memory_utilization) - weight_bytes - activation_bytes
    if budget <= 0:
        return 0, budget
    return budget // (kv_bytes_per_token_per_gpu * block_size), budget
