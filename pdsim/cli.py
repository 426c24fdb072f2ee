"""Command line (edge ring): thin wrappers that load, run and write.

Every user error (``PdsimError``) is printed as one message and exits with code 2, without a
traceback; an interrupted run (Ctrl-C) exits with 130.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pdsim.errors import PdsimError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="pdsim: simulate LLM serving clusters (colocated vs prefill/decode disaggregated) on heterogeneous GPUs.",
)
console = Console(stderr=False)
if not console.is_terminal:  # files and pipes get the whole table, not an 80-column squeeze
    console = Console(stderr=False, width=220)
err_console = Console(stderr=True)


def _fmt_ms(v: float) -> str:
    return "-" if v != v else f"{v * 1e3:.0f}"


def _fmt(v: float, spec: str) -> str:
    return "-" if v != v else format(v, spec)


def summary_table(summary, title: str) -> Table:
    """The comparison table: one row per deployment x workload."""
    t = Table(title=title, show_lines=False, header_style="bold")
    cols = [
        ("deployment", "left"), ("workload", "left"), ("done/rej", "right"),
        ("TTFT p50/p90/p99 ms", "right"), ("TPOT p50/p90/p99 ms", "right"), ("E2E p50/p90/p99 s", "right"),
        ("tok/s", "right"), ("SLO att.", "right"), ("goodput rps", "right"), ("GPUs", "right"),
        ("$/h", "right"), ("$/1M out tok", "right"),
    ]
    for name, justify in cols:
        t.add_column(name, justify=justify)
    for r in summary.itertuples(index=False):
        derived = "derived" in str(getattr(r, "latency_sources", ""))
        t.add_row(
            str(r.deployment) + (" [yellow](derived)[/]" if derived else ""), str(r.workload), f"{r.completed}/{r.rejected}",
            f"{_fmt_ms(r.ttft_p50_s)}/{_fmt_ms(r.ttft_p90_s)}/{_fmt_ms(r.ttft_p99_s)}",
            f"{_fmt_ms(r.tpot_p50_s)}/{_fmt_ms(r.tpot_p90_s)}/{_fmt_ms(r.tpot_p99_s)}",
            f"{_fmt(r.e2e_p50_s, '.1f')}/{_fmt(r.e2e_p90_s, '.1f')}/{_fmt(r.e2e_p99_s, '.1f')}",
            _fmt(r.output_tokens_per_s, ",.0f"),
            ("[green]" if r.slo_met else "[red]") + _fmt(r.slo_attainment * 100, ".1f") + "%",
            _fmt(r.goodput_rps, ".2f"), str(r.gpus), _fmt(r.usd_per_hour, ",.0f"),
            _fmt(r.usd_per_million_output_tokens, ",.2f"),
        )
    return t


def _fail(exc: BaseException, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML, e.g. experiments/splitwise.yaml.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default results/<name>-<timestamp>).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Root seed (overrides the YAML's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: key.path=value (repeatable); list items by name or index.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes for the deployment x workload pairs (0 = one per core). Results are identical.")] = 1,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Render plots and report.md into the run directory.")] = True,
) -> None:
    """Simulate every deployment x workload pair of an experiment and write a run directory."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from pdsim.config.load import load_experiment_file
    from pdsim.results import default_run_dir, write_run_dir
    from pdsim.sim.runner import run_experiment

    try:
        exp = load_experiment_file(experiment, set_ or [])
        seed_used = exp.config.seed if seed is None else seed
        jobs_n = jobs if jobs > 0 else (os.cpu_count() or 1)
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=err_console, transient=False, disable=not err_console.is_terminal and os.environ.get("PDSIM_PROGRESS") != "1",
        ) as progress:
            tasks: dict[str, int] = {}

            def on_progress(event: str, done: int, total: int) -> None:
                label = "requests" if event == "request" else "deployment x workload"
                if event not in tasks:
                    tasks[event] = progress.add_task(label, total=total)
                progress.update(tasks[event], completed=done)

            result = run_experiment(exp, seed=seed_used, jobs=jobs_n, progress=on_progress)
        run_dir = out or default_run_dir(exp)
        write_run_dir(run_dir, exp, result, seed_used)
        console.print(summary_table(result.summary, f"{exp.config.name}: SLO TTFT<={exp.config.slo.ttft_s}s TPOT<={exp.config.slo.tpot_s}s"))
        if plots:
            from pdsim.plots.render import render_run_dir

            render_run_dir(run_dir)
        if result.summary["latency_sources"].str.contains("derived").any():
            console.print("note: (derived) = latency from a derived profile (datasheet roofline), not a measurement")
        oor = int(result.summary["latency_out_of_range"].sum())
        if oor:
            console.print(f"note: {oor:,} latency lookups fell outside the measured range (extrapolated/clamped; see manifest.json)")
        console.print(f"run directory: {run_dir}")
        if exp.config.sweep is not None:
            n = _grid_size(exp.config.sweep)
            console.print(f"note: ran the base experiment only; its sweep: block ({n} points) runs with `pdsim sweep {experiment}`", highlight=False)
    except PdsimError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _fail(RuntimeError("interrupted"), 130)


@app.command()
def plot(run_dir: Annotated[Path, typer.Argument(help="A run directory written by `pdsim run`, or a sweep directory of `pdsim sweep`.")]) -> None:
    """Re-render plots/ and report.md of a run directory (or plots/sweep_*.png of a sweep directory: one
    with sweep.csv and points/) from its saved data (no simulation)."""
    from pdsim.plots.render import render_run_dir

    try:
        if (run_dir / "sweep.csv").is_file() and (run_dir / "points").is_dir():
            from pdsim.plots.sweep import render_sweep_dir

            paths = render_sweep_dir(run_dir)
            if not paths:
                console.print("no sweep plots: no numeric grid axis with two or more values")
        else:
            paths = render_run_dir(run_dir)
    except PdsimError as exc:
        _fail(exc)
    for p in paths:
        console.print(str(p))


@app.command()
def check(experiment: Annotated[Path, typer.Argument(help="Experiment YAML.")],
          set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override key.path=value.")] = None) -> None:
    """Validate an experiment and print each deployment's resolved plan (KV capacity, cost)."""
    from pdsim.config.load import load_experiment_file
    from pdsim.sim.plan import plan_deployments

    try:
        exp = load_experiment_file(experiment, set_ or [])
        plans = plan_deployments(exp)
    except PdsimError as exc:
        _fail(exc)
    t = Table(title=f"{exp.config.name}: {exp.config.model.name}", header_style="bold")
    for c in ("deployment", "pool", "GPU", "TP", "PP", "instances", "latency", "weights GiB/GPU", "KV tokens/instance", "$/h"):
        t.add_column(c)
    for plan in plans:
        for pool in plan.pools:
            kinds = "+".join(pool.latency_source_kinds)
            latency = f"{pool.latency_source[0]} ({'[yellow]' + kinds + '[/]' if pool.derived else kinds})"
            t.add_row(plan.name, pool.role, pool.gpu_label, str(pool.tp), str(pool.pp), str(pool.instances), latency,
                      f"{pool.weight_bytes_per_gpu / 2**30:.1f}", f"{pool.capacity_tokens:,}", f"{pool.usd_per_hour:,.2f}")
    console.print(t)
    if exp.config.sweep is not None:
        axes = " x ".join(f"{k} ({len(v)})" for k, v in exp.config.sweep.grid.items())
        console.print(f"sweep: grid of {_grid_size(exp.config.sweep)} points: {axes} (`pdsim sweep {experiment}`)", highlight=False)


def _grid_size(sweep) -> int:
    """Points of a ``sweep:`` block: the product of its axes' lengths."""
    n = 1
    for values in sweep.grid.values():
        n *= len(values)
    return n


from pdsim.profiles.cli import profiles_app  # noqa: E402  (sub-commands live beside their code)
from profile_tools.cli import profile_command  # noqa: E402  (imports torch only when run)
from pdsim.live.cli import live_command  # noqa: E402  (imports torch only when run)
from pdsim.live.replay_cli import replay_command  # noqa: E402  (httpx, no torch)
from pdsim.live.validate import validate_command  # noqa: E402  (no torch)
from pdsim.live.server import serve_command  # noqa: E402  (imports torch only when run)
from pdsim.sweep.cli import sweep_command  # noqa: E402  (imports the simulator only when run)
from pdsim.search.cli import search_command  # noqa: E402  (imports the simulator only when run)

app.add_typer(profiles_app, name="profiles")
app.command("profile")(profile_command)
app.command("live")(live_command)
app.command("replay")(replay_command)
app.command("validate")(validate_command)
app.command("serve")(serve_command)
app.command("sweep")(sweep_command)
app.command("search")(search_command)


def main() -> None:
    """Entry point of the ``pdsim`` command."""
    try:
        app()
    except PdsimError as exc:  # pragma: no cover - commands catch their own
        err_console.print(f"error: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
