"""Specification of the closed-loop workload (``kind: closed_loop``): N clients, each submitting its next
request when its previous one ends (finished or rejected) plus a think time.

Analytic checks use the constant latency model with dyadic times (powers of two), so every sum is exact
in binary floating point and the expected timestamps can be compared with ``==``: on one colocated
instance with room for all N requests in one batch, N clients with fixed lengths move in lockstep:
prefill (one iteration D) then ``output - 1`` decode iterations, so E2E = output x D for every request,
and each client's next arrival is its previous finish + think time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from pdsim.plots.render import render_run_dir
from pdsim.sim.cluster import simulate
from pdsim.sim.plan import plan_deployments
from pdsim.sim.runner import build_workloads, run_experiment
from pdsim.workload.closed_loop import CHUNK_ROWS, ClosedLoopRequests

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "gpu_profiles" / "splitwise_sim" / "perf_model.csv"
TINY_TRACE = REPO / "traces" / "tiny" / "tiny.csv"

D = 0.0625  # constant iteration time, s (2**-4: exact sums)


def pool(lat: dict | None = None, instances: int = 1, **sched) -> dict:
    p = {"gpu": "A100-80GB-SXM", "tp": 8, "instances": instances, "router": "least_tokens",
         "latency": lat or {"kind": "constant", "iteration_s": D}}
    if sched:
        p["scheduler"] = sched
    return p


def experiment(workload: dict, deployments: list[dict] | None = None, seed: int = 0) -> dict:
    return {
        "name": "cl", "seed": seed, "model": "Llama-2-70b-hf",
        "slo": {"ttft_s": 1.0, "tpot_s": 0.1},
        "scheduler": {"max_num_batched_tokens": 4096, "max_num_seqs": 64},
        "deployments": deployments or [{"name": "c", "kind": "colocated", "pool": pool()}],
        "workloads": {"w": workload},
    }


def closed(clients: int, *, lengths: dict | None = None, **kw) -> dict:
    return {"kind": "closed_loop", "clients": clients,
            "lengths": lengths or {"kind": "fixed", "prompt_tokens": 16, "output_tokens": 8}, **kw}


def load(tmp_path: Path, data: dict):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_experiment_file(path)


def run(tmp_path: Path, data: dict, seed: int | None = None) -> pd.DataFrame:
    """requests frame of the (single) deployment x workload pair."""
    exp = load(tmp_path, data)
    return run_experiment(exp, seed=seed).requests


def end_s(df: pd.DataFrame) -> np.ndarray:
    """When each request ended: finish (completed) or arrival (rejected at submission)."""
    return np.where(df["status"] == "completed", df["finish_s"], df["arrival_s"])


def max_outstanding(df: pd.DataFrame) -> int:
    """Most requests in the system at once, from the records (an end at t counts before a start at t)."""
    events = sorted([(t, -1) for t in end_s(df)] + [(t, 1) for t in df["arrival_s"]])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def client_chains(df: pd.DataFrame, think: np.ndarray | float = 0.0) -> list[list[int]]:
    """Reconstruct the clients' request sequences: each request that ended at t releases one client,
    which submits at t + think (the request whose arrival matches). Returns the chains of request ids."""
    df = df.sort_values("request_id")
    ends = end_s(df)
    think_after = np.broadcast_to(np.asarray(think, dtype=float), ends.shape)
    release = {}
    for rid, e, th in zip(df["request_id"], ends, think_after):
        release.setdefault(e + th, []).append(int(rid))
    chains: dict[int, list[int]] = {}
    for rid, t in zip(df["request_id"], df["arrival_s"]):
        prev = release.get(t)
        if prev:
            p = prev.pop(0)
            chain = next(c for c in chains.values() if c[-1] == p)
            chain.append(int(rid))
        else:
            chains[int(rid)] = [int(rid)]
    return list(chains.values())


# ---- analytic checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("clients", [1, 3, 8])
def test_lockstep_e2e_and_throughput_exact(tmp_path, clients):
    rounds = 5
    out = 8
    df = run(tmp_path, experiment(closed(clients, num_requests=clients * rounds)))
    assert len(df) == clients * rounds and (df["status"] == "completed").all()
    e2e = out * D  # prefill (1 iteration: first token) + out - 1 decode iterations
    assert (df["e2e_s"] == e2e).all()
    assert (df["ttft_s"] == D).all()
    # round r: all clients submit at r * e2e (request ids in submission order)
    expected_arrival = np.repeat(np.arange(rounds) * e2e, clients)
    assert (df["arrival_s"].to_numpy() == expected_arrival).all()
    summary = run_experiment(load(tmp_path, experiment(closed(clients, num_requests=clients * rounds)))).summary.iloc[0]
    # Little's law, exact: N clients, each with one request in the system at all times, E2E each
    assert summary["requests_per_s"] == clients / e2e
    assert summary["span_s"] == rounds * e2e


def test_think_time_fixed_little_law(tmp_path):
    clients, rounds, think = 4, 6, 0.25
    df = run(tmp_path, experiment(closed(clients, num_requests=clients * rounds, think_time_s=think)))
    e2e = 8 * D
    cycle = e2e + think
    assert (df["e2e_s"] == e2e).all()
    expected_arrival = np.repeat(np.arange(rounds) * cycle, clients)
    assert (df["arrival_s"].to_numpy() == expected_arrival).all()
    exp = load(tmp_path, experiment(closed(clients, num_requests=clients * rounds, think_time_s=think)))
    summary = run_experiment(exp).summary.iloc[0]
    # the span ends at the last finish, without the last think time
    assert summary["span_s"] == rounds * cycle - think
    assert summary["requests_per_s"] == clients * rounds / (rounds * cycle - think)
    # over whole cycles, throughput = N / (E2E + think) (Little's law with think time)
    in_cycles = (df["arrival_s"] < rounds * cycle).sum()
    assert in_cycles / (rounds * cycle) == clients / cycle


def test_single_client_serialises_requests(tmp_path):
    think = 0.125
    wl = closed(1, num_requests=30, think_time_s=think, lengths={"kind": "trace", "path": str(TINY_TRACE)})
    df = run(tmp_path, experiment(wl, [{"name": "c", "kind": "colocated", "pool": pool({"kind": "splitwise_table", "path": str(PROFILE)})}]))
    df = df.sort_values("request_id")
    ends = end_s(df)
    arrivals = df["arrival_s"].to_numpy()
    assert arrivals[0] == 0.0
    assert (arrivals[1:] == ends[:-1] + think).all()
    assert max_outstanding(df) == 1


def test_exponential_think_times_are_the_predrawn_ones(tmp_path):
    clients = 3
    wl = closed(clients, num_requests=40, think_time_s=0.5, think_time_distribution="exponential")
    exp = load(tmp_path, experiment(wl))
    workload = build_workloads(exp, exp.config.seed)["w"]
    rows = workload.head(40)
    assert (rows["think_s"] > 0).all() and rows["think_s"].nunique() == 40
    # exponential with mean think_time_s: sample mean within 5 standard errors, CV about 1
    many = workload.head(CHUNK_ROWS)["think_s"].to_numpy()
    assert abs(many.mean() - 0.5) < 5 * 0.5 / np.sqrt(len(many))
    assert abs(many.std() / many.mean() - 1.0) < 5 * np.sqrt(2.0 / len(many))
    df = run_experiment(exp).requests
    chains = client_chains(df, rows["think_s"].to_numpy())
    assert len(chains) == clients and sum(map(len, chains)) == 40
    by_id = df.set_index("request_id")
    for chain in chains:
        for prev, nxt in itertools.pairwise(chain):
            assert by_id.at[nxt, "arrival_s"] == by_id.at[prev, "finish_s"] + rows.at[prev, "think_s"]


def test_ramp_up_staggers_first_requests(tmp_path):
    clients = 4
    # E2E is 8 * D = 0.5 s, longer than the ramp: the first four submissions are the clients' first
    df = run(tmp_path, experiment(closed(clients, num_requests=2 * clients, ramp_up_s=0.25)))
    df = df.sort_values("request_id")
    assert df["arrival_s"].tolist()[:clients] == [0.0, 0.0625, 0.125, 0.1875]
    assert df["arrival_s"].tolist()[clients:] == [0.5, 0.5625, 0.625, 0.6875]  # each client: finish + 0
    # a ramp longer than a request: client 0 takes the last row before client 3 starts
    df = run(tmp_path, experiment(closed(clients, num_requests=clients, ramp_up_s=1.0)))
    assert df.sort_values("request_id")["arrival_s"].tolist() == [0.0, 0.25, 0.5, 0.5]


def test_duration_stops_submissions_and_drains(tmp_path):
    clients, duration = 2, 1.2
    df = run(tmp_path, experiment(closed(clients, duration_s=duration)))
    e2e = 8 * D  # 0.5 s: rounds at 0, 0.5, 1.0; none at 1.5 >= duration
    assert df["arrival_s"].max() < duration
    assert len(df) == clients * 3
    assert (df["status"] == "completed").all()
    assert df["finish_s"].max() == 3 * e2e  # the last round runs to completion after duration_s
    # with both rules, the first one to bind wins
    df2 = run(tmp_path, experiment(closed(clients, duration_s=duration, num_requests=3)))
    assert len(df2) == 3


# ---- invariants -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("clients", [1, 5, 32])
@pytest.mark.parametrize("kind", ["colocated", "disaggregated"])
def test_never_more_than_n_outstanding(tmp_path, clients, kind):
    table = {"kind": "splitwise_table", "path": str(PROFILE)}
    if kind == "colocated":
        dep = {"name": "c", "kind": "colocated", "pool": pool(table, instances=2)}
    else:
        dep = {"name": "d", "kind": "disaggregated", "prefill": {**pool(table), "gpu": "H100-SXM"},
               "decode": pool(table), "kv_link": {"kind": "infiniband"}}
    wl = closed(clients, num_requests=120, lengths={"kind": "trace", "path": str(TINY_TRACE)})
    df = run(tmp_path, experiment(wl, [dep]))
    assert len(df) == 120 and df["request_id"].tolist() == list(range(120))
    # every request ended exactly once (simulate checks it too), in a terminal status
    assert set(df["status"]) <= {"completed", "rejected"}
    assert df.loc[df["status"] == "completed", "finish_s"].notna().all()
    # ids are in submission order
    assert (np.diff(df["arrival_s"].to_numpy()) >= 0).all()
    assert max_outstanding(df) == min(clients, 120)
    # zero think time: every request but the clients' first arrives exactly when another one ended
    ends = set(end_s(df).tolist())
    later = df[df["request_id"] >= clients]
    assert later["arrival_s"].isin(ends).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(clients=st.integers(1, 12), extra=st.integers(0, 40), think_s=st.sampled_from([0.0, 0.01, 0.3]),
       instances=st.integers(1, 2), disaggregated=st.booleans(), seed=st.integers(0, 3))
def test_release_invariant_hypothesis(tmp_path, clients, extra, think_s, instances, disaggregated, seed):
    """Every submission after the clients' first is the release of an ended request: the sorted
    arrivals of requests N..M-1 are exactly the M - N earliest (end + think) times."""
    table = {"kind": "splitwise_table", "path": str(PROFILE)}
    if disaggregated:
        dep = {"name": "d", "kind": "disaggregated", "prefill": {**pool(table, instances), "gpu": "H100-SXM"},
               "decode": pool(table), "kv_link": {"kind": "infiniband"}}
    else:
        dep = {"name": "c", "kind": "colocated", "pool": pool(table, instances)}
    m = clients + extra
    wl = closed(clients, num_requests=m, think_time_s=think_s, lengths={"kind": "trace", "path": str(TINY_TRACE)})
    df = run(tmp_path, experiment(wl, [dep], seed=seed))
    assert df["request_id"].tolist() == list(range(m))
    assert (df["arrival_s"].iloc[:clients] == 0.0).all()
    assert max_outstanding(df) <= clients
    if (df["status"] == "completed").all():
        assert max_outstanding(df) == clients
    releases = np.sort(end_s(df) + think_s)[: m - clients]
    assert np.sort(df["arrival_s"].to_numpy()[clients:]).tolist() == releases.tolist()
    done = df[df["status"] == "completed"]
    assert (done["first_token_s"] >= done["arrival_s"]).all() and (done["finish_s"] >= done["first_token_s"]).all()


def test_rejected_requests_release_their_client(tmp_path):
    # 5000-token prompts exceed Llama-2-70B's 4096-token context: every request is rejected at once
    wl = closed(2, num_requests=6, think_time_s=0.5, lengths={"kind": "fixed", "prompt_tokens": 5000, "output_tokens": 4})
    df = run(tmp_path, experiment(wl))
    assert (df["status"] == "rejected").all() and len(df) == 6
    assert df.sort_values("request_id")["arrival_s"].tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]


def test_all_rejected_without_time_advancing_is_an_error(tmp_path):
    wl = closed(2, duration_s=10.0, lengths={"kind": "fixed", "prompt_tokens": 5000, "output_tokens": 4})
    exp = load(tmp_path, experiment(wl))
    with pytest.raises(ConfigError, match="rejected"):
        run_experiment(exp)


def test_open_loop_path_unchanged_by_type_dispatch(tmp_path):
    """A frame is still replayed open loop: arrival times are the frame's."""
    wl = {"kind": "poisson", "rate_rps": 2.0, "num_requests": 20, "lengths": {"kind": "fixed", "prompt_tokens": 16, "output_tokens": 8}}
    exp = load(tmp_path, experiment(wl))
    frame = build_workloads(exp, 0)["w"]
    assert isinstance(frame, pd.DataFrame)
    sim = simulate(plan_deployments(exp)[0], frame)
    assert [r.arrival_s for r in sim.requests] == frame["arrival_s"].tolist()


# ---- reproducibility ------------------------------------------------------------------------------------

def test_same_seed_same_frames_different_seed_different_lengths(tmp_path):
    wl = closed(4, num_requests=50, think_time_s=0.1, think_time_distribution="exponential",
                lengths={"kind": "trace", "path": str(TINY_TRACE)})
    table = {"kind": "splitwise_table", "path": str(PROFILE)}
    data = experiment(wl, [{"name": "c", "kind": "colocated", "pool": pool(table)}])
    exp = load(tmp_path, data)
    a, b = build_workloads(exp, 0)["w"].head(50), build_workloads(exp, 0)["w"].head(50)
    assert_frame_equal(a, b)
    c = build_workloads(exp, 1)["w"].head(50)
    assert not (a["prompt_tokens"].to_numpy() == c["prompt_tokens"].to_numpy()).all()
    assert not (a["think_s"].to_numpy() == c["think_s"].to_numpy()).all()
    assert_frame_equal(run_experiment(exp, seed=0).requests, run_experiment(exp, seed=0).requests)
    assert not run_experiment(exp, seed=0).requests["prompt_tokens"].equals(run_experiment(exp, seed=1).requests["prompt_tokens"])


def test_rows_do_not_depend_on_stop_rule_think_time_or_chunking(tmp_path):
    lengths = {"kind": "trace", "path": str(TINY_TRACE)}
    exp_n = load(tmp_path, experiment(closed(2, num_requests=5, lengths=lengths)))
    exp_d = load(tmp_path, experiment(closed(7, duration_s=3.0, think_time_s=1.0, think_time_distribution="exponential", lengths=lengths)))
    n = CHUNK_ROWS + 10  # crosses a chunk boundary
    rows_n = build_workloads(exp_n, 3)["w"].head(n)
    rows_d = build_workloads(exp_d, 3)["w"].head(n)
    assert_frame_equal(rows_n[["request_id", "prompt_tokens", "output_tokens"]], rows_d[["request_id", "prompt_tokens", "output_tokens"]])
    # the trace has 40 distinct rows; both sides of the chunk boundary draw from all of it
    assert rows_n["prompt_tokens"].iloc[:CHUNK_ROWS].nunique() > 10 and rows_n["prompt_tokens"].iloc[CHUNK_ROWS:].nunique() > 3
    # the simulation's requests take row i as request i
    df = run_experiment(exp_n, seed=3).requests
    assert df["prompt_tokens"].tolist() == rows_n["prompt_tokens"].iloc[:5].tolist()


def test_parallel_jobs_identical(tmp_path):
    wl = closed(3, num_requests=30, lengths={"kind": "trace", "path": str(TINY_TRACE)})
    deps = [{"name": "c1", "kind": "colocated", "pool": pool()},
            {"name": "c2", "kind": "colocated", "pool": pool(instances=2)}]
    exp = load(tmp_path, experiment(wl, deps))
    assert_frame_equal(run_experiment(exp, jobs=1).requests, run_experiment(exp, jobs=2).requests)


# ---- config errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("patch", "field", "value"), [
    ({"clients": 0}, "clients", "0"),
    ({"clients": -3}, "clients", "-3"),
    ({"think_time_s": -1.0}, "think_time_s", "-1"),
    ({"ramp_up_s": -0.5}, "ramp_up_s", "-0.5"),
    ({"think_time_distribution": "weibull"}, "think_time_distribution", "weibull"),
    ({"concurrency": 4}, "concurrency", ""),
])
def test_config_errors_name_field_and_value(tmp_path, patch, field, value):
    wl = {**closed(4, num_requests=10), **patch}
    with pytest.raises(ConfigError) as info:
        load(tmp_path, experiment(wl))
    msg = str(info.value)
    assert "exp.yaml" in msg and field in msg and value in msg
    assert msg.count("\n") < 4  # one clear error, not a wall of union alternatives


def test_config_error_without_stop_rule(tmp_path):
    wl = closed(4)
    with pytest.raises(ConfigError, match="num_requests, duration_s or both"):
        load(tmp_path, experiment(wl))


def test_config_error_exponential_needs_mean(tmp_path):
    with pytest.raises(ConfigError, match="think_time_s > 0"):
        load(tmp_path, experiment(closed(2, num_requests=4, think_time_distribution="exponential")))


def test_closed_loop_requests_validates():
    pool_ = np.array([1], dtype=np.int64)
    with pytest.raises(ValueError, match="clients"):
        ClosedLoopRequests(0, 1, None, 0.0, "fixed", 0.0, pool_, pool_, np.random.SeedSequence(0))
    with pytest.raises(ValueError, match="stop rule"):
        ClosedLoopRequests(1, None, None, 0.0, "fixed", 0.0, pool_, pool_, np.random.SeedSequence(0))


# ---- CLI ------------------------------------------------------------------------------------------------

def test_cli_run_closed_loop(tmp_path):
    wl = closed(4, num_requests=24, think_time_s=0.125)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(wl), sort_keys=False))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out / "requests.csv")
    assert len(df) == 24 and (df["status"] == "completed").all()
    assert max_outstanding(df) == 4
    manifest = yaml.safe_load((out / "manifest.json").read_text())
    assert manifest["workloads"]["w"] == {
        "arrival_process": "closed_loop", "clients": 4, "num_requests": 24, "duration_s": None,
        "think_time_s": 0.125, "think_time_distribution": "fixed", "ramp_up_s": 0.0,
    }
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "requests"] == 24
    render_run_dir(out)  # the report says the rates are an outcome
    assert "Closed loop of 4 clients" in (out / "report.md").read_text()


def test_cli_bad_clients_exits_2(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(closed(0, num_requests=3)), sort_keys=False))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "clients" in result.output


def test_example_experiment_runs():
    exp = load_experiment_file(REPO / "experiments" / "closed_loop.yaml")
    res = run_experiment(exp)
    assert set(res.summary["workload"]) == {"c4", "c16-think"}
    for (dep, wl), df in res.requests.groupby(["deployment", "workload"]):
        clients = exp.config.workloads[wl].clients
        assert max_outstanding(df) <= clients, (dep, wl)
    c4 = res.requests[res.requests["workload"] == "c4"]
    assert c4.groupby("deployment").size().eq(80).all()


# ---- sequential lengths (the same requests as pdsim replay / benchmark_serving) --------------------------

def test_sequential_lengths_take_trace_rows_in_order(tmp_path):
    trace = pd.read_csv(TINY_TRACE)
    n = len(trace)
    lengths = {"kind": "trace", "path": str(TINY_TRACE), "sampling": "sequential"}
    exp = load(tmp_path, experiment(closed(3, num_requests=2 * n + 5, lengths=lengths)))
    rows = build_workloads(exp, 0)["w"].head(CHUNK_ROWS + 7)
    idx = np.arange(CHUNK_ROWS + 7) % n
    assert rows["prompt_tokens"].tolist() == trace["prompt_tokens"].to_numpy()[idx].tolist()
    assert rows["output_tokens"].tolist() == trace["output_tokens"].to_numpy()[idx].tolist()
    # no randomness: any seed gives the same rows
    assert_frame_equal(rows, build_workloads(exp, 99)["w"].head(CHUNK_ROWS + 7))
    df = run_experiment(exp).requests
    assert df["prompt_tokens"].tolist() == trace["prompt_tokens"].to_numpy()[np.arange(2 * n + 5) % n].tolist()


def test_sequential_lengths_open_loop(tmp_path):
    trace = pd.read_csv(TINY_TRACE)
    lengths = {"kind": "trace", "path": str(TINY_TRACE), "sampling": "sequential"}
    wl = {"kind": "poisson", "rate_rps": 1.0, "num_requests": 45, "lengths": lengths}
    frame = build_workloads(load(tmp_path, experiment(wl)), 0)["w"]
    assert frame["output_tokens"].tolist() == trace["output_tokens"].to_numpy()[np.arange(45) % len(trace)].tolist()
    # the default (uniform) is unchanged: the arrivals do not depend on the lengths' sampling
    uniform = build_workloads(load(tmp_path, experiment({**wl, "lengths": {"kind": "trace", "path": str(TINY_TRACE)}})), 0)["w"]
    assert frame["arrival_s"].tolist() == uniform["arrival_s"].tolist()
    assert frame["output_tokens"].tolist() != uniform["output_tokens"].tolist()


# ---- pdsim replay --concurrency N is the same closed loop ------------------------------------------------

TOKEN_GAP_S = 0.01


class _Streamer(BaseHTTPRequestHandler):
    """Streams ``max_tokens`` completion events, one every TOKEN_GAP_S, then [DONE] (HTTP/1.0, close)."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for _ in range(body["max_tokens"]):
            time.sleep(TOKEN_GAP_S)
            self.wfile.write(b'data: {"choices": [{"text": "a"}]}\n\n')
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


def test_replay_with_concurrency_is_the_same_closed_loop():
    """``replay_async(..., concurrency=N)`` on requests that all arrive at 0 sends request i only when
    one of the N slots is free, in request order: the semantics of ``ClosedLoopArrivals`` (request i
    takes row i; a client submits when its previous request ends). Checked on the wall clock from the
    replay's own records, without timing tolerances: orderings and counts only."""
    from pdsim.live.replay import replay_async

    clients, m = 3, 10
    frame = pd.DataFrame({"request_id": np.arange(m), "arrival_s": np.zeros(m),
                          "prompt_tokens": np.full(m, 4), "output_tokens": (np.arange(m) % 4) + 2})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Streamer)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        recs, _ = asyncio.run(replay_async(frame, f"http://127.0.0.1:{httpd.server_address[1]}/v1", "m",
                                           concurrency=clients, timeout_s=20))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert all(r.completed for r in recs), [r.error for r in recs]
    sent = np.array([r.sent_s for r in recs])
    end = np.array([r.token_times_s[-1] for r in recs])
    assert (np.diff(sent) >= 0).all()  # request i is sent i-th: row i goes to the i-th submission
    # as a closed loop: the send of request i >= N follows the end of at least i - N + 1 earlier requests,
    # so never more than N are in flight
    for i in range(clients, m):
        assert (end[:i] <= sent[i]).sum() >= i - clients + 1
    df = pd.DataFrame({"arrival_s": sent, "finish_s": end, "status": "completed"})
    assert max_outstanding(df) == clients


def test_goodput_search_refuses_a_closed_loop(tmp_path):
    """The goodput search bisects an offered rate; a closed loop has none: one clear error."""
    from pdsim.search.config import load_search_file

    search_yaml = REPO / "experiments" / "search_llama70b.yaml"
    wl = "workload={kind: closed_loop, clients: 4, num_requests: 10, lengths: {kind: fixed, prompt_tokens: 8, output_tokens: 2}}"
    load_search_file(search_yaml)  # the file itself is valid
    with pytest.raises(ConfigError, match="closed loop") as info:
        load_search_file(search_yaml, [wl])
    assert "search_llama70b.yaml" in str(info.value) and "closed_loop" in str(info.value)
