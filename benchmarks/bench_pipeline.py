"""Speed of the pipelined engine (a benchmark, not a test): case (a) of bench_sim.py with PP stages.

The Azure conversation trace (all 19,366 requests) on 8 colocated Llama-2-70B instances of TP 8
(Splitwise's measured A100 table; with PP the table's iteration time is split evenly over the stages,
docs/pipeline.md), for ``pp`` in 1, 2 and 4. ``pp = 1`` runs the windowed engine (one event per run of
identical decode iterations); ``pp > 1`` steps one event per micro-batch. It prints the wall time,
simulated requests per second of wall time, engine events, the simulated makespan and TPOT p90.

    python benchmarks/bench_pipeline.py [--pp 1 2 4] [--requests N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdsim.config.load import load_experiment_file  # noqa: E402
from pdsim.sim.plan import plan_deployments  # noqa: E402
from pdsim.sim.runner import build_workloads, run_pair  # noqa: E402

PROFILE = str(ROOT / "gpu_profiles/splitwise_sim/perf_model.csv")
CONV = str(ROOT / "traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv")


def experiment(pp: int) -> dict:
    pool = {"gpu": "A100-80GB-SXM", "tp": 8, "pp": pp, "instances": 8, "router": "least_tokens",
            "latency": {"kind": "splitwise_table", "path": PROFILE}}
    return {
        "name": "bench-pp", "seed": 0,
        "model": {"name": "Llama-2-70b-hf", "max_context_tokens": 16384},
        "slo": {"ttft_s": 2.0, "tpot_s": 0.1},
        "scheduler": {"max_num_batched_tokens": 16384, "max_num_seqs": 64},
        "deployments": [{"name": f"colocated-8xA100-pp{pp}", "kind": "colocated", "pool": pool}],
        "workloads": {"w": {"kind": "trace", "path": CONV}},
    }


def run(pp: int, requests: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(experiment(pp)))
        exp = load_experiment_file(path)
        plan = plan_deployments(exp)[0]
        workload = build_workloads(exp, 0)["w"]
        if requests is not None:
            workload = workload.head(requests)
        t0 = time.perf_counter()
        res = run_pair(plan, "w", workload, exp.config.slo)
        wall = time.perf_counter() - t0
    n = len(workload)
    s = res.summary
    print(f"pp={pp}: requests {n:,}  wall {wall:.2f} s -> {n / wall:,.0f} simulated requests/s  "
          f"events {int(res.instances['events'].sum()):,}  iterations {int(res.instances['iterations'].sum()):,}  "
          f"TTFT p90 {s['ttft_p90_s'] * 1e3:.0f} ms  TPOT p90 {s['tpot_p90_s'] * 1e3:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pp", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--requests", type=int, default=None, help="first N requests of the trace only")
    args = ap.parse_args()
    for pp in args.pp:
        run(pp, args.requests)


if __name__ == "__main__":
    main()
