"""Accuracy of the op-level latency model on this CPU, against a real torch model.

    python benchmarks/accuracy_cpu.py [--profile cpu-...] [--measured benchmarks/results/cpu_iterations.csv]
    python benchmarks/accuracy_cpu.py --measure [--quick]     # measure the real model now, then compare

Reference: the iteration times of ``pdsim.live.model.LlamaModel`` (a real Llama-architecture decoder:
the tiny config ``pdsim/data/model_configs/pdsim-tiny-llama.json``, fp32, random weights) measured on
this CPU by ``benchmarks/measure_cpu_iterations.py``: pure prefill of b prompts of L tokens, and pure
decode of b sequences with c cached tokens each.

Prediction: ``pdsim.latency.oplevel.OpLevelModel`` on the CPU profile measured by
``pdsim profile --device cpu`` (``gpu_profiles/cpu-*``), which times single ops (GEMMs at the model's
shapes, SDPA prefill and decode attention, RMSNorm, RoPE, SiLU, residual add, embedding) and never the
model: prefill (b, L) is ``prefill_s(L, b)``; decode (b, c) is the pure-decode iteration with context
``b x (c + 1)`` (the new token's key is attended too). ``iteration_overhead_s`` is 0.

Both must run with the same torch thread count on an otherwise idle machine; the script refuses a
profile and a measurement whose thread counts differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdsim.latency.oplevel import OpLevelModel  # noqa: E402
from pdsim.models.arch import model_from_hf_config  # noqa: E402
from pdsim.profiles.format import find_profile, list_profile_dirs, load_profile  # noqa: E402

CONFIG = ROOT / "pdsim/data/model_configs/pdsim-tiny-llama.json"
MEASURED = ROOT / "benchmarks/results/cpu_iterations.csv"


def default_cpu_profile(threads: set[int], cpu_names: set[str]):
    """The first CPU profile under the search roots measured with the measurement's thread count on the
    measurement's CPU model (``cpu_name``)."""
    cpus = [p for p in map(load_profile, list_profile_dirs()) if p.meta.device_type == "cpu"]
    matching = [p for p in cpus if {p.meta.num_threads} == threads and {p.meta.device_name} == cpu_names]
    if not matching:
        raise SystemExit(f"no CPU profile measured on {sorted(cpu_names)} with {sorted(threads)} torch thread(s) among "
                         f"{[(p.name, p.meta.device_name, p.meta.num_threads) for p in cpus]}: run "
                         "`pdsim profile --device cpu --threads N --out gpu_profiles/cpu-NAME` first")
    return matching[0]


def compare(profile, measured: pd.DataFrame) -> pd.DataFrame:
    spec = model_from_hf_config("pdsim-tiny-llama", json.loads(CONFIG.read_text()))
    lm = OpLevelModel([profile], spec, tp=1, dtype="fp32", gpu=None)
    rows = []
    for r in measured.itertuples(index=False):
        b = int(r.batch_size)
        if r.phase == "prefill":
            L = int(r.prompt_len)
            pred = lm.prefill_s(L, b)
            size = L
        else:
            c = int(r.context_len)
            pred = lm.decode_s(b, b * (c + 1))
            size = c
        rows.append((r.phase, b, size, float(r.latency_s), pred))
    out = pd.DataFrame(rows, columns=["phase", "batch_size", "length", "measured_s", "predicted_s"])
    out["rel_error"] = (out.predicted_s - out.measured_s) / out.measured_s
    return out, lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", help="CPU profile name or directory (default: the first CPU profile measured with the same thread count)")
    ap.add_argument("--measured", type=Path, default=MEASURED, help="CSV written by measure_cpu_iterations.py")
    ap.add_argument("--measure", action="store_true", help="measure the real model now (full points unless --quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/accuracy_cpu.csv")
    args = ap.parse_args()
    if args.measure:
        from benchmarks.measure_cpu_iterations import full_points, measure, quick_points

        measured = measure(CONFIG, quick_points() if args.quick else full_points())
    else:
        measured = pd.read_csv(args.measured)
    threads = set(measured.num_threads)
    profile = find_profile(args.profile) if args.profile else default_cpu_profile(threads, set(measured.cpu_name))
    if profile.meta.num_threads is not None and threads != {profile.meta.num_threads}:
        raise SystemExit(f"thread counts differ: profile {profile.meta.num_threads}, measurement {sorted(threads)}")
    errors, lm = compare(profile, measured)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    errors.to_csv(args.out, index=False)
    pd.set_option("display.width", 160)
    g = errors.groupby("phase").rel_error
    table = pd.DataFrame({
        "points": g.size(),
        "median_abs_error": g.apply(lambda e: e.abs().median()),
        "p90_abs_error": g.apply(lambda e: e.abs().quantile(0.9)),
        "median_signed_error": g.median(),
    })
    print(f"op-level model on profile {profile.name!r} ({profile.source_kind}, {profile.meta.device_name}, "
          f"{profile.meta.num_threads} threads) vs the real tiny Llama in torch\n")
    print(table.to_string(formatters={c: "{:.1%}".format for c in table.columns if c != "points"}))
    print("\n" + errors.assign(measured_ms=errors.measured_s * 1e3, predicted_ms=errors.predicted_s * 1e3)
          [["phase", "batch_size", "length", "measured_ms", "predicted_ms", "rel_error"]].round(3).to_string(index=False))
    if lm.notes:
        print("\nnotes: " + "; ".join(lm.notes))
    print(f"\nper-point errors: {args.out}")


if __name__ == "__main__":
    main()
