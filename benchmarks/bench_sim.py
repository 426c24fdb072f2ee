"""Speed and memory of the simulator itself (a benchmark, not a test).

Cases (issue "simulator core", section Speed):

  (a) the Azure conversation trace, all 19,366 requests, on 8 colocated Llama-2-70B instances
      (DGX-A100, TP 8), at the trace's own rate;
  (b) a Splitwise-HA-sized cluster: 25 DGX-H100 prefill + 26 DGX-A100 decode instances, Poisson
      arrivals at 80 requests/s for 10 minutes (about 48,000 requests) with (prompt, output) lengths
      drawn from the conversation trace (the trace itself has only 19,366 requests, so its rate cannot be
      scaled to 80/s for 10 minutes without repeating it).

For each case it prints simulated requests per second of wall time (simulation and per-request frame,
not counting trace loading), the wall time, and the process's peak resident memory. Start-up is the
wall time of ``pdsim check experiments/tiny.yaml`` in a fresh interpreter (import, config validation,
latency-table load). ``--stepped`` also runs each case with one event per iteration
(``max_window_iterations=1``) to show what the decode windows save; the results are identical
(tests/test_sim.py checks that).

    python benchmarks/bench_sim.py [--stepped] [--only a|b]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdsim.config.load import load_experiment_file  # noqa: E402
from pdsim.sim.runner import build_workloads, run_pair  # noqa: E402
from pdsim.sim.plan import plan_deployments  # noqa: E402

PROFILE = str(ROOT / "gpu_profiles/splitwise_sim/perf_model.csv")
CONV = str(ROOT / "traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv")


def pool(gpu: str, n: int) -> dict:
    return {"gpu": gpu, "tp": 8, "instances": n, "router": "least_tokens", "latency": {"kind": "splitwise_table", "path": PROFILE}}


CASES = {
    "a": {
        "title": "(a) conv trace, 19,366 requests, 8 colocated A100 instances",
        "deployment": {"name": "colocated-8xA100", "kind": "colocated", "pool": pool("A100-80GB-SXM", 8)},
        "workload": {"kind": "trace", "path": CONV},
    },
    "b": {
        "title": "(b) Splitwise-HA cluster (25 H100 prefill + 26 A100 decode), 80 req/s x 600 s",
        "deployment": {"name": "Splitwise-HA", "kind": "disaggregated", "prefill": pool("H100-SXM", 25),
                       "decode": pool("A100-80GB-SXM", 26), "kv_link": {"kind": "infiniband", "bandwidth_gbps": 1600}},
        "workload": {"kind": "poisson", "rate_rps": 80.0, "duration_s": 600.0, "lengths": {"kind": "trace", "path": CONV}},
    },
}


def experiment(case: dict, max_window: int) -> dict:
    return {
        "name": "bench", "seed": 0,
        "model": {"name": "Llama-2-70b-hf", "max_context_tokens": 16384},
        "slo": {"ttft_s": 2.0, "tpot_s": 0.1},
        "scheduler": {"max_num_batched_tokens": 16384, "max_num_seqs": 64, "max_window_iterations": max_window},
        "deployments": [case["deployment"]],
        "workloads": {"w": case["workload"]},
    }


def run_case(key: str, max_window: int) -> None:
    case = CASES[key]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(experiment(case, max_window)))
        exp = load_experiment_file(path)
        plan = plan_deployments(exp)[0]
        workload = build_workloads(exp, 0)["w"]
        t0 = time.perf_counter()
        res = run_pair(plan, "w", workload, exp.config.slo)
        wall = time.perf_counter() - t0
    n = len(workload)
    events = int(res.instances["events"].sum())
    iters = int(res.instances["iterations"].sum())
    mode = "stepped" if max_window == 1 else "windowed"
    print(f"{case['title']} [{mode}]")
    print(f"  requests {n:,}  wall {wall:.2f} s  -> {n / wall:,.0f} simulated requests/s")
    print(f"  iterations {iters:,}  engine events {events:,}  completed {res.summary['completed']:,}  "
          f"TTFT p90 {res.summary['ttft_p90_s'] * 1e3:.0f} ms  TPOT p90 {res.summary['tpot_p90_s'] * 1e3:.1f} ms")
    print(f"  peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


def startup() -> None:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pdsim.cli", "check", str(ROOT / "experiments/tiny.yaml")],
                   check=True, capture_output=True, cwd=ROOT)
    print(f"start-up (pdsim check experiments/tiny.yaml, fresh interpreter): {time.perf_counter() - t0:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stepped", action="store_true", help="also run one event per iteration")
    ap.add_argument("--only", choices=sorted(CASES), help="run one case")
    args = ap.parse_args()
    startup()
    for key in [args.only] if args.only else sorted(CASES):
        run_case(key, 1_000_000)
        if args.stepped:
            run_case(key, 1)


if __name__ == "__main__":
    main()
