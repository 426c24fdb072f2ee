"""Specification of ``pdsim sweep --executor ray``: a local Ray gives exactly the local executor's
results, a rerun skips every stored point, and a task whose worker dies is a failed point that the next
run retries (the store's resume rules are the local executor's). Skipped without ray installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from pdsim.cli import app  # noqa: E402
from pdsim.sweep.cli import plan_grid, run_sweep  # noqa: E402
from pdsim.sweep.core import PointStore  # noqa: E402
from pdsim.sweep.ray_executor import run_on_ray, run_point_in  # noqa: E402

from test_sweep import GRID, SMALL, TINY, stored  # noqa: E402

runner = CliRunner()


def sweep_args(out: Path, *extra: str) -> list[str]:
    return ["sweep", str(TINY), *sum((["--grid", g] for g in GRID), []), *sum((["--set", s] for s in SMALL), []),
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the tests that do not exercise start-up; run_sweep reuses it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_ray_matches_local_and_rerun_skips(tmp_path):
    # runs first, before the fixture exists: the sweep starts its own local Ray and shuts it down
    assert not ray.is_initialized()
    res = runner.invoke(app, sweep_args(tmp_path / "ray", "--executor", "ray", "-j", "2"))
    assert res.exit_code == 0, res.output
    assert "done 4, skipped 0" in res.output and "failed 0" in res.output
    assert not ray.is_initialized()
    res_local = runner.invoke(app, sweep_args(tmp_path / "local", "--executor", "local", "-j", "1"))
    assert res_local.exit_code == 0, res_local.output
    table = pd.read_csv(tmp_path / "ray" / "sweep.csv")
    pd.testing.assert_frame_equal(table, pd.read_csv(tmp_path / "local" / "sweep.csv"), check_exact=True)
    assert stored(tmp_path / "ray") == stored(tmp_path / "local")
    # rerun: every point is stored, nothing runs (Ray is not even started)
    res2 = runner.invoke(app, sweep_args(tmp_path / "ray", "--executor", "ray", "-j", "2"))
    assert res2.exit_code == 0, res2.output
    assert "done 0, skipped 4" in res2.output
    assert pd.read_csv(tmp_path / "ray" / "sweep.csv").equals(table)


def test_crashed_worker_is_a_failed_point_retried_next_run(tmp_path, local_ray):
    out = tmp_path / "sw"
    points = plan_grid(TINY, GRID, SMALL, None).points
    store = PointStore(out)
    store.prepare()
    victim = points[1].hash

    def crash_on_victim(cwd, args):  # a local function: Ray ships it by value
        if args[4] == victim:
            os._exit(1)  # the worker process dies mid-task
        return run_point_in(cwd, args)

    results: dict[str, str | None] = {}
    run_on_ray([(str(TINY), p.overrides, p.seed, str(out), p.hash, p.values) for p in points], jobs=2, address=None,
               finished=lambda h, err, running: results.__setitem__(h, err), record_failure=store.record_failure,
               task_fn=crash_on_victim)
    assert ray.is_initialized()  # an already running Ray is reused and left running
    assert sorted(results) == sorted(p.hash for p in points)
    assert [h for h, e in results.items() if e] == [victim]
    assert "WorkerCrashedError" in results[victim] or "died" in results[victim], results[victim]
    assert (out / "failed" / f"{victim}.txt").is_file()
    assert sorted(stored(out)) == sorted(p.hash for p in points if p.hash != victim)
    # the next run retries the failed point only, and succeeds
    rep = run_sweep(TINY, GRID, sets=SMALL, out=out, jobs=2, executor="ray")
    assert (rep.done, rep.skipped, len(rep.failed)) == (1, 3, 0)
    assert not list((out / "failed").iterdir())
    assert len(stored(out)) == 4
