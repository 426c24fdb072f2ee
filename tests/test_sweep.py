"""Specification of ``pdsim sweep``: grid expansion and point hashing are deterministic; every point is
stored once under the hash of its resolved config; a rerun skips finished points and an interrupted
sweep resumes; worker processes give the same results as one process; bad input exits 2 without a
traceback and a failing point is recorded while the others finish (exit 1).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pdsim.cli import app
from pdsim.config.load import load_experiment_file
from pdsim.errors import ConfigError
from pdsim.metrics.summary import SUMMARY_COLUMNS
from pdsim.sweep.cli import run_sweep
from pdsim.sweep.core import PointStore, expand_grid, parse_grid, point_hash, point_overrides

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "tiny.yaml"
# keep the sweep fast: only the 40-request trace workload
SMALL = ["workloads={trace: {kind: trace, path: ../traces/tiny/tiny.csv}}"]
GRID = ["scheduler.max_num_seqs=16,64", "slo.ttft_s=0.5,1.0"]

runner = CliRunner()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored(out: Path) -> dict[str, str]:
    """Point hash -> sha256 of its summary.csv."""
    return {p.name: sha(p / "summary.csv") for p in sorted((out / "points").iterdir())}


# ---- pure part ---------------------------------------------------------------------------------------

def test_grid_expansion_order_and_parsing():
    axes = parse_grid(["a.b=1,2", "c=x,[1, 2],{k: v}"])
    assert [a.key for a in axes] == ["a.b", "c"]
    assert axes[1].values == ("x", [1, 2], {"k": "v"})
    pts = expand_grid(axes)
    assert len(pts) == 6
    assert [point_overrides(axes, p) for p in pts[:4]] == [
        ["a.b=1", "c=x"], ["a.b=1", "c=[1, 2]"], ["a.b=1", "c={k: v}"], ["a.b=2", "c=x"],
    ]
    assert expand_grid(parse_grid([])) == [{}]


@pytest.mark.parametrize("spec", ["nokey", "=1,2", "a=1,,2", "a=[1,2"])
def test_bad_grid_spec(spec):
    with pytest.raises(ConfigError):
        parse_grid([spec])
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["a=1", "a=2"])


def test_point_hash_is_deterministic_and_sensitive():
    a = load_experiment_file(TINY, SMALL).config
    b = load_experiment_file(TINY, SMALL).config
    assert point_hash(a, 0) == point_hash(b, 0)
    assert len(point_hash(a, 0)) == 64
    assert point_hash(a, 0) != point_hash(a, 1)
    c = load_experiment_file(TINY, SMALL + ["scheduler.max_num_seqs=16"]).config
    assert point_hash(a, 0) != point_hash(c, 0)
    # a default written out explicitly is the same resolved config
    d = load_experiment_file(TINY, SMALL + ["scheduler.max_num_seqs=64"]).config
    assert point_hash(a, 0) == point_hash(d, 0)


def test_store_discards_temp_dirs(tmp_path):
    store = PointStore(tmp_path)
    store.prepare()
    tmp = store.new_tmp("abc")
    (tmp / "half.csv").write_text("x")
    assert store.prepare() == 1 and not tmp.exists() and not store.is_done("abc")


# ---- running -----------------------------------------------------------------------------------------

def test_grid_runs_every_point_once_and_rerun_skips(tmp_path):
    out = tmp_path / "sw"
    res = runner.invoke(app, ["sweep", str(TINY), *sum((["--grid", g] for g in GRID), []),
                              *sum((["--set", s] for s in SMALL), []), "--out", str(out), "-j", "1"])
    assert res.exit_code == 0, res.output
    assert "done 4, skipped 0" in res.output and "failed 0" in res.output
    before = stored(out)
    assert len(before) == 4
    table = pd.read_csv(out / "sweep.csv")
    assert list(table.columns) == ["scheduler.max_num_seqs", "slo.ttft_s", *SUMMARY_COLUMNS, "point"]
    assert len(table) == 4 * 3  # points x deployments (one workload)
    assert table[["scheduler.max_num_seqs", "slo.ttft_s"]].drop_duplicates().values.tolist() == [
        [16, 0.5], [16, 1.0], [64, 0.5], [64, 1.0]]
    # every stored point is a run directory whose resolved config carries its grid values
    for h in before:
        assert (out / "points" / h / "config.resolved.yaml").is_file()
        assert (out / "points" / h / "point.json").is_file()
    res2 = runner.invoke(app, ["sweep", str(TINY), *sum((["--grid", g] for g in GRID), []),
                               *sum((["--set", s] for s in SMALL), []), "--out", str(out), "-j", "1"])
    assert res2.exit_code == 0, res2.output
    assert "done 0, skipped 4" in res2.output
    assert stored(out) == before
    assert pd.read_csv(out / "sweep.csv").equals(table)


def test_interrupted_sweep_resumes(tmp_path):
    out = tmp_path / "sw"
    seen: list[str] = []

    def stop_after_two(h, err):
        seen.append(h)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(TINY, GRID, sets=SMALL, out=out, jobs=1, on_point=stop_after_two)
    assert len(stored(out)) == 2
    # a point killed midway leaves a temp dir: discarded, recomputed
    PointStore(out).new_tmp("0" * 64)
    ran: list[str] = []
    rep = run_sweep(TINY, GRID, sets=SMALL, out=out, jobs=1, on_point=lambda h, e: ran.append(h))
    assert (rep.done, rep.skipped, len(rep.failed), rep.discarded_tmp) == (2, 2, 0, 1)
    assert sorted(seen + ran) == sorted(stored(out)) and len(set(seen + ran)) == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_workers_match_in_process(tmp_path):
    r1 = run_sweep(TINY, GRID, sets=SMALL, out=tmp_path / "j1", jobs=1)
    r2 = run_sweep(TINY, GRID, sets=SMALL, out=tmp_path / "j2", jobs=2)
    assert r1.done == r2.done == 4
    pd.testing.assert_frame_equal(pd.read_csv(r1.csv), pd.read_csv(r2.csv), check_exact=True)
    assert stored(tmp_path / "j1") == stored(tmp_path / "j2")


def test_bad_grid_exits_2_without_traceback(tmp_path):
    for args in (["--grid", "scheduler.max_num_seqs"], ["--grid", "no.such.key=1,2"],
                 ["--grid", "scheduler.max_num_seqs=0,4"], ["--grid", "seed=1,2", "--seed", "3"]):
        res = runner.invoke(app, ["sweep", str(TINY), *args, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2, (args, res.output)
        assert isinstance(res.exception, SystemExit)
        assert "Traceback" not in res.output
        assert res.output.strip().startswith("error:") and res.output.count("error:") == 1, res.output
    assert not (tmp_path / "o").exists()  # nothing runs (or is created) on bad input


def test_failing_point_is_recorded_and_others_finish(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", str(TINY), "--grid", "deployments.colocated-A100.pool.tp=1,8", "--set", SMALL[0],
            "--out", str(out), "-j", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "done 1" in res.output and "failed 1" in res.output and "does not fit" in res.output
    failed = list((out / "failed").iterdir())
    assert len(failed) == 1 and "does not fit" in failed[0].read_text()
    assert len(stored(out)) == 1
    table = pd.read_csv(out / "sweep.csv")
    assert set(table["deployments.colocated-A100.pool.tp"]) == {8}
    # rerun: the finished point is skipped, the failed one retried (and fails again)
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 1 and "done 0, skipped 1" in res2.output and "failed 1" in res2.output


def test_ray_executor_without_ray_exits_2(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError
    res = runner.invoke(app, ["sweep", str(TINY), "--grid", GRID[0], "--executor", "ray", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == 'error: --executor ray needs ray (pip install "pdsim[ray]")'
    assert not (tmp_path / "o").exists()
    res = runner.invoke(app, ["sweep", str(TINY), "--executor", "dask", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "expected local or ray" in res.output
