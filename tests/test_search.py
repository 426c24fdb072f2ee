"""Specification of ``pdsim search``: the integer program equals brute-force enumeration; the analytic
bounds follow their formulas on constant latency; what cannot fit is pruned; the goodput bisection finds
a known knee; on a small case the smart search picks the same deployment as exhaustive simulation;
results do not depend on ``-j``; ``best.yaml`` runs with ``pdsim run``; bad input exits 2.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pdsim.cli import app
from pdsim.config.load import load_experiment_file
from pdsim.errors import ConfigError
from pdsim.latency.constant import ConstantLatencyModel
from pdsim.search.allocate import (
    InstanceType,
    enumerate_allocations,
    max_ratio,
    min_cost,
    pareto_front,
)
from pdsim.search.capacity import WorkloadStats, instance_capacity
from pdsim.search.config import load_search_file
from pdsim.search.goodput import Bisection
from pdsim.search.run import run_search
from pdsim.sim.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

TINY = {
    "name": "tiny-search",
    "seed": 0,
    "model": "Llama-2-7b-hf",
    "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "percentile": 90, "attainment_target": 0.9},
    "scheduler": {"max_num_batched_tokens": 512, "max_num_seqs": 4},
    "workload": {"kind": "poisson", "rate_rps": 1.0, "num_requests": 40,
                 "lengths": {"kind": "fixed", "prompt_tokens": 100, "output_tokens": 20}},
    "search": {
        "inventory": [
            {"gpu": "A100-80GB-SXM", "count": 2, "price_usd_per_gpu_hour": 1.0,
             "latency": {"kind": "constant", "iteration_s": 0.02}},
            {"gpu": "H100-SXM", "count": 2, "price_usd_per_gpu_hour": 2.5,
             "latency": {"kind": "constant", "iteration_s": 0.01}},
        ],
        "tp": [1],
        "kinds": ["colocated", "disaggregated"],
        "max_finalists": 6,
        "rate_tolerance": 0.1,
    },
}


def write(tmp_path: Path, data: dict, name: str = "search.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


# ---- integer program ------------------------------------------------------------------------------

def _random_types(rng):
    gpus = ["A", "B", "C"][: int(rng.integers(1, 4))]
    inventory = {g: int(rng.integers(1, 7)) for g in gpus}
    types = []
    for g in gpus:
        for tp in (1, 2):
            for role in ("colocated", "prefill", "decode"):
                if rng.random() < 0.8:
                    types.append(InstanceType(f"{g}/{tp}/{role}", role, g, tp, float(rng.uniform(1, 5)) * tp,
                                              float(rng.uniform(0.5, 10))))
    budget = float(rng.uniform(5, 40)) if rng.random() < 0.5 else None
    return types, inventory, budget


def test_milp_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(25):
        types, inventory, budget = _random_types(rng)
        for kind in ("colocated", "disaggregated"):
            allocs = list(enumerate_allocations(kind, types, inventory, budget))
            best = max_ratio(kind, types, inventory, budget)
            if not allocs:
                assert best is None
                continue
            checked += 1
            top = max(a.ratio for a in allocs)
            assert best.ratio == pytest.approx(top, rel=1e-9)
            # ties go to the largest capacity
            assert best.capacity_rps == pytest.approx(max(a.capacity_rps for a in allocs if a.ratio >= top * (1 - 1e-9)), rel=1e-9)
            rate = float(rng.uniform(0, 1.1 * max(a.capacity_rps for a in allocs)))
            cheapest = min_cost(kind, types, inventory, rate, budget)
            ok = [a for a in allocs if a.capacity_rps >= rate]
            if not ok:
                assert cheapest is None
            else:
                assert cheapest.usd_per_hour == pytest.approx(min(a.usd_per_hour for a in ok), rel=1e-9)
                assert cheapest.capacity_rps >= rate * (1 - 1e-7)
            front = [(round(a.usd_per_hour, 9), round(a.capacity_rps, 9)) for a in pareto_front(kind, types, inventory, budget)]
            brute = sorted({(round(a.usd_per_hour, 9), round(a.capacity_rps, 9)) for a in allocs
                            if not any((b.usd_per_hour <= a.usd_per_hour and b.capacity_rps > a.capacity_rps)
                                       or (b.usd_per_hour < a.usd_per_hour and b.capacity_rps >= a.capacity_rps) for b in allocs)})
            assert front == brute
    assert checked >= 20


def test_milp_respects_shared_inventory_and_budget():
    # prefill and decode on the same GPU share its 4 GPUs; the budget caps the count
    types = [InstanceType("G/pre", "prefill", "G", 1, 1.0, 2.0), InstanceType("G/dec", "decode", "G", 1, 1.0, 1.0)]
    a = max_ratio("disaggregated", types, {"G": 4})
    assert dict(a.counts) == {"G/pre": 1, "G/dec": 2}  # 2 req/s for 3 $/h; (1, 1) and (2, 2) give 0.5 per $/h
    assert a.capacity_rps == pytest.approx(2.0)
    assert min_cost("disaggregated", types, {"G": 4}, 2.5) is None  # needs 3 decode + 2 prefill > 4 GPUs
    assert min_cost("disaggregated", types, {"G": 8}, 2.5, budget=4.0) is None
    assert dict(min_cost("disaggregated", types, {"G": 8}, 2.5, budget=5.0).counts) == {"G/pre": 2, "G/dec": 3}


# ---- analytic bounds -------------------------------------------------------------------------------

def test_capacity_formulas_on_constant_latency():
    from pdsim.config.schema import SchedulerConfig, SloConfig

    tau = 0.02
    lat = ConstantLatencyModel(tau)
    w = WorkloadStats(prompt_mean=100, prompt_sq_mean=100**2, output_mean=20, prompt_pct=100, requests=10, native_rate_rps=1)
    sched = SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=4)
    slo = SloConfig(ttft_s=0.5, tpot_s=0.05)
    pre = instance_capacity("prefill", lat, w, sched, 10**6, slo)
    assert pre.prefill_batch == 4  # min(max_num_seqs, 512 // 100)
    assert pre.rate_rps == pytest.approx(4 / tau)
    dec = instance_capacity("decode", lat, w, sched, 10**6, slo)
    assert dec.decode_batch == 4 and dec.rate_rps == pytest.approx(4 / (tau * 20))
    col = instance_capacity("colocated", lat, w, sched, 10**6, slo)
    assert col.rate_rps == pytest.approx(1 / (tau / 4 + tau * 20 / 4))
    # KV for 2 requests at mean context 100 + 20 / 2 = 110 tokens, after the 1 % watermark: batch 2
    assert instance_capacity("decode", lat, w, sched, 225, slo).decode_batch == 2
    # KV egress: 1 GB/s and 1 MB per token x 100 tokens -> at most 10 requests/s leave a prefill instance
    assert instance_capacity("prefill", lat, w, sched, 10**6, slo, 1e9, 10**6).rate_rps == pytest.approx(10.0)
    # prefill stalls: one 100-token prompt per iteration (budget 100), 2 output tokens, TPOT target 1.25 tau:
    # decodes may be stretched by 25 % at most, so the rate is (1 - tau / tpot) / tau, below time sharing
    short = WorkloadStats(prompt_mean=100, prompt_sq_mean=100**2, output_mean=2, prompt_pct=100, requests=10,
                          native_rate_rps=1)
    tight = instance_capacity("colocated", lat, short, SchedulerConfig(max_num_batched_tokens=100, max_num_seqs=4),
                              10**6, SloConfig(ttft_s=0.5, tpot_s=1.25 * tau))
    assert tight.rate_rps == pytest.approx((1 - 1 / 1.25) / tau)
    assert tight.rate_rps < 1 / (tau + 2 * tau / 4)
    slow = instance_capacity("colocated", ConstantLatencyModel(0.6), w, sched, 10**6, slo)
    assert "ttft_floor" in slow.pruned and "tpot_floor" in slow.pruned


def test_pruning_memory_and_slo_floors(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["model"] = "Llama-2-70b-hf"  # 138 GB of fp16 weights: not on one 80 GB GPU
    data["search"]["tp"] = [1, 2]
    data["search"]["inventory"][1]["latency"] = {"kind": "constant", "iteration_s": 0.06}  # > tpot 50 ms
    data["search"]["kinds"] = ["colocated"]
    res = run_search(write(tmp_path, data), out=tmp_path / "out", plots=False)
    it = res.candidates[res.candidates["level"] == "instance_type"].set_index("candidate")
    assert it.loc["A100-80GB-SXM/tp1/pp1/colocated", "status"] == "pruned"
    assert it.loc["A100-80GB-SXM/tp1/pp1/colocated", "reason"].startswith("memory:")
    assert it.loc["A100-80GB-SXM/tp2/pp1/colocated", "status"] == "estimated"
    assert it.loc["H100-SXM/tp2/pp1/colocated", "status"] == "pruned"
    assert "tpot_floor" in it.loc["H100-SXM/tp2/pp1/colocated", "reason"]
    deps = res.candidates[res.candidates["level"] == "deployment"]
    assert not deps["pools"].str.contains("H100").any()
    assert set(deps["pools"].str.extract(r"tp(\d)")[0]) == {"2"}
    assert res.counts["instance_types_pruned"] == 3


# ---- goodput bisection ------------------------------------------------------------------------------

def test_bisection_brackets_a_threshold():
    b = Bisection(start_rps=3.0, rate_tolerance=0.02, max_probes=30)
    while (r := b.next_rate()) is not None:
        b.record(r, r <= 7.3)
    assert b.status == "bracketed"
    assert b.goodput_rps <= 7.3 < b.hi and (b.hi - b.goodput_rps) / b.goodput_rps <= 0.02
    z = Bisection(start_rps=1.0, rate_tolerance=0.05, max_probes=30)
    while (r := z.next_rate()) is not None:
        z.record(r, False)
    assert z.status == "zero" and z.goodput_rps == 0.0
    with pytest.raises(ValueError):
        Bisection(start_rps=0.0, rate_tolerance=0.05, max_probes=4)


def test_goodput_knee_of_a_deterministic_queue(tmp_path):
    """One instance, one request per iteration of tau, one output token, near-deterministic arrivals
    (Gamma, cv 0.001): below 1 / tau no request waits (TTFT = tau); above, request k waits
    k (tau - 1/rate), so with TTFT target 1.5 tau and N requests attainment >= 0.9 iff
    rate <= 1 / (tau (1 - 0.5 / (0.9 N))): the goodput is 1 / tau within 1 %."""
    tau, n = 0.01, 100
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["slo"] = {"ttft_s": 1.5 * tau, "tpot_s": 1.0, "attainment_target": 0.9}
    data["scheduler"] = {"max_num_batched_tokens": 512, "max_num_seqs": 1}
    data["workload"] = {"kind": "gamma", "rate_rps": 1.0, "cv": 0.001, "num_requests": n,
                        "lengths": {"kind": "fixed", "prompt_tokens": 100, "output_tokens": 1}}
    data["search"]["inventory"] = [{"gpu": "H100-SXM", "count": 1, "price_usd_per_gpu_hour": 2.0,
                                    "latency": {"kind": "constant", "iteration_s": tau}}]
    data["search"]["kinds"] = ["colocated"]
    data["search"]["rate_tolerance"] = 0.01
    res = run_search(write(tmp_path, data), out=tmp_path / "out", plots=False)
    knee = 1 / (tau * (1 - 0.5 / (0.9 * n)))
    best = res.best["goodput_per_dollar"]
    assert best["goodput_status"] == "bracketed"
    assert knee / 1.02 <= best["goodput_rps"] <= knee * 1.001
    probes = res.probes
    assert probes["passed"].equals(probes["rate_rps"] <= knee)  # every probe on the right side of the knee
    assert best["goodput_rps_per_usd_per_hour"] == pytest.approx(best["goodput_rps"] / 2.0)


# ---- the search end to end --------------------------------------------------------------------------

def test_smart_search_agrees_with_exhaustive_simulation(tmp_path):
    path = write(tmp_path, TINY)
    sm = run_search(path, out=tmp_path / "out", plots=False)
    # same directory: the exhaustive run reuses the smart run's simulations (stored by config hash)
    ex = run_search(path, out=tmp_path / "out", sets=["search.strategy=exhaustive"], plots=False)
    assert ex.counts["deployments_simulated"] == 14  # 4 colocated + 10 disaggregated allocations of 2 + 2 GPUs
    assert sm.counts["deployments_simulated"] == 6 < ex.counts["deployments_simulated"]
    assert sm.counts["simulations"] < ex.counts["simulations"]
    for key in ("goodput_per_dollar", "best_colocated", "best_disaggregated"):
        assert sm.best[key]["deployment"] == ex.best[key]["deployment"]
        assert sm.best[key]["goodput_rps"] == ex.best[key]["goodput_rps"]
    # the exhaustive winner really is the best of everything it simulated, and lies on the Pareto front
    # (as does the highest goodput), while some simulated deployment does not
    sims = ex.candidates[ex.candidates["status"] == "simulated"].set_index("candidate")
    top = sims["goodput_rps_per_usd_per_hour"].idxmax()
    assert top == ex.best["goodput_per_dollar"]["deployment"]
    assert sims.loc[top, "pareto"] and sims.loc[sims["goodput_rps"].idxmax(), "pareto"]
    assert not sims["pareto"].astype(bool).all()


def test_outputs_best_yaml_runs_and_jobs_do_not_change_results(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["search"]["max_finalists"] = 2
    data["search"]["target_rate_rps"] = 30.0
    path = write(tmp_path, data)
    a = run_search(path, out=tmp_path / "a", jobs=1)
    run_search(path, out=tmp_path / "b", jobs=2, plots=False)
    for name in ("candidates.csv", "probes.csv", "best.yaml", "search.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    for png in ("attainment_vs_rate.png", "cost_vs_goodput_pareto.png", "goodput_per_dollar_ttft_cdf.png"):
        assert (tmp_path / "a" / "plots" / png).stat().st_size > 10_000
    cands = pd.read_csv(tmp_path / "a" / "candidates.csv")
    assert set(cands["status"]) <= {"pruned", "estimated", "simulated", "failed"}
    assert (cands["status"] == "simulated").sum() == a.counts["deployments_simulated"]
    # best.yaml: a ready-to-run experiment; the primary deployment at the target rate meets the target
    exp = load_experiment_file(tmp_path / "a" / "best.yaml")
    primary = a.best["lowest_cost_at_target"]
    assert exp.config.deployments[0].name == primary["deployment"]
    assert exp.config.workloads["search"].rate_rps == 30.0
    summary = run_experiment(exp).summary.set_index("deployment")
    assert summary.loc[primary["deployment"], "slo_attainment"] >= 0.9
    assert primary["usd_per_hour"] <= min(
        v["usd_per_hour"] for v in a.best.values() if v["goodput_rps"] is not None and v["goodput_rps"] >= 30.0)


def test_trace_workload_is_scaled_to_the_probe_rate(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["workload"] = {"kind": "trace", "path": str(REPO / "traces" / "tiny" / "tiny.csv"), "rate_scale": 3.0}
    data["scheduler"] = {"max_num_batched_tokens": 4096, "max_num_seqs": 8}
    data["search"]["kinds"] = ["colocated"]
    data["search"]["max_finalists"] = 1
    res = run_search(write(tmp_path, data), out=tmp_path / "out", plots=False)
    assert len(res.probes) >= 3
    for row in res.probes.itertuples():
        req = pd.read_parquet(tmp_path / "out" / "points" / row.point / "requests.parquet")
        t = np.sort(req["arrival_s"].to_numpy())
        assert len(req) == 40
        # the window's rate (n - 1) / (last - first arrival) is the probe's rate (rate_scale has 6 digits)
        assert (len(t) - 1) / (t[-1] - t[0]) == pytest.approx(row.rate_rps, rel=1e-5)


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["search"].update(bogus=1), r"search\.bogus: unknown key"),
    (lambda d: d["search"]["inventory"][0].update(gpu="H900"), r"search.inventory\[0\].gpu: unknown GPU 'H900'"),
    (lambda d: d["search"]["inventory"][0].update(latency="nope"), r"unknown latency model 'nope'"),
    (lambda d: d["workload"].update(num_requests=None, duration_s=10), r"needs num_requests"),
    (lambda d: d["search"].update(tp=[0]), r"search\.tp"),
    (lambda d: d.update(deployments=[]), r"a search file has no deployments"),
])
def test_bad_input_is_one_message_exit_2(tmp_path, mutate, match):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    mutate(data)
    path = write(tmp_path, data)
    res = runner.invoke(app, ["search", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    import re

    assert re.search(match, " ".join(res.output.split())), res.output
    assert "search.yaml" in res.output  # the message names the file


def test_cli_search_end_to_end(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["search"]["max_finalists"] = 2
    res = runner.invoke(app, ["search", str(write(tmp_path, data)), "--out", str(tmp_path / "o"), "--no-plots",
                              "--set", "search.kinds=[colocated]"])
    assert res.exit_code == 0, res.output
    assert "goodput_per_dollar" in res.output and "pruned" in res.output
    assert (tmp_path / "o" / "best.yaml").is_file() and (tmp_path / "o" / "candidates.csv").is_file()
    with pytest.raises(ConfigError, match="executor"):
        run_search(write(tmp_path, data), out=tmp_path / "x", executor="dask")


def test_everything_pruned_is_reported_not_crashed(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["model"] = "Llama-2-70b-hf"  # does not fit one GPU, and tp is only [1]
    res = runner.invoke(app, ["search", str(write(tmp_path, data)), "--out", str(tmp_path / "o"), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "every instance type was pruned" in " ".join(res.output.split())
    cands = pd.read_csv(tmp_path / "o" / "candidates.csv")
    assert (cands["status"] == "pruned").all() and len(cands) == 6
    assert not (tmp_path / "o" / "best.yaml").exists()


def test_search_example_file_validates():
    cfg = load_search_file(REPO / "experiments" / "search_llama70b.yaml").config
    assert {i.gpu for i in cfg.search.inventory} == {"H100-SXM", "A100-80GB-SXM", "L40S", "MI300X"}
    assert math.isclose(cfg.slo.attainment_target, 0.9)
