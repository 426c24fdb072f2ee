"""Specification of the Splitwise table latency model (``pdsim/latency/table.py``) and the constant one.

The reference values are computed here, independently, from ``gpu_profiles/splitwise_sim/perf_model.csv``
with pandas: the medians of the measured repeats. The model must reproduce them at measured points,
interpolate between them, grow with batch size and context in decode (the flaw of the original
splitwise-sim: decode flat in batch size), refuse synthetic or broken rows, and price a mixed batch as
``max(prefill(P + D), decode(D, ctx))`` with no hidden factor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdsim.errors import ProfileError
from pdsim.latency.base import BatchShape, LatencyModel
from pdsim.latency.constant import ConstantLatencyModel
from pdsim.latency.table import SplitwiseTableModel

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "gpu_profiles" / "splitwise_sim" / "perf_model.csv"
CSV = pd.read_csv(PROFILE)

COMBOS = [("llama2-70b", hw, tp) for hw in ("a100-80gb", "h100-80gb") for tp in (2, 4, 8)] + [
    ("bloom-176b", hw, 8) for hw in ("a100-80gb", "h100-80gb")
]
REF_CONTEXT = 512 + 64  # decode times were measured generating 128 tokens after a 512-token prompt


def model(m="llama2-70b", hw="a100-80gb", tp=8, path=PROFILE, **kw) -> SplitwiseTableModel:
    return SplitwiseTableModel(path, m, hw, tp, **kw)


def measured_rows(m: str, hw: str, tp: int) -> pd.DataFrame:
    """Rows of the two sweeps the model uses (token_size 128), without the documented broken rows."""
    sel = CSV[(CSV.model == m) & (CSV.hardware == hw) & (CSV.tensor_parallel == tp) & (CSV.token_size == 128)]
    if m == "llama2-70b" and tp == 2:
        sel = sel[sel.batch_size != 64]
    return sel


def test_protocol():
    assert isinstance(model(), LatencyModel)
    assert isinstance(ConstantLatencyModel(0.1), LatencyModel)


@pytest.mark.parametrize("m,hw,tp", COMBOS)
def test_decode_grows_with_batch_size(m, hw, tp):
    lat = model(m, hw, tp)
    times = [lat.decode_s(b, REF_CONTEXT * b) for b in range(8, 65)]
    assert all(b > a for a, b in zip(times, times[1:])), times
    # and not by a negligible amount: batch 64 costs visibly more than batch 8
    assert times[-1] > 1.05 * times[0]


@pytest.mark.parametrize("m,hw,tp", COMBOS)
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_decode_grows_with_context(m, hw, tp, batch):
    lat = model(m, hw, tp)
    times = [lat.decode_s(batch, batch * ctx) for ctx in (256, 576, 1024, 2048, 4096, 8192)]
    assert all(b > a for a, b in zip(times, times[1:])), times


@pytest.mark.parametrize("m,hw,tp", COMBOS)
def test_decode_at_reference_context_equals_measured_median(m, hw, tp):
    lat = model(m, hw, tp)
    rows = measured_rows(m, hw, tp)
    batch_sweep = rows[rows.prompt_size == 512]
    for b, grp in batch_sweep.groupby("batch_size"):
        expected = float(np.median(grp.token_time.to_numpy())) / 1e3
        assert lat.decode_s(int(b), REF_CONTEXT * int(b)) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("m,hw,tp", COMBOS)
def test_prefill_at_measured_points_is_median_of_rows(m, hw, tp):
    lat = model(m, hw, tp)
    rows = measured_rows(m, hw, tp)
    tokens = (rows.prompt_size * rows.batch_size).astype(int).to_numpy()
    times = rows.prompt_time.to_numpy()
    counts = sorted(set(tokens.tolist()))
    assert len(counts) >= 8
    for n in counts:
        expected = float(np.median(times[tokens == n])) / 1e3
        assert lat.prefill_s(n) == pytest.approx(expected, rel=1e-12, abs=0), n
    assert lat.stats.extrapolated == 0  # measured points are in range


def test_prefill_pools_both_sweeps_at_shared_token_counts():
    # 1024 tokens: one prompt of 1024 (batch sweep 1) and two prompts of 512 (batch sweep) -> 10 repeats.
    rows = measured_rows("llama2-70b", "a100-80gb", 8)
    shared = rows[rows.prompt_size * rows.batch_size == 1024]
    assert len(shared) == 10 and set(shared.batch_size) == {1, 2}
    assert model().prefill_s(1024) == pytest.approx(float(np.median(shared.prompt_time)) / 1e3, rel=1e-12)


@pytest.mark.parametrize("lo,hi", [(1024, 2048), (4096, 8192), (128, 256)])
def test_prefill_interpolation_lies_between_measured_points(lo, hi):
    lat = model()
    a, b = lat.prefill_s(lo), lat.prefill_s(hi)
    for v in np.linspace(lo, hi, 9)[1:-1]:
        t = lat.prefill_s(int(v))
        assert min(a, b) <= t <= max(a, b)
    mid = lat.prefill_s((lo + hi) // 2)
    assert mid == pytest.approx((a + b) / 2, rel=1e-9)  # piecewise linear


def test_decode_interpolation_lies_between_measured_batches():
    lat = model()
    a, b = lat.decode_s(8, 8 * REF_CONTEXT), lat.decode_s(16, 16 * REF_CONTEXT)
    for batch in range(9, 16):
        t = lat.decode_s(batch, batch * REF_CONTEXT)
        assert a < t < b


def test_out_of_range_lookups_are_counted():
    lat = model()
    lat.prefill_s(1024)
    assert (lat.stats.lookups, lat.stats.extrapolated) == (1, 0)
    t_small = lat.prefill_s(10)  # below the smallest measured prompt (128): clamped
    assert t_small == lat.prefill_s(128)
    assert lat.stats.by_axis.get("prefill_tokens_below") == 1
    big = lat.prefill_s(100_000)  # above the largest: extrapolated linearly
    assert big > lat.prefill_s(32_768)
    assert lat.stats.by_axis.get("prefill_tokens_above") == 1
    before = lat.stats.extrapolated
    lat.record_decode(128, 3)  # batch 128 > 64 measured
    assert lat.stats.extrapolated == before + 3
    assert lat.stats.by_axis.get("decode_batch_above") == 3
    lat.record_decode(32, 5)
    assert lat.stats.extrapolated == before + 3
    # the hot path through iteration_s counts too
    lat.iteration_s(BatchShape(decode_seqs=100, decode_context_tokens=100 * REF_CONTEXT))
    assert lat.stats.by_axis["decode_batch_above"] == 4


def test_power_capped_h100_is_refused():
    for tp in (2, 4, 8):
        with pytest.raises(ProfileError, match="h100-80gb-pcap"):
            model("llama2-70b", "h100-80gb-pcap", tp)


def test_unknown_keys_are_refused():
    with pytest.raises(ProfileError, match="no rows"):
        model("llama2-70b", "a100-80gb", 16)


def test_llama2_70b_tp2_batch64_rows_are_excluded():
    raw = CSV[(CSV.model == "llama2-70b") & (CSV.tensor_parallel == 2) & (CSV.batch_size == 64)]
    assert len(raw) > 0  # the broken rows are in the file ...
    for hw in ("a100-80gb", "h100-80gb"):
        d = model("llama2-70b", hw, 2).describe()
        assert d["decode_batch_range"] == [1.0, 32.0]  # ... but not in the model
        assert d["prefill_token_range"][1] == 16384.0  # 32 x 512, not 64 x 512
        assert "llama2-70b/tp2/bs64" in d["excluded_rows"]
        # TP 4 keeps its batch-64 rows
        assert model("llama2-70b", hw, 4).describe()["decode_batch_range"] == [1.0, 64.0]


# ---- corrupted files ------------------------------------------------------------------------------

def _write(tmp_path: Path, df: pd.DataFrame) -> Path:
    path = tmp_path / "perf_model_bad.csv"
    df.to_csv(path, index=False)
    return path


def test_missing_column_names_the_file(tmp_path):
    path = _write(tmp_path, CSV.drop(columns=["token_time"]))
    with pytest.raises(ProfileError) as ei:
        model(path=path)
    assert str(path) in str(ei.value) and "token_time" in str(ei.value)


def test_negative_time_names_the_file(tmp_path):
    df = CSV.copy()
    df.loc[7, "prompt_time"] = -3.0
    path = _write(tmp_path, df)
    with pytest.raises(ProfileError) as ei:
        model(path=path)
    assert str(path) in str(ei.value) and "prompt_time" in str(ei.value)
    assert f"{path}:9" in str(ei.value)  # file line of row 7 (header is line 1)


def test_non_numeric_time_is_refused(tmp_path):
    df = CSV.copy().astype({"token_time": object})
    df.loc[3, "token_time"] = "fast"
    path = _write(tmp_path, df)
    with pytest.raises(ProfileError, match="token_time"):
        model(path=path)


def _tenfold_drop(prompt_size: int, batch_size: int) -> pd.DataFrame:
    df = CSV.copy()
    sel = (df.model == "llama2-70b") & (df.hardware == "a100-80gb") & (df.tensor_parallel == 8) & (
        df.prompt_size == prompt_size) & (df.batch_size == batch_size)
    assert sel.sum() == 5
    df.loc[sel, "prompt_time"] /= 10.0
    return df


def test_tenfold_prefill_drop_names_the_file(tmp_path):
    # 32 x 512 = 16,384 tokens: measured by the batch sweep only.
    path = _write(tmp_path, _tenfold_drop(512, 32))
    with pytest.raises(ProfileError) as ei:
        model(path=path)
    assert str(path) in str(ei.value)
    assert "16384" in str(ei.value)
    # other (model, GPU, TP) keys of the same file are unaffected
    model("llama2-70b", "h100-80gb", 8, path=path)


def test_tenfold_prefill_drop_in_one_sweep_at_a_pooled_point_is_refused(tmp_path):
    path = _write(tmp_path, _tenfold_drop(4096, 1))
    with pytest.raises(ProfileError) as ei:
        model(path=path)
    assert str(path) in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        model(path=tmp_path / "nope.csv")


# ---- mixed batches ----------------------------------------------------------------------------------

@pytest.mark.parametrize("p,d,ctx", [(2048, 4, 4 * 600), (128, 64, 64 * 4000), (1, 32, 32 * 3000), (6000, 64, 64 * 100)])
def test_mixed_batch_is_max_of_prefill_and_decode(p, d, ctx):
    lat = model()
    shape = BatchShape(prefill_tokens=p, prefill_seqs=1, decode_seqs=d, decode_context_tokens=ctx)
    expected = max(lat.prefill_s(p + d), lat.decode_s(d, ctx))
    assert lat.iteration_s(shape) == expected


def test_both_branches_of_the_max_are_reached():
    lat = model()
    prefill_heavy = BatchShape(prefill_tokens=4096, prefill_seqs=1, decode_seqs=2, decode_context_tokens=1000)
    decode_heavy = BatchShape(prefill_tokens=1, prefill_seqs=1, decode_seqs=64, decode_context_tokens=64 * 4000)
    assert lat.iteration_s(prefill_heavy) == lat.prefill_s(4098) > lat.decode_s(2, 1000)
    assert lat.iteration_s(decode_heavy) == lat.decode_s(64, 64 * 4000) > lat.prefill_s(65)


def test_no_hidden_factor_and_scale_is_explicit():
    lat = model()
    rows = measured_rows("llama2-70b", "a100-80gb", 8)
    med_2048 = float(np.median(rows[rows.prompt_size * rows.batch_size == 2048].prompt_time)) / 1e3
    # a pure prefill iteration of a measured size costs exactly the measurement: no 1.1
    assert lat.iteration_s(BatchShape(prefill_tokens=2048, prefill_seqs=1)) == pytest.approx(med_2048, rel=1e-12)
    # a mixed batch whose decode part is negligible costs the prefill of P + D, not 1.1 x anything
    mixed = lat.iteration_s(BatchShape(prefill_tokens=2047, prefill_seqs=1, decode_seqs=1, decode_context_tokens=600))
    assert mixed == pytest.approx(med_2048, rel=1e-12)
    scaled = model(scale=1.25)
    assert scaled.iteration_s(BatchShape(prefill_tokens=2048, prefill_seqs=1)) == pytest.approx(1.25 * med_2048, rel=1e-12)
    assert scaled.decode_s(8, 8 * REF_CONTEXT) == pytest.approx(1.25 * lat.decode_s(8, 8 * REF_CONTEXT), rel=1e-12)
    assert lat.describe()["scale"] == 1.0 and scaled.describe()["scale"] == 1.25


def test_describe_records_provenance():
    d = model().describe()
    assert d["kind"] == "splitwise_table" and len(d["sha256"]) == 64
    assert d["context_slope_s_per_token"] > 0


def test_constant_model():
    lat = ConstantLatencyModel(0.1)
    for shape in (BatchShape(prefill_tokens=5000, prefill_seqs=3), BatchShape(decode_seqs=200, decode_context_tokens=10**6)):
        assert lat.iteration_s(shape) == 0.1
    assert lat.decode_s(64, 10**5) == 0.1
    with pytest.raises(ValueError):
        ConstantLatencyModel(0.0)


def test_mixed_batch_decode_extrapolation_is_counted():
    lat = model()
    shape = BatchShape(prefill_tokens=10, prefill_seqs=1, decode_seqs=200, decode_context_tokens=200 * 3000)
    assert lat.iteration_s(shape) == lat.decode_s(200, 200 * 3000)  # the extrapolated value is what is used
    assert lat.stats.extrapolated >= 1
    assert lat.stats.by_axis.get("decode_batch_above", 0) >= 1
