"""The op-level latency model through the experiment YAML and the CLI: named latency models, profile
lookup, PP memory arithmetic, derived profiles labelled everywhere, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import yaml

from pdsim.config.load import load_experiment_file
from pdsim.hardware.gpus import load_gpu_catalog
from pdsim.models.arch import load_model_catalog, model_from_hf_config
from pdsim.profiles.format import load_profile
from pdsim.sim.plan import plan_deployments
from test_config_cli import REPO, assert_user_error, run_cli, tiny_data, write_yaml

H100_AIC = REPO / "gpu_profiles" / "h100_sxm-aiconfigurator"


def oplevel_data(profile: str = str(H100_AIC)) -> dict:
    data = tiny_data()
    data["latency_models"] = {"h100": {"kind": "op_level", "profile": profile}}
    data["deployments"] = [
        {"name": "op-colocated", "kind": "colocated", "pool": {"gpu": "H100-SXM", "tp": 8, "instances": 1, "latency": "h100"}},
        {"name": "op-split", "kind": "disaggregated",
         "prefill": {"gpu": "H100-SXM", "tp": 4, "pp": 2, "instances": 1, "latency": "h100"},
         "decode": {"gpu": "H100-SXM", "tp": 8, "instances": 1, "latency": "h100"}},
    ]
    return data


def test_named_latency_model_resolves_into_every_pool(tmp_path):
    exp = load_experiment_file(write_yaml(tmp_path, oplevel_data()))
    pools = [exp.config.deployments[0].pool, exp.config.deployments[1].prefill, exp.config.deployments[1].decode]
    assert all(p.latency.kind == "op_level" for p in pools)
    plans = plan_deployments(exp)
    assert all(pool.latency_source_kinds == ("imported",) for plan in plans for pool in plan.pools)


def test_pp_memory_arithmetic_to_the_byte(tmp_path):
    exp = load_experiment_file(write_yaml(tmp_path, oplevel_data()))
    prefill = plan_deployments(exp)[1].pools[0]
    assert (prefill.tp, prefill.pp, prefill.gpus) == (4, 2, 8)
    m = model_from_hf_config("Llama-2-70b-hf", load_model_catalog()["Llama-2-70b-hf"])
    h, d, i, v = 8192, 128, 28672, 32000
    q, kv = 64 // 4 * d, 8 // 4 * d
    layer = h * q + 2 * h * kv + q * h + 3 * h * (i // 4) + 2 * h  # attention, gated MLP, 2 RMSNorm weights
    first = v // 4 * h                                              # embedding shard on stage 0
    last = h + v // 4 * h                                           # final norm + LM head shard on the last stage
    assert prefill.weight_bytes_per_gpu == (40 * layer + max(first, last)) * 2
    assert prefill.kv_bytes_per_token_per_gpu == 2 * 40 * 2 * d * 2
    assert m.num_layers == 80


def test_op_level_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", write_yaml(tmp_path, oplevel_data()), "--out", out, "--no-plots")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.latency_sources) == {"imported"}
    assert (summary.completed + summary.rejected == summary.requests).all()
    manifest = json.loads((out / "manifest.json").read_text())
    latency = manifest["deployments"][0]["pools"][0]["latency"]
    assert latency["kind"] == "op_level" and latency["source_kinds"] == ["imported"]
    assert latency["profiles"][0]["tables"]["gemm"] == load_profile(H100_AIC).meta.tables["gemm"].sha256
    hashed = {Path(p).name for p in manifest["inputs_sha256"]}
    assert {"profile.yaml", "gemm.parquet", "attention_decode.parquet"} <= hashed


def test_derived_profiles_are_labelled_in_tables_and_plots(tmp_path):
    # a copy of an imported profile relabelled derived stands in for a datasheet-derived one
    fake = tmp_path / "fake-derived"
    shutil.copytree(H100_AIC, fake)
    meta = yaml.safe_load((fake / "profile.yaml").read_text())
    meta["source_kind"], meta["name"] = "derived", "fake-derived"
    (fake / "profile.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    assert load_profile(fake).source_kind == "derived"
    data = oplevel_data(str(fake))
    path = write_yaml(tmp_path, data)
    check = run_cli("check", path)
    assert check.exit_code == 0 and "derived" in check.output
    out = tmp_path / "run"
    result = run_cli("run", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert "(derived)" in result.output and "not a measurement" in result.output
    assert set(pd.read_csv(out / "summary.csv").latency_sources) == {"derived"}
    report = (out / "report.md").read_text()
    assert "op-colocated (derived)" in report and "not a measurement" in report


def test_unknown_profile_and_unknown_latency_name_are_user_errors(tmp_path):
    r = run_cli("check", write_yaml(tmp_path, oplevel_data("no-such-profile")))
    assert_user_error(r, "no-such-profile", "not found")
    data = oplevel_data()
    data["deployments"][0]["pool"]["latency"] = "h200"
    r = run_cli("check", write_yaml(tmp_path, data, "b.yaml"))
    assert_user_error(r, "deployments[0].pool.latency", "h200")


def test_tampered_profile_is_refused(tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(H100_AIC, bad)
    df = pd.read_parquet(bad / "gemm.parquet")
    df.loc[0, "latency_s"] *= 2
    df.to_parquet(bad / "gemm.parquet", index=False)
    r = run_cli("check", write_yaml(tmp_path, oplevel_data(str(bad))))
    assert_user_error(r, "gemm.parquet", "sha256")


def test_profiles_list_shows_kinds():
    r = run_cli("profiles", "list")
    assert r.exit_code == 0, r.output
    for name in ("h100_sxm-aiconfigurator", "a100-vidur"):
        assert name in r.output
    assert "imported" in r.output


def test_splitwise_experiment_runs_with_either_latency_model():
    exp = load_experiment_file(
        REPO / "experiments" / "splitwise.yaml",
        ["latency_models.a100={kind: op_level, profile: a100_sxm-aiconfigurator}",
         "latency_models.h100={kind: op_level, profile: h100_sxm-aiconfigurator}"],
    )
    plans = plan_deployments(exp)
    kinds = {pool.latency_source[0] for plan in plans for pool in plan.pools}
    assert kinds == {"op_level"}
    table = plan_deployments(load_experiment_file(REPO / "experiments" / "splitwise.yaml"))
    assert {pool.latency_source[0] for plan in table for pool in plan.pools} == {"splitwise_table"}
    gpu = load_gpu_catalog()["H100-SXM"]
    lm = plans[1].pools[0].build_latency()
    assert math.isfinite(lm.decode_s(8, 8 * 600)) and lm.describe()["profiles"][0]["source_kind"] == "imported"
    assert gpu.name == plans[1].pools[0].gpu.name


def test_host_floor_reaches_the_latency_model_from_the_yaml(tmp_path):
    data = oplevel_data()
    data["latency_models"]["h100"].update(host_floor_s=0.03, host_floor_per_prefill_seq_s=0.002)
    plans = plan_deployments(load_experiment_file(write_yaml(tmp_path, data)))
    colocated = plans[0].pools[0].build_latency()
    assert (colocated.host_floor_s, colocated.host_floor_per_prefill_seq_s) == (0.03, 0.002)
    from pdsim.latency.base import BatchShape

    assert colocated.iteration_s(BatchShape(decode_seqs=1, decode_context_tokens=16)) >= 0.03
    # PP: the prefill pool's two stages share the floor by their layers (40 + 40 of 80)
    stages = plans[1].pools[0].build_latency().stage_times_s(BatchShape(decode_seqs=1, decode_context_tokens=16))
    assert len(stages) == 2 and min(stages) >= 0.015
    data["latency_models"]["h100"]["host_floor_s"] = -1.0
    assert_user_error(run_cli("check", write_yaml(tmp_path, data)), "host_floor_s")


def test_the_prefill_overhead_and_kernel_time_scales_reach_the_latency_model_from_the_yaml(tmp_path):
    data = oplevel_data()
    data["latency_models"]["h100"].update(iteration_overhead_s=0.001, iteration_overhead_prefill_s=0.004,
                                          kernel_time_scale=1.5, kernel_time_scale_prefill=1.2)
    plans = plan_deployments(load_experiment_file(write_yaml(tmp_path, data)))
    lm = plans[0].pools[0].build_latency()
    assert (lm.iteration_overhead_s, lm.iteration_overhead_prefill_s) == (0.001, 0.004)
    assert (lm.kernel_time_scale, lm.kernel_time_scale_prefill) == (1.5, 1.2)
    unset = oplevel_data()
    unset["latency_models"]["h100"].update(iteration_overhead_s=0.001)
    same = plan_deployments(load_experiment_file(write_yaml(tmp_path, unset)))[0].pools[0].build_latency()
    assert same.iteration_overhead_prefill_s == 0.001  # unset: the single overhead
    assert (same.kernel_time_scale, same.kernel_time_scale_prefill) == (1.0, 1.0)
    data["latency_models"]["h100"]["iteration_overhead_prefill_s"] = -1.0
    assert_user_error(run_cli("check", write_yaml(tmp_path, data)), "iteration_overhead_prefill_s")
    data["latency_models"]["h100"]["iteration_overhead_prefill_s"] = 0.004
    data["latency_models"]["h100"]["kernel_time_scale"] = 0
    assert_user_error(run_cli("check", write_yaml(tmp_path, data)), "kernel_time_scale")



def test_a_kernel_time_scale_table_from_the_yaml(tmp_path):
    data = oplevel_data()
    data["latency_models"]["h100"].update(kernel_time_scale={1: 2.0, 32: 1.5}, kernel_time_scale_prefill=1.2)
    lm = plan_deployments(load_experiment_file(write_yaml(tmp_path, data)))[0].pools[0].build_latency()
    assert lm.kernel_time_scale == {1: 2.0, 32: 1.5} and lm.decode_scale(32) == 1.5
    del data["latency_models"]["h100"]["kernel_time_scale_prefill"]
    assert_user_error(run_cli("check", write_yaml(tmp_path, data)), "kernel_time_scale_prefill")
