"""Specifications of ``pdsim.live.overhead``: the engine's per-iteration time beyond the op-level model is
measured on a fixed synthetic grid (not on any trace), per iteration as the loop cycle minus the model's
prediction, summarised by its median with the method recorded; bad grids and a model that already charges
an overhead are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from pdsim.errors import ConfigError  # noqa: E402
from pdsim.latency.oplevel import OpLevelModel  # noqa: E402
from pdsim.live.engine import EngineConfig, LiveEngine, load_model_config  # noqa: E402
from pdsim.live.overhead import grid_workload, measure_engine_overhead  # noqa: E402
from pdsim.models.arch import model_from_hf_config  # noqa: E402
from pdsim.profiles.format import find_profile  # noqa: E402


@pytest.fixture(scope="module")
def latency():
    spec = model_from_hf_config("pdsim-tiny-llama", load_model_config(None))
    return OpLevelModel([find_profile("cpu-epyc-2c")], spec, tp=1, pp=1, dtype="fp32", gpu=None, iteration_overhead_s=0.0)


def test_grid_is_closed_loop_with_unique_ids():
    wls = grid_workload((1, 3), (16, 32), 4)
    assert [len(w) for w in wls] == [1, 3, 1, 3]
    ids = np.concatenate([w["request_id"].to_numpy() for w in wls])
    assert len(set(ids)) == len(ids) == 8
    assert all((w["arrival_s"] == 0).all() and (w["output_tokens"] == 4).all() for w in wls)


def test_overhead_is_cycle_minus_prediction(latency):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = LiveEngine(EngineConfig(kv_capacity_blocks=64))
        summary, df = measure_engine_overhead(engine, latency, batch_sizes=(1, 2), prompt_lens=(32,), output_tokens=4)
    finally:
        torch.set_num_threads(old)
    # each point: 1 prefill + 3 decode iterations; the last has no successor
    assert len(df) == summary["iterations"] == 2 * 3
    assert df["phase"].tolist() == ["prefill", "decode", "decode"] * 2
    assert np.allclose(df["overhead_s"], df["cycle_s"] - df["predicted_s"])
    assert (df["cycle_s"] > df["duration_s"]).all()  # the loop does more than the model step
    assert (df["predicted_s"] > 0).all()
    assert summary["iteration_overhead_s"] == pytest.approx(float(np.median(df["overhead_s"])))
    assert "median" in summary["method"] and summary["grid"]["batch_sizes"] == [1, 2]
    assert all(np.isfinite(summary[k]) for k in summary if k.endswith("_s"))
    ratio = df["cycle_s"] / df["predicted_s"]
    assert summary["kernel_time_scale_decode"] == pytest.approx(float(ratio[df["phase"] == "decode"].median()))
    assert summary["kernel_time_scale_prefill"] == pytest.approx(float(ratio[df["phase"] == "prefill"].median()))
    dec = df["phase"] == "decode"
    assert summary["kernel_time_scale_decode_by_batch"] == {
        b: pytest.approx(float(ratio[dec & (df["decode_seqs"] == b)].median())) for b in (1, 2)}


def test_refuses_bad_grids_and_a_model_with_overhead(latency):
    engine = LiveEngine(EngineConfig(kv_capacity_blocks=64))
    with pytest.raises(ConfigError, match="output_tokens >= 2"):
        measure_engine_overhead(engine, latency, output_tokens=1)
    charged = OpLevelModel(latency.profiles, latency.model, tp=1, pp=1, dtype="fp32", gpu=None, iteration_overhead_s=1e-3)
    with pytest.raises(ConfigError, match="iteration_overhead_s = 0"):
        measure_engine_overhead(engine, charged)


def test_grid_drift_is_the_median_ratio_of_identical_iterations():
    from pdsim.live.overhead import GRID_KEYS, grid_drift

    rows = [{"b": b, "prompt_tokens": 64, "phase": phase, "prefill_tokens": 64 * b + i if phase == "prefill" else 0,
             "decode_seqs": 0 if phase == "prefill" else b, "decode_context_tokens": 0 if phase == "prefill" else 64 * b + i,
             "cycle_s": 0.01 * b * (i + 1)} for b in (1, 2, 4) for phase in ("prefill", "decode") for i in range(3)]
    before = pd.DataFrame(rows)
    after = before.assign(cycle_s=np.where(before["phase"] == "decode", 1.3, 0.9) * before["cycle_s"])
    drift = grid_drift(before, after.sample(frac=1.0, random_state=0))  # row order does not matter
    assert drift["decode_ratio_median"] == pytest.approx(1.3) and drift["prefill_ratio_median"] == pytest.approx(0.9)
    assert drift["iterations"] == len(before)
    # a shape that occurs twice in each grid pairs first with first, second with second
    twice = pd.concat([before.iloc[:1], before.iloc[:1].assign(cycle_s=0.05)], ignore_index=True)
    paired = grid_drift(twice, twice.assign(cycle_s=twice["cycle_s"] * 2))
    assert paired["prefill_ratio_median"] == pytest.approx(2.0) and paired["iterations"] == 2
    with pytest.raises(ConfigError, match="no iteration of the same shape"):
        grid_drift(before, after.assign(b=after["b"] + 100))
    with pytest.raises(ConfigError, match="missing column"):
        grid_drift(before.drop(columns=GRID_KEYS[0]), after)
