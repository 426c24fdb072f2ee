"""Specification of the simulation ring: invariants, exactness of decode windows, an analytic check,
determinism, rejections and conservation.

Experiments are built here as dicts, written as YAML and loaded through ``load_experiment_file`` (the
same path the CLI takes); latencies come from the repository's Splitwise ``perf_model.csv`` or the
constant model. KV capacity is made tiny on purpose, through ``scheduler.activation_reserve_gib``, so
that preemption (colocated and decode instances) and back-pressure (prefill instances waiting for
decode blocks) happen.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

from pdsim.config.load import load_experiment_file
from pdsim.core.kv import blocks_for
from pdsim.core.request import Phase
from pdsim.hardware.gpus import load_gpu_catalog
from pdsim.metrics.records import REQUEST_COLUMNS, requests_frame
from pdsim.models.arch import load_model_catalog, model_from_hf_config
from pdsim.sim.cluster import simulate
from pdsim.sim.plan import plan_deployments
from pdsim.sim.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "gpu_profiles" / "splitwise_sim" / "perf_model.csv"
TINY_YAML = REPO / "experiments" / "tiny.yaml"
TINY_TRACE = REPO / "traces" / "tiny" / "tiny.csv"

GIB = 2**30
LLAMA70B = model_from_hf_config("Llama-2-70b-hf", load_model_catalog()["Llama-2-70b-hf"])
GPU_MEMORY_BYTES = 80 * 10**9  # A100-80GB-SXM and H100-SXM in gpu_specs.csv
CONTEXT = 4096  # Llama-2-70B max_position_embeddings
REASONS = {"exceeds_context", "exceeds_max_num_batched_tokens", "exceeds_kv_capacity"}


# ---- building experiments ------------------------------------------------------------------------------

def activation_gib_for(target_blocks: int, tp: int, block_size: int = 16, util: float = 0.9) -> float:
    """An activation reserve that leaves about ``target_blocks`` KV blocks per instance (Llama-2-70B)."""
    weights = LLAMA70B.weight_bytes_per_gpu(tp, 1, 2)
    block_bytes = LLAMA70B.kv_bytes_per_token_per_gpu(tp, 1, 2) * block_size
    return (int(GPU_MEMORY_BYTES * util) - weights - target_blocks * block_bytes - block_bytes // 2) / GIB


def latency(kind: str, iteration_s: float = 0.05) -> dict:
    if kind == "table":
        return {"kind": "splitwise_table", "path": str(PROFILE)}
    return {"kind": "constant", "iteration_s": iteration_s}


def pool(gpu="A100-80GB-SXM", tp=8, instances=1, router="least_tokens", lat=None, kv_blocks=None, **sched) -> dict:
    p = {"gpu": gpu, "tp": tp, "instances": instances, "router": router, "latency": lat or latency("table")}
    if kv_blocks is not None:
        sched["activation_reserve_gib"] = activation_gib_for(kv_blocks, tp)
    if sched:
        p["scheduler"] = sched
    return p


def colocated(name="c", **kw) -> dict:
    return {"name": name, "kind": "colocated", "pool": pool(**kw)}


def disaggregated(name="d", prefill=None, decode=None, link=None) -> dict:
    return {"name": name, "kind": "disaggregated", "prefill": prefill or pool(gpu="H100-SXM"),
            "decode": decode or pool(), "kv_link": link or {"kind": "infiniband"}}


def experiment(deployments: list[dict], workloads: dict | None = None, scheduler: dict | None = None, seed=0) -> dict:
    return {
        "name": "t", "seed": seed, "model": "Llama-2-70b-hf",
        "slo": {"ttft_s": 1.0, "tpot_s": 0.1},
        "scheduler": scheduler or {},
        "deployments": deployments,
        "workloads": workloads or {"w": {"kind": "poisson", "rate_rps": 1.0, "num_requests": 1,
                                         "lengths": {"kind": "fixed", "prompt_tokens": 8, "output_tokens": 2}}},
    }


def load(directory: Path, data: dict, overrides: list[str] | None = None):
    path = Path(directory) / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_experiment_file(path, overrides)


def write_trace(directory: Path, rows: list[tuple[float, int, int]], name="trace.csv") -> Path:
    path = Path(directory) / name
    pd.DataFrame(rows, columns=["arrival_s", "prompt_tokens", "output_tokens"]).to_csv(path, index=False)
    return path


def workload_frame(rows: list[tuple[float, int, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["arrival_s", "prompt_tokens", "output_tokens"]).astype(
        {"arrival_s": "float64", "prompt_tokens": "int64", "output_tokens": "int64"})
    df.insert(0, "request_id", np.arange(len(df), dtype=np.int64))
    return df


# ---- invariants (Hypothesis) -----------------------------------------------------------------------------

@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 40))
    gaps = draw(st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=n, max_size=n))
    mnbt = draw(st.integers(512, 8192))
    rows = []
    t = 0.0
    for g in gaps:
        t += g
        prompt = draw(st.integers(1, 3000))
        output = draw(st.integers(1, 300))
        rows.append((t, prompt, output))
    kind = draw(st.sampled_from(["colocated", "disaggregated"]))
    lat_kind = draw(st.sampled_from(["table", "constant"]))
    kv_choices = st.sampled_from([None, 30, 60, 120, 250, 600])

    def a_pool(gpu):
        return pool(
            gpu=gpu, tp=draw(st.sampled_from([4, 8])), instances=draw(st.integers(1, 3)),
            router=draw(st.sampled_from(["least_tokens", "round_robin"])),
            lat=latency(lat_kind, draw(st.sampled_from([0.005, 0.03, 0.2]))),
            kv_blocks=draw(kv_choices),
        )

    if kind == "colocated":
        dep = {"name": "x", "kind": "colocated", "pool": a_pool(draw(st.sampled_from(["A100-80GB-SXM", "H100-SXM"])))}
    else:
        dep = disaggregated("x", a_pool("H100-SXM"), a_pool("A100-80GB-SXM"),
                            {"kind": draw(st.sampled_from(["infiniband", "ethernet", "nvlink"]))})
    scheduler = {
        "max_num_seqs": draw(st.integers(1, 32)),
        "max_num_batched_tokens": mnbt,
        "max_window_iterations": draw(st.sampled_from([1, 1_000_000])),
        "enable_chunked_prefill": draw(st.booleans()),
        "long_prefill_token_threshold": draw(st.sampled_from([0, 64, 700])),
        "preemption_mode": draw(st.sampled_from(["recompute", "swap"])),
        "swap_space_gib": draw(st.sampled_from([0.05, 4.0])),
    }
    return rows, dep, scheduler


def check_invariants(plan, wl: pd.DataFrame, sim) -> pd.DataFrame:
    df = requests_frame(sim.requests, plan.name, "w")
    n = len(wl)
    # every request exactly once, finished or rejected with a reason
    assert len(df) == n and df["request_id"].tolist() == list(range(n))
    assert set(df["status"]) <= {"completed", "rejected"}
    done = df[df.status == "completed"]
    rej = df[df.status == "rejected"]
    assert (done.reject_reason == "").all()
    assert rej.reject_reason.isin(REASONS).all()
    # a rejection is justified, and a completed request was servable
    pools = plan.pools
    for r in df.itertuples(index=False):
        p, o = r.prompt_tokens, r.output_tokens
        too_long = p + o > (plan.max_context_tokens or CONTEXT)
        over_budget = any(not pl.scheduler.enable_chunked_prefill and p + o - 1 > pl.scheduler.max_num_batched_tokens
                          for pl in pools)
        over_kv = any(
            blocks_for(p if pl.role == "prefill" else p + o, pl.scheduler.block_size) > pl.capacity_blocks - pl.watermark_blocks
            for pl in pools)
        if r.status == "completed":
            assert not (too_long or over_budget or over_kv), r
        elif r.reject_reason == "exceeds_context":
            assert too_long
        elif r.reject_reason == "exceeds_max_num_batched_tokens":
            assert over_budget
        else:
            assert over_kv
    # timestamps ordered
    assert (done.arrival_s <= done.prefill_start_s).all()
    assert (done.prefill_start_s <= done.first_token_s).all()
    assert (done.first_token_s <= done.finish_s).all()
    assert np.isfinite(done[["prefill_start_s", "first_token_s", "finish_s"]].to_numpy()).all()
    assert rej[["prefill_start_s", "first_token_s", "finish_s"]].isna().all().all()
    multi = done[done.output_tokens > 1]
    assert (multi.itl_max_s > 0).all() and (multi.itl_max_s <= multi.e2e_s - multi.ttft_s + 1e-12).all()
    # tokens: generated == output for completed requests
    by_id = {r.id: r for r in sim.requests}
    for rid in done.request_id:
        r = by_id[rid]
        assert r.phase is Phase.FINISHED and r.generated == r.output_tokens
    for rid in rej.request_id:
        assert by_id[rid].generated == 0
    # KV never over capacity (simulate() itself raises InvariantViolation on a leaked block)
    inst = sim.instances
    assert (inst.kv_peak_blocks <= inst.kv_capacity_blocks).all()
    assert (inst.events <= inst.iterations).all()
    assert int(inst.preemptions.sum()) == int(df.preemptions.sum())
    assert int(inst.swaps.sum()) == int(df.swaps.sum()) and (df.swaps <= df.preemptions).all()
    if plan.kind == "disaggregated":
        assert (multi.kv_transfer_s > 0).all()
        assert done[done.output_tokens == 1].kv_transfer_s.isna().all()
        assert (multi.decode_instance >= 0).all() and (multi.decode_instance < pools[1].instances).all()
    else:
        assert df.kv_transfer_s.isna().all()
        assert (done.prefill_instance == done.decode_instance).all()
    assert (done.prefill_instance >= 0).all() and (done.prefill_instance < pools[0].instances).all()
    return df


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_simulation_invariants(scenario):
    rows, dep, scheduler = scenario
    with tempfile.TemporaryDirectory() as d:
        exp = load(Path(d), experiment([dep], scheduler=scheduler))
    (plan,) = plan_deployments(exp)
    wl = workload_frame(rows)
    check_invariants(plan, wl, simulate(plan, wl))


def test_invariant_scenarios_exercise_pressure(tmp_path):
    """A fixed scenario in the family above, to show preemption and back-pressure really occur."""
    rng = np.random.default_rng(7)
    rows = [(float(t), int(p), int(o)) for t, p, o in zip(
        np.cumsum(rng.uniform(0, 0.3, 60)), rng.integers(100, 1500, 60), rng.integers(50, 300, 60))]
    wl = workload_frame(rows)
    col = colocated("c", kv_blocks=150, instances=2, max_num_seqs=32)
    dis = disaggregated("d", pool(gpu="H100-SXM", kv_blocks=150), pool(kv_blocks=150))
    exp = load(tmp_path, experiment([col, dis]))
    for plan in plan_deployments(exp):
        sim = simulate(plan, wl)
        df = check_invariants(plan, wl, sim)
        assert (df.status == "completed").all()
        if plan.kind == "colocated":
            assert df.preemptions.sum() > 0
        else:
            assert (df.decode_wait_s > 0).any()  # prefill finished, decode blocks not yet free


def test_request_that_could_not_be_reprefilled_is_rejected_and_nothing_sticks(tmp_path):
    """Without chunked prefill a request preempted late re-prefills prompt + generated tokens in one
    iteration; one whose prompt + output - 1 exceeds the budget is rejected up front (vLLM forbids
    max_model_len > max_num_batched_tokens), while one that fits is served even when preempted."""
    dep = colocated("c", lat=latency("constant", 0.01), kv_blocks=70)
    exp = load(tmp_path, experiment([dep], scheduler={"max_num_batched_tokens": 512, "max_num_seqs": 8}))
    (plan,) = plan_deployments(exp)
    wl = workload_frame([(0.0, 500, 300), (0.0, 400, 113), (0.0, 400, 113)])
    sim = simulate(plan, wl)
    df = requests_frame(sim.requests, plan.name, "w")
    assert df.loc[0, "status"] == "rejected" and df.loc[0, "reject_reason"] == "exceeds_max_num_batched_tokens"
    assert (df.loc[1:, "status"] == "completed").all()


# ---- decode windows are exact ------------------------------------------------------------------------------

def _frames(exp, window: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    res = run_experiment(load_experiment_file(exp.path, [f"scheduler.max_window_iterations={window}"]))
    return res.requests, res.instances


def test_windows_exact_on_tiny():
    exp = load_experiment_file(TINY_YAML)
    stepped, inst_1 = _frames(exp, 1)
    windowed, inst_w = _frames(exp, 1_000_000)
    assert_frame_equal(stepped, windowed, check_exact=True)
    assert (inst_1.events == inst_1.iterations).all()
    assert inst_w.iterations.tolist() == inst_1.iterations.tolist()
    assert inst_w.events.sum() < inst_w.iterations.sum()


def test_windows_exact_under_memory_pressure(tmp_path):
    lengths = {"kind": "trace", "path": str(TINY_TRACE)}
    workloads = {
        "poisson": {"kind": "poisson", "rate_rps": 6.0, "num_requests": 300, "lengths": lengths},
        "gamma": {"kind": "gamma", "rate_rps": 4.0, "cv": 3.0, "num_requests": 200, "lengths": lengths},
    }
    deps = [
        colocated("col", instances=2, kv_blocks=160),
        colocated("col-rr", gpu="H100-SXM", instances=3, router="round_robin", kv_blocks=120, max_num_seqs=16),
        disaggregated("dis", pool(gpu="H100-SXM", instances=1, kv_blocks=160), pool(instances=2, kv_blocks=160),
                      {"kind": "ethernet"}),
    ]
    exp = load(tmp_path, experiment(deps, workloads, scheduler={"max_num_batched_tokens": 4096, "max_num_seqs": 48}))
    stepped, inst_1 = _frames(exp, 1)
    windowed, inst_w = _frames(exp, 1_000_000)
    assert stepped.preemptions.sum() > 0  # the comparison covers preemption
    assert (stepped[stepped.deployment == "dis"].decode_wait_s > 0).any()  # and back-pressure
    assert_frame_equal(stepped, windowed, check_exact=True)
    assert (inst_1.events == inst_1.iterations).all()
    assert inst_w.iterations.tolist() == inst_1.iterations.tolist()
    for dep, grp in inst_w.groupby("deployment"):
        assert grp.events.sum() < grp.iterations.sum(), dep


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=st.lists(st.tuples(st.integers(0, 8), st.integers(1, 600), st.integers(1, 60)), min_size=1, max_size=30),
    kind=st.sampled_from(["colocated", "disaggregated"]),
    kv_blocks=st.sampled_from([None, 40, 80]),
    instances=st.integers(1, 3),
    router=st.sampled_from(["least_tokens", "round_robin"]),
    seqs=st.integers(1, 16),
)
def test_windows_exact_with_arrivals_on_iteration_boundaries(reqs, kind, kv_blocks, instances, router, seqs):
    """Iterations of 0.25 s and arrivals on multiples of 0.25 s: arrivals tie with iteration ends
    (exact binary fractions), the case where a window must be cut exactly where stepping sees them."""
    rows, t = [], 0.0
    for gap, p, o in reqs:
        t += gap * 0.25
        rows.append((t, p, o))
    lat = latency("constant", 0.25)
    if kind == "colocated":
        dep = colocated("x", lat=lat, kv_blocks=kv_blocks, instances=instances, router=router)
    else:
        p = dict(lat=lat, kv_blocks=kv_blocks, instances=instances, router=router)
        dep = disaggregated("x", pool(**p), pool(**p), {"kind": "nvlink", "latency_s": 0.0})
    wl = workload_frame(rows)
    frames = []
    for window in (1, 1_000_000):
        with tempfile.TemporaryDirectory() as d:
            exp = load(Path(d), experiment([dep], scheduler={"max_window_iterations": window, "max_num_seqs": seqs}))
        (plan,) = plan_deployments(exp)
        frames.append(check_invariants(plan, wl, simulate(plan, wl)))
    assert_frame_equal(frames[0], frames[1], check_exact=True)


# ---- M/D/1 against Pollaczek-Khinchine ------------------------------------------------------------------------

@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_matches_pollaczek_khinchine(tmp_path, rho):
    """One colocated instance, max_num_seqs 1, one output token, constant iteration time D: an M/D/1 queue.

    Mean wait Wq = rho D / (2 (1 - rho)). Tolerance: 4 standard errors of the sample mean, the standard
    error estimated by batch means (30 batches of ~1,000 consecutive requests after a 1,000-request
    warm-up; batches much longer than the queue's relaxation time, so batch means are ~independent).
    The test also checks that the standard error is small enough (< 10% of Wq) for the check to bite.
    """
    d_s = 0.1
    n = 32_000
    dep = colocated("md1", lat=latency("constant", d_s), max_num_seqs=1)
    wl = {"w": {"kind": "poisson", "rate_rps": rho / d_s, "num_requests": n,
                "lengths": {"kind": "fixed", "prompt_tokens": 100, "output_tokens": 1}}}
    res = run_experiment(load(tmp_path, experiment([dep], wl, seed=12345)))
    df = res.requests
    assert (df.status == "completed").all()
    service = (df.e2e_s - df.queue_s).to_numpy()
    assert np.allclose(service, d_s, rtol=0, atol=1e-9)  # deterministic service
    wait = df.sort_values("arrival_s").queue_s.to_numpy()[1_000:]
    batches = np.array_split(wait, 30)
    means = np.array([b.mean() for b in batches])
    se = means.std(ddof=1) / math.sqrt(len(means))
    wq = rho * d_s / (2 * (1 - rho))
    assert se < 0.1 * wq
    assert abs(wait.mean() - wq) <= 4 * se, (wait.mean(), wq, se)
    # utilisation is rho
    assert res.instances.utilization.iloc[0] == pytest.approx(rho, abs=0.03)


# ---- determinism -----------------------------------------------------------------------------------------------

def test_same_seed_same_frames_in_process_and_across_processes():
    exp = load_experiment_file(TINY_YAML)
    a = run_experiment(exp)
    b = run_experiment(exp)
    c = run_experiment(exp, jobs=2)
    for other in (b, c):
        assert_frame_equal(a.requests, other.requests, check_exact=True)
        assert_frame_equal(a.summary, other.summary, check_exact=True)
        assert_frame_equal(a.instances, other.instances, check_exact=True)
    assert set(a.requests.workload) == {"trace", "poisson"}


def test_different_seed_changes_poisson_results():
    exp = load_experiment_file(TINY_YAML)
    a = run_experiment(exp, seed=0).requests
    b = run_experiment(exp, seed=1).requests
    pa, pb = a[a.workload == "poisson"], b[b.workload == "poisson"]
    assert not np.array_equal(pa.arrival_s.to_numpy(), pb.arrival_s.to_numpy())
    assert not np.array_equal(pa.e2e_s.to_numpy(), pb.e2e_s.to_numpy())
    # the trace workload uses no randomness
    assert_frame_equal(a[a.workload == "trace"].reset_index(drop=True), b[b.workload == "trace"].reset_index(drop=True))


# ---- rejections ------------------------------------------------------------------------------------------------

def test_rejections_have_reasons_and_are_counted(tmp_path):
    trace = write_trace(tmp_path, [
        (0.0, 100, 10),      # fine
        (0.1, 4000, 200),    # 4200 > 4096 context
        (0.2, 3000, 10),     # prompt > max_num_batched_tokens (2048)
        (0.3, 1953, 96),     # re-prefill bound 1953 + 95 = 2048: exactly at the budget: fine
        (0.4, 4000, 96),     # 4096 = context: allowed by context, but prompt over budget
    ])
    wl = {"tr": {"kind": "trace", "path": str(trace)}}
    deps = [colocated("c"), disaggregated("d")]
    res = run_experiment(load(tmp_path, experiment(deps, wl, scheduler={"max_num_batched_tokens": 2048})))
    for dep in ("c", "d"):
        df = res.requests[res.requests.deployment == dep].set_index("request_id")
        assert df.loc[1, "reject_reason"] == "exceeds_context"
        assert df.loc[2, "reject_reason"] == "exceeds_max_num_batched_tokens"
        assert df.loc[4, "reject_reason"] == "exceeds_max_num_batched_tokens"
        assert (df.loc[[1, 2, 4], "status"] == "rejected").all()
        assert (df.loc[[0, 3], "status"] == "completed").all() and (df.loc[[0, 3], "reject_reason"] == "").all()
        row = res.summary[res.summary.deployment == dep].iloc[0]
        assert (row.requests, row.completed, row.rejected) == (5, 2, 3)


def test_request_larger_than_kv_cache_is_rejected(tmp_path):
    trace = write_trace(tmp_path, [(0.0, 100, 10), (0.0, 1500, 500)])
    wl = {"tr": {"kind": "trace", "path": str(trace)}}
    res = run_experiment(load(tmp_path, experiment([colocated("c", kv_blocks=100)], wl)))  # ~1600 tokens
    df = res.requests.set_index("request_id")
    assert df.loc[0, "status"] == "completed"
    assert df.loc[1, "status"] == "rejected" and df.loc[1, "reject_reason"] == "exceeds_kv_capacity"


def test_model_context_override(tmp_path):
    trace = write_trace(tmp_path, [(0.0, 900, 200), (0.0, 500, 100)])
    data = experiment([colocated("c")], {"tr": {"kind": "trace", "path": str(trace)}})
    data["model"] = {"name": "Llama-2-70b-hf", "max_context_tokens": 1000}
    res = run_experiment(load(tmp_path, data))
    assert res.requests.reject_reason.tolist() == ["exceeds_context", ""]


# ---- conservation and cost -----------------------------------------------------------------------------------

def test_tokens_conserved_and_cost_formula(tmp_path):
    exp = load_experiment_file(TINY_YAML)
    plans = {p.name: p for p in plan_deployments(exp)}
    catalog = load_gpu_catalog()
    res = run_experiment(exp)
    for row in res.summary.itertuples(index=False):
        df = res.requests[(res.requests.deployment == row.deployment) & (res.requests.workload == row.workload)]
        plan = plans[row.deployment]
        sim = simulate(plan, res.workloads[row.workload])
        generated = sum(r.generated for r in sim.requests if r.phase is Phase.FINISHED)
        done = df[df.status == "completed"]
        assert int(done.output_tokens.sum()) == generated
        span = done.finish_s.max() - df.arrival_s.min()
        tok_s = done.output_tokens.sum() / span
        usd_h = sum(p.tp * p.instances * catalog[p.gpu.name].price_usd_per_hour for p in plan.pools)
        assert row.usd_per_hour == pytest.approx(usd_h, rel=1e-12)
        assert row.gpus == sum(p.tp * p.instances for p in plan.pools)
        assert row.span_s == pytest.approx(span, rel=1e-12)
        assert row.output_tokens_per_s == pytest.approx(tok_s, rel=1e-12)
        assert row.usd_per_million_output_tokens == pytest.approx(usd_h / (tok_s * 3600) * 1e6, rel=1e-12)
        assert row.requests_per_s == pytest.approx(len(done) / span, rel=1e-12)
        assert (row.completed, row.rejected) == (len(done), len(df) - len(done))
        assert row.preemptions == df.preemptions.sum()
        # TPOT uses output_tokens - 1
        multi = done[done.output_tokens > 1]
        assert np.allclose(multi.tpot_s * (multi.output_tokens - 1), multi.e2e_s - multi.ttft_s, rtol=1e-12, atol=0)


def test_requests_frame_contract_columns():
    res = run_experiment(load_experiment_file(TINY_YAML))
    assert list(res.requests.columns) == REQUEST_COLUMNS


def test_token_times_list_every_token_and_change_nothing(tmp_path):
    lengths = {"kind": "trace", "path": str(TINY_TRACE)}
    workloads = {"poisson": {"kind": "poisson", "rate_rps": 6.0, "num_requests": 150, "lengths": lengths}}
    deps = [
        colocated("col", instances=1, kv_blocks=160),
        disaggregated("dis", pool(gpu="H100-SXM", instances=1, kv_blocks=160), pool(instances=1, kv_blocks=160),
                      {"kind": "ethernet"}),
    ]
    exp = load(tmp_path, experiment(deps, workloads, scheduler={"max_num_batched_tokens": 4096, "max_num_seqs": 48}))
    result = run_experiment(exp, seed=3)
    for plan in result.plans:
        work = result.workloads["poisson"]
        plain = simulate(plan, work)
        log: dict[int, list[float]] = {}
        logged = simulate(plan, work, token_times=log)
        a, b = requests_frame(plain.requests, plan.name, "w"), requests_frame(logged.requests, plan.name, "w")
        assert_frame_equal(a, b, check_exact=True)
        done = b[b.status == "completed"]
        assert len(done) > 0
        for r in done.itertuples(index=False):
            times = log[r.request_id]
            assert len(times) == r.output_tokens  # every token, once (windows included)
            assert times == sorted(times)
            assert times[0] == pytest.approx(r.arrival_s + r.ttft_s)
            assert times[-1] == pytest.approx(r.arrival_s + r.e2e_s)
            gaps = np.diff(times)
            if len(gaps):
                assert gaps.max() == pytest.approx(r.itl_max_s)
