"""Regenerate tests/golden/tiny_summary.csv from experiments/tiny.yaml.

    python tests/golden/regenerate.py

When to use it: only after a change that is *meant* to change simulated results (a scheduler or
latency-model fix, a new default, a corrected catalog value). Run the test suite first and make sure
tests/test_golden.py fails for the reason you expect; then regenerate, look at the diff of the CSV
(``git diff tests/golden/tiny_summary.csv``), and explain in the commit message which numbers moved
and why. Never regenerate to silence an unexplained failure: that failure is what the file is for.
"""

from __future__ import annotations

from pathlib import Path

from pdsim.config.load import load_experiment_file
from pdsim.sim.runner import run_experiment

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXPERIMENT = REPO / "experiments" / "tiny.yaml"
GOLDEN = HERE / "tiny_summary.csv"


def tiny_summary():
    """The summary frame of a fresh run of experiments/tiny.yaml (its own seed, serial)."""
    return run_experiment(load_experiment_file(EXPERIMENT)).summary


def main() -> None:
    tiny_summary().to_csv(GOLDEN, index=False)  # shortest round-trip repr: exact
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
