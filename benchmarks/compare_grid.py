"""Compare a live-engine grid run (``benchmarks/engine_grid.py``) with a latency profile: the engine's
``iteration_overhead_s`` (additive) and its host floor (``pdsim.live.overhead.compare_grid`` /
``fit_host_floor``), written as the JSON ``pdsim validate --overhead-file`` reads:

    python benchmarks/compare_grid.py benchmarks/results/h200/grid --profile h200_sxm-measured \\
        --out benchmarks/results/h200/engine_overhead_h200_sxm-measured.json

The model config and dtype are the grid run's (``grid.json``); the GPU of a GPU profile comes from the
catalog (its datasheet serves the roofline fallbacks). Prints the summary; writes the JSON and, beside
it, the per-iteration comparison as CSV.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid_dir", type=Path, help="output folder of benchmarks/engine_grid.py")
    ap.add_argument("--profile", required=True, help="profile name or folder")
    ap.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = ap.parse_args(argv)

    import pandas as pd

    from pdsim.hardware.gpus import load_gpu_catalog
    from pdsim.latency.oplevel import OpLevelModel
    from pdsim.live.engine import load_model_config
    from pdsim.live.overhead import compare_grid, summary_lines
    from pdsim.models.arch import model_from_hf_config
    from pdsim.profiles.format import find_profile

    meta = json.loads((args.grid_dir / "grid.json").read_text())
    engine = meta["engine"]
    config = engine["model_config"]
    path = Path(config) if config is None or Path(config).is_absolute() else ROOT / config
    spec = model_from_hf_config(Path(config).stem if config else "pdsim-tiny-llama", load_model_config(path))
    prof = find_profile(args.profile)
    catalog = load_gpu_catalog()
    gpu = catalog.get(prof.meta.gpu) if prof.meta.device_type != "cpu" else None
    latency = OpLevelModel([prof], spec, tp=1, pp=1, dtype=engine["dtype"], gpu=gpu, iteration_overhead_s=0.0)
    grid = pd.read_csv(args.grid_dir / "grid_iterations.csv")
    summary, df = compare_grid(grid, latency, engine_config=engine, load_before=meta.get("load_average_before"),
                               load_after=meta.get("load_average_after"))
    summary.update({"profile": prof.name, "device_name": meta.get("device_name"), "torch_version": meta.get("torch_version"),
                    "grid_created_utc": meta.get("created_utc"), "grid_command": meta.get("command"),
                    "command": " ".join(["python", "benchmarks/compare_grid.py", *(argv if argv is not None else sys.argv[1:])])})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    df.to_csv(args.out.with_suffix(".csv"), index=False)
    print("\n".join(summary_lines(summary)))
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
