"""Specification of the routers and of Splitwise's mixed pool (docs/routing.md).

Each router's rule on fake instances that report chosen loads; then behaviours in full simulations
(constant latency, so every effect comes from the routing): balancing routers beat round robin on a
skewed workload, ``jsq`` counts requests exactly inside decode windows, ``power_of_two`` is
deterministic under one seed in one or several processes, the mixed pool lowers TTFT when the prefill
pool is overloaded and loses nothing; and configuration errors.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal
from typer.testing import CliRunner

from pdsim.cli import app
from pdsim.config.load import load_experiment_file
from pdsim.errors import ConfigError
from pdsim.metrics.records import requests_frame
from pdsim.metrics.summary import summarize_one
from pdsim.routing.routers import (
    ROUTER_NAMES,
    JoinShortestQueueRouter,
    LeastTokensRouter,
    MixedPool,
    PowerOfTwoRouter,
    PrefixAwareRouter,
    RoundRobinRouter,
    make_router,
)
from pdsim.sim import cluster
from pdsim.sim.cluster import simulate
from pdsim.sim.plan import plan_deployments
from pdsim.sim.runner import pair_seed, run_experiment

# ---- fakes ---------------------------------------------------------------------------------------------

class Fake:
    """An instance as a router sees it: chosen outstanding tokens, requests and cached prefix tokens."""

    def __init__(self, tokens: int = 0, requests: int = 0, cached: int = 0):
        self.tokens, self.requests, self.cached = tokens, requests, cached

    def load_tokens(self, now_s):
        return self.tokens

    def outstanding_requests(self, now_s):
        return self.requests

    def cached_prefix_tokens(self, req):
        return self.cached


class Req:
    def __init__(self, prompt_tokens: int = 1000):
        self.prompt_tokens = prompt_tokens


def fakes(tokens, requests=None, cached=None):
    n = len(tokens)
    requests = requests or [0] * n
    cached = cached or [0] * n
    return [Fake(t, r, c) for t, r, c in zip(tokens, requests, cached)]


# ---- rules on fake instances ---------------------------------------------------------------------------

def test_round_robin_cycles_and_ignores_load():
    r = RoundRobinRouter()
    insts = fakes([10**9, 0, 0])
    assert [r.choose(insts, 0.0, Req()) for _ in range(5)] == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("tokens,expected", [([5, 3, 3, 7], 1), ([0, 0, 0], 0), ([9, 8, 7, 7], 2), ([4], 0)])
def test_least_tokens_picks_fewest_tokens_lowest_index(tokens, expected):
    assert LeastTokensRouter().choose(fakes(tokens), 0.0, Req()) == expected


def test_jsq_counts_requests_not_tokens():
    # instance 0: one huge request; instance 1: three small ones
    insts = fakes(tokens=[100_000, 30], requests=[1, 3])
    assert JoinShortestQueueRouter().choose(insts, 0.0, Req()) == 0
    assert LeastTokensRouter().choose(insts, 0.0, Req()) == 1
    assert JoinShortestQueueRouter().choose(fakes([0, 0, 0], [2, 1, 1]), 0.0, Req()) == 1  # tie: lowest index


def test_power_of_two_never_picks_the_heaviest_and_matches_the_analytic_distribution():
    # n instances with distinct loads, rank r (0 = lightest) wins when it is drawn and the other is
    # heavier: P(r) = 2 (n - 1 - r) / (n (n - 1)). For n = 4: 1/2, 1/3, 1/6, 0.
    insts = fakes([30, 10, 40, 20])  # ranks: index 1 -> 0, 3 -> 1, 0 -> 2, 2 -> 3
    router = PowerOfTwoRouter(np.random.default_rng(7))
    draws = 30_000
    counts = np.bincount([router.choose(insts, 0.0, Req()) for _ in range(draws)], minlength=4) / draws
    assert counts[2] == 0.0  # the heaviest never wins
    expected = np.array([1 / 6, 1 / 2, 0.0, 1 / 3])
    np.testing.assert_allclose(counts, expected, atol=0.015)  # ~5 standard errors at 30k draws


def test_power_of_two_with_two_instances_always_picks_the_lighter():
    router = PowerOfTwoRouter(np.random.default_rng(0))
    assert {router.choose(fakes([5, 2]), 0.0, Req()) for _ in range(50)} == {1}
    assert {router.choose(fakes([3, 3]), 0.0, Req()) for _ in range(50)} == {0, 1}  # tie: the first drawn


def test_power_of_two_is_deterministic_per_seed():
    insts = fakes([0] * 8)
    a = PowerOfTwoRouter(np.random.default_rng(np.random.SeedSequence(3)))
    b = PowerOfTwoRouter(np.random.default_rng(np.random.SeedSequence(3)))
    c = PowerOfTwoRouter(np.random.default_rng(np.random.SeedSequence(4)))
    ra = [a.choose(insts, 0.0, Req()) for _ in range(200)]
    assert ra == [b.choose(insts, 0.0, Req()) for _ in range(200)]
    assert ra != [c.choose(insts, 0.0, Req()) for _ in range(200)]
    assert set(ra) == set(range(8))  # equal loads: every instance gets picked
    # one instance: no draw at all
    single = PowerOfTwoRouter(np.random.default_rng(5))
    assert single.choose(fakes([9]), 0.0, Req()) == 0
    fresh = np.random.default_rng(5)
    assert single._rng.integers(1 << 30) == fresh.integers(1 << 30)


def prefix(abs_tokens=1000, rel=1.5, threshold=0.3):
    return PrefixAwareRouter(abs_tokens, rel, threshold)


def test_prefix_aware_prefers_the_longest_cached_prefix():
    insts = fakes(tokens=[100, 500, 300], cached=[0, 800, 400])
    assert prefix().choose(insts, 0.0, Req(1000)) == 1


def test_prefix_aware_ties_on_cache_go_to_fewer_tokens_then_lowest_index():
    assert prefix().choose(fakes([400, 200, 200], cached=[600, 600, 600]), 0.0, Req(1000)) == 1
    assert prefix().choose(fakes([200, 200], cached=[600, 600]), 0.0, Req(1000)) == 0


def test_prefix_aware_falls_back_to_least_tokens_only_when_both_balance_limits_are_exceeded():
    req = Req(1000)
    # best holds 900 cached tokens; least loaded instance is index 0 with 1000 tokens
    def pick(best_load):
        return prefix(abs_tokens=1000, rel=1.5).choose(fakes([1000, best_load], cached=[0, 900]), 0.0, req)

    assert pick(1900) == 1   # +900 <= abs 1000 (and 1.9x > 1.5x): still balanced enough
    assert pick(2001) == 0   # +1001 > 1000 and 2.001x > 1.5x: unbalanced -> least tokens
    big = prefix(abs_tokens=100, rel=3.0).choose(fakes([1000, 2500], cached=[0, 900]), 0.0, req)
    assert big == 1          # +1500 > 100 but 2.5x <= 3x: balanced by the relative test
    assert prefix(abs_tokens=100, rel=3.0).choose(fakes([1000, 3100], cached=[0, 900]), 0.0, req) == 0


def test_prefix_aware_needs_more_than_the_cache_threshold():
    insts = fakes([500, 100], cached=[300, 0])
    assert prefix(threshold=0.3).choose(insts, 0.0, Req(1000)) == 1  # 30 % cached is not > 30 %
    assert prefix(threshold=0.3).choose(insts, 0.0, Req(999)) == 0   # 300/999 > 30 %
    assert prefix(threshold=0.0).choose(fakes([500, 100]), 0.0, Req(1000)) == 1  # no hit at all: least tokens


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
def test_prefix_aware_without_cache_is_least_tokens(tokens):
    insts = fakes(tokens)
    assert prefix().choose(insts, 0.0, Req(500)) == LeastTokensRouter().choose(insts, 0.0, Req(500))


def test_make_router_names_and_errors():
    for name in ROUTER_NAMES:
        assert make_router(name, rng=np.random.default_rng(0), balance_abs_tokens=10).name == name
    with pytest.raises(ConfigError, match="unknown router 'fastest'"):
        make_router("fastest")
    with pytest.raises(ConfigError, match="power_of_two"):
        make_router("power_of_two")
    with pytest.raises(ConfigError, match="balance_rel"):
        PrefixAwareRouter(10, 0.5)


def test_mixed_pool_borrows_only_when_every_prefill_instance_is_overloaded():
    mp = MixedPool(prefill_queue_tokens=8192)
    decode = fakes([900, 300, 300])
    req = Req(2000)
    assert mp.borrow(fakes([7000, 6192]), decode, 0.0, req) is None  # 6192 + 2000 <= 8192: room left
    assert mp.borrow(fakes([7000, 6193]), decode, 0.0, req) == 1     # all over: least-loaded decode
    assert MixedPool().prefill_queue_tokens == 8192                  # splitwise-sim's mixed_pool.yml


# ---- full simulations ----------------------------------------------------------------------------------

def constant_pool(router="least_tokens", instances=2, iteration_s=0.1, **scheduler) -> dict:
    p = {"gpu": "A100-80GB-SXM", "tp": 8, "instances": instances, "router": router,
         "latency": {"kind": "constant", "iteration_s": iteration_s}}
    if scheduler:
        p["scheduler"] = scheduler
    return p


def experiment(deployments: list[dict], workloads: dict | None = None, seed: int = 0) -> dict:
    return {
        "name": "routing", "seed": seed, "model": "Llama-2-70b-hf", "slo": {"ttft_s": 1.0, "tpot_s": 0.2},
        "scheduler": {"max_num_batched_tokens": 4096, "max_num_seqs": 64},
        "deployments": deployments,
        "workloads": workloads or {"w": {"kind": "poisson", "rate_rps": 1.0, "num_requests": 1,
                                         "lengths": {"kind": "fixed", "prompt_tokens": 8, "output_tokens": 2}}},
    }


def load(data: dict, directory: Path | None = None):
    directory = Path(directory or tempfile.mkdtemp())
    path = directory / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_experiment_file(path)


def plans(deployments: list[dict]):
    return plan_deployments(load(experiment(deployments)))


def frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["arrival_s", "prompt_tokens", "output_tokens"]).astype(
        {"arrival_s": "float64", "prompt_tokens": "int64", "output_tokens": "int64"})
    df.insert(0, "request_id", np.arange(len(df), dtype=np.int64))
    return df


def run(plan, workload, **kw) -> pd.DataFrame:
    return requests_frame(simulate(plan, workload, **kw).requests, plan.name, "w")


def skewed_workload() -> pd.DataFrame:
    # long (3000-token prompt, 200 outputs) and short (100, 10) requests alternate every 60 ms: round
    # robin sends every long one to instance 0, a load-aware router spreads them
    return frame([(0.06 * i, 3000 if i % 2 == 0 else 100, 200 if i % 2 == 0 else 10) for i in range(200)])


def test_load_aware_routers_beat_round_robin_on_a_skewed_workload():
    wl = skewed_workload()
    p90 = {}
    for router in ("round_robin", "least_tokens", "jsq", "power_of_two"):
        (plan,) = plans([{"name": router, "kind": "colocated", "pool": constant_pool(router)}])
        df = run(plan, wl)
        assert (df["status"] == "completed").all()
        p90[router] = df["ttft_s"].quantile(0.9)
    rr = p90.pop("round_robin")
    for router, value in p90.items():
        assert value < 0.5 * rr, (router, value, rr)


def test_default_router_is_least_tokens_and_prefix_aware_without_cache_matches_it():
    wl = skewed_workload()
    default_pool = constant_pool(instances=3)
    del default_pool["router"]
    deps = [
        {"name": "default", "kind": "colocated", "pool": default_pool},
        {"name": "least", "kind": "colocated", "pool": constant_pool("least_tokens", instances=3)},
        {"name": "prefix", "kind": "colocated", "pool": constant_pool({"kind": "prefix_aware", "balance_rel": 2.0}, instances=3)},
        {"name": "jsq", "kind": "colocated", "pool": constant_pool("jsq", instances=3)},
    ]
    frames = {p.name: run(p, wl).drop(columns="deployment") for p in plans(deps)}
    assert_frame_equal(frames["default"], frames["least"])
    assert_frame_equal(frames["prefix"], frames["least"])  # prefix caching is off: no hit anywhere
    assert (frames["jsq"]["prefill_instance"] != frames["least"]["prefill_instance"]).any()  # jsq differs


def test_prefix_aware_raises_prefix_cache_hits_and_lowers_ttft():
    # 32 shared 6-unit (3072-token) prefixes, each request adds one unique unit; with prefix caching
    # on, a router that keeps a prefix on one instance computes less prefill than one that scatters it.
    # Splitwise's measured latencies, so prefill time depends on the tokens actually computed.
    rng = np.random.default_rng(0)
    groups = [list(range(100 * g, 100 * g + 6)) for g in range(32)]
    rows, hashes, t = [], [], 0.0
    for i in range(240):
        t += float(rng.exponential(0.08))
        h = groups[int(rng.integers(32))] + [10_000 + i]
        rows.append((t, 512 * len(h) - 100, 30))
        hashes.append(h)
    wl = frame(rows)
    wl["hash_ids"] = hashes
    profile = str(Path(__file__).resolve().parents[1] / "gpu_profiles" / "splitwise_sim" / "perf_model.csv")
    out = {}
    for router in ("least_tokens", "prefix_aware"):
        p = constant_pool(router, instances=4, enable_prefix_caching=True, max_num_batched_tokens=8192)
        p["latency"] = {"kind": "splitwise_table", "path": profile}
        (plan,) = plans([{"name": router, "kind": "colocated", "pool": p}])
        sim = simulate(plan, wl)
        df = requests_frame(sim.requests, plan.name, "w")
        assert (df["status"] == "completed").all()
        out[router] = (int(sim.instances["prefix_hit_tokens"].sum()), df["ttft_s"].quantile(0.5), df["ttft_s"].quantile(0.9))
    (hits_lt, p50_lt, p90_lt), (hits_pa, p50_pa, p90_pa) = out["least_tokens"], out["prefix_aware"]
    assert hits_pa > 1.2 * hits_lt  # measured: 543,744 vs 399,360 prompt tokens served from cache
    assert p50_pa < 0.5 * p50_lt and p90_pa < p90_lt  # measured: 0.55 vs 3.61 s; 3.18 vs 5.79 s


class Probe:
    """Records what a router sees: each instance's outstanding requests when a request is routed."""

    name = "probe"

    def __init__(self):
        self.calls = []
        self.inner = JoinShortestQueueRouter()

    def choose(self, instances, now_s, req):
        self.calls.append((now_s, req.id, [inst.outstanding_requests(now_s) for inst in instances]))
        return self.inner.choose(instances, now_s, req)


@pytest.mark.parametrize("max_window", [1, 1000])
def test_outstanding_requests_are_exact_inside_decode_windows(monkeypatch, max_window):
    # Iteration time and arrivals on an exact binary grid, so many arrivals fall inside decode windows
    # and many coincide with iteration ends. The count a router sees must equal the requests routed
    # earlier to that instance that have not finished by then, whether decode iterations are stepped
    # one by one or run as windows; a request finishing at that very instant may count either way
    # (SimPy's event order decides, as for an engine's own report).
    rng = np.random.default_rng(1)
    n = 80
    arrivals = 0.5 * np.sort(rng.integers(0, 60, n))
    wl = frame(list(zip(arrivals, rng.integers(1, 400, n), rng.integers(1, 12, n))))
    probe = Probe()
    monkeypatch.setattr(cluster, "_router_for", lambda pool, seed, index: probe)
    (plan,) = plans([{"name": "c", "kind": "colocated",
                      "pool": constant_pool("jsq", instances=3, iteration_s=0.5, max_num_seqs=4,
                                            max_window_iterations=max_window)}])
    df = run(plan, wl).set_index("request_id")
    assert len(probe.calls) == n
    ties = 0
    for now, rid, seen in probe.calls:
        earlier = df[(df.index < rid)]
        sure = earlier[earlier["finish_s"] > now]
        maybe = earlier[earlier["finish_s"] >= now]
        lo = [int((sure["prefill_instance"] == i).sum()) for i in range(3)]
        hi = [int((maybe["prefill_instance"] == i).sum()) for i in range(3)]
        assert all(a <= s <= b for a, s, b in zip(lo, seen, hi)), (now, rid, seen, lo, hi)
        ties += lo != hi
    assert ties > 0  # the boundary case happened
    assert sum(max(seen) >= 2 for _, _, seen in probe.calls) > n // 4  # instances were loaded


def test_jsq_results_are_identical_stepping_every_iteration_or_by_windows():
    rng = np.random.default_rng(2)
    n = 120
    wl = frame(list(zip(0.5 * np.sort(rng.integers(0, 80, n)), rng.integers(1, 400, n), rng.integers(1, 20, n))))

    def deps(window):
        return [
            {"name": "c", "kind": "colocated", "pool": constant_pool("jsq", 3, 0.5, max_num_seqs=4, max_window_iterations=window)},
            {"name": "d", "kind": "disaggregated", "prefill": constant_pool("jsq", 2, 0.5),
             "decode": constant_pool("jsq", 3, 0.5, max_num_seqs=4, max_window_iterations=window),
             "kv_link": {"kind": "infiniband"}},
        ]

    for stepped, windowed in zip(plans(deps(1)), plans(deps(1_000_000))):
        assert_frame_equal(run(stepped, wl), run(windowed, wl))


def test_power_of_two_runs_are_deterministic_in_one_or_several_processes(tmp_path):
    data = experiment(
        [{"name": "p2-a", "kind": "colocated", "pool": constant_pool("power_of_two", instances=4)},
         {"name": "p2-b", "kind": "disaggregated", "prefill": constant_pool("power_of_two", 3),
          "decode": constant_pool("power_of_two", 3), "kv_link": {"kind": "infiniband"}}],
        {"w": {"kind": "poisson", "rate_rps": 20.0, "num_requests": 150,
               "lengths": {"kind": "fixed", "prompt_tokens": 500, "output_tokens": 20}}},
        seed=11,
    )
    exp = load(data, tmp_path)
    serial = run_experiment(exp)
    again = run_experiment(exp)
    parallel = run_experiment(exp, jobs=2)
    assert_frame_equal(serial.requests, again.requests)
    assert_frame_equal(serial.requests, parallel.requests)
    other = run_experiment(exp, seed=12)
    # another seed draws other instances (the workload changes too; compare the routing only)
    assert not serial.requests["prefill_instance"].equals(other.requests["prefill_instance"])
    # the stream is the pair's: simulate() with pair_seed reproduces the runner's frame
    plan = serial.plans[0]
    wl = serial.workloads["w"]
    direct = requests_frame(simulate(plan, wl, seed=pair_seed(11, plan.name, "w")).requests, plan.name, "w")
    mine = serial.requests[serial.requests["deployment"] == plan.name].reset_index(drop=True)
    assert_frame_equal(direct, mine)
    # an int seed or a SeedSequence of it are the same stream; another seed routes the same requests
    # elsewhere
    assert_frame_equal(run(plan, wl, seed=5), run(plan, wl, seed=np.random.SeedSequence(5)))
    assert (run(plan, wl, seed=5)["prefill_instance"] != run(plan, wl, seed=6)["prefill_instance"]).any()
    caller = np.random.SeedSequence(5)
    run(plan, wl, seed=caller)
    assert caller.n_children_spawned == 0  # the caller's sequence is left as it was


def overloaded_prefill(mixed: dict | None) -> dict:
    d = {"name": "split", "kind": "disaggregated", "prefill": constant_pool(instances=1),
         "decode": constant_pool(instances=2), "kv_link": {"kind": "infiniband"}}
    if mixed is not None:
        d["mixed_pool"] = mixed
    return d


def test_mixed_pool_lowers_ttft_when_the_prefill_pool_is_overloaded_and_loses_nothing():
    # one prefill instance prefills one 3000-token prompt per 0.1 s iteration (budget 4096) while
    # prompts arrive every 60 ms: its queue grows without the mixed pool
    n = 200
    wl = frame([(0.06 * i, 3000, 50) for i in range(n)])
    plain_plan, mixed_plan = plans([overloaded_prefill(None) | {"name": "plain"}, overloaded_prefill({})])
    ended: list[int] = []
    plain = run(plain_plan, wl)
    mixed = run(mixed_plan, wl, on_request_end=lambda r: ended.append(r.id))
    assert sorted(ended) == list(range(n))  # every request ends exactly once
    assert (mixed["status"] == "completed").all() and (plain["status"] == "completed").all()
    assert mixed["ttft_s"].quantile(0.9) < 0.25 * plain["ttft_s"].quantile(0.9)
    borrowed = mixed[mixed["mixed_pool"]]
    assert 0 < len(borrowed) < n
    assert (borrowed["prefill_instance"] == -1).all() and borrowed["decode_instance"].isin([0, 1]).all()
    assert borrowed["kv_transfer_s"].isna().all()  # prefilled where it decodes: no KV transfer
    own = mixed[~mixed["mixed_pool"]]
    assert (own["prefill_instance"] == 0).all() and own["kv_transfer_s"].notna().all()
    assert not plain["mixed_pool"].any()
    slo = load(experiment([overloaded_prefill({})])).config.slo
    row = summarize_one(mixed, kind="disaggregated", gpus=24, usd_per_hour=1.0, slo=slo)
    assert row["mixed_pool_requests"] == len(borrowed)


def test_mixed_pool_stays_idle_below_its_threshold():
    wl = frame([(1.0 * i, 3000, 50) for i in range(20)])  # one prompt per second: never a queue
    (plan,) = plans([overloaded_prefill({"prefill_queue_tokens": 8192})])
    df = run(plan, wl)
    assert not df["mixed_pool"].any() and (df["prefill_instance"] == 0).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    router=st.sampled_from(ROUTER_NAMES),
    mixed=st.sampled_from([None, 2000, 8192]),
    rows=st.lists(st.tuples(st.floats(0.0, 0.3), st.integers(1, 3500), st.integers(1, 60)), min_size=1, max_size=40),
    instances=st.tuples(st.integers(1, 3), st.integers(1, 3)),
)
def test_every_request_ends_exactly_once_under_every_router(router, mixed, rows, instances):
    t, timed = 0.0, []
    for gap, p, o in rows:
        t += gap
        timed.append((t, p, o))
    wl = frame(timed)
    dep = {"name": "d", "kind": "disaggregated",
           "prefill": constant_pool(router, instances[0], 0.05), "decode": constant_pool(router, instances[1], 0.05),
           "kv_link": {"kind": "infiniband"}}
    if mixed is not None:
        dep["mixed_pool"] = {"prefill_queue_tokens": mixed}
    (plan,) = plans([dep])
    ended: list[int] = []
    df = run(plan, wl, on_request_end=lambda r: ended.append(r.id))
    assert sorted(ended) == list(range(len(wl)))
    done = df[df["status"] == "completed"]
    assert len(done) + (df["status"] == "rejected").sum() == len(wl)
    decoded = done[(done["output_tokens"] > 1) & ~done["decoded_on_prefill"]]  # one-token requests end at prefill
    assert (decoded["decode_instance"] >= 0).all() and (decoded["decode_instance"] < instances[1]).all()
    kept = done[done["decoded_on_prefill"]]  # the mixed pool's other direction: decoded where prefilled
    assert (kept["decode_instance"] == -1).all() and kept["kv_transfer_s"].isna().all()
    assert (kept["prefill_instance"] >= 0).all() and not (kept["mixed_pool"]).any()
    own = done[~done["mixed_pool"]]
    assert (own["prefill_instance"] >= 0).all() and (own["prefill_instance"] < instances[0]).all()
    assert (done[done["mixed_pool"]]["prefill_instance"] == -1).all()
    if mixed is None:
        assert not df["mixed_pool"].any() and not df["decoded_on_prefill"].any()


# ---- configuration -------------------------------------------------------------------------------------

cli = CliRunner()


def test_unknown_router_is_a_config_error_naming_field_and_value(tmp_path):
    data = experiment([{"name": "c", "kind": "colocated", "pool": constant_pool("fastest")}])
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli.invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    out = result.output
    assert out.strip().startswith("error:") and "Traceback" not in out
    for fragment in (str(path), "deployments[0].pool.router", "'fastest'", "least_tokens"):
        assert fragment in out, (fragment, out)


@pytest.mark.parametrize("router,fragments", [
    ({"kind": "prefix_aware", "balance_rel": 0.5}, ["deployments[0].pool.router.balance_rel", "0.5"]),
    ({"kind": "prefix_aware", "cache_threshold": 1.0}, ["deployments[0].pool.router.cache_threshold", "1.0"]),
    ({"kind": "jsq", "balance_rel": 2}, ["deployments[0].pool.router", "takes no parameters"]),
    ({"kind": "prefix_aware", "balance": 2}, ["deployments[0].pool.router.balance", "unknown key"]),
])
def test_router_parameter_errors(tmp_path, router, fragments):
    data = experiment([{"name": "c", "kind": "colocated", "pool": constant_pool(router)}])
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli.invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def test_mixed_pool_config():
    exp = load(experiment([overloaded_prefill({"prefill_queue_tokens": 5000})]))
    (plan,) = plan_deployments(exp)
    assert plan.mixed_pool == MixedPool(5000)
    assert plan_deployments(load(experiment([overloaded_prefill(None)])))[0].mixed_pool is None
    bad = experiment([{"name": "c", "kind": "colocated", "pool": constant_pool(), "mixed_pool": {}}])
    with pytest.raises(ConfigError, match="mixed_pool"):
        load(bad)
    with pytest.raises(ConfigError, match="prefill_queue_tokens"):
        load(experiment([overloaded_prefill({"prefill_queue_tokens": 0})]))


def test_prefix_aware_balance_default_is_the_pool_token_budget(monkeypatch):
    (plan,) = plans([{"name": "c", "kind": "colocated", "pool": constant_pool("prefix_aware", max_num_batched_tokens=2048)}])
    router = cluster._router_for(plan.pools[0], np.random.SeedSequence(0), 0)
    assert router == PrefixAwareRouter(2048, 1.5, 0.3)
    (plan,) = plans([{"name": "c", "kind": "colocated",
                      "pool": constant_pool({"kind": "prefix_aware", "balance_abs_tokens": 77, "cache_threshold": 0.5})}])
    assert cluster._router_for(plan.pools[0], np.random.SeedSequence(0), 0) == PrefixAwareRouter(77, 1.5, 0.5)


def test_mixed_pool_lets_prefill_instances_decode_when_the_decode_pool_is_full():
    """The other direction of Splitwise's mixed pool: a decode pool short of KV memory makes prefilled
    requests wait for blocks (back-pressure); with ``decode_on_prefill`` a prefill instance with room
    decodes them itself instead, so the wait for decode memory shrinks and nothing is lost."""
    from test_sim import activation_gib_for

    small_decode = constant_pool(instances=1, iteration_s=0.05, activation_reserve_gib=activation_gib_for(220, 8))
    wl = frame([(0.05 * i, 1000, 300) for i in range(60)])
    out = {}
    for name, mixed in (("off", None), ("on", {"prefill_queue_tokens": 10**9}),
                        ("on-but-not-this-way", {"prefill_queue_tokens": 10**9, "decode_on_prefill": False})):
        dep = {"name": name, "kind": "disaggregated", "prefill": constant_pool(instances=2, iteration_s=0.05),
               "decode": small_decode, "kv_link": {"kind": "infiniband"}}
        if mixed is not None:
            dep["mixed_pool"] = mixed
        (plan,) = plans([dep])
        out[name] = run(plan, wl)
    for df in out.values():
        assert (df["status"] == "completed").all() and not df["mixed_pool"].any()
    kept = out["on"]["decoded_on_prefill"]
    assert kept.sum() > 0
    assert not out["off"]["decoded_on_prefill"].any() and not out["on-but-not-this-way"]["decoded_on_prefill"].any()
    assert out["on"]["decode_wait_s"].max() < out["off"]["decode_wait_s"].max()
    assert out["on"]["e2e_s"].mean() < out["off"]["e2e_s"].mean()
    pd.testing.assert_frame_equal(out["off"].drop(columns="deployment"), out["on-but-not-this-way"].drop(columns="deployment"))
