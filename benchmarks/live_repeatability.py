"""How far apart are two live runs of the same trace, engine and seed on this machine? The noise floor
of a sim-vs-live comparison.

    python benchmarks/live_repeatability.py RUN_A RUN_B [RUN_C ...]

Each RUN is a ``pdsim live`` run directory (for example two runs of ``benchmarks/validate_cpu.py`` with
different ``--out``). The table compares every later run with the first exactly as ``pdsim validate``
compares a simulation with a live run (``pdsim.live.validate.comparison_table``: TTFT, TPOT, ITL and E2E
at P50 / P90 / P99 over the requests completed in both; "rel. error" = (B - A) / A). A live run's
iterations are wall-clock timings, so on a shared machine they move from run to run; a sim-vs-live error
smaller than the live-vs-live difference cannot be told from noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdsim.live.validate import _itl, comparison_table, format_table, read_run_dir  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = [Path(a) for a in argv]
    first = runs[0]
    _, req_a, tok_a = read_run_dir(first)
    for other in runs[1:]:
        _, req_b, tok_b = read_run_dir(other)
        ok = set(req_a.loc[req_a["status"] == "completed", "request_id"]) & set(req_b.loc[req_b["status"] == "completed", "request_id"])
        itl_a = None if tok_a is None else _itl(tok_a, ok)
        itl_b = None if tok_b is None else _itl(tok_b, ok)
        table = comparison_table(req_a, req_b, itl_a, itl_b)
        print(f"{other} against {first} ('live' = the first run, 'sim' = the other):")
        print(format_table(table))
        for name in ("iterations.csv", "iterations_prefill.csv", "iterations_decode.csv"):
            if (first / name).is_file() and (other / name).is_file():
                a, b = pd.read_csv(first / name), pd.read_csv(other / name)
                print(f"{name}: {len(a)} vs {len(b)} iterations, busy {a['duration_s'].sum():.1f} vs {b['duration_s'].sum():.1f} s")
    return 0


if __name__ == "__main__":
    from pdsim.errors import PdsimError

    try:
        sys.exit(main(sys.argv[1:]))
    except PdsimError as exc:
        sys.exit(f"error: {exc}")
