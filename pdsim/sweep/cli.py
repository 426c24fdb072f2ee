"""``pdsim sweep``: run the cross product of the grid of an experiment (its ``sweep:`` block plus the
``--grid`` axes), resumably (edge ring),
on local worker processes or on Ray (``pdsim.sweep.ray_executor``, imported only for ``--executor ray``).

Heavy imports (the simulator, pandas) happen inside the functions, so importing this module from
``pdsim.cli`` costs nothing. ``run_sweep`` is the library entry point; ``sweep_command`` the typer
wrapper. See docs/sweep.md.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from pdsim.errors import ConfigError, PdsimError
from pdsim.sweep.core import (
    PointStore,
    axes_from_block,
    csv_value,
    expand_grid,
    merge_axes,
    parse_grid,
    point_hash,
    point_overrides,
    point_values,
)


@dataclass
class SweepPoint:
    """One grid point, validated: its grid values, overrides, seed and hash."""

    values: dict[str, Any]
    overrides: list[str]
    seed: int
    hash: str


@dataclass
class SweepReport:
    """What a sweep run did. ``points`` counts grid points; the other counts are unique hashes."""

    out: Path
    points: int
    unique: int
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    discarded_tmp: int = 0
    csv: Path | None = None
    axes: list[str] = field(default_factory=list)
    file_axes: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


@dataclass
class SweepPlan:
    """The validated grid of a sweep: its axes (the ``sweep:`` block's, then ``--grid``'s) and points."""

    axes: list
    points: list[SweepPoint]
    file_axes: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


def _strip_prefix(msg: str, *prefixes: str) -> str:
    """``msg`` with each line's leading ``prefixes`` removed (to re-attribute a loader message)."""
    lines = []
    for line in msg.splitlines():
        for pre in prefixes:
            line = line.removeprefix(pre)
        lines.append(line)
    return "\n".join(lines)


def plan_grid(experiment: Path, grid: list[str], sets: list[str], seed: int | None) -> SweepPlan:
    """Merge the experiment's ``sweep:`` block with ``--grid`` and load + validate every point.

    Axes: the block's keys in file order, then the ``--grid`` keys not in the block; a ``--grid`` key that
    is also in the block replaces the block's values (the command line wins). Nothing is simulated.

    Raises:
        ConfigError: a malformed ``sweep:`` block, bad ``--grid`` syntax, an unknown key or a value the
            schema rejects (a block value that fails on its own is named as ``FILE: sweep.grid.KEY``).
    """
    from pydantic import BaseModel, ConfigDict, ValidationError

    from pdsim.config.load import (
        apply_overrides,
        format_validation_error,
        load_experiment_file,
        read_yaml_mapping,
    )
    from pdsim.config.schema import SweepConfig

    class _SweepOnly(BaseModel):  # the block alone: the rest is validated point by point below
        model_config = ConfigDict(extra="ignore")
        sweep: SweepConfig | None = None

    cli_axes = parse_grid(grid)
    data = apply_overrides(read_yaml_mapping(experiment, "experiment"), list(sets), str(experiment))
    try:
        block = _SweepOnly.model_validate(data).sweep
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(experiment), err, data)) from None
    file_axes = axes_from_block(block)
    axes, replaced = merge_axes(file_axes, cli_axes)
    from_file = {a.key for a in file_axes} - set(replaced)
    if seed is not None and any(a.key == "seed" for a in axes):
        where = f"{experiment}: sweep.grid.seed" if "seed" in from_file else "--grid seed=..."
        raise ConfigError(f"{where} and --seed cannot be combined")

    def blame(p: dict[str, int], values: dict[str, Any], exc: ConfigError) -> ConfigError:
        """The block axis whose value alone fails to load, or the whole point."""
        for a in axes:
            if a.key not in from_file:
                continue
            i = p[a.key]
            try:
                load_experiment_file(experiment, list(sets) + [f"{a.key}={a.raw[i]}"])
            except ConfigError as one:
                inner = _strip_prefix(str(one), f"{experiment}: ", f"--set {a.key}: ")
                return ConfigError(f"{experiment}: sweep.grid.{a.key}: value {a.values[i]!r}: {inner}")
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        return ConfigError(f"grid point {shown}: {exc}")

    points: list[SweepPoint] = []
    for p in expand_grid(axes):
        ovs = list(sets) + point_overrides(axes, p)
        values = point_values(axes, p)
        try:
            exp = load_experiment_file(experiment, ovs)
        except ConfigError as exc:
            if not axes:
                raise
            raise blame(p, values, exc) from None
        seed_used = exp.config.seed if seed is None else seed
        points.append(SweepPoint(values, ovs, seed_used, point_hash(exp.config, seed_used)))
    return SweepPlan(axes, points, [a.key for a in file_axes], replaced)


def run_point(experiment: str, overrides: list[str], seed: int, out: str, h: str, values: dict) -> tuple[str, str | None]:
    """Simulate one point and store it as ``OUT/points/<h>``; returns ``(h, error message or None)``.

    Runs in a worker process or in-process; the result is the same either way.
    """
    from pdsim.config.load import load_experiment_file
    from pdsim.results import write_run_dir
    from pdsim.sim.runner import run_experiment

    store = PointStore(Path(out))
    tmp = None
    try:
        exp = load_experiment_file(experiment, overrides)
        if point_hash(exp.config, seed) != h:  # the YAML changed under a running sweep
            raise ConfigError(f"{experiment}: the experiment changed while the sweep was running")
        result = run_experiment(exp, seed=seed, jobs=1)
        tmp = store.new_tmp(h)
        write_run_dir(tmp, exp, result, seed, argv=["pdsim", "sweep-point", experiment, *[f"--set={o}" for o in overrides]])
        point = {"hash": h, "seed": seed, "grid": values, "overrides": overrides, "experiment_file": experiment}
        (tmp / "point.json").write_text(json.dumps(point, indent=2, default=str))
        store.commit(tmp, h)
        return h, None
    except PdsimError as exc:
        msg = str(exc)
    except Exception:  # a pdsim bug (e.g. InvariantViolation): recorded with its traceback, never silent
        msg = traceback.format_exc()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    store.record_failure(h, msg)
    return h, msg


def check_executor(executor: str, address: str | None) -> None:
    """Validate ``--executor`` / ``--address`` (and that ray imports, for ``ray``) before anything is created.

    Raises:
        ConfigError: an unknown executor, ``--address`` without ``--executor ray``, or ray not installed.
    """
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r}: expected local or ray")
    if address and executor != "ray":
        raise ConfigError("--address needs --executor ray")
    if executor == "ray":
        from pdsim.sweep.ray_executor import import_ray

        import_ray()  # a missing ray is bad input: exit 2


def _run_point_job(args):
    return run_point(*args)


def write_sweep_csv(store: PointStore, axes, points: list[SweepPoint]) -> Path:
    """Rebuild ``OUT/sweep.csv`` from the stored points of this grid (grid columns, then the summary, then ``point``)."""
    import pandas as pd

    from pdsim.metrics.summary import SUMMARY_COLUMNS

    keys = [a.key for a in axes]
    frames = []
    for pt in points:
        path = store.point_dir(pt.hash) / "summary.csv"
        if not path.is_file():
            continue
        df = pd.read_csv(path)
        for i, k in enumerate(keys):
            df.insert(i, k, [csv_value(pt.values[k])] * len(df))
        df["point"] = pt.hash
        frames.append(df)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*keys, *SUMMARY_COLUMNS, "point"])
    out = store.out / "sweep.csv"
    tmp = out.with_name(f"sweep.csv.{os.getpid()}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out


def run_sweep(
    experiment: Path | str,
    grid: list[str],
    *,
    sets: list[str] | None = None,
    out: Path | str,
    jobs: int = 0,
    seed: int | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
    on_point: Callable[[str, str | None], None] | None = None,
    executor: str = "local",
    address: str | None = None,
) -> SweepReport:
    """Run (or resume) a sweep; finished points are skipped, failed ones retried.

    Args:
        grid: ``--grid`` specs, merged with the experiment's ``sweep:`` block (:func:`plan_grid`); with
            neither, the sweep is the one base point.
        jobs: worker processes (0 = one per core; 1 = in this process); with ``executor="ray"`` the CPUs
            of the local Ray it starts (0 = all cores).
        executor: ``"local"`` (worker processes) or ``"ray"`` (one Ray task per point; see
            ``pdsim.sweep.ray_executor``). Results are identical.
        address: with ``executor="ray"``, the Ray cluster to join (else an already initialised Ray, else a
            local one started and shut down here).
        progress: called as ``progress(finished, failed, running, total)`` (unique points to run).
        on_point: called in this process after each point with ``(hash, error or None)``.

    Raises:
        ConfigError: bad input, before anything runs.
    """
    experiment = Path(experiment)
    check_executor(executor, address)
    plan = plan_grid(experiment, grid, sets or [], seed)
    axes, points = plan.axes, plan.points
    store = PointStore(Path(out))
    report = SweepReport(out=store.out, points=len(points), unique=0, axes=[a.key for a in axes],
                         file_axes=plan.file_axes, replaced=plan.replaced)
    report.discarded_tmp = store.prepare()
    unique: dict[str, SweepPoint] = {}
    for pt in points:
        unique.setdefault(pt.hash, pt)
    report.unique = len(unique)
    todo = [pt for h, pt in unique.items() if not store.is_done(h)]
    report.skipped = report.unique - len(todo)
    total = len(todo)
    args = [(str(experiment), pt.overrides, pt.seed, str(store.out), pt.hash, pt.values) for pt in todo]

    def finished(h: str, err: str | None, running: int) -> None:
        if err is None:
            report.done += 1
        else:
            report.failed[h] = err
        if progress:
            progress(report.done + len(report.failed), len(report.failed), running, total)
        if on_point:
            on_point(h, err)

    jobs_n = jobs if jobs > 0 else (os.cpu_count() or 1)
    if progress:
        progress(0, 0, min(jobs_n, total), total)
    if executor == "ray":
        if total:
            from pdsim.sweep.ray_executor import run_on_ray

            def waiting(running: int) -> None:
                if progress:
                    progress(report.done + len(report.failed), len(report.failed), running, total)

            run_on_ray(args, jobs=jobs, address=address, finished=finished, record_failure=store.record_failure,
                       progress=waiting)
    elif jobs_n <= 1 or total <= 1:
        for a in args:
            h, err = run_point(*a)
            finished(h, err, 1 if report.done + len(report.failed) + 1 < total else 0)
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent (rich's refresh thread)
        pool = ProcessPoolExecutor(max_workers=min(jobs_n, total), mp_context=ctx)
        try:
            pending = {pool.submit(_run_point_job, a) for a in args}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                running = sum(1 for f in pending if f.running())
                for f in done:
                    h, err = f.result()
                    finished(h, err, running)
                if not done and progress:
                    progress(report.done + len(report.failed), len(report.failed), running, total)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    report.csv = write_sweep_csv(store, axes, points)
    return report


def sweep_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML, e.g. experiments/tiny.yaml.")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", "-g", help="Sweep axis key.path=v1,v2,... (values parsed as YAML, like --set; repeatable: cross product).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override applied to every point: key.path=value (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Sweep directory (default results/sweep-<experiment file stem>); rerun with the same one to resume.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes, one point each (0 = one per core; 1 = in this process). Results are identical.")] = 0,
    seed: Annotated[Optional[int], typer.Option(help="Root seed of every point (overrides the YAML's).")] = None,
    executor: Annotated[str, typer.Option("--executor", help="Where points run: local (worker processes) or ray (one Ray task per point). Results are identical.")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="With --executor ray: the Ray cluster to join (default: start a local Ray with -j CPUs, shut down at the end).")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Render OUT/plots/sweep_<axis>.png (metrics vs each numeric grid axis) from sweep.csv.")] = True,
) -> None:
    """Run every point of a grid of --set overrides; resumable (finished points are skipped).

    The grid is the experiment's `sweep:` block plus the --grid axes (a --grid key also in the block
    replaces the block's values).

    Each point is stored under the sha256 of its resolved config in OUT/points/<hash>/ (a run directory);
    OUT/sweep.csv has one row per point x deployment x workload. Exit code 1 if some point failed.
    """
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from pdsim.cli import _fail, console, err_console

    out_dir = out or Path("results") / f"sweep-{experiment.stem}"
    show = err_console.is_terminal or os.environ.get("PDSIM_PROGRESS") == "1"
    try:
        with Progress(
            TextColumn("[bold]points"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False, disable=not show,
        ) as bar:
            task = bar.add_task("points", total=None, state="")

            def on_progress(finished: int, failed: int, running: int, total: int) -> None:
                bar.update(task, completed=finished, total=total,
                           state=f"running {running}" + (f" [red]failed {failed}[/]" if failed else ""))

            t0 = time.perf_counter()
            report = run_sweep(experiment, grid or [], sets=set_ or [], out=out_dir, jobs=jobs, seed=seed,
                               progress=on_progress, executor=executor, address=address)
    except PdsimError as exc:
        _fail(PdsimError(escape(str(exc))))  # escape: a message may hold [brackets] (e.g. pdsim[ray])
    except KeyboardInterrupt:
        _fail(RuntimeError(f"interrupted; rerun the same command to resume (finished points in {out_dir / 'points'} are kept)"), 130)
    wall = time.perf_counter() - t0
    if report.file_axes:
        console.print(f"grid: {', '.join(report.axes)} (sweep: block of {experiment}: {', '.join(report.file_axes)}"
                      + (f"; --grid replaced {', '.join(report.replaced)}" if report.replaced else "") + ")",
                      highlight=False, markup=False, soft_wrap=True)
    note = f" ({report.points - report.unique} duplicate grid points share a config)" if report.points != report.unique else ""
    console.print(f"sweep: {report.unique} points{note}: done {report.done}, skipped {report.skipped} (already stored), "
                  f"failed {len(report.failed)} in {wall:.1f}s", highlight=False)
    if report.discarded_tmp:
        console.print(f"note: discarded {report.discarded_tmp} incomplete point(s) left by an interrupted run", highlight=False)
    for h, msg in report.failed.items():
        first = msg.strip().splitlines()[-1] if msg.strip() else ""
        err_console.print(f"failed point {h[:12]}: {first} (see {report.out / 'failed' / (h + '.txt')})", highlight=False, markup=False, soft_wrap=True)
    console.print(f"sweep table: {report.csv}", highlight=False)
    if plots:
        from pdsim.plots.sweep import render_sweep_dir

        try:
            written = render_sweep_dir(report.out)
        except PdsimError as exc:
            err_console.print(f"no sweep plots: {exc}", highlight=False, markup=False, soft_wrap=True)
        else:
            if written:
                console.print(f"sweep plots: {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)
            else:
                console.print("sweep plots: none (no numeric grid axis with two or more values)", highlight=False)
    if report.failed:
        raise typer.Exit(1)


__all__ = ["SweepPlan", "SweepPoint", "SweepReport", "plan_grid", "run_point", "run_sweep", "sweep_command", "write_sweep_csv"]
