"""The prefix-cache hit ceiling of a Mooncake trace: the share of full 512-token prompt units that
repeat an earlier request's, with an unbounded cache on one instance, also as a prefix hit rate in
the summary's terms (the figure docs/serving.md and the README compare the simulated hit rates with).

    python benchmarks/mooncake_prefix_ceiling.py [TRACE] [--window-s 1200]

Counts, in arrival order, each prompt's full units that a whole-prompt hit may reuse (the same rule as
``pdsim.core.kv``: at least one prompt token is computed), and how many of them appeared in an earlier
request at the same position of the prefix chain. Mooncake hash ids are prefix-chained, so a unit
seen before implies its whole prefix was seen too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdsim.workload.traces import load_trace

UNIT_TOKENS = 512  # one Mooncake hash id per 512-token block (FAST25-release README)


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", default=str(root / "traces/mooncake/conversation_trace.jsonl"))
    ap.add_argument("--window-s", type=float, default=None, help="only the first this many seconds")
    args = ap.parse_args()
    df = load_trace(args.trace, "mooncake")
    if args.window_s is not None:
        df = df[df["arrival_s"] - df["arrival_s"].min() < args.window_s]
    seen: set[int] = set()
    reusable = repeated = 0
    for hashes, prompt in zip(df["hash_ids"], df["prompt_tokens"]):
        units = min(len(hashes), (int(prompt) - 1) // UNIT_TOKENS)
        reusable += units
        repeated += sum(1 for h in hashes[:units] if h in seen)
        seen.update(hashes)
    prompt_tokens = int(df["prompt_tokens"].sum())
    print(f"{len(df)} requests, {reusable} reusable full units, {repeated} seen before: "
          f"{repeated / reusable:.1%} of full units; as a prefix hit rate (reused tokens / prompt tokens, "
          f"the summary's prefix_hit_rate): {repeated * UNIT_TOKENS / prompt_tokens:.1%}")


if __name__ == "__main__":
    main()
