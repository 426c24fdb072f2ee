"""Specification of ``pdsim sweep``: grid expansion and point hashing are deterministic; every point is
stored once under the hash of its resolved config; a rerun skips finished points and an interrupted
sweep resumes; worker processes give the same results as one process; bad input exits 2 without a
traceback and a failing point is recorded while the others finish (exit 1).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pdsim.cli import app
from pdsim.config.load import load_experiment_file
from pdsim.errors import ConfigError
from pdsim.metrics.summary import SUMMARY_COLUMNS
from pdsim.sweep.cli import run_sweep
from pdsim.sweep.core import (
    PointStore,
    expand_grid,
    parse_grid,
    point_hash,
    point_overrides,
)

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
                              *sum((["--set", s] for s in SMALL), []), "--out", str(out), "-j", "1", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "done 4, skipped 0" in res.output and "sweep plots" not in res.output and "failed 0" in res.output
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
                               *sum((["--set", s] for s in SMALL), []), "--out", str(out), "-j", "1", "--no-plots"])
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


# ---- the sweep: block of the experiment YAML ---------------------------------------------------------

def tiny_yaml(tmp_path: Path, name: str, block: str = "") -> Path:
    """experiments/tiny.yaml with absolute paths and only the trace workload, plus an optional YAML block."""
    text = TINY.read_text().replace("path: ../", f"path: {REPO}/")
    text = text[: text.index("workloads:")] + f"workloads:\n  trace: {{kind: trace, path: {REPO}/traces/tiny/tiny.csv}}\n"
    path = tmp_path / name
    path.write_text(text + block)
    return path


BLOCK = "sweep:\n  grid:\n    scheduler.max_num_seqs: [16, 64]\n"


@pytest.mark.parametrize("block, expected", [
    ("sweep:\n  grid:\n    scheduler.max_num_seqs: []\n", "sweep.grid.scheduler.max_num_seqs: List should have at least 1 item"),
    ("sweep:\n  grid:\n    scheduler.max_num_seqs: 16\n", "sweep.grid.scheduler.max_num_seqs: Input should be a valid list (got 16)"),
    ("sweep:\n  grid: {}\n", "sweep.grid: Dictionary should have at least 1 item"),
    ("sweep: 5\n", "sweep: Input should be a valid dictionary"),
    ("sweep:\n  grid: {x: [1]}\n  out: here\n", "sweep.out: unknown key (got 'here')"),
    ("sweep:\n  grid:\n    sweep.grid: [1]\n", "cannot sweep itself"),
])
def test_block_shape_is_validated_by_the_schema(tmp_path, block, expected):
    path = tiny_yaml(tmp_path, "bad.yaml", block)
    for load in (lambda: load_experiment_file(path), lambda: run_sweep(path, [], out=tmp_path / "o", jobs=1)):
        with pytest.raises(ConfigError) as err:
            load()
        assert str(err.value).startswith(f"{path}: ") and expected in str(err.value), str(err.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("grid, expected", [
    ("no.such.key: [1, 2]", "sweep.grid.no.such.key: value 1: no section 'no' in the experiment"),
    ("scheduler.max_num_seqs: [16, 0]", "sweep.grid.scheduler.max_num_seqs: value 0: scheduler.max_num_seqs: Input should be greater than or equal to 1 (got 0)"),
    ("scheduler.no_such_field: [1]", "sweep.grid.scheduler.no_such_field: value 1: scheduler.no_such_field: unknown key"),
])
def test_block_key_or_value_that_does_not_resolve_is_one_error(tmp_path, grid, expected):
    path = tiny_yaml(tmp_path, "bad.yaml", f"sweep:\n  grid:\n    slo.ttft_s: [0.5, 1.0]\n    {grid}\n")
    res = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert res.output.count("error:") == 1 and "Traceback" not in res.output
    assert f"{path}: {expected}" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "o").exists()


def test_block_seed_axis_and_seed_option_conflict(tmp_path):
    path = tiny_yaml(tmp_path, "s.yaml", "sweep:\n  grid:\n    seed: [0, 1]\n")
    with pytest.raises(ConfigError, match=r"sweep.grid.seed and --seed cannot be combined"):
        run_sweep(path, [], out=tmp_path / "o", seed=3)


def test_block_is_not_part_of_the_resolved_config_or_hash(tmp_path):
    plain = load_experiment_file(tiny_yaml(tmp_path, "plain.yaml")).config
    with_block = load_experiment_file(tiny_yaml(tmp_path, "block.yaml", BLOCK)).config
    assert with_block.sweep is not None and with_block.sweep.grid == {"scheduler.max_num_seqs": [16, 64]}
    assert plain.sweep is None
    assert "sweep" not in with_block.model_dump(mode="json")
    assert point_hash(with_block, 0) == point_hash(plain, 0)
    assert point_hash(with_block, 0) != point_hash(load_experiment_file(TINY, SMALL).config, 0)  # other paths


def test_block_and_grid_merge_and_share_points(tmp_path):
    block = tiny_yaml(tmp_path, "block.yaml", BLOCK)
    plain = tiny_yaml(tmp_path, "plain.yaml")
    out = tmp_path / "sw"
    # the file's block alone
    res = runner.invoke(app, ["sweep", str(block), "--out", str(out), "-j", "1", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "done 2, skipped 0" in res.output and "sweep: block of" in res.output
    first = stored(out)
    assert len(first) == 2
    assert list(pd.read_csv(out / "sweep.csv").columns[:2]) == ["scheduler.max_num_seqs", "deployment"]
    # the same points from --grid on a file without a block: stored once, nothing runs
    res = runner.invoke(app, ["sweep", str(plain), "--grid", "scheduler.max_num_seqs=16,64", "--out", str(out), "-j", "1",
                              "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "done 0, skipped 2" in res.output
    assert stored(out) == first
    # --grid adds an axis after the block's; slo.ttft_s=1.0 is tiny's own value, so half the points exist
    rep = run_sweep(block, ["slo.ttft_s=0.5,1.0"], out=out, jobs=1)
    assert (rep.points, rep.done, rep.skipped) == (4, 2, 2)
    assert (rep.axes, rep.file_axes, rep.replaced) == (["scheduler.max_num_seqs", "slo.ttft_s"], ["scheduler.max_num_seqs"], [])
    table = pd.read_csv(rep.csv)
    assert table[["scheduler.max_num_seqs", "slo.ttft_s"]].drop_duplicates().values.tolist() == [
        [16, 0.5], [16, 1.0], [64, 0.5], [64, 1.0]]
    assert set(first) <= set(stored(out)) and len(stored(out)) == 4
    # a --grid key that is also in the block replaces the block's values (the command line wins)
    res = runner.invoke(app, ["sweep", str(block), "--grid", "scheduler.max_num_seqs=64", "--out", str(out), "-j", "1",
                              "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "1 points: done 0, skipped 1" in res.output and "--grid replaced scheduler.max_num_seqs" in res.output
    table = pd.read_csv(out / "sweep.csv")
    assert set(table["scheduler.max_num_seqs"]) == {64} and len(table) == 3


def test_pdsim_run_runs_the_base_experiment_of_a_block(tmp_path):
    block = tiny_yaml(tmp_path, "block.yaml", BLOCK)
    plain = tiny_yaml(tmp_path, "plain.yaml")
    res = runner.invoke(app, ["run", str(block), "--out", str(tmp_path / "b"), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "note: ran the base experiment only; its sweep: block (2 points) runs with `pdsim sweep" in " ".join(res.output.split())
    res = runner.invoke(app, ["run", str(plain), "--out", str(tmp_path / "p"), "--no-plots"])
    assert res.exit_code == 0 and "sweep" not in res.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / "summary.csv"), pd.read_csv(tmp_path / "p" / "summary.csv"),
                                  check_exact=True)
    assert (tmp_path / "b" / "config.resolved.yaml").read_text() == (tmp_path / "p" / "config.resolved.yaml").read_text()


def test_check_shows_the_grid_of_the_example():
    example = REPO / "experiments" / "sweep_example.yaml"
    res = runner.invoke(app, ["check", str(example)])
    assert res.exit_code == 0, res.output
    assert "sweep: grid of 8 points: workloads.poisson.rate_rps (4) x scheduler.max_num_seqs (2)" in res.output
    from pdsim.sweep.cli import plan_grid

    plan = plan_grid(example, [], [], None)
    assert [p.values for p in plan.points[:3]] == [
        {"workloads.poisson.rate_rps": 1, "scheduler.max_num_seqs": 8},
        {"workloads.poisson.rate_rps": 1, "scheduler.max_num_seqs": 64},
        {"workloads.poisson.rate_rps": 2, "scheduler.max_num_seqs": 8}]
    assert len({p.hash for p in plan.points}) == 8
    # the base experiment is one of the points (rate 4, max_num_seqs 64): `pdsim run` shares its hash
    base = point_hash(load_experiment_file(example).config, 0)
    assert [p.values for p in plan.points if p.hash == base] == [{"workloads.poisson.rate_rps": 4, "scheduler.max_num_seqs": 64}]


# ---- plots across a sweep ----------------------------------------------------------------------------

def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_sweep_writes_one_plot_per_numeric_axis_and_pdsim_plot_rerenders(tmp_path):
    out = tmp_path / "sw"
    res = runner.invoke(app, ["sweep", str(TINY), *sum((["--grid", g] for g in GRID), []), "--grid", "seed=0,1",
                              *sum((["--set", s] for s in SMALL), []), "--out", str(out), "-j", "1"])
    assert res.exit_code == 0, res.output
    expected = {"sweep_scheduler.max_num_seqs.png", "sweep_slo.ttft_s.png"}  # no plot against seed
    assert "sweep plots:" in res.output and all(n in res.output.replace("\n", "") for n in expected), res.output
    assert {p.name for p in (out / "plots").iterdir()} == expected
    assert all(_png(out / "plots" / n) for n in expected)
    shutil.rmtree(out / "plots")
    (out / "plots").mkdir()
    (out / "plots" / "sweep_stale.png").write_bytes(b"old")  # from an earlier grid: removed
    res = runner.invoke(app, ["plot", str(out)])
    assert res.exit_code == 0, res.output
    assert {p.name for p in (out / "plots").iterdir()} == expected
    assert all(_png(out / "plots" / n) for n in expected)
    assert not (out / "report.md").exists()  # a sweep directory is not rendered as a run directory


def test_pdsim_plot_on_a_sweep_without_rows_is_one_error(tmp_path):
    (tmp_path / "points").mkdir()
    pd.DataFrame(columns=["x", *SUMMARY_COLUMNS, "point"]).to_csv(tmp_path / "sweep.csv", index=False)
    res = runner.invoke(app, ["plot", str(tmp_path)])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "no rows" in res.output, res.output


def _table(**grid) -> pd.DataFrame:
    """A synthetic sweep table: grid columns (cross product), 2 deployments x 1 workload per point."""
    import itertools

    rows = []
    keys = list(grid)
    for i, combo in enumerate(itertools.product(*grid.values())):
        for dep, src in (("A", "splitwise_table:imported"), ("B", "op_level:derived")):
            row = dict(zip(keys, combo))
            row.update({c: 0.0 for c in SUMMARY_COLUMNS})
            row.update(deployment=dep, workload="w", latency_sources=src, point=f"p{i}",
                       ttft_p90_s=0.001 * (i + 1) + (0.5 if dep == "B" else 0.0))
            rows.append(row)
    return pd.DataFrame(rows)


def test_plot_axes_and_lines():
    from pdsim.plots.sweep import MAX_OTHER_COMBOS, metric_vs_axis, plot_axes

    table = _table(rate=[4.0, 1.0, 2.0], seed=[0, 1], mode=["x", "y"], one=[7], flag=[True, False])
    assert plot_axes(table) == ["rate"]  # not seed, not text, not a single value, not boolean
    fig = metric_vs_axis(table, "rate", "ttft_p90_s")
    lines = fig.axes[0].get_lines()
    combos = 2 * 2 * 2  # seed x mode x flag (one=7 is constant)
    assert combos > MAX_OTHER_COMBOS
    # too many combinations of the other axes: one slice (their first values), said in the title
    assert len(lines) == 2
    assert "other axes fixed at seed=0, mode=x, one=7, flag=True" in fig.axes[0].get_title()
    labels = sorted(line.get_label() for line in lines)
    assert labels == ["A / w", "B (derived) / w"]
    b = next(line for line in lines if line.get_label().startswith("B"))
    assert list(b.get_xdata()) == [1.0, 2.0, 4.0]  # sorted by the axis
    sl = table[(table.deployment == "B") & (table.seed == 0) & (table["mode"] == "x") & table.flag].sort_values("rate")
    np.testing.assert_allclose(b.get_ydata(), sl.ttft_p90_s.to_numpy() * 1e3)
    # few combinations: one line per deployment x workload x combination, labelled with the values
    small = _table(rate=[1.0, 2.0], seed=[0, 1])
    fig = metric_vs_axis(small, "rate", "slo_attainment")
    assert sorted(line.get_label() for line in fig.axes[0].get_lines()) == [
        "A / w / seed=0", "A / w / seed=1", "B (derived) / w / seed=0", "B (derived) / w / seed=1"]
    assert "fixed" not in fig.axes[0].get_title()
    with pytest.raises(KeyError):
        metric_vs_axis(small, "rate", "e2e_mean_s")


def test_block_values_become_override_text_that_reads_back_equal():
    from pdsim.sweep.core import GridAxis, merge_axes, yaml_text

    for v in (16, 1.0, 1e-05, True, None, "yes", "a: b", "", [1, "x y"], {"b": 1, "a": [2.5]}):
        text = yaml_text(v)
        assert "\n" not in text
        loaded = __import__("yaml").safe_load(text)
        assert loaded == v and type(loaded) is type(v), (v, text)
    f = [GridAxis("a", ("1", "2"), (1, 2)), GridAxis("b", ("x",), ("x",))]
    c = [GridAxis("c", ("3",), (3,)), GridAxis("a", ("9",), (9,))]
    axes, replaced = merge_axes(f, c)
    assert [(a.key, a.values) for a in axes] == [("a", (9,)), ("b", ("x",)), ("c", (3,))] and replaced == ["a"]
