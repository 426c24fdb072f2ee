"""Specification of the edges: experiment loading, ``--set`` overrides, the CLI and the run directory.

Bad input gives one readable message naming the file and the offending field or value, exit code 2,
and no traceback. ``pdsim run`` writes the run-directory contract (``pdsim/results.py``); ``pdsim plot``
re-renders from it without simulating.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import pdsim
from pdsim.cli import app
from pdsim.metrics.records import REQUEST_COLUMNS
from pdsim.metrics.summary import SUMMARY_COLUMNS

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "experiments" / "tiny.yaml"
PROFILE = REPO / "gpu_profiles" / "splitwise_sim" / "perf_model.csv"
TINY_TRACE = REPO / "traces" / "tiny" / "tiny.csv"

runner = CliRunner()


def tiny_data() -> dict:
    """experiments/tiny.yaml with absolute paths, so it can be written anywhere."""
    data = yaml.safe_load(TINY_YAML.read_text())
    for dep in data["deployments"]:
        for role in ("pool", "prefill", "decode"):
            if role in dep:
                dep[role]["latency"]["path"] = str(PROFILE)
    for wl in data["workloads"].values():
        if "path" in wl:
            wl["path"] = str(TINY_TRACE)
        if "lengths" in wl and "path" in wl["lengths"]:
            wl["lengths"]["path"] = str(TINY_TRACE)
    return data


def write_yaml(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, one message (starting with 'error:'), naming every fragment, no traceback."""
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in out
    assert out.strip().startswith("error:"), out
    assert out.count("error:") == 1, out
    for f in fragments:
        assert f in out, (f, out)
    return out


# ---- configuration errors ------------------------------------------------------------------------------

def test_unknown_key_names_file_and_path(tmp_path):
    data = tiny_data()
    data["deployments"][1]["pool"]["gpus"] = 3
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("run", path, "--out", tmp_path / "o", "--no-plots"), str(path), "deployments[1].pool.gpus", "unknown key")


def test_unknown_top_level_key(tmp_path):
    data = tiny_data()
    data["sceduler"] = {"max_num_seqs": 4}
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("check", path), str(path), "sceduler", "unknown key")


def test_wrong_type(tmp_path):
    data = tiny_data()
    data["deployments"][0]["pool"]["instances"] = "two"
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("run", path, "--out", tmp_path / "o"), str(path), "deployments[0].pool.instances", "'two'")


def test_wrong_value_range(tmp_path):
    data = tiny_data()
    data["scheduler"]["gpu_memory_utilization"] = 1.5
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("check", path), str(path), "scheduler.gpu_memory_utilization", "1.5")


def test_unknown_gpu(tmp_path):
    data = tiny_data()
    data["deployments"][2]["prefill"]["gpu"] = "H900"
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("run", path, "--out", tmp_path / "o"), str(path), "split-HA", "prefill.gpu", "'H900'")


def test_unknown_model(tmp_path):
    data = tiny_data()
    data["model"] = "Llama-9-1T"
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("run", path, "--out", tmp_path / "o"), str(path), "model", "'Llama-9-1T'")


def test_model_that_does_not_fit_names_the_deployment(tmp_path):
    data = tiny_data()
    data["model"] = "Llama-3.1-405B"
    data["deployments"] = [{"name": "one-l40s", "kind": "colocated",
                            "pool": {"gpu": "L40S", "tp": 1, "instances": 1,
                                     "latency": {"kind": "constant", "iteration_s": 0.1}}}]
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("run", path, "--out", tmp_path / "o"), str(path), "one-l40s", "Llama-3.1-405B", "L40S")
    assert not (tmp_path / "o").exists()  # failed before writing anything


def test_profile_without_rows_for_the_deployment(tmp_path):
    data = tiny_data()
    data["deployments"][0]["pool"]["tp"] = 16  # perf_model.csv has TP 2/4/8 only
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("check", path), str(PROFILE), "tensor_parallel=16")


def test_missing_trace_file(tmp_path):
    data = tiny_data()
    missing = tmp_path / "nope" / "trace.csv"
    data["workloads"]["trace"]["path"] = str(missing)
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("run", path, "--out", tmp_path / "o"), str(missing), "not found")


def test_trace_with_a_bad_row(tmp_path):
    trace = tmp_path / "bad.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n0.5,200,0\n1.0,50,5\n")
    data = tiny_data()
    data["workloads"]["trace"]["path"] = str(trace)
    path = write_yaml(tmp_path, data)
    assert_user_error(run_cli("run", path, "--out", tmp_path / "o"), f"{trace}:3", "output_tokens")


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: [Llama-2-70b-hf\nslo: {ttft_s: 1\n")
    assert_user_error(run_cli("run", path, "--out", tmp_path / "o"), str(path), "invalid YAML")


def test_missing_experiment_file(tmp_path):
    assert_user_error(run_cli("run", tmp_path / "nothing.yaml"), "nothing.yaml", "not found")


@pytest.mark.parametrize("override,fragment", [
    ("nosuch.section.key=3", "nosuch"),
    ("deployments.no-such-deployment.pool.instances=2", "no-such-deployment"),
    ("deployments.7.pool.instances=2", "7"),
    ("scheduler.max_num_seqs", "KEY.PATH=VALUE"),
])
def test_set_to_a_missing_path(tmp_path, override, fragment):
    path = write_yaml(tmp_path, tiny_data())
    out = assert_user_error(run_cli("run", path, "--set", override, "--out", tmp_path / "o"), fragment)
    assert "--set" in out


def test_set_with_a_bad_value_is_validated(tmp_path):
    path = write_yaml(tmp_path, tiny_data())
    assert_user_error(run_cli("check", path, "--set", "deployments.colocated-A100.pool.instances=0"),
                      "deployments[0].pool.instances")


def test_real_subprocess_gives_clean_error(tmp_path):
    data = tiny_data()
    data["deployments"][1]["pool"]["gpus"] = 3
    path = write_yaml(tmp_path, data)
    env = dict(os.environ, COLUMNS="300")
    proc = subprocess.run([sys.executable, "-m", "pdsim.cli", "run", str(path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "deployments[1].pool.gpus" in proc.stderr and str(path) in proc.stderr
    assert proc.stderr.count("error:") == 1


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.exit_code == 0
    for cmd in ("run", "plot", "check"):
        assert cmd in result.output


def test_check_prints_plans():
    result = run_cli("check", TINY_YAML)
    assert result.exit_code == 0, result.output
    for name in ("colocated-A100", "colocated-H100-rr", "split-HA"):
        assert name in result.output


# ---- a real run --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = run_cli("run", TINY_YAML, "--out", out)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    return out


def test_run_writes_the_contract(tiny_run):
    for name in ("config.resolved.yaml", "manifest.json", "requests.csv", "requests.parquet", "summary.csv", "instances.csv"):
        assert (tiny_run / name).is_file() and (tiny_run / name).stat().st_size > 0, name
    csv = pd.read_csv(tiny_run / "requests.csv", keep_default_na=False, na_values=[""])
    parquet = pd.read_parquet(tiny_run / "requests.parquet")
    assert list(csv.columns) == REQUEST_COLUMNS
    assert list(parquet.columns) == REQUEST_COLUMNS
    assert len(parquet) == len(csv) == 3 * (40 + 60)  # 3 deployments x (trace 40 + poisson 60)
    assert parquet.request_id.tolist() == csv.request_id.tolist()
    summary = pd.read_csv(tiny_run / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and len(summary) == 6
    pngs = sorted((tiny_run / "plots").glob("*.png"))
    assert len(pngs) >= 3
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resolved_config_reloads(tiny_run):
    resolved = yaml.safe_load((tiny_run / "config.resolved.yaml").read_text())
    assert resolved["seed"] == 0
    assert resolved["scheduler"]["block_size"] == 16
    assert resolved["scheduler"]["gpu_memory_utilization"] == 0.9  # defaults are filled in
    assert [d["name"] for d in resolved["deployments"]] == ["colocated-A100", "colocated-H100-rr", "split-HA"]


def test_manifest(tiny_run):
    m = json.loads((tiny_run / "manifest.json").read_text())
    assert m["seed"] == 0
    assert m["pdsim_version"] == pdsim.__version__
    hashes = {Path(k).resolve(): v for k, v in m["inputs_sha256"].items()}
    for f in (TINY_TRACE, PROFILE):
        assert hashes[f.resolve()] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert [d["name"] for d in m["deployments"]] == ["colocated-A100", "colocated-H100-rr", "split-HA"]


def test_plot_rerenders_without_simulating(tiny_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir)
    before = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    shutil.rmtree(run_dir / "plots")

    def boom(*a, **k):
        raise AssertionError("pdsim plot must not simulate")

    import pdsim.sim.cluster
    import pdsim.sim.runner
    monkeypatch.setattr(pdsim.sim.runner, "run_experiment", boom)
    monkeypatch.setattr(pdsim.sim.runner, "simulate", boom)
    monkeypatch.setattr(pdsim.sim.cluster, "simulate", boom)
    result = run_cli("plot", run_dir)
    assert result.exit_code == 0, result.output
    after = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert after == before and after


def test_plot_of_a_non_run_directory_is_a_user_error(tmp_path):
    result = run_cli("plot", tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_set_rate_scale_halves_the_trace_span(tiny_run, tmp_path):
    out = tmp_path / "fast"
    result = run_cli("run", TINY_YAML, "--set", "workloads.trace.rate_scale=2", "--out", out, "--no-plots")
    assert result.exit_code == 0, result.output
    assert not (out / "plots").exists()
    base_req = pd.read_csv(tiny_run / "requests.csv")
    fast_req = pd.read_csv(out / "requests.csv")
    for dep in ("colocated-A100", "split-HA"):
        a = base_req[(base_req.deployment == dep) & (base_req.workload == "trace")]
        b = fast_req[(fast_req.deployment == dep) & (fast_req.workload == "trace")]
        assert b.arrival_s.max() - b.arrival_s.min() == pytest.approx((a.arrival_s.max() - a.arrival_s.min()) / 2, rel=1e-12)
        assert b.arrival_s.to_numpy() == pytest.approx(a.arrival_s.to_numpy() / 2, rel=1e-12)
    base = pd.read_csv(tiny_run / "summary.csv").set_index(["deployment", "workload"])
    fast = pd.read_csv(out / "summary.csv").set_index(["deployment", "workload"])
    for dep in base.index.get_level_values(0).unique():
        # the summary sees the compressed trace: shorter span, same requests
        assert fast.loc[(dep, "trace"), "span_s"] < base.loc[(dep, "trace"), "span_s"]
        assert fast.loc[(dep, "trace"), "requests"] == base.loc[(dep, "trace"), "requests"]
        # the Poisson workload is untouched
        assert fast.loc[(dep, "poisson"), "span_s"] == base.loc[(dep, "poisson"), "span_s"]
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["workloads"]["trace"]["rate_scale"] == 2


def test_seed_option_is_recorded(tmp_path):
    out = tmp_path / "s7"
    result = run_cli("run", TINY_YAML, "--seed", "7", "--out", out, "--no-plots")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["seed"] == 7
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["seed"] == 7


def test_error_path_keeps_a_workload_named_like_a_kind():
    result = run_cli("check", TINY_YAML, "--set", "workloads.trace.rate_scale=-1")
    assert_user_error(result, "workloads.trace.rate_scale")


def test_error_path_names_the_workload():
    result = run_cli("check", TINY_YAML, "--set", "workloads.poisson.rate_rps=0")
    assert_user_error(result, "rate_rps", "(got 0)")
