"""Live validation on this CPU: run ``pdsim live`` (the reference engine, default tiny Llama, fp32) on the
Azure conversation trace, colocated or disaggregated, then ``pdsim validate`` against the CPU profile of
the thread count, and print the comparison table.

    python benchmarks/validate_cpu.py [--mode colocated|disaggregated] [--quick] [--requests N]
        [--rate-scale X] [--max-num-batched-tokens N] [--chunked-prefill] [--threads N]
        [--overhead-file JSON | --measure-overhead]
        [--overhead-model additive|by_phase|scaled|host_floor] [--grid-after] [--out DIR]

- ``--mode colocated`` (default): one engine, 2 threads; simulated on the 2-thread profile of this CPU
  model whose cache flush suits the model (``cpu-xeon-2c-l2`` on the Intel Xeon VM, ``cpu-epyc-2c`` on
  the AMD EPYC one; ``--profile``).
- ``--mode disaggregated``: a prefill and a decode worker process, 1 thread each (so each has one of the
  2 cores), the KV of every request sent over torch.distributed gloo; simulated as one prefill and one
  decode instance on the 1-thread profile (``cpu-xeon-1t-l2``, ``cpu-epyc-1t``), linked by that profile's measured gloo
  send/recv table.

Lengths are capped (prompt <= 512, output <= 64 tokens) so 300 requests take about 1.5 minutes; the
rate scale (default 1.1, i.e. the trace's arrivals compressed by 1.1) was picked in short colocated
trials so the engine is busy most of the time and queues form (the busy fraction of every engine /
worker is printed: check it before reading the errors). ``--quick``: 30 requests.

``--grid-after`` runs the grid again right after the live run and prints how far the host's speed moved
in between (``pdsim.live.overhead.grid_drift``): a validation is only as good as the host's steadiness,
and ``pdsim validate``'s report gives the drift inside the run (``host_speed``).

``iteration_overhead_s`` (the engine's per-iteration time the op-level model does not charge) is 0
unless ``--overhead-file`` gives a measurement (``benchmarks/measure_cpu_iterations.py
--engine-overhead``), or ``--measure-overhead`` measures it first, on a synthetic grid and not on the
validation trace (``pdsim.live.overhead``). ``--overhead-model`` says how it is charged (default
``scaled``: the profiled kernels' time multiplied by the grid's median cycle / kernels, over its decode
iterations of each batch size on decode iterations and over its prefill iterations on iterations that
prefill; docs/live.md, "The cache, the host's speed and the noise floor"). Run it on an otherwise idle machine: the live side is
wall-clock timing; the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdsim.live.cli import _live  # noqa: E402
from pdsim.live.validate import _overhead_option, format_table, validate  # noqa: E402

TRACE = ROOT / "traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
THREADS = {"colocated": 2, "disaggregated": 1}


def busy_line(label: str, its: pd.DataFrame, span_s: float) -> str:
    """Share of the span the engine spent in iterations (model step + host time)."""
    busy = its["duration_s"].sum() + (its["host_s"].sum() if "host_s" in its.columns else 0.0)
    return f"{label} busy {busy / span_s * 100:.0f}% of {span_s:.1f} s, {len(its)} iterations"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("colocated", "disaggregated"), default="colocated")
    ap.add_argument("--quick", action="store_true", help="30 requests")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rate-scale", type=float, default=1.1)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192, help="the engine's token budget per iteration")
    ap.add_argument("--chunked-prefill", action="store_true", help="the engine (and the simulation) chunk prefills")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (colocated: 2; disaggregated: 1 per worker)")
    ap.add_argument("--profile", default=None,
                    help="CPU profile (default: the profile of this CPU model and the thread count, as pdsim validate picks it)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--overhead-file", type=Path, default=None, help="iteration_overhead_s measurement (JSON)")
    group.add_argument("--measure-overhead", action="store_true",
                       help="measure iteration_overhead_s first (benchmarks/measure_cpu_iterations.py --engine-overhead)")
    ap.add_argument("--overhead-model", choices=("additive", "by_phase", "scaled", "host_floor"), default="scaled",
                    help="how the grid's measurement is charged (pdsim.live.validate.OVERHEAD_MODELS; default scaled)")
    ap.add_argument("--grid-after", action="store_true",
                    help="run the overhead grid again right after the live run and print how far the host's speed moved "
                         "between the grid before (--overhead-file's CSV or --measure-overhead) and after")
    ap.add_argument("--out", type=Path, default=None, help="default results/validate-cpu-<mode>")
    args = ap.parse_args()
    n = 30 if args.quick else args.requests
    threads = args.threads or THREADS[args.mode]
    profile = args.profile or _this_cpu_profile(threads)
    out = args.out or ROOT / f"results/validate-cpu-{args.mode}"
    live_dir, val_dir = out / "live", out / "validate"
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    overhead_file = args.overhead_file
    if args.measure_overhead:
        overhead_file = out / f"engine_overhead_{profile}.json"
        subprocess.run([sys.executable, str(ROOT / "benchmarks/measure_cpu_iterations.py"), "--engine-overhead",
                        "--threads", str(threads), "--profile", profile, "--out", str(overhead_file)], check=True)
    _live(trace=TRACE, trace_format="auto", rate_scale=args.rate_scale, max_requests=n, window_start_s=0.0,
          window_duration_s=None, max_prompt_tokens=512, max_output_tokens=64, out=live_dir, model_config=None,
          dtype="fp32", device="cpu", seed=0, max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=256,
          block_size=16,
          kv_capacity_tokens=None, kv_capacity_blocks=None, watermark_fraction=0.01, ttft_slo_s=1.0,
          tpot_slo_s=0.1, slo_percentile=90.0, threads=threads, mode=args.mode, chunked_prefill=args.chunked_prefill)
    print(f"load average after the live run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.grid_after:
        _grid_after(overhead_file, out / f"engine_overhead_{Path(profile).name}_after.json", threads, profile)
    req = pd.read_csv(live_dir / "requests.csv")
    span = float(req["finish_s"].max() - req["arrival_s"].min())
    logs = {"engine": "iterations.csv"} if args.mode == "colocated" else {
        "prefill worker": "iterations_prefill.csv", "decode worker": "iterations_decode.csv"}
    for label, fname in logs.items():
        print(busy_line(label, pd.read_csv(live_dir / fname), span) + " (first arrival to last finish)")
    overrides = {}
    if overhead_file is not None:
        overrides = _overhead_option(0.0, overhead_file, args.overhead_model)
        prefill = overrides.get("iteration_overhead_prefill_s")
        scale = overrides.get("kernel_time_scale")
        print(f"iteration_overhead_s = {overrides['iteration_overhead_s'] * 1e3:.3f} ms"
              + ("" if prefill is None else f", iteration_overhead_prefill_s = {prefill * 1e3:.3f} ms")
              + ("" if scale is None else f", kernel_time_scale = {scale[0]} (decode) and {scale[1]:.3f} (prefill)")
              + f" ({args.overhead_model}) from {overhead_file}")
    cmp = validate(live_dir, val_dir, profile=profile, overrides=overrides)
    print(format_table(cmp))
    print(f"report: {val_dir / 'report.md'}")


def _this_cpu_profile(threads: int) -> str:
    """The profile ``pdsim validate`` picks for the default tiny Llama (fp32) on this CPU."""
    from pdsim.live.engine import load_model_config
    from pdsim.live.validate import find_cpu_profile
    from pdsim.models.arch import dtype_bytes, model_from_hf_config
    from profile_tools.device import cpu_vendor_and_name

    weights = model_from_hf_config("pdsim-tiny-llama", load_model_config(None)).weight_bytes_per_gpu(1, 1, dtype_bytes("fp32"))
    return find_cpu_profile(threads, None, cpu_name=cpu_vendor_and_name()[1], weight_bytes=weights).name


def _grid_after(before_json: Path | None, after_json: Path, threads: int, profile: str) -> None:
    """The overhead grid again, right after the live run, and its drift from the grid before."""
    from pdsim.errors import ConfigError
    from pdsim.live.overhead import grid_drift

    if before_json is None or not before_json.with_suffix(".csv").is_file():
        raise ConfigError("--grid-after needs the grid before the live run: --measure-overhead, or --overhead-file "
                          "with its .csv beside it")
    subprocess.run([sys.executable, str(ROOT / "benchmarks/measure_cpu_iterations.py"), "--engine-overhead",
                    "--threads", str(threads), "--profile", profile, "--out", str(after_json)], check=True)
    drift = grid_drift(pd.read_csv(before_json.with_suffix(".csv")), pd.read_csv(after_json.with_suffix(".csv")))
    print(f"host drift between the grid before and after the live run ({drift['iterations']} iterations of the same "
          f"shapes): decode x{drift['decode_ratio_median']:.3f}, prefill x{drift['prefill_ratio_median']:.3f} "
          "(after / before, median cycle time)")


if __name__ == "__main__":
    from pdsim.errors import PdsimError

    try:
        main()
    except PdsimError as exc:  # bad input (e.g. a negative measured overhead): one line, no traceback;
        sys.exit(f"error: {exc}")  # the live run directory written before is kept
