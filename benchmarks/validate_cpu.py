"""Live validation on this CPU: run ``pdsim live`` (the reference engine, default tiny Llama, fp32,
2 threads) on the Azure conversation trace, then ``pdsim validate`` against the committed
``cpu-epyc-2c`` profile, and print the comparison table.

    python benchmarks/validate_cpu.py [--quick] [--requests N] [--rate-scale X] [--out DIR]

Lengths are capped (prompt <= 512, output <= 64 tokens) so 300 requests take about 1.5 minutes; the
rate scale (default 1.1, i.e. the trace's arrivals compressed by 1.1) was picked in short trials so
the engine is busy most of the time and queues form (the busy fraction is printed). ``--quick``: 30
requests. Run it on an otherwise idle machine: the live side is wall-clock timing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdsim.live.cli import _live  # noqa: E402
from pdsim.live.validate import format_table, validate  # noqa: E402

TRACE = ROOT / "traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30 requests")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rate-scale", type=float, default=1.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results/validate-cpu")
    args = ap.parse_args()
    n = 30 if args.quick else args.requests
    live_dir, val_dir = args.out / "live", args.out / "validate"
    _live(trace=TRACE, trace_format="auto", rate_scale=args.rate_scale, max_requests=n, window_start_s=0.0,
          window_duration_s=None, max_prompt_tokens=512, max_output_tokens=64, out=live_dir, model_config=None,
          dtype="fp32", device="cpu", seed=0, max_num_batched_tokens=8192, max_num_seqs=256, block_size=16,
          kv_capacity_tokens=None, kv_capacity_blocks=None, watermark_fraction=0.01, ttft_slo_s=1.0,
          tpot_slo_s=0.1, slo_percentile=90.0, threads=args.threads)
    its = pd.read_csv(live_dir / "iterations.csv")
    req = pd.read_csv(live_dir / "requests.csv")
    span = float(req["finish_s"].max() - req["arrival_s"].min())
    print(f"engine busy {its['duration_s'].sum() / span * 100:.0f}% of {span:.1f} s "
          f"(first arrival to last finish), {len(its)} iterations")
    cmp = validate(live_dir, val_dir)
    print(format_table(cmp))
    print(f"report: {val_dir / 'report.md'}")


if __name__ == "__main__":
    main()
