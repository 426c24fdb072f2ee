"""Run the live engine's synthetic overhead grid (``pdsim.live.overhead.run_grid``) on a device and save
the raw iterations, to be compared with a latency profile later (``pdsim.live.overhead.compare_grid``),
for example on a borrowed GPU whose time is short:

    python benchmarks/engine_grid.py --device cuda --dtype bf16 \\
        --config pdsim/data/model_configs/llama-3.1-8b-shapes.json --batch-sizes 1,4,16,64 \\
        --prompt-lens 128,512,2048 --out results/grid

Writes ``OUT/grid_iterations.csv`` (one row per iteration with a successor: ``b, prompt_tokens, phase,
cycle_s`` and the engine's iteration log) and ``OUT/grid.json`` (engine settings, device, torch, the
command). The engine's KV capacity is sized to hold the largest grid point.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--config", type=Path, default=ROOT / "pdsim/data/model_configs/pdsim-tiny-llama.json")
    ap.add_argument("--batch-sizes", type=_ints, default=(1, 2, 4, 8, 16, 32))
    ap.add_argument("--prompt-lens", type=_ints, default=(64, 256))
    ap.add_argument("--output-tokens", type=int, default=33)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import torch

    from pdsim.live.engine import EngineConfig, LiveEngine
    from pdsim.live.overhead import run_grid

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    block = 16
    need = max(args.batch_sizes) * (max(args.prompt_lens) + args.output_tokens)
    blocks = -(-need // block) * 2 + 64  # room for the largest point (and the watermark)
    config = EngineConfig(model_config=str(args.config), dtype=args.dtype, device=args.device,
                          max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=max(args.batch_sizes),
                          block_size=block, kv_capacity_blocks=blocks)
    t0 = time.perf_counter()
    engine = LiveEngine(config)
    built_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    t1 = time.perf_counter()
    grid = run_grid(engine, batch_sizes=args.batch_sizes, prompt_lens=args.prompt_lens,
                    output_tokens=args.output_tokens)
    wall_s = time.perf_counter() - t1
    args.out.mkdir(parents=True, exist_ok=True)
    grid.to_csv(args.out / "grid_iterations.csv", index=False)
    device_name = (torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda")
                   else "cpu")
    meta = {"engine": asdict(config), "device_name": device_name, "torch_version": torch.__version__,
            "threads": torch.get_num_threads(), "batch_sizes": list(args.batch_sizes),
            "prompt_lens": list(args.prompt_lens), "output_tokens": args.output_tokens,
            "model_build_s": built_s, "grid_wall_s": wall_s, "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/engine_grid.py", *(argv if argv is not None else sys.argv[1:])])}
    (args.out / "grid.json").write_text(json.dumps(meta, indent=2) + "\n")
    by = grid.groupby("phase")[["cycle_s", "duration_s", "enqueue_s", "host_s"]].median() * 1e3
    print(f"grid: {len(grid)} iterations in {wall_s:.1f} s (model built in {built_s:.1f} s) on {device_name}")
    print("medians (ms):\n" + by.round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
