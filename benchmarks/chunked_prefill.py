"""Chunked prefill on a mixed trace: the figures of docs/serving.md ("Chunked prefill").

    python benchmarks/chunked_prefill.py

Llama-3.1-70B on one DGX-A100 (TP 8, op-level latency from the aiconfigurator A100 profile), 120
requests at 4 requests/s (Poisson, seed 3), 85 % 200-token and 15 % 7,000-token prompts, 64 output
tokens each; no chunking (budget 8192) against chunks of at most 512 tokens in a 2,048-token budget.
The same scenario is asserted in tests/test_scheduler_depth.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pdsim.config.load import load_experiment_file
from pdsim.metrics.records import requests_frame
from pdsim.sim.cluster import simulate
from pdsim.sim.plan import plan_deployments


def main() -> None:
    rng = np.random.default_rng(3)
    n = 120
    arrivals = np.cumsum(rng.exponential(0.25, n))
    prompts = np.where(rng.random(n) < 0.15, 7000, 200)
    wl = pd.DataFrame({"request_id": np.arange(n), "arrival_s": arrivals, "prompt_tokens": prompts,
                       "output_tokens": np.full(n, 64)})
    lat = {"kind": "op_level", "profile": "a100_sxm-aiconfigurator"}
    pool = {"gpu": "A100-80GB-SXM", "tp": 8, "instances": 1, "latency": lat}
    exp = {
        "name": "chunked", "model": "Llama-3.1-70B", "slo": {"ttft_s": 1.0, "tpot_s": 0.1},
        "scheduler": {"max_num_batched_tokens": 8192, "max_num_seqs": 64},
        "deployments": [
            {"name": "no chunking (budget 8192)", "kind": "colocated", "pool": pool},
            {"name": "chunks of 512, budget 2048", "kind": "colocated", "pool": {**pool, "scheduler": {
                "enable_chunked_prefill": True, "max_num_batched_tokens": 2048, "long_prefill_token_threshold": 512}}},
        ],
        "workloads": {"w": {"kind": "poisson", "rate_rps": 1.0, "num_requests": 1,
                            "lengths": {"kind": "fixed", "prompt_tokens": 8, "output_tokens": 2}}},
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "exp.yaml"
        path.write_text(yaml.safe_dump(exp, sort_keys=False))
        plans = plan_deployments(load_experiment_file(path))
    print(f"{'deployment':<28} {'P90 TTFT short ms':>18} {'mean TTFT long ms':>18} {'max ITL ms':>11} {'P90 TPOT ms':>12}")
    for plan in plans:
        df = requests_frame(simulate(plan, wl).requests, plan.name, "w")
        short, long = df[df.prompt_tokens == 200], df[df.prompt_tokens == 7000]
        print(f"{plan.name:<28} {short.ttft_s.quantile(0.9) * 1e3:>18.0f} {long.ttft_s.mean() * 1e3:>18.0f} "
              f"{df.itl_max_s.max() * 1e3:>11.0f} {df.tpot_s.quantile(0.9) * 1e3:>12.1f}")


if __name__ == "__main__":
    main()
