"""Specification of the model-architecture and memory arithmetic (pure domain ring).

- Parameter counts and KV bytes per token agree, to the unit, with the values recorded in
  ``pdsim/data/models.yaml`` (``params_total_computed``, ``kv_cache_bytes_per_token_bf16``).
- Grouped-query attention: per-GPU KV bytes divide by TP only while TP <= kv_heads; above that each GPU
  holds one (replicated) KV head.
- Weights summed over the TP ranks of an instance are never fewer than the model's bytes (replication
  only adds) and equal them at TP 1.
- Architectures pdsim cannot model (MLA) are refused with a ``ConfigError``; MoE models are specified in
  tests/test_moe.py.
- The KV capacity of a pool is recomputed here by hand, from the formulas in the docstring of
  ``pdsim/core/memory.py``, and must match ``PoolPlan.capacity_blocks`` exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pdsim.config.load import load_experiment_file
from pdsim.errors import ConfigError
from pdsim.models.arch import load_model_catalog, model_from_hf_config
from pdsim.sim.plan import plan_deployments

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "gpu_profiles" / "splitwise_sim" / "perf_model.csv"

CATALOG = load_model_catalog()
# Dense models: the entries with an analytic parameter count and no experts / MLA.
DENSE = sorted(
    name for name, e in CATALOG.items()
    if "params_total_computed" in e
    and not any(k in e for k in ("num_experts", "num_routed_experts", "num_local_experts", "kv_lora_rank"))
    and e.get("attention") != "MLA"
)
UNSUPPORTED = sorted(n for n, e in CATALOG.items() if e.get("attention") == "MLA" or "kv_lora_rank" in e)


def spec(name: str):
    return model_from_hf_config(name, CATALOG[name])


def test_catalog_has_dense_and_unsupported_models():
    # The checks below must actually cover something.
    assert {"Llama-2-7b-hf", "Llama-2-70b-hf", "Llama-3.1-405B", "bloom", "opt-66b", "Qwen2.5-7B"} <= set(DENSE)
    assert {"DeepSeek-V3"} <= set(UNSUPPORTED)
    assert "Mixtral-8x7B-v0.1" not in set(DENSE) | set(UNSUPPORTED)  # MoE: tests/test_moe.py


@pytest.mark.parametrize("name", DENSE)
def test_param_count_matches_catalog(name):
    assert spec(name).total_params() == CATALOG[name]["params_total_computed"]


@pytest.mark.parametrize("name", DENSE)
def test_kv_bytes_per_token_matches_catalog(name):
    assert spec(name).kv_bytes_per_token(2) == CATALOG[name]["kv_cache_bytes_per_token_bf16"]


@pytest.mark.parametrize("name", DENSE)
def test_kv_bytes_per_token_formula(name):
    e = CATALOG[name]
    m = spec(name)
    expected = 2 * e["num_layers"] * e["num_kv_heads"] * e["head_dim"] * 2
    assert m.kv_bytes_per_token(2) == expected
    # fp32 doubles, fp8 halves
    assert m.kv_bytes_per_token(4) == 2 * expected
    assert m.kv_bytes_per_token(1) * 2 == expected


def test_gqa_llama2_70b_per_gpu_kv():
    m = spec("Llama-2-70b-hf")
    assert m.num_kv_heads == 8
    total = m.kv_bytes_per_token(2)
    assert total == 327680
    for tp in (1, 2, 4, 8):
        assert m.kv_bytes_per_token_per_gpu(tp, 1, 2) == total // tp
        assert m.kv_heads_per_gpu(tp) == 8 // tp
    # TP 16 > 8 KV heads: each GPU holds one replicated head, not half a head.
    assert m.kv_heads_per_gpu(16) == 1
    assert m.kv_bytes_per_token_per_gpu(16, 1, 2) == total // 8
    assert m.kv_bytes_per_token_per_gpu(16, 1, 2) * 16 == 2 * total  # replication doubles the sum


def test_mha_model_divides_by_tp():
    m = spec("Llama-2-7b-hf")  # MHA: 32 KV heads
    total = m.kv_bytes_per_token(2)
    for tp in (1, 2, 4, 8, 16, 32):
        assert m.kv_bytes_per_token_per_gpu(tp, 1, 2) * tp == total


def test_pipeline_parallel_splits_layers():
    m = spec("Llama-2-70b-hf")  # 80 layers
    assert m.kv_bytes_per_token_per_gpu(8, 2, 2) * 2 == m.kv_bytes_per_token_per_gpu(8, 1, 2)
    # 80 layers over 3 stages: the largest stage holds 27 layers
    assert m.kv_bytes_per_token_per_gpu(8, 3, 2) == 2 * 27 * 1 * 128 * 2


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])
def test_weights_summed_over_tp_ranks_cover_the_model(name, tp):
    m = spec(name)
    total_bytes = m.total_params() * 2
    assert tp * m.weight_bytes_per_gpu(tp, 1, 2) >= total_bytes
    if tp == 1:
        assert m.weight_bytes_per_gpu(1, 1, 2) == total_bytes


def test_weights_per_gpu_llama2_70b_tp8_by_hand():
    # Column/row-parallel shards of each matrix, replicated norms, vocabulary-parallel embedding and head.
    h, layers, inter, vocab = 8192, 80, 28672, 32000
    q, kv = 64 * 128 // 8, 8 * 128 // 8
    layer = h * q + 2 * h * kv + q * h + 3 * h * (inter // 8) + 2 * h
    expected = (layers * layer + 2 * (vocab // 8) * h + h) * 2
    assert spec("Llama-2-70b-hf").weight_bytes_per_gpu(8, 1, 2) == expected


@pytest.mark.parametrize("name", ["DeepSeek-V3"])
def test_mla_models_are_refused(name):
    with pytest.raises(ConfigError) as ei:
        model_from_hf_config(name, CATALOG[name])
    assert name in str(ei.value)


def test_every_unsupported_catalog_entry_is_refused():
    assert UNSUPPORTED
    for name in UNSUPPORTED:
        with pytest.raises(ConfigError):
            model_from_hf_config(name, CATALOG[name])


def test_hf_style_keys_accepted_and_gqa_divisibility_checked():
    cfg = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2,
           "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 512}
    m = model_from_hf_config("toy", cfg)
    assert (m.num_layers, m.num_kv_heads, m.head_dim) == (2, 2, 8)
    assert m.kv_bytes_per_token(2) == 2 * 2 * 2 * 8 * 2
    with pytest.raises(ConfigError, match="num_kv_heads"):
        model_from_hf_config("bad", dict(cfg, num_key_value_heads=3))
    with pytest.raises(ConfigError, match="vocab_size"):
        model_from_hf_config("bad", {k: v for k, v in cfg.items() if k != "vocab_size"})


# ---- memory accounting to the byte ------------------------------------------------------------------

EXPERIMENT = """
name: mem
model: {{name: Llama-2-70b-hf, dtype: fp16}}
slo: {{ttft_s: 1.0, tpot_s: 0.1}}
scheduler: {{max_num_batched_tokens: {mnbt}, max_num_seqs: {seqs}, block_size: {bs}, gpu_memory_utilization: {util}}}
deployments:
  - name: d
    kind: colocated
    pool:
      gpu: A100-80GB-SXM
      tp: 8
      instances: 1
      latency: {{kind: splitwise_table, path: {profile}}}
workloads:
  w: {{kind: poisson, rate_rps: 1.0, num_requests: 1, lengths: {{kind: fixed, prompt_tokens: 10, output_tokens: 2}}}}
"""


@pytest.mark.parametrize("mnbt,seqs,bs,util", [(4096, 64, 16, 0.9), (8192, 256, 32, 0.85)])
def test_pool_capacity_blocks_by_hand(tmp_path, mnbt, seqs, bs, util):
    path = tmp_path / "mem.yaml"
    path.write_text(EXPERIMENT.format(mnbt=mnbt, seqs=seqs, bs=bs, util=util, profile=PROFILE))
    (plan,) = plan_deployments(load_experiment_file(path))
    (pool,) = plan.pools

    # Llama-2-70B (HF config), fp16 = 2 bytes, TP 8, A100-80GB-SXM = 80 GB (decimal, gpu_specs.csv).
    nbytes, tp = 2, 8
    h, layers, heads, kv_heads, head_dim, inter, vocab = 8192, 80, 64, 8, 128, 28672, 32000
    memory_bytes = 80 * 10**9

    # Weights per GPU (sharded over TP; norms replicated; embedding and LM head vocabulary-parallel).
    q_gpu = heads // tp * head_dim
    kv_gpu = kv_heads // tp * head_dim
    layer = h * q_gpu + 2 * h * kv_gpu + q_gpu * h + 3 * h * (inter // tp) + 2 * h
    weight_bytes = (layers * layer + vocab // tp * h + vocab // tp * h + h) * nbytes

    # Activation reserve (memory.py docstring): per token 2h + (q + 2kv)/TP + 2 x inter/TP + h, in the
    # weight dtype, over max_num_batched_tokens, plus FP32 logits for max_num_seqs over vocab/TP.
    per_token = 2 * h + (q_gpu + 2 * kv_gpu) + 2 * (inter // tp) + h
    activation_bytes = mnbt * per_token * nbytes + seqs * (vocab // tp) * 4

    # KV: 2 x layers x kv_heads/TP x head_dim x bytes per token, per GPU.
    kv_per_token = 2 * layers * (kv_heads // tp) * head_dim * nbytes
    budget = int(memory_bytes * util) - weight_bytes - activation_bytes
    expected_blocks = budget // (kv_per_token * bs)

    assert pool.weight_bytes_per_gpu == weight_bytes
    assert pool.activation_bytes_per_gpu == activation_bytes
    assert pool.kv_bytes_per_token_per_gpu == kv_per_token == 40960
    assert pool.capacity_blocks == expected_blocks
    assert pool.capacity_tokens == expected_blocks * bs
    assert pool.watermark_blocks == int(expected_blocks * 0.01)
    assert expected_blocks > 1000  # a sane, non-degenerate pool


def test_activation_reserve_override_is_used(tmp_path):
    path = tmp_path / "mem.yaml"
    path.write_text(EXPERIMENT.format(mnbt=4096, seqs=64, bs=16, util=0.9, profile=PROFILE))
    exp = load_experiment_file(path, ["scheduler.activation_reserve_gib=2.5"])
    (plan,) = plan_deployments(exp)
    pool = plan.pools[0]
    assert pool.activation_bytes_per_gpu == int(2.5 * 2**30)
    expected = (int(80e9 * 0.9) - pool.weight_bytes_per_gpu - int(2.5 * 2**30)) // (40960 * 16)
    assert pool.capacity_blocks == expected
    assert math.isclose(pool.usd_per_hour, 8 * pool.price_usd_per_gpu_hour)
