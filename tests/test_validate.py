"""``pdsim validate``: a tiny live run of the default tiny Llama (2 threads, matching the committed
cpu-epyc-2c profile) is simulated request for request; the report exists, every relative error is finite,
the simulated run has the live run's requests and tokens; bad input exits 2 with one ``error:`` line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from pdsim.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    old = torch.get_num_threads()
    out = tmp_path_factory.mktemp("live") / "run"
    try:
        res = runner.invoke(app, ["live", "--trace", "traces/tiny/tiny.csv", "--rate-scale", "4", "--max-requests", "12",
                                  "--max-prompt-tokens", "48", "--max-output-tokens", "8", "--threads", "2",
                                  "--out", str(out)])
    finally:
        torch.set_num_threads(old)
    assert res.exit_code == 0, res.output
    return out


def test_validate_live_run(live_run, tmp_path):
    out = tmp_path / "val"
    res = runner.invoke(app, ["validate", "--live-run", str(live_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| TTFT | P50 |" in res.output
    report = (out / "report.md").read_text()
    assert "cpu-epyc-2c" in report and "iteration_overhead_s = 0" in report
    for f in ("requests.csv", "summary.csv", "comparison.csv", "cdf_ttft.png", "cdf_tpot.png", "cdf_e2e.png",
              "scatter_e2e.png"):
        assert (out / f).is_file(), f
    cmp = pd.read_csv(out / "comparison.csv")
    assert set(cmp["metric"]) == {"TTFT", "TPOT", "ITL", "E2E"}
    assert np.isfinite(cmp["rel_error"]).all()
    live = pd.read_csv(live_run / "requests.csv")
    sim = pd.read_csv(out / "requests.csv")
    assert len(sim) == len(live) and (sim["status"] == "completed").all()
    assert sorted(sim["request_id"]) == sorted(live["request_id"])
    assert sim["output_tokens"].sum() == live["output_tokens"].sum()
    assert sim["prompt_tokens"].sum() == live["prompt_tokens"].sum()


def _err(res):
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    return res.exit_code, lines


def test_bad_input_exits_2(live_run, tmp_path):
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(tmp_path / "nope")]))
    assert code == 2 and len(lines) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(empty)]))
    assert code == 2 and "manifest.json" in lines[0]
    # no CPU profile for the recorded thread count
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("requests.csv", "tokens.csv"):
        (bad / f).write_bytes((live_run / f).read_bytes())
    man = json.loads((live_run / "manifest.json").read_text())
    man["threads"] = 97
    (bad / "manifest.json").write_text(json.dumps(man))
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(bad), "--out", str(tmp_path / "o")]))
    assert code == 2 and "num_threads 97" in lines[0]
    code, lines = _err(runner.invoke(app, ["validate", "--live-run", str(bad), "--profile", "no-such-profile"]))
    assert code == 2 and len(lines) == 1
