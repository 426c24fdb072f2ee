"""CLI run of the flagship experiment on a short window of the real Azure traces."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from pdsim.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_splitwise_flagship_runs_on_a_window_of_the_real_traces(tmp_path):
    out = tmp_path / "sw"
    result = CliRunner().invoke(app, [
        "run", str(ROOT / "experiments/splitwise.yaml"), "--out", str(out), "--no-plots",
        "--set", "workloads.code.window_duration_s=30", "--set", "workloads.conv.window_duration_s=30",
    ])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    designs = {"Baseline-A100", "Baseline-H100", "Splitwise-AA", "Splitwise-HH", "Splitwise-HA"}
    assert set(summary.deployment) == designs
    assert set(summary.workload) == {"code", "conv"}
    assert len(summary) == 10
    # every request of the window is accounted for, in every design
    requests = pd.read_csv(out / "requests.csv")
    per_pair = requests.groupby(["deployment", "workload"]).size()
    assert per_pair.groupby("workload").nunique().eq(1).all()
    assert (summary.completed + summary.rejected == summary.requests).all()
    # iso-cost: every design's $/h within 1.1 % of the others' (as experiments/splitwise.yaml states)
    cost = summary.groupby("deployment").usd_per_hour.first()
    assert cost.max() / cost.min() < 1.011
    # disaggregated designs move KV, colocated ones do not
    disagg = summary[summary.kind == "disaggregated"]
    assert (disagg.kv_transfer_p50_s > 0).all()
    assert summary[summary.kind == "colocated"].kv_transfer_p50_s.isna().all()
    for name in designs:
        assert name in result.output
