"""``pdsim validate``: a tiny live run of the default tiny Llama (2 threads, matching a committed 2-thread
CPU profile, of the same CPU model where one exists) is simulated request for request; the report exists, every relative error is finite,
the simulated run has the live run's requests and tokens; a disaggregated run (1 thread per worker) is
simulated as a prefill and a decode instance on the 1-thread CPU profile linked by its measured gloo table; a
validation experiment YAML runs the live side first; bad input exits 2 with one ``error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from pdsim.cli import app  # noqa: E402
from pdsim.live.validate import find_cpu_profile, host_speed, speed_spread  # noqa: E402
from pdsim.profiles.format import list_profile_dirs, load_profile  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    old = torch.get_num_threads()
    out = tmp_path_factory.mktemp("live") / "run"
    try:
        res = runner.invoke(app, ["live", "--trace", "traces/tiny/tiny.csv", "--rate-scale", "4", "--max-requests", "12",
                                  "--max-prompt-tokens", "48", "--max-output-tokens", "8", "--threads", "2",
                                  "--out", str(out)])
    finally:
        torch.set_num_threads(old)
    assert res.exit_code == 0, res.output
    return out


def test_validate_live_run(live_run, tmp_path):
    out = tmp_path / "val"
    res = runner.invoke(app, ["validate", "--live-run", str(live_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| TTFT | P50 |" in res.output
    report = (out / "report.md").read_text()
    assert "iteration_overhead_s = 0" in report
    # the 2-thread CPU profile of the run's CPU model where one is committed (machines change between
    # sessions: cpu-epyc-2c, cpu-xeon-2c), else another 2-thread CPU profile, with a warning
    cpu = json.loads((live_run / "manifest.json").read_text())["device_name"]
    two = {p.name: p.meta.device_name for p in map(load_profile, list_profile_dirs())
           if p.meta.device_type == "cpu" and p.meta.num_threads == 2}
    chosen = [name for name in two if f"`{name}`" in report]
    assert len(chosen) == 1, (two, report)
    if cpu in two.values():
        assert two[chosen[0]] == cpu
    else:
        assert "warning: profile" in res.output and "another machine's" in res.output
    for f in ("requests.csv", "summary.csv", "comparison.csv", "cdf_ttft.png", "cdf_tpot.png", "cdf_e2e.png",
              "scatter_e2e.png"):
        assert (out / f).is_file(), f
    cmp = pd.read_csv(out / "comparison.csv")
    assert set(cmp["metric"]) == {"TTFT", "TPOT", "ITL", "E2E"}
    assert np.isfinite(cmp["rel_error"]).all()
    live = pd.read_csv(live_run / "requests.csv")
    sim = pd.read_csv(out / "requests.csv")
    assert len(sim) == len(live) and (sim["status"] == "completed").all()
    assert sorted(sim["request_id"]) == sorted(live["request_id"])
    assert sim["output_tokens"].sum() == live["output_tokens"].sum()
    assert sim["prompt_tokens"].sum() == live["prompt_tokens"].sum()


def _err(res):
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    return res.exit_code, lines


def test_bad_input_exits_2(live_run, tmp_path):
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(tmp_path / "nope")]))
    assert code == 2 and len(lines) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(empty)]))
    assert code == 2 and "manifest.json" in lines[0]
    # no CPU profile for the recorded thread count
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("requests.csv", "tokens.csv"):
        (bad / f).write_bytes((live_run / f).read_bytes())
    man = json.loads((live_run / "manifest.json").read_text())
    man["threads"] = 97
    (bad / "manifest.json").write_text(json.dumps(man))
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(bad), "--out", str(tmp_path / "o")]))
    assert code == 2 and "num_threads 97" in lines[0]
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(bad), "--profile", "no-such-profile"]))
    assert code == 2 and len(lines) == 1


@pytest.fixture(scope="module")
def disagg_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("live-disagg") / "run"
    res = runner.invoke(app, ["live", "--mode", "disaggregated", "--trace", "traces/tiny/tiny.csv", "--rate-scale", "4",
                              "--max-requests", "12", "--max-prompt-tokens", "48", "--max-output-tokens", "8",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_validate_disaggregated_run(disagg_run, tmp_path):
    """One thread per worker picks the 1-thread CPU profile; the simulated deployment is one prefill and
    one decode instance joined by the profile's measured gloo send/recv table."""
    out = tmp_path / "val"
    overhead = tmp_path / "overhead.json"
    overhead.write_text(json.dumps({"iteration_overhead_s": 0.0005, "method": "a test figure"}))
    res = runner.invoke(app, ["validate", "--live-run", str(disagg_run), "--out", str(out),
                              "--overhead-file", str(overhead)])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "one prefill and one decode instance (disaggregated)" in report
    cpu = json.loads((disagg_run / "manifest.json").read_text())["device_name"]
    one_thread = find_cpu_profile(1, None, cpu_name=cpu).name  # cpu-xeon-1t or cpu-epyc-1t by the machine
    assert f"`{one_thread}`" in report and "send_recv gloo" in report and "a test figure" in report
    assert "iteration_overhead_s = 0.500 ms" in report
    assert "- prefill: same iteration shapes" in report and "- decode: same iteration shapes" in report
    cmp = pd.read_csv(out / "comparison.csv")
    assert set(cmp["metric"]) == {"TTFT", "TPOT", "ITL", "E2E"} and np.isfinite(cmp["rel_error"]).all()
    live = pd.read_csv(disagg_run / "requests.csv")
    sim = pd.read_csv(out / "requests.csv")
    assert sorted(sim["request_id"]) == sorted(live["request_id"]) and (sim["status"] == "completed").all()
    multi = sim["output_tokens"] > 1
    assert sim.loc[multi, "kv_transfer_s"].gt(0).all() and sim.loc[~multi, "kv_transfer_s"].isna().all()
    assert (sim.loc[multi, "kv_transfer_bytes"] == live.loc[live["output_tokens"] > 1, "kv_transfer_bytes"].to_numpy()).all()
    assert pd.read_csv(out / "summary.csv").loc[0, "kind"] == "disaggregated"


def test_measured_link_interpolates_the_table():
    from pdsim.live.validate import MeasuredLink

    link = MeasuredLink("gloo", (1000, 2000, 4000), (1e-4, 2e-4, 3e-4), "test")
    assert link.transfer_s(10) == 1e-4 and link.transfer_s(1000) == 1e-4
    assert link.transfer_s(1500) == pytest.approx(1.5e-4) and link.transfer_s(3000) == pytest.approx(2.5e-4)
    assert link.transfer_s(8000) == pytest.approx(3e-4 + 4000 * (1e-4 / 2000))  # last slope extended
    assert link.latency_s == 1e-4 and link.bandwidth_gbps == pytest.approx(4000 * 8 / 3e-4 / 1e9)


def test_bad_overhead_input_exits_2(live_run, tmp_path):
    bad = tmp_path / "o.json"
    bad.write_text("{}")
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(live_run), "--overhead-file", str(bad)]))
    assert code == 2 and len(lines) == 1 and "iteration_overhead_s" in lines[0]
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(live_run), "--iteration-overhead-s", "-1"]))
    assert code == 2 and "must be a finite number >= 0, got -1" in lines[0]


def _run_experiment(tmp_path, body: str):
    """Write a colocated validation experiment on the tiny trace (``body``: the rest of its keys), run
    ``pdsim validate`` on it (restoring torch's thread count) and return the CLI result."""
    exp = tmp_path / "v.yaml"
    exp.write_text("name: ci\nmode: colocated\ntrace: " + str(Path("traces/tiny/tiny.csv").resolve()) + "\n" + body)
    old = torch.get_num_threads()
    try:
        return runner.invoke(app, ["validate", str(exp)])
    finally:
        torch.set_num_threads(old)


def test_validate_experiment_yaml(tmp_path):
    """`pdsim validate EXPERIMENT.yaml`: runs the trace live as the file says, then the validation (the CI
    version: a dozen requests; the full one is experiments/validate_cpu*.yaml)."""
    res = _run_experiment(tmp_path,
        "max_requests: 12\nrate_scale: 4\nmax_prompt_tokens: 48\nmax_output_tokens: 8\nthreads: 2\n"
        "engine: {kv_capacity_tokens: 4096}\nprofile: {name: cpu-epyc-2c}\n"
        "iteration_overhead: {value_s: 0.0002}\nslo: {ttft_s: 2.0, tpot_s: 0.5}\nout: run\n")
    assert res.exit_code == 0, res.output
    assert "| TTFT | P50 |" in res.output
    out = tmp_path / "run"  # `out` is relative to the YAML's directory
    man = json.loads((out / "live" / "manifest.json").read_text())
    assert man["config"]["kv_capacity_blocks"] == 4096 // 16 and man["threads"] == 2 and man["slo"]["ttft_s"] == 2.0
    assert len(pd.read_csv(out / "live" / "requests.csv")) == 12
    cmp = pd.read_csv(out / "validate" / "comparison.csv")
    assert np.isfinite(cmp["rel_error"]).all()
    report = (out / "validate" / "report.md").read_text()
    assert "iteration_overhead_s = 0.200 ms" in report and "iteration_overhead.value_s" in report


def test_validate_experiment_measures_the_grid_and_charges_it_scaled(tmp_path):
    """``iteration_overhead: {measure: true, model: scaled}``: the engine's grid runs first (in this
    process), its per-batch decode and its prefill kernel time scales reach the simulation, and the
    report says so; ``profile: {}`` takes this CPU's profile of the thread count."""
    res = _run_experiment(tmp_path,
        "max_requests: 8\nrate_scale: 4\nmax_prompt_tokens: 32\nmax_output_tokens: 6\nthreads: 2\n"
        "engine: {kv_capacity_tokens: 4096}\nprofile: {}\n"
        "iteration_overhead: {measure: true, model: scaled}\nout: run\n")
    assert res.exit_code == 0, res.output
    grid = json.loads((tmp_path / "run" / "engine_overhead.json").read_text())
    table = {int(b): v for b, v in grid["kernel_time_scale_decode_by_batch"].items()}
    assert sorted(table) == [1, 2, 4, 8, 16, 32] and all(v > 0 for v in table.values())
    report = (tmp_path / "run" / "validate" / "report.md").read_text()
    assert "Kernel time scale: the profiled kernels' time multiplied by (" in report
    assert f"{grid['kernel_time_scale_prefill']:.3f} in iterations that prefill" in report
    assert "charges only the kernels" not in report  # the scaled model is not the kernels-only comparison


@pytest.mark.parametrize("body, message", [
    ("name: x\ntrace: t.csv\nmode: split\n", "mode: Input should be 'colocated' or 'disaggregated', got 'split'"),
    ("name: x\ntrace: t.csv\nbogus: 1\n", "bogus: Extra inputs are not permitted"),
    ("name: x\ntrace: t.csv\niteration_overhead: {value_s: 0.1, measure: true}\n", "give one of iteration_overhead"),
    ("name: x\ntrace: t.csv\niteration_overhead: {file: nope.json}\n", "iteration_overhead.file: file not found"),
    ("[1, 2]\n", "expected a mapping"),
    ("name: x\ntrace: t.csv\niteration_overhead: {measure: true, model: nope}\n", "iteration_overhead.model"),
    ("name: x\ntrace: t.csv\nprofile: {measure: quick, flush_level: l3}\n", "profile.flush_level"),
])
def test_validate_experiment_bad_input_exits_2(tmp_path, body, message):
    exp = tmp_path / "v.yaml"
    exp.write_text(body)
    code, lines = _err(runner.invoke(app, ["validate", str(exp)]))
    assert code == 2 and len(lines) == 1 and str(exp) in lines[0] and message in lines[0], lines


def test_validate_needs_exactly_one_input(live_run, tmp_path):
    code, lines = _err(runner.invoke(app, ["validate"]))
    assert code == 2 and "one of them" in lines[0]
    code, lines = _err(runner.invoke(app, ["validate", str(tmp_path / "v.yaml"), "--live-run", str(live_run)]))
    assert code == 2 and "one of them" in lines[0]


# ---- the host's speed during a live run ----------------------------------------------------------------

def _its(starts, prefill_tokens, decode_seqs, loop_s):
    n = len(starts)
    return pd.DataFrame({"start_s": starts, "duration_s": loop_s, "host_s": np.zeros(n),
                         "prefill_tokens": prefill_tokens, "prefill_seqs": [1 if p else 0 for p in prefill_tokens],
                         "decode_seqs": decode_seqs, "decode_context_tokens": [100 * d for d in decode_seqs]})


def test_host_speed_cancels_the_models_shape_error_and_the_shape_mix():
    """The model is off by a different factor for every shape class, and the classes' mix changes from
    window to window, but the host's speed is constant: every window's speed is 1 and the spread 0."""
    rng = np.random.default_rng(0)
    n = 600
    starts = np.sort(rng.uniform(0, 30, n))
    decode = np.where(starts < 15, 1, 16)          # small batches first, large ones later
    prefill = np.where(rng.uniform(size=n) < 0.1, 256, 0)
    pred = np.where(prefill > 0, 0.05, 0.002 * decode)
    error = np.where(prefill > 0, 1.3, np.where(decode == 1, 0.8, 1.25))  # the model's error per class
    its = _its(starts, prefill, decode, pred * error)
    w = host_speed(its, pred)
    assert list(w["window_start_s"]) == [0.0, 10.0, 20.0]
    assert w["iterations"].sum() == n
    np.testing.assert_allclose(w["speed"], 1.0)
    assert speed_spread(w) == pytest.approx(0.0)
    assert not np.allclose(w["ratio_median"], w["ratio_median"].iloc[0])  # the raw ratio moves with the mix


def test_host_speed_shows_a_host_that_slows_down():
    starts = np.arange(0, 30, 0.05)
    decode = np.full(len(starts), 4)
    pred = np.full(len(starts), 0.004)
    slow = np.where(starts >= 20, 1.5, 1.0)        # the last 10 s run 50 % slower
    w = host_speed(_its(starts, np.zeros(len(starts), int), decode, pred * slow), pred)
    assert w["speed"].iloc[2] / w["speed"].iloc[0] == pytest.approx(1.5)
    assert speed_spread(w) == pytest.approx(0.5)


def test_speed_spread_needs_two_windows_with_enough_iterations():
    w = pd.DataFrame({"window_start_s": [0.0, 10.0], "iterations": [100, 3], "ratio_median": [1.0, 2.0], "speed": [1.0, 2.0]})
    assert np.isnan(speed_spread(w))
