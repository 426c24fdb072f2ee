"""The op-level latency model: composition, interpolation and out-of-range rules on synthetic profiles
whose latencies follow known formulas, so every expected value is computed independently."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pdsim.errors import ProfileError
from pdsim.hardware.gpus import load_gpu_catalog
from pdsim.latency.base import BatchShape
from pdsim.latency.oplevel import MEM_BW_EFFICIENCY, MEM_CONSTANT_LATENCY_S, OpLevelModel, layer_shapes, suggested_flush_level
from pdsim.models.arch import ModelSpec
from pdsim.profiles.format import CacheInfo, ProfileMeta, load_profile, write_profile

MODEL = ModelSpec(
    name="toy", num_layers=4, hidden_size=512, num_attention_heads=8, num_kv_heads=2, head_dim=64,
    intermediate_size=1536, vocab_size=4096, max_context_tokens=4096,
)
M_GRID = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
GEMM_A, GEMM_B = 2e-6, 1e-12           # gemm(m, n, k) = A + B m n k
ATT_P = 1e-9                            # prefill attention = ATT_P x b x s^2
ATT_D_A, ATT_D_B = 1e-6, 1e-9           # decode attention = ATT_D_A + ATT_D_B x b x c
EW = {"rmsnorm": 1e-6, "add": 2e-6, "silu_mul": 3e-6, "rope": 4e-6, "embedding": 5e-6}  # per call + 1e-9 x m x width
AR_A, AR_B = 5e-6, 1e-10                # all_reduce(bytes) = AR_A + AR_B bytes
AG_A, AG_B = 6e-6, 2e-10
SR_A, SR_B = 7e-6, 3e-10


def gemm_t(m, n, k):
    return GEMM_A + GEMM_B * m * n * k


def ew_t(op, m, width):
    return EW[op] + 1e-9 * m * width


def _profile(tmp_path, name="toy", shapes=None, tables=("gemm", "attention_prefill", "attention_decode", "elementwise", "collective"),
             dtype="bf16", gemm_grid=None, cache=None):
    rows = []
    if gemm_grid is not None:
        pairs = [(n, k) for n in gemm_grid for k in gemm_grid]
    else:
        pairs = shapes or []
    for n, k in pairs:
        for m in M_GRID:
            rows.append((dtype, m, n, k, gemm_t(m, n, k)))
    out = {}
    if "gemm" in tables:
        out["gemm"] = pd.DataFrame(rows, columns=["dtype", "m", "n", "k", "latency_s"])
    heads = [(4, 1, 64), (8, 2, 64), (16, 2, 64)]
    if "attention_prefill" in tables:
        out["attention_prefill"] = pd.DataFrame(
            [(dtype, dtype, b, s, h, kv, d, ATT_P * b * s * s) for h, kv, d in heads for b in (1, 2, 4, 8) for s in (16, 64, 256, 1024)],
            columns=["dtype", "kv_dtype", "batch_size", "seq_len", "num_heads", "num_kv_heads", "head_dim", "latency_s"])
    if "attention_decode" in tables:
        out["attention_decode"] = pd.DataFrame(
            [(dtype, dtype, b, c, h, kv, d, ATT_D_A + ATT_D_B * b * c) for h, kv, d in heads for b in (1, 2, 4, 8, 16, 32) for c in (16, 64, 256, 1024, 4096)],
            columns=["dtype", "kv_dtype", "batch_size", "context_len", "num_heads", "num_kv_heads", "head_dim", "latency_s"])
    if "elementwise" in tables:
        widths = {"rmsnorm": [512], "add": [512], "silu_mul": [1536, 768], "rope": [(8 + 2) * 64, (4 + 1) * 64], "embedding": [512]}
        out["elementwise"] = pd.DataFrame(
            [(op, dtype, m, w, ew_t(op, m, w)) for op, ws in widths.items() for w in ws for m in M_GRID],
            columns=["op", "dtype", "num_tokens", "width", "latency_s"])
    if "collective" in tables:
        sizes = [2**i for i in range(8, 28)]
        out["collective"] = pd.DataFrame(
            [("all_reduce", "nccl", dtype, 2, b, AR_A + AR_B * b) for b in sizes]
            + [("all_gather", "nccl", dtype, 2, b, AG_A + AG_B * b) for b in sizes]
            + [("send_recv", "nccl", dtype, 2, b, SR_A + SR_B * b) for b in sizes],
            columns=["op", "backend", "dtype", "world_size", "message_bytes", "latency_s"])
    meta = ProfileMeta(name=name, source_kind="measured", device_type="cpu", vendor="test", device_name="synthetic",
                       date="2026-11-21", command="test", cache=cache)
    return write_profile(tmp_path / name, meta, out)


def _all_shapes(model, tp):
    layer, head = layer_shapes(model, tp)
    return [(s.n, s.k) for s in [*layer, head]]


def expected_tokens_s(model, tp, pp, T, S, *, dtype_bytes=2):
    """F_T(T) + F_S(S) by hand (module docstring of pdsim.latency.oplevel)."""
    layer, head = layer_shapes(model, tp)
    L = model.num_layers
    q = math.ceil(model.num_attention_heads / tp)
    kv = model.kv_heads_per_gpu(tp)
    inter = math.ceil(model.intermediate_size / tp)
    t = L * sum(gemm_t(T, s.n, s.k) for s in layer)
    t += L * (2 * ew_t("rmsnorm", T, 512) + 2 * ew_t("add", T, 512) + ew_t("silu_mul", T, inter) + ew_t("rope", T, (q + kv) * 64))
    t += ew_t("embedding", T, 512)
    if tp > 1:
        t += 2 * L * (AR_A + AR_B * T * 512 * dtype_bytes)
        t += AG_A + AG_B * S * head.n * dtype_bytes
    if pp > 1:
        t += (pp - 1) * (SR_A + SR_B * T * 512 * dtype_bytes)
    t += ew_t("rmsnorm", S, 512) + gemm_t(S, head.n, head.k)
    return t


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_decode_iteration_is_the_sum_of_its_ops(tmp_path, tp, pp):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, tp))
    lm = OpLevelModel([prof], MODEL, tp=tp, pp=pp, dtype="bf16", iteration_overhead_s=1e-4)
    b, ctx = 8, 8 * 256
    q = math.ceil(8 / tp)
    kv_scale = 1.0  # (8/tp, 2/tp) heads are measured exactly for tp 1 and 2: (8, 2) and (4, 1)
    want = 1e-4 + expected_tokens_s(MODEL, tp, pp, b, b) + MODEL.num_layers * kv_scale * (ATT_D_A + ATT_D_B * b * 256)
    assert q in (4, 8)
    assert lm.decode_s(b, ctx) == pytest.approx(want, rel=1e-9)
    shape = BatchShape(decode_seqs=b, decode_context_tokens=ctx)
    assert lm.iteration_s(shape) == pytest.approx(want, rel=1e-9)
    assert lm.stats.lookups == 1 and lm.stats.extrapolated == 0


def test_prefill_attention_preserves_causal_work(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    lm = OpLevelModel([prof], MODEL, dtype="bf16")
    lens = [100, 300, 50]
    shape = BatchShape(prefill_tokens=sum(lens), prefill_seqs=len(lens), prefill_square_tokens=sum(x * x for x in lens))
    attn = MODEL.num_layers * ATT_P * sum(x * x for x in lens)  # b x s_eq^2 = sum of squares
    want = expected_tokens_s(MODEL, 1, 1, sum(lens), len(lens)) + attn
    assert lm.iteration_s(shape) == pytest.approx(want, rel=1e-9)
    # without the square sum the model assumes equal lengths
    eq = BatchShape(prefill_tokens=450, prefill_seqs=3)
    want_eq = expected_tokens_s(MODEL, 1, 1, 450, 3) + MODEL.num_layers * ATT_P * 3 * 150**2
    assert lm.iteration_s(eq) == pytest.approx(want_eq, rel=1e-9)


def test_mixed_batch_adds_decode_attention_and_shares_the_linear_layers(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    lm = OpLevelModel([prof], MODEL, dtype="bf16")
    shape = BatchShape(prefill_tokens=256, prefill_seqs=1, decode_seqs=4, decode_context_tokens=4 * 1024, prefill_square_tokens=256**2)
    want = (expected_tokens_s(MODEL, 1, 1, 260, 5) + MODEL.num_layers * ATT_P * 256**2
            + MODEL.num_layers * (ATT_D_A + ATT_D_B * 4 * 1024))
    assert lm.iteration_s(shape) == pytest.approx(want, rel=1e-9)


def test_gemm_shapes_between_grid_points_are_interpolated_log_log(tmp_path):
    # the grid holds no model shape exactly; latency = A + B m n k is not a pure power law, so check
    # against the exact value with the tolerance of log-log interpolation between 2x-spaced points
    grid = [128, 256, 512, 1024, 2048, 4096, 8192]
    prof = _profile(tmp_path, gemm_grid=grid)
    lm = OpLevelModel([prof], MODEL, dtype="bf16")
    shapes = _all_shapes(MODEL, 1)
    assert any(n not in grid or k not in grid for n, k in shapes)
    assert any("interpolated" in note for note in lm.notes)
    T = 1024
    got = lm._per_token.at(T, lm.stats, "", True)
    want_gemm = MODEL.num_layers * sum(gemm_t(T, n, k) for n, k in shapes[:4])
    rest = expected_tokens_s(MODEL, 1, 1, T, 1) - MODEL.num_layers * sum(gemm_t(T, n, k) for n, k in shapes[:4]) - (ew_t("rmsnorm", 1, 512) + gemm_t(1, *shapes[4]))
    assert got == pytest.approx(want_gemm + rest, rel=0.02)


def test_a_pure_power_law_gemm_is_interpolated_exactly(tmp_path):
    grid = [256, 1024, 4096]
    rows = [("bf16", m, n, k, 1e-12 * m * n * k) for n in grid for k in grid for m in M_GRID]
    prof_dir = tmp_path
    meta = ProfileMeta(name="pl", source_kind="derived", device_type="cuda", vendor="x", device_name="x", date="2026-11-21", command="t")
    base = _profile(tmp_path, name="rest", tables=("attention_prefill", "attention_decode", "elementwise", "collective"))
    pl = write_profile(prof_dir / "pl", meta, {"gemm": pd.DataFrame(rows, columns=["dtype", "m", "n", "k", "latency_s"])})
    lm = OpLevelModel([pl, base], MODEL, dtype="bf16")
    qkv = layer_shapes(MODEL, 1)[0][0]
    assert (qkv.n, qkv.k) == ((8 + 2 * 2) * 64, 512)  # between grid points on both axes
    curve = lm._gemm_curve(pl.table("gemm"), qkv, "t")
    assert curve.values([64])[0] == pytest.approx(1e-12 * 64 * qkv.n * qkv.k, rel=1e-9)


def test_shapes_outside_the_grid_are_scaled_and_noted(tmp_path):
    prof = _profile(tmp_path, gemm_grid=[64, 128])
    lm = OpLevelModel([prof], MODEL, dtype="bf16")
    assert any("not in the measured grid" in n for n in lm.notes)


def test_out_of_range_lookups_are_counted(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    lm = OpLevelModel([prof], MODEL, dtype="bf16")
    lm.iteration_s(BatchShape(prefill_tokens=8000, prefill_seqs=1, prefill_square_tokens=8000**2))
    assert lm.stats.extrapolated >= 1
    assert "tokens_above" in lm.stats.by_axis and "prefill_attention_above" in lm.stats.by_axis
    # above the largest measured length, prefill attention follows s^2 from the last point
    t_attn = MODEL.num_layers * ATT_P * 8000**2
    assert lm.iteration_s(BatchShape(prefill_tokens=8000, prefill_seqs=1, prefill_square_tokens=8000**2)) > t_attn
    before = lm.stats.extrapolated
    lm.decode_s(64, 64 * 100)       # batch above the decode table (32)
    lm.record_decode(64, 5)
    assert lm.stats.extrapolated == before + 5 and lm.stats.by_axis["decode_attention_batch_above"] == 5
    lm.decode_s(4, 4 * 100)
    lm.record_decode(4, 3)          # in range: not counted
    assert lm.stats.extrapolated == before + 5


def test_missing_tables_are_named_and_fallbacks_documented(tmp_path):
    no_attn = _profile(tmp_path, name="noattn", shapes=_all_shapes(MODEL, 1), tables=("gemm", "elementwise"))
    with pytest.raises(ProfileError, match="attention_prefill"):
        OpLevelModel([no_attn], MODEL, dtype="bf16")
    # a second profile supplies attention; elementwise and collectives missing -> roofline on the GPU
    gemm_only = _profile(tmp_path, name="gemmonly", shapes=_all_shapes(MODEL, 2), tables=("gemm",))
    attn = _profile(tmp_path, name="attn", tables=("attention_prefill", "attention_decode"))
    gpu = load_gpu_catalog()["H100-SXM"]
    lm = OpLevelModel([gemm_only, attn], MODEL, tp=2, dtype="bf16", gpu=gpu)
    assert lm.sources["attention_decode"] == "attn" and lm.sources["gemm"] == "gemmonly"
    assert lm.sources["elementwise.rmsnorm"].startswith("roofline") and lm.sources["collective.all_reduce"].startswith("analytic")
    T = 64
    ew = lm._elementwise("add", 512)
    assert ew.values([T])[0] == pytest.approx(MEM_CONSTANT_LATENCY_S + 3 * T * 512 * 2 / (gpu.mem_bw_bytes_per_s * MEM_BW_EFFICIENCY))
    with pytest.raises(ProfileError, match="elementwise"):
        OpLevelModel([gemm_only, attn], MODEL, tp=2, dtype="bf16", gpu=None)


def test_dtype_substitution_is_noted_and_unmeasured_dtypes_refused(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    lm = OpLevelModel([prof], MODEL, dtype="fp16")
    assert any("fp16 not measured; bf16 used" in n for n in lm.notes)
    with pytest.raises(ProfileError, match="fp8"):
        OpLevelModel([prof], MODEL, dtype="fp8")


def test_head_configurations_not_measured_are_scaled(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    wide = ModelSpec(name="wide", num_layers=2, hidden_size=512, num_attention_heads=32, num_kv_heads=4, head_dim=64,
                     intermediate_size=1536, vocab_size=4096, max_context_tokens=4096)
    lm = OpLevelModel([prof], wide, dtype="bf16", gpu=load_gpu_catalog()["H100-SXM"])
    assert any("heads 32/4 x 64 not measured; taken from 16/2 x 64" in n for n in lm.notes)
    assert lm._prefill_attn_scale == pytest.approx(2.0) and lm._decode_attn_scale == pytest.approx(2.0)


def test_fresh_copies_share_curves_but_not_counters(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    lm = OpLevelModel([prof], MODEL, dtype="bf16")
    a, b = lm.fresh(), lm.fresh()
    a.iteration_s(BatchShape(decode_seqs=2, decode_context_tokens=200))
    assert a.stats.lookups == 1 and b.stats.lookups == 0
    assert a._per_token is b._per_token
    assert a.describe()["source_kinds"] == ["measured"]


def test_decode_time_grows_with_batch_and_context(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    lm = OpLevelModel([prof], MODEL, dtype="bf16")
    ts = np.array([[lm.decode_s(b, b * c) for c in (64, 256, 1024)] for b in (1, 4, 16)])
    assert (np.diff(ts, axis=0) > 0).all() and (np.diff(ts, axis=1) > 0).all()


def test_out_of_range_decode_is_counted_on_every_record_and_in_every_copy(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    lm = OpLevelModel([prof], MODEL, dtype="bf16")
    lm.tokens_measured_max = 4  # as if the per-token ops were measured up to 4 tokens only
    b = 8  # above it; decode attention (batch <= 32, context <= 4096) stays in range
    first, second = lm.fresh(), lm.fresh()
    for copy in (first, second):  # the second copy finds the batch size's part already cached
        for _ in range(2):
            copy.decode_s(b, b * 100)
            copy.record_decode(b, 3)
        assert copy.stats.extrapolated == 6 and copy.stats.by_axis == {"tokens_above": 6}


# -- host floor (eager engines bound by the host's kernel launches) ------------------------------------

@pytest.mark.parametrize("floor_s", [1e-6, 5e-2])  # below and above the kernels of the shapes below
def test_host_floor_is_the_least_an_iteration_takes(tmp_path, floor_s):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    plain = OpLevelModel([prof], MODEL, dtype="bf16", iteration_overhead_s=1e-4)
    per_seq = 2e-3
    floored = OpLevelModel([prof], MODEL, dtype="bf16", iteration_overhead_s=1e-4, host_floor_s=floor_s,
                           host_floor_per_prefill_seq_s=per_seq)
    decode = BatchShape(decode_seqs=8, decode_context_tokens=8 * 256)
    mixed = BatchShape(prefill_tokens=3 * 64, prefill_seqs=3, decode_seqs=4, decode_context_tokens=4 * 100,
                       prefill_square_tokens=3 * 64 * 64)
    for shape, n_p in ((decode, 0), (mixed, 3)):
        kernels = plain.iteration_s(shape) - 1e-4
        assert floored.iteration_s(shape) == pytest.approx(1e-4 + max(kernels, floor_s + per_seq * n_p), rel=1e-12)
    assert floored.decode_s(8, 8 * 256) == pytest.approx(floored.iteration_s(decode), rel=1e-12)
    parts = floored.breakdown_s(mixed)
    assert sum(parts.values()) == pytest.approx(floored.iteration_s(mixed), rel=1e-9)
    assert floored.describe()["host_floor_s"] == floor_s


def test_host_floor_splits_over_pipeline_stages_by_layers(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    lm = OpLevelModel([prof], MODEL, pp=2, dtype="bf16", iteration_overhead_s=1e-4, host_floor_s=1.0,
                      stage_layers=(1, 3))
    shape = BatchShape(decode_seqs=2, decode_context_tokens=2 * 64)
    stages = lm.stage_times_s(shape)
    assert stages == pytest.approx((1e-4 + 0.25, 0.75), rel=1e-12)  # the floor binds: 1/4 and 3/4 of it
    assert sum(stages) == pytest.approx(lm.iteration_s(shape), rel=1e-12)


def test_a_negative_host_floor_is_refused(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    with pytest.raises(ProfileError, match="host floor"):
        OpLevelModel([prof], MODEL, dtype="bf16", host_floor_s=-1e-3)


# ---- the profile's cache flush against the model's size ----------------------------------------------

MIB = 2**20


def test_suggested_flush_level_is_l2_only_when_the_weights_fit_in_half_the_llc():
    assert suggested_flush_level(64 * MIB, 128 * MIB) == "l2"
    assert suggested_flush_level(64 * MIB + 1, 128 * MIB) == "llc"
    assert suggested_flush_level(1, None) == "llc"  # unknown cache size: the cold-cache default
    assert suggested_flush_level(1, 0) == "llc"


@pytest.mark.parametrize("level, llc_mib, says", [
    ("llc", 1024, "over-charged"),   # the toy model's ~27 MiB of bf16 weights stay in a 1 GiB LLC
    ("l2", 1024, None),
    ("l2", 16, "under-charged"),     # ... but not in a 16 MiB one
    ("llc", 16, None),
])
def test_a_profile_whose_flush_does_not_suit_the_model_is_noted(tmp_path, level, llc_mib, says):
    weights = MODEL.weight_bytes_per_gpu(1, 1, 2)
    assert 16 * MIB < weights < 512 * MIB  # the premise of the cases above
    cache = CacheInfo(flush="write", flush_level=level, flush_bytes=32 * MIB, llc_bytes=llc_mib * MIB)
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1), cache=cache)
    assert load_profile(prof.path).meta.cache == cache  # written to and read back from profile.yaml
    notes = [n for n in OpLevelModel([prof], MODEL, dtype="bf16").notes if "flush" in n]
    if says is None:
        assert notes == []
    else:
        assert len(notes) == 1 and says in notes[0] and f"{weights / MIB:.0f} MiB" in notes[0], notes


def test_a_profile_without_cache_metadata_gets_no_cache_note(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    assert prof.meta.cache is None
    assert not [n for n in OpLevelModel([prof], MODEL, dtype="bf16").notes if "flush" in n]


def test_iterations_that_prefill_pay_their_own_overhead(tmp_path):
    """``iteration_overhead_prefill_s`` replaces ``iteration_overhead_s`` on every iteration that
    prefills (mixed ones too), in ``iteration_s``, ``stage_times_s`` and ``breakdown_s``; pure decode
    iterations keep ``iteration_overhead_s``; None is the old single overhead."""
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    base = OpLevelModel([prof], MODEL, dtype="bf16", iteration_overhead_s=0.0)
    lm = OpLevelModel([prof], MODEL, dtype="bf16", iteration_overhead_s=1e-3, iteration_overhead_prefill_s=5e-3)
    same = OpLevelModel([prof], MODEL, dtype="bf16", iteration_overhead_s=1e-3)
    assert same.iteration_overhead_prefill_s == 1e-3
    decode = BatchShape(decode_seqs=4, decode_context_tokens=400)
    mixed = BatchShape(prefill_tokens=128, prefill_seqs=1, prefill_square_tokens=128 * 128, decode_seqs=4, decode_context_tokens=400)
    prefill = BatchShape(prefill_tokens=256, prefill_seqs=2, prefill_square_tokens=2 * 128 * 128)
    assert lm.iteration_s(decode) == pytest.approx(base.iteration_s(decode) + 1e-3, rel=1e-12)
    assert lm.decode_s(4, 400) == pytest.approx(base.decode_s(4, 400) + 1e-3, rel=1e-12)
    for shape in (mixed, prefill):
        assert lm.iteration_s(shape) == pytest.approx(base.iteration_s(shape) + 5e-3, rel=1e-12)
        assert same.iteration_s(shape) == pytest.approx(base.iteration_s(shape) + 1e-3, rel=1e-12)
        assert lm.breakdown_s(shape)["iteration_overhead"] == 5e-3
    assert lm.breakdown_s(decode)["iteration_overhead"] == 1e-3
    pp = OpLevelModel([prof], MODEL, pp=2, dtype="bf16", iteration_overhead_s=1e-3, iteration_overhead_prefill_s=5e-3)
    pp0 = OpLevelModel([prof], MODEL, pp=2, dtype="bf16")
    assert pp.stage_times_s(mixed)[0] == pytest.approx(pp0.stage_times_s(mixed)[0] + 5e-3, rel=1e-12)
    assert pp.stage_times_s(decode)[0] == pytest.approx(pp0.stage_times_s(decode)[0] + 1e-3, rel=1e-12)
    assert pp.stage_times_s(mixed)[1] == pytest.approx(pp0.stage_times_s(mixed)[1], rel=1e-12)


def test_kernel_time_scales_multiply_the_kernels_of_each_kind_of_iteration(tmp_path):
    """``kernel_time_scale`` multiplies the profiled kernels of pure decode iterations,
    ``kernel_time_scale_prefill`` those of iterations that prefill (default: the decode one); the
    overheads are added on top and the breakdown still sums to the iteration."""
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    base = OpLevelModel([prof], MODEL, dtype="bf16")
    lm = OpLevelModel([prof], MODEL, dtype="bf16", iteration_overhead_s=1e-3, kernel_time_scale=2.0,
                      kernel_time_scale_prefill=1.25)
    decode = BatchShape(decode_seqs=4, decode_context_tokens=400)
    mixed = BatchShape(prefill_tokens=128, prefill_seqs=1, prefill_square_tokens=128 * 128, decode_seqs=4, decode_context_tokens=400)
    assert lm.iteration_s(decode) == pytest.approx(1e-3 + 2.0 * base.iteration_s(decode), rel=1e-12)
    assert lm.decode_s(4, 400) == pytest.approx(1e-3 + 2.0 * base.decode_s(4, 400), rel=1e-12)
    assert lm.iteration_s(mixed) == pytest.approx(1e-3 + 1.25 * base.iteration_s(mixed), rel=1e-12)
    for shape in (decode, mixed):
        parts = lm.breakdown_s(shape)
        assert sum(parts.values()) == pytest.approx(lm.iteration_s(shape), rel=1e-9)
    one = OpLevelModel([prof], MODEL, dtype="bf16", kernel_time_scale=1.5)
    assert one.kernel_time_scale_prefill == 1.5
    assert one.iteration_s(mixed) == pytest.approx(1.5 * base.iteration_s(mixed), rel=1e-12)
    pp = OpLevelModel([prof], MODEL, pp=2, dtype="bf16", kernel_time_scale=2.0, kernel_time_scale_prefill=1.25)
    pp0 = OpLevelModel([prof], MODEL, pp=2, dtype="bf16")
    np.testing.assert_allclose(pp.stage_times_s(decode), [2.0 * t for t in pp0.stage_times_s(decode)], rtol=1e-12)
    np.testing.assert_allclose(pp.stage_times_s(mixed), [1.25 * t for t in pp0.stage_times_s(mixed)], rtol=1e-12)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ProfileError, match="kernel time scales"):
            OpLevelModel([prof], MODEL, dtype="bf16", kernel_time_scale=bad)
    with pytest.raises(ProfileError, match="kernel time scales"):
        OpLevelModel([prof], MODEL, dtype="bf16", kernel_time_scale_prefill=0.0)


def test_a_kernel_time_scale_table_is_read_linearly_in_log_batch_size(tmp_path):
    prof = _profile(tmp_path, shapes=_all_shapes(MODEL, 1))
    base = OpLevelModel([prof], MODEL, dtype="bf16")
    lm = OpLevelModel([prof], MODEL, dtype="bf16", kernel_time_scale={1: 2.0, 4: 1.6, 32: 1.4}, kernel_time_scale_prefill=1.3)
    expect = {1: 2.0, 2: 1.8, 4: 1.6, 8: 1.6 - 0.2 / 3, 32: 1.4, 64: 1.4}  # log2: 2 is halfway 1..4; 8 a third of 4..32
    for b, f in expect.items():
        assert lm.decode_scale(b) == pytest.approx(f, rel=1e-12)
        assert lm.decode_s(b, 100 * b) == pytest.approx(f * base.decode_s(b, 100 * b), rel=1e-12)
        shape = BatchShape(decode_seqs=b, decode_context_tokens=100 * b)
        assert sum(lm.breakdown_s(shape).values()) == pytest.approx(lm.iteration_s(shape), rel=1e-9)
    mixed = BatchShape(prefill_tokens=64, prefill_seqs=1, prefill_square_tokens=64 * 64, decode_seqs=8, decode_context_tokens=800)
    assert lm.iteration_s(mixed) == pytest.approx(1.3 * base.iteration_s(mixed), rel=1e-12)
    with pytest.raises(ProfileError, match="needs at least one point and a kernel_time_scale_prefill"):
        OpLevelModel([prof], MODEL, dtype="bf16", kernel_time_scale={1: 2.0})
    with pytest.raises(ProfileError, match="batch sizes must be >= 1"):
        OpLevelModel([prof], MODEL, dtype="bf16", kernel_time_scale={0: 2.0}, kernel_time_scale_prefill=1.0)
    with pytest.raises(ProfileError, match="finite and > 0"):
        OpLevelModel([prof], MODEL, dtype="bf16", kernel_time_scale={1: -2.0}, kernel_time_scale_prefill=1.0)
