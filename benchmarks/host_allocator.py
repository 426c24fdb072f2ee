"""What keeping freed host memory (``pdsim.live.hostmem.retain_freed_memory``) does to the live model's
iteration times on this CPU.

    python benchmarks/host_allocator.py [--pairs 3] [--rounds 8] [--threads 2]

Runs ``--pairs`` x 2 child processes, alternating "glibc defaults" and "freed memory retained" (a
process cannot return to glibc's dynamic defaults once ``mallopt`` was called, hence one process per
variant; alternating spreads a drifting machine over both). Each child builds the tiny Llama (fp32,
seed 0) with 16 sequences of 256 cached tokens, then for ``--rounds`` rounds times a prefill of
8 x 256 tokens, one of 16 x 256 tokens (fresh sequences, freed after) and 3 decode steps of the 16
sequences (rolled back after each), as an engine interleaves them. Prints each child's medians, the
median over the children of each variant, and the op-level model's prediction on the CPU profile of
the thread count. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "pdsim/data/model_configs/pdsim-tiny-llama.json"
SHAPES = ("prefill 8x256", "prefill 16x256", "decode 16 @ 256")


def child(retain: bool, rounds: int, threads: int) -> dict:
    import torch

    from pdsim.live.hostmem import retain_freed_memory
    from pdsim.live.model import LlamaModel

    torch.set_num_threads(threads)
    alloc = retain_freed_memory() if retain else None
    model = LlamaModel(json.loads(CONFIG.read_text()), dtype="fp32", seed=0)
    for i in range(16):
        model.step(prefill=[(("d", i), [1 + i] * 256)])
    decode = [(("d", i), 5) for i in range(16)]
    times: dict[str, list[float]] = {s: [] for s in SHAPES}
    for r in range(rounds):
        for shape, n in ((SHAPES[0], 8), (SHAPES[1], 16)):
            batch = [(("p", r, n, i), [3 + i] * 256) for i in range(n)]
            t = time.perf_counter()
            model.step(prefill=batch)
            times[shape].append(time.perf_counter() - t)
            for sid, _ in batch:
                model.free(sid)
        for _ in range(3):
            t = time.perf_counter()
            model.step(decode=decode)
            times[SHAPES[2]].append(time.perf_counter() - t)
            for i in range(16):
                model.kv_truncate(("d", i), 256)
    return {"retain": retain, "allocator": alloc, **{s: statistics.median(v) for s, v in times.items()}}


def predictions(threads: int) -> dict[str, float]:
    from pdsim.latency.base import BatchShape
    from pdsim.latency.oplevel import OpLevelModel
    from pdsim.models.arch import model_from_hf_config
    from pdsim.profiles.format import list_profile_dirs, load_profile

    cpus = [p for p in map(load_profile, list_profile_dirs()) if p.meta.device_type == "cpu" and p.meta.num_threads == threads]
    if not cpus:
        return {}
    lm = OpLevelModel([cpus[0]], model_from_hf_config("pdsim-tiny-llama", json.loads(CONFIG.read_text())),
                      tp=1, dtype="fp32", gpu=None)
    return {"profile": cpus[0].name, SHAPES[0]: lm.prefill_s(256, 8), SHAPES[1]: lm.prefill_s(256, 16),
            SHAPES[2]: lm.iteration_s(BatchShape(decode_seqs=16, decode_context_tokens=16 * 257))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=("default", "retain"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "retain", args.rounds, args.threads)))
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = []
    for _ in range(args.pairs):
        for variant in ("default", "retain"):
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--rounds", str(args.rounds),
                                  "--threads", str(args.threads)], check=True, capture_output=True, text=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{variant:8s} " + "  ".join(f"{s}: {res[s] * 1e3:7.1f} ms" for s in SHAPES), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    alloc = next(r["allocator"] for r in results if r["retain"])
    print(f"\nretained: {alloc}")
    pred = predictions(args.threads)
    print(f"\n{'':16s} {'defaults':>10s} {'retained':>10s} {'change':>8s}" + (f" {'op-level':>10s}" if pred else ""))
    for s in SHAPES:
        a = statistics.median(r[s] for r in results if not r["retain"]) * 1e3
        b = statistics.median(r[s] for r in results if r["retain"]) * 1e3
        line = f"{s:16s} {a:8.1f} ms {b:8.1f} ms {(b - a) / a:+7.1%}"
        if pred:
            line += f" {pred[s] * 1e3:8.1f} ms"
        print(line)
    if pred:
        print(f"(op-level: the model on profile {pred['profile']}, iteration_overhead_s = 0; medians over the children)")


if __name__ == "__main__":
    main()
