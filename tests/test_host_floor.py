"""Specifications of the host floor (``pdsim.latency.oplevel``, "Host floor"): its parameters are
recovered from an engine grid (``pdsim.live.overhead.fit_host_floor``), and ``pdsim validate`` simulates a
live GPU run with them, on the measured profile of the run's device. No torch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdsim.errors import ConfigError
from pdsim.live.overhead import fit_host_floor
from pdsim.live.validate import _overhead_option, find_cpu_profile, validate

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "benchmarks/results/h200"


def _grid(floor_s: float, per_seq_s: float, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Iterations whose step time is exactly max(kernels, floor + per_seq x prefill_seqs)."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, 9, n) * (rng.random(n) < 0.4)
    pred = rng.uniform(0.002, 0.08, n)
    dur = np.maximum(pred, floor_s + per_seq_s * seqs)
    return pd.DataFrame({"duration_s": dur, "predicted_s": pred, "prefill_seqs": seqs,
                         "host_s": rng.uniform(1e-4, 3e-4, n)})


@pytest.mark.parametrize("floor_s,per_seq_s", [(0.029, 0.0037), (0.010, 0.0)])
def test_fit_recovers_a_known_floor(floor_s, per_seq_s):
    df = _grid(floor_s, per_seq_s)
    fit = fit_host_floor(df)
    assert fit["host_floor_s"] == pytest.approx(floor_s, rel=1e-3)
    assert fit["host_floor_per_prefill_seq_s"] == pytest.approx(per_seq_s, abs=1e-5)
    assert fit["step_abs_error_median"] < 1e-3
    assert fit["iteration_overhead_s"] == pytest.approx(float(df["host_s"].median()))
    assert 0 < fit["host_bound_share"] < 1


def test_a_grid_bound_by_its_kernels_gets_no_floor_above_them():
    df = _grid(0.0, 0.0)  # step time = kernels: any floor below the fastest step explains it
    fit = fit_host_floor(df)
    assert fit["host_floor_s"] + 8 * fit["host_floor_per_prefill_seq_s"] <= df["duration_s"].min() * 1.01
    assert fit["step_abs_error_median"] < 1e-6


def test_overhead_file_models(tmp_path):
    f = tmp_path / "o.json"
    f.write_text(json.dumps({"iteration_overhead_s": 0.02, "method": "m",
                             "host_floor_model": {"iteration_overhead_s": 1e-4, "host_floor_s": 0.03,
                                                  "host_floor_per_prefill_seq_s": 0.004, "method": "fit"}}))
    assert _overhead_option(0.0, f)["iteration_overhead_s"] == 0.02
    hf = _overhead_option(0.0, f, "host_floor")
    assert hf["iteration_overhead_s"] == 1e-4 and hf["host_floor"] == (0.03, 0.004)
    with pytest.raises(ConfigError, match="host_floor_model"):
        f.write_text(json.dumps({"iteration_overhead_s": 0.02}))
        _overhead_option(0.0, f, "host_floor")
    with pytest.raises(ConfigError, match="needs --overhead-file"):
        _overhead_option(0.0, None, "host_floor")
    with pytest.raises(ConfigError, match="must be one of"):
        _overhead_option(0.0, f, "both")


def test_the_scaled_overhead_takes_the_grids_kernel_time_scales(tmp_path):
    f = tmp_path / "o.json"
    f.write_text(json.dumps({"iteration_overhead_s": 0.02, "kernel_time_scale_decode": 1.8,
                             "kernel_time_scale_prefill": 1.3}))
    sc = _overhead_option(0.0, f, "scaled")
    assert sc["iteration_overhead_s"] == 0.0 and sc["kernel_time_scale"] == (1.8, 1.3)
    f.write_text(json.dumps({"kernel_time_scale_decode": 1.8, "kernel_time_scale_prefill": 1.3,
                             "kernel_time_scale_decode_by_batch": {"1": 2.1, "32": 1.5}}))
    assert _overhead_option(0.0, f, "scaled")["kernel_time_scale"] == ({1: 2.1, 32: 1.5}, 1.3)  # the table first
    f.write_text(json.dumps({"iteration_overhead_s": 0.02}))  # a grid measured before the scales existed
    with pytest.raises(ConfigError, match="kernel_time_scale_decode"):
        _overhead_option(0.0, f, "scaled")
    f.write_text(json.dumps({"kernel_time_scale_decode": 0.0, "kernel_time_scale_prefill": 1.3}))
    with pytest.raises(ConfigError, match="finite and > 0"):
        _overhead_option(0.0, f, "scaled")


def test_the_by_phase_overhead_takes_the_grids_decode_and_prefill_medians(tmp_path):
    f = tmp_path / "o.json"
    f.write_text(json.dumps({"iteration_overhead_s": 0.02, "overhead_decode_median_s": 0.015,
                             "overhead_prefill_median_s": 0.05, "method": "m"}))
    bp = _overhead_option(0.0, f, "by_phase")
    assert bp["iteration_overhead_s"] == 0.015 and bp["iteration_overhead_prefill_s"] == 0.05
    assert "decode and prefill iterations" in bp["iteration_overhead_source"]
    f.write_text(json.dumps({"iteration_overhead_s": 0.02}))
    with pytest.raises(ConfigError, match="overhead_decode_median_s"):
        _overhead_option(0.0, f, "by_phase")
    with pytest.raises(ConfigError, match="needs --overhead-file"):
        _overhead_option(0.0, None, "by_phase")


def test_a_gpu_run_picks_the_measured_profile_of_its_device():
    assert find_cpu_profile(16, None, gpu_device_name="NVIDIA H200").name == "h200_sxm-measured"
    with pytest.raises(ConfigError, match="no measured profile of 'NVIDIA Z9'"):
        find_cpu_profile(16, None, gpu_device_name="NVIDIA Z9")


def test_validating_the_h200_run_with_and_without_the_floor(tmp_path):
    """The committed H200 live run (benchmarks/results/h200): kernels alone make the simulation much
    faster than the eager engine; the host floor measured on the grid brings every percentile within a
    factor of two, and the simulation serves exactly the live run's requests and tokens."""
    live = pd.read_csv(H200 / "live_x4/requests.csv")
    kernels = validate(H200 / "live_x4", tmp_path / "k", echo=lambda *_: None)
    floor = validate(H200 / "live_x4", tmp_path / "f", echo=lambda *_: None,
                     overrides=_overhead_option(0.0, H200 / "engine_overhead_h200_sxm-measured.json", "host_floor"))
    sim = pd.read_csv(tmp_path / "f/requests.csv")
    assert len(sim) == len(live) and sim["output_tokens"].sum() == live["output_tokens"].sum()
    assert (sim["status"] == "completed").all()
    for cmp in (kernels, floor):
        assert np.isfinite(cmp["rel_error"]).all()
    tpot_k = kernels.set_index(["metric", "percentile"]).loc[("TPOT", "P50"), "rel_error"]
    tpot_f = floor.set_index(["metric", "percentile"]).loc[("TPOT", "P50"), "rel_error"]
    assert tpot_k < -0.4  # the kernels alone: decode steps 2-3x too fast
    assert abs(tpot_f) < abs(tpot_k)
    assert (floor["rel_error"].abs() < 1.0).all()
    hf = json.loads((H200 / "engine_overhead_h200_sxm-measured.json").read_text())["host_floor_model"]
    report = (tmp_path / "f/report.md").read_text()
    assert (f"Host floor: every iteration takes at least {hf['host_floor_s'] * 1e3:.2f} ms + "
            f"{hf['host_floor_per_prefill_seq_s'] * 1e3:.2f} ms per prefilled request") in report
    assert "`h200_sxm-measured`" in report and not math.isnan(float(floor["sim_s"].iloc[0]))


def test_among_profiles_of_one_cpu_the_flush_that_suits_the_model_comes_first():
    """The Xeon has an LLC-flushed and an L2-flushed 2-thread profile (480 MiB LLC): the tiny Llama's
    112 MiB of fp32 weights fit in half of it, so the L2-flushed one; a model of 16 GiB gets the other."""
    xeon = "Intel(R) Xeon(R) Processor"
    assert find_cpu_profile(2, None, cpu_name=xeon, weight_bytes=112 * 2**20).name == "cpu-xeon-2c-l2"
    assert find_cpu_profile(2, None, cpu_name=xeon, weight_bytes=16 * 2**30).name == "cpu-xeon-2c"
    # one profile of the thread count: taken whatever its flush
    assert find_cpu_profile(1, None, cpu_name=xeon, weight_bytes=16 * 2**30).name == "cpu-xeon-1t-l2"


def test_a_cpu_run_prefers_the_profile_of_its_cpu_model():
    """Two committed 2-thread CPU profiles of different machines: the run's CPU model decides; an unknown
    CPU still gets a 2-thread profile (validate then warns)."""
    assert find_cpu_profile(2, None, cpu_name="Intel(R) Xeon(R) Processor").name == "cpu-xeon-2c"
    assert find_cpu_profile(2, None, cpu_name="AMD EPYC").name == "cpu-epyc-2c"
    assert find_cpu_profile(1, None, cpu_name="Intel(R) Xeon(R) Processor").name == "cpu-xeon-1t-l2"
    other = find_cpu_profile(2, None, cpu_name="Some Other CPU")
    assert other.meta.device_type == "cpu" and other.meta.num_threads == 2
