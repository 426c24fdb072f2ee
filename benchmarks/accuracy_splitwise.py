"""Accuracy of the op-level latency model against Splitwise's measured step times.

    python benchmarks/accuracy_splitwise.py [--overhead-s 0] [--out benchmarks/results/accuracy_splitwise.csv]

Reference: ``gpu_profiles/splitwise_sim/perf_model.csv`` (Mutinifni/splitwise-sim@8f99e7dc, MIT):
prefill time (``prompt_time``) and per-token decode time (``token_time``) of Llama-2-70B (TP 2/4/8) and
BLOOM-176B (TP 8) on DGX-A100 and DGX-H100, fp16, each point repeated about five times (the median of
the repeats is the measurement here). The power-capped H100 rows are synthetic and the Llama-2-70B TP2
batch-64 rows broken (see ``pdsim/latency/table.py``): both are left out, as in the table model.

Prediction: ``pdsim.latency.oplevel.OpLevelModel`` built only from imported per-op profiles, never fitted
to this file, in two variants:

- ``aiconfigurator``: ``{a100_sxm,h100_sxm}-aiconfigurator`` (vLLM kernels: GEMM, FlashAttention,
  custom/NCCL all-reduce); elementwise ops by the datasheet memory roofline;
- ``vidur+aiconfigurator``: Vidur's per-op timings of these exact Llama-2-70B shapes
  (``{a100,h100}-vidur``: GEMMs, norms, activation, all-reduce) first, attention from aiconfigurator.

A prefill point (batch b of prompts of p tokens) is ``prefill_s(p, b)``; a decode point is the
pure-decode iteration at batch b with context ``p + 64`` per sequence (the mean context while the
measurement generated 128 tokens). Output: per (GPU, phase) the median and P90 of |error| and the
median signed error, per variant; the per-point CSV goes to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pdsim.hardware.gpus import load_gpu_catalog
from pdsim.latency.oplevel import OpLevelModel
from pdsim.latency.table import (
    DECODE_TOKENS_GENERATED as DECODE_TOKENS,
    EXCLUDED_ROWS,
    GPU_KEYS,
    MODEL_KEYS,
    SYNTHETIC_HARDWARE,
    load_splitwise_table,
)
from pdsim.models.arch import load_model_catalog, model_from_hf_config
from pdsim.profiles.format import find_profile

REPO = Path(__file__).resolve().parents[1]
MODELS = {key: name for name, key in MODEL_KEYS.items()}  # the file's keys -> catalog names
GPUS = {key: name for name, key in GPU_KEYS.items()}
VARIANTS = {
    "aiconfigurator": {"a100-80gb": ["a100_sxm-aiconfigurator"], "h100-80gb": ["h100_sxm-aiconfigurator"]},
    "vidur+aiconfigurator": {
        "a100-80gb": ["a100-vidur", "a100_sxm-aiconfigurator"],
        "h100-80gb": ["h100-vidur", "h100_sxm-aiconfigurator"],
    },
}


def measured_points(path: Path) -> pd.DataFrame:
    df = load_splitwise_table(path)
    df = df[~df.hardware.isin(list(SYNTHETIC_HARDWARE))]
    for (model, tp, bs), _ in EXCLUDED_ROWS.items():
        df = df[~((df.model == model) & (df.tensor_parallel == tp) & (df.batch_size == bs))]
    df = df[df.token_size == DECODE_TOKENS]
    keys = ["model", "hardware", "tensor_parallel", "prompt_size", "batch_size"]
    return df.groupby(keys)[["prompt_time", "token_time"]].median().reset_index()


def predict(points: pd.DataFrame, variant: str, overhead_s: float) -> pd.DataFrame:
    catalog, gpus = load_model_catalog(), load_gpu_catalog()
    rows = []
    for (model, hw, tp), g in points.groupby(["model", "hardware", "tensor_parallel"]):
        spec = model_from_hf_config(MODELS[model], catalog[MODELS[model]])
        profiles = [find_profile(name, REPO / "gpu_profiles") for name in VARIANTS[variant][hw]]
        lm = OpLevelModel(profiles, spec, tp=int(tp), dtype="fp16", gpu=gpus[GPUS[hw]], iteration_overhead_s=overhead_s)
        for r in g.itertuples(index=False):
            b, p = int(r.batch_size), int(r.prompt_size)
            ctx = p + DECODE_TOKENS // 2
            rows.append((variant, model, hw, int(tp), "prefill", p, b, r.prompt_time / 1e3, lm.prefill_s(p, b)))
            rows.append((variant, model, hw, int(tp), "decode", p, b, r.token_time / 1e3, lm.decode_s(b, b * ctx)))
    out = pd.DataFrame(rows, columns=["variant", "model", "gpu", "tp", "phase", "prompt_tokens", "batch_size", "measured_s", "predicted_s"])
    out["rel_error"] = (out.predicted_s - out.measured_s) / out.measured_s
    return out


def summarize(errors: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    g = errors.groupby(by).rel_error
    return pd.DataFrame({
        "points": g.size(),
        "median_abs_error": g.apply(lambda e: e.abs().median()),
        "p90_abs_error": g.apply(lambda e: e.abs().quantile(0.9)),
        "median_signed_error": g.median(),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overhead-s", type=float, default=0.0, help="iteration_overhead_s of the op-level model (default 0)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "accuracy_splitwise.csv")
    args = ap.parse_args()
    points = measured_points(REPO / "gpu_profiles" / "splitwise_sim" / "perf_model.csv")
    errors = pd.concat([predict(points, v, args.overhead_s) for v in VARIANTS], ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    errors.to_csv(args.out, index=False)
    pd.set_option("display.width", 160)
    fmt = {c: "{:.1%}".format for c in ("median_abs_error", "p90_abs_error", "median_signed_error")}
    print(f"op-level model vs Splitwise perf_model.csv (iteration_overhead_s={args.overhead_s})\n")
    print(summarize(errors, ["variant", "gpu", "phase"]).to_string(formatters=fmt))
    print()
    print(summarize(errors, ["variant", "model", "gpu", "tp", "phase"]).to_string(formatters=fmt))
    print(f"\nper-point errors: {args.out}")


if __name__ == "__main__":
    main()
