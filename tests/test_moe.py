"""Specification of mixture-of-experts models (docs/moe.md).

- The aiconfigurator importer keeps the balanced bf16 / fp8 rows of ``moe_perf`` with their keys, and
  converts milliseconds to seconds; the committed H100 ``moe`` table agrees row by row with raw upstream
  rows: a committed slice (Mixtral's key at TP 2, tests/fixtures) always, the whole upstream file when the
  shared copy of aiconfigurator's data is present beside the clone (``../shared``).
- The op-level model looks the fused MoE kernel up at the model's exact shape: at a measured token
  count the MoE part of an iteration is the table's row; between measured counts it is a power law
  (log-log) and so lies between, and is monotone between, the two neighbours.
- Mixtral at TP 2 / 4 / 8 on H100: the iteration time is the sum of its documented parts (router GEMM +
  fused MoE instead of the dense MLP, attention, all-reduce twice per layer, ...), also per PP stage.
- Memory arithmetic: Mixtral's 46.7B parameters from its config, all experts resident; weights per
  GPU at TP 4 recomputed by hand.
- Clear errors: a profile without a ``moe`` table, a shape the table lacks, MLA models (DeepSeek-V3),
  layer mixes pdsim does not model.
- ``pdsim run`` of experiments/mixtral_h100.yaml (a shortened window) finishes every request.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pdsim.cli import app
from pdsim.config.load import load_experiment_file
from pdsim.errors import ConfigError, ProfileError
from pdsim.hardware.gpus import load_gpu_catalog
from pdsim.latency.base import BatchShape
from pdsim.latency.oplevel import OpLevelModel, layer_shapes
from pdsim.models.arch import load_model_catalog, model_from_hf_config
from pdsim.profiles.format import (
    ProfileMeta,
    find_profile,
    load_profile,
    validate_table,
    write_profile,
)
from pdsim.profiles.importers.aiconfigurator import convert_moe
from pdsim.sim.plan import plan_deployments

ROOT = Path(__file__).resolve().parents[1]
RAW_H100_MOE = ROOT.parent / "shared/data/profiles/aiconfigurator/data/h100_sxm/moe/vllm/0.24.0/moe_perf.parquet"
RAW_H100_MOE_SLICE = ROOT / "tests/fixtures/aiconfigurator_h100_sxm_moe_mixtral_tp2.csv"  # cut from the file above
CATALOG = load_model_catalog()
GPUS = load_gpu_catalog()
MIXTRAL = model_from_hf_config("Mixtral-8x7B-v0.1", CATALOG["Mixtral-8x7B-v0.1"])
H100 = find_profile("h100_sxm-aiconfigurator")
MIXTRAL_KEY = {"hidden_size": 4096, "inter_size": 14336, "topk": 2, "num_experts": 8, "moe_ep_size": 1}


def oplevel(tp: int, pp: int = 1, dtype: str = "bf16", profiles=None) -> OpLevelModel:
    return OpLevelModel(profiles or [H100], MIXTRAL, tp=tp, pp=pp, dtype=dtype, gpu=GPUS["H100-SXM"])


def table_rows(tp: int, dtype: str = "bf16") -> pd.DataFrame:
    df = H100.table("moe")
    sel = df[(df.dtype == dtype) & (df.distribution == "balanced") & (df.moe_tp_size == tp)]
    for k, v in MIXTRAL_KEY.items():
        sel = sel[sel[k] == v]
    return sel.sort_values("num_tokens")


# --- importer ---------------------------------------------------------------------------------------------
def _raw(rows: list[tuple]) -> pd.DataFrame:
    """rows: (moe_dtype, distribution, num_tokens, moe_tp_size, latency_ms)."""
    n = len(rows)
    return pd.DataFrame({
        "framework": ["VLLM"] * n, "version": ["0.24.0"] * n, "device": ["NVIDIA H100 80GB HBM3"] * n,
        "op_name": ["moe"] * n, "kernel_source": ["k"] * n, "moe_dtype": [r[0] for r in rows],
        "num_tokens": [r[2] for r in rows], "hidden_size": [4096] * n, "inter_size": [14336] * n, "topk": [2] * n,
        "num_experts": [8] * n, "moe_tp_size": [r[3] for r in rows], "moe_ep_size": [1] * n,
        "distribution": [r[1] for r in rows], "latency": [r[4] for r in rows],
    })


def test_convert_moe_keeps_balanced_bf16_fp8_rows_in_seconds():
    raw = _raw([
        ("bfloat16", "balanced", 1, 2, 0.16), ("bfloat16", "balanced", 8, 2, 0.49), ("fp8", "balanced", 1, 4, 0.2),
        ("fp8_block", "balanced", 1, 2, 0.3), ("nvfp4", "balanced", 1, 2, 0.1), ("bfloat16", "power_law_1.2", 1, 2, 0.15),
    ])
    out, notes = convert_moe(raw)
    assert len(out) == 3
    assert sorted(zip(out.dtype, out.num_tokens, out.moe_tp_size, out.latency_s)) == [
        ("bf16", 1, 2, 0.16 / 1000), ("bf16", 8, 2, 0.49 / 1000), ("fp8", 1, 4, 0.2 / 1000)]
    assert set(out.distribution) == {"balanced"} and (out.source_rows == 1).all()
    text = "\n".join(notes)
    assert "fp8_block (1 rows)" in text and "nvfp4 (1 rows)" in text and "power_law_1.2 (1 rows)" in text
    validate_table("moe", out, "converted")  # the format accepts what the importer writes


def test_convert_moe_without_balanced_rows_gives_no_table():
    out, notes = convert_moe(_raw([("bfloat16", "power_law_1.01", 1, 1, 0.2)]))
    assert out.empty and any("no moe table" in n for n in notes)


@pytest.mark.skipif(not RAW_H100_MOE.is_file(), reason="shared copy of aiconfigurator's raw data not present")
def test_committed_h100_moe_table_equals_the_raw_rows():
    raw = pd.read_parquet(RAW_H100_MOE)
    raw = raw[(raw.distribution == "balanced") & raw.moe_dtype.isin(["bfloat16", "fp8"])]
    got = H100.table("moe")
    assert len(got) == len(raw) > 1000
    keys = ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size"]
    merged = got.assign(moe_dtype=got.dtype.map({"bf16": "bfloat16", "fp8": "fp8"})).merge(
        raw, on=["moe_dtype", "distribution", *keys], validate="one_to_one")
    assert len(merged) == len(raw)
    assert np.array_equal(merged.latency_s.to_numpy(), merged.latency.to_numpy() / 1000)
    assert (merged.kernel_source_x == merged.kernel_source_y).all()


def test_committed_h100_moe_table_equals_the_importers_output_of_a_raw_slice():
    raw = pd.read_csv(RAW_H100_MOE_SLICE, comment="#")
    out, notes = convert_moe(raw)
    assert len(out) == 2 * 27  # bf16 and fp8, 27 token counts each; fp8_block and skewed rows dropped
    assert any("fp8_block" in n for n in notes) and any("power_law_1.2" in n for n in notes)
    keys = ["dtype", "distribution", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
            "moe_tp_size", "moe_ep_size"]
    merged = out.merge(H100.table("moe"), on=keys, validate="one_to_one")
    assert len(merged) == len(out)
    assert np.array_equal(merged.latency_s_x.to_numpy(), merged.latency_s_y.to_numpy())
    assert (merged.kernel_source_x == merged.kernel_source_y).all()


def test_moe_table_validation_rejects_unknown_distribution():
    out, _ = convert_moe(_raw([("bfloat16", "balanced", 1, 2, 0.16)]))
    with pytest.raises(ProfileError, match="distribution"):
        validate_table("moe", out.assign(distribution="skewed"), "t")
    with pytest.raises(ProfileError, match="moe_tp_size"):
        validate_table("moe", out.assign(moe_tp_size=3), "t")


def test_profiles_of_all_but_a100_carry_a_moe_table():
    for name in ("h100_sxm", "h200_sxm", "b200_sxm", "l40s"):
        assert find_profile(f"{name}-aiconfigurator").has("moe")
    a100 = find_profile("a100_sxm-aiconfigurator")
    assert not a100.has("moe") and "no moe table" in a100.meta.notes


# --- lookup and interpolation -------------------------------------------------------------------------------
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_moe_part_equals_the_table_row_at_measured_token_counts(tp):
    lm = oplevel(tp)
    rows = table_rows(tp)
    assert len(rows) >= 20
    for t, lat in zip(rows.num_tokens, rows.latency_s):
        moe = lm.breakdown_s(BatchShape(prefill_tokens=int(t), prefill_seqs=1, prefill_square_tokens=int(t) ** 2))["moe"]
        assert moe / MIXTRAL.num_layers == pytest.approx(lat, rel=1e-12)
    assert lm.describe()["moe_shape"] == {"distribution": "balanced", **MIXTRAL_KEY, "moe_tp_size": tp, "dtype": "bf16"}


def test_moe_interpolation_is_log_log_and_monotone_between_measured_points():
    lm = oplevel(4)
    rows = table_rows(4)
    xs, ys = rows.num_tokens.to_numpy(float), rows.latency_s.to_numpy(float)

    def moe_at(t: int) -> float:
        return lm.breakdown_s(BatchShape(prefill_tokens=t, prefill_seqs=1, prefill_square_tokens=t * t))["moe"] / 32

    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        inner = [moe_at(t) for t in range(int(x0), int(x1) + 1, max(1, int(x1 - x0) // 16))]
        assert min(y0, y1) * (1 - 1e-12) <= min(inner) and max(inner) <= max(y0, y1) * (1 + 1e-12)
        steps = np.diff(inner)
        assert (steps >= -1e-15).all() if y1 >= y0 else (steps <= 1e-15).all()
        slope = math.log(y1 / y0) / math.log(x1 / x0)  # a power law between the neighbours
        for t in range(int(x0) + 1, int(x1), max(1, int(x1 - x0) // 5)):
            assert moe_at(t) == pytest.approx(y0 * (t / x0) ** slope, rel=1e-3)  # sampling bound: oplevel.py


def test_tokens_above_the_moe_table_are_counted_out_of_range():
    lm = oplevel(2)
    top = int(table_rows(2).num_tokens.max())
    assert lm.tokens_measured_max <= top
    lm.iteration_s(BatchShape(prefill_tokens=2 * top, prefill_seqs=2, prefill_square_tokens=2 * top * top))
    assert lm.stats.by_axis.get("tokens_above") == 1


# --- composition ---------------------------------------------------------------------------------------------
SHAPES = [
    BatchShape(prefill_tokens=3000, prefill_seqs=3, prefill_square_tokens=3 * 1000**2),
    BatchShape(decode_seqs=64, decode_context_tokens=64 * 1500),
    BatchShape(prefill_tokens=700, prefill_seqs=1, prefill_square_tokens=700**2, decode_seqs=40, decode_context_tokens=40 * 900),
]


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_mixtral_iteration_is_the_sum_of_its_parts(tp):
    lm = oplevel(tp)
    for shape in SHAPES:
        parts = lm.breakdown_s(shape)
        assert sum(parts.values()) == pytest.approx(lm.iteration_s(shape), rel=1e-9)
        assert {"qkv", "o", "router", "moe", "all_reduce", "attention_decode" if shape.decode_seqs else "attention_prefill"} <= set(parts)
        assert not {"gate_up", "down", "act"} & set(parts)  # no dense MLP, no separate activation
        assert parts["moe"] > parts["qkv"] > 0
    gemms = lm.describe()["gemm_shapes"]
    assert gemms["router"] == (8, 4096)  # replicated: not divided by TP
    assert gemms["qkv"] == ((32 // tp + 2 * max(1, 8 // tp)) * 128, 4096)


def test_more_tp_shortens_the_moe_part():
    shape = SHAPES[0]
    moe = [oplevel(tp).breakdown_s(shape)["moe"] for tp in (2, 4, 8)]
    assert moe[0] > moe[1] > moe[2]


def test_fp8_uses_fp8_expert_rows_and_a_bf16_router():
    lm, bf = oplevel(2, dtype="fp8"), oplevel(2)
    assert lm.describe()["moe_shape"]["dtype"] == "fp8"
    t = int(table_rows(2, "fp8").num_tokens.iloc[-1])
    shape = BatchShape(prefill_tokens=t, prefill_seqs=1, prefill_square_tokens=t * t)
    assert lm.breakdown_s(shape)["moe"] / 32 == pytest.approx(table_rows(2, "fp8").latency_s.iloc[-1], rel=1e-12)
    assert lm.breakdown_s(shape)["router"] == bf.breakdown_s(shape)["router"]


def test_pipeline_stage_times_of_mixtral_sum_to_the_iteration():
    lm = oplevel(2, pp=2)
    for shape in SHAPES:
        stages = lm.stage_times_s(shape)
        assert len(stages) == 2 and sum(stages) == pytest.approx(lm.iteration_s(shape), rel=1e-9)


def test_shared_experts_are_dense_gemms():
    cfg = {"model_type": "qwen2_moe", "num_hidden_layers": 2, "hidden_size": 2048, "num_attention_heads": 16,
           "num_key_value_heads": 16, "intermediate_size": 5632, "moe_intermediate_size": 1408,
           "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
           "vocab_size": 151936, "max_position_embeddings": 8192}
    m = model_from_hf_config("qwen-moe-toy", cfg)
    shapes = {s.name: (s.n, s.k) for s in layer_shapes(m, 4)[0]}
    assert shapes["router"] == (60, 2048) and shapes["shared_expert_gate"] == (1, 2048)
    assert shapes["shared_gate_up"] == (2 * 1408, 2048) and shapes["shared_down"] == (2048, 1408)
    # parameters: attention + router + 60 experts + shared MLP + its gate + 2 norms, per layer
    h = 2048
    layer = 4 * h * h + h * 60 + 60 * 3 * h * 1408 + 3 * h * 5632 + h + 2 * h
    assert m.total_params() == 2 * 151936 * h + 2 * layer + h


# --- memory --------------------------------------------------------------------------------------------------
def test_mixtral_parameters_from_its_config():
    assert MIXTRAL.is_moe and MIXTRAL.num_experts == 8 and MIXTRAL.experts_per_token == 2
    assert MIXTRAL.moe_intermediate_size == 14336
    assert MIXTRAL.total_params() == CATALOG["Mixtral-8x7B-v0.1"]["params_total_computed"] == 46_702_792_704
    # active: 6 of 8 experts unused per token; the catalog's figure also drops 6/8 of the router's
    # hidden x 8 weights, we count the whole router (every token computes all 8 logits)
    unused_experts = 32 * 6 * 3 * 4096 * 14336
    assert MIXTRAL.active_params() == MIXTRAL.total_params() - unused_experts
    assert MIXTRAL.active_params() == CATALOG["Mixtral-8x7B-v0.1"]["params_active_computed"] + 32 * 6 * 4096
    hf = {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
          "num_key_value_heads": 8, "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2,
          "vocab_size": 32000, "max_position_embeddings": 32768}
    assert model_from_hf_config("Mixtral-8x7B-v0.1", hf) == MIXTRAL


def test_mixtral_weights_per_gpu_at_tp4_bf16():
    h, tp = 4096, 4
    attn = h * (32 // tp) * 128 * 2 + 2 * h * (8 // tp) * 128
    moe = h * 8 + 8 * 3 * h * (14336 // tp)  # router replicated, every expert's 1/TP slice resident
    layer = attn + moe + 2 * h
    expected = (32 * layer + 2 * (32000 // tp) * h + h) * 2
    assert MIXTRAL.weight_bytes_per_gpu(tp, 1, 2) == expected
    assert expected / 2**30 == pytest.approx(21.75, abs=0.01)
    # all ranks together hold the whole model (nothing is replicated but the router and the norms)
    assert tp * MIXTRAL.weight_bytes_per_gpu(tp, 1, 2) - MIXTRAL.total_params() * 2 == (tp - 1) * 32 * (8 * h + 2 * h) * 2 + (tp - 1) * h * 2
    assert MIXTRAL.kv_bytes_per_token(2) == CATALOG["Mixtral-8x7B-v0.1"]["kv_cache_bytes_per_token_bf16"]


# --- errors --------------------------------------------------------------------------------------------------
def test_profile_without_moe_table_is_refused_naming_profile_model_and_shape():
    a100 = find_profile("a100_sxm-aiconfigurator")
    with pytest.raises(ProfileError) as ei:
        OpLevelModel([a100], MIXTRAL, tp=2, gpu=GPUS["A100-80GB-SXM"])
    msg = str(ei.value)
    assert "a100_sxm-aiconfigurator" in msg and "Mixtral-8x7B-v0.1" in msg and "'moe'" in msg
    assert "inter_size=14336" in msg and "num_experts=8" in msg and "moe_tp_size=2" in msg


def test_shape_missing_from_the_moe_table_is_refused(tmp_path):
    moe, _ = convert_moe(_raw([("bfloat16", "balanced", 1, 4, 0.2), ("bfloat16", "balanced", 8, 4, 0.3)]))
    tables = {t: H100.table(t) for t in ("gemm", "attention_prefill", "attention_decode", "collective")}
    meta = ProfileMeta(**{**H100.meta.model_dump(), "name": "toy-moe", "tables": {}})
    toy = write_profile(tmp_path / "toy-moe", meta, {**tables, "moe": moe})
    assert load_profile(toy.path).has("moe")
    OpLevelModel([toy], MIXTRAL, tp=4, gpu=GPUS["H100-SXM"])  # the measured TP works
    with pytest.raises(ProfileError) as ei:
        OpLevelModel([toy], MIXTRAL, tp=2, gpu=GPUS["H100-SXM"])
    msg = str(ei.value)
    assert "toy-moe" in msg and "Mixtral-8x7B-v0.1" in msg and "moe_tp_size=2" in msg and "('bf16', 4, 1)" in msg
    with pytest.raises(ProfileError, match="no 'moe' rows at dtype=fp8"):  # GEMMs have fp8, the moe table not
        OpLevelModel([toy], MIXTRAL, tp=4, dtype="fp8", gpu=GPUS["H100-SXM"])


def test_deepseek_v3_is_refused_for_its_mla_attention():
    with pytest.raises(ConfigError, match="DeepSeek-V3.*MLA"):
        model_from_hf_config("DeepSeek-V3", CATALOG["DeepSeek-V3"])


def test_mixed_dense_and_moe_layers_are_refused():
    cfg = {k: v for k, v in CATALOG["Mixtral-8x7B-v0.1"].items()}
    for extra in ({"first_k_dense_replace": 1}, {"decoder_sparse_step": 2}, {"mlp_only_layers": [0]}):
        with pytest.raises(ConfigError, match="every layer must be an MoE layer"):
            model_from_hf_config("m", {**cfg, **extra})
    with pytest.raises(ConfigError, match="experts per token"):
        model_from_hf_config("m", {**cfg, "experts_per_token": 9})


# --- end to end ----------------------------------------------------------------------------------------------
def test_mixtral_experiment_plans_its_memory_and_runs(tmp_path):
    exp_path = ROOT / "experiments" / "mixtral_h100.yaml"
    plans = plan_deployments(load_experiment_file(exp_path))
    by_tp = {p.pools[0].tp: p.pools[0] for p in plans}
    assert set(by_tp) == {2, 4}
    for tp, pool in by_tp.items():
        assert pool.weight_bytes_per_gpu == MIXTRAL.weight_bytes_per_gpu(tp, 1, 2)
        assert pool.capacity_blocks > 0
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", str(exp_path), "--out", str(out), "--no-plots",
                                 "--set", "workloads.conv.window_duration_s=20"])
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary.deployment) == ["H100-TP2x4", "H100-TP4x2"]
    assert (summary.completed == summary.requests).all() and (summary.requests > 20).all()
    assert (summary.latency_sources == "imported").all()
