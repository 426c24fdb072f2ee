"""``pdsim search``: the typer wrapper of :func:`pdsim.search.run.run_search` (heavy imports inside)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated

import typer

from pdsim.errors import PdsimError


def search_command(
    experiment: Annotated[Path, typer.Argument(help="Search YAML, e.g. experiments/search_llama70b.yaml.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Search directory (default results/search-<name>-<timestamp>); rerun with the same one to reuse its simulations.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes for the simulations of a round (0 = one per core; 1 = in this process). Results are identical.")] = 1,
    executor: Annotated[str, typer.Option("--executor", help="Where simulations run: local (worker processes) or ray. Results are identical.")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="With --executor ray: the Ray cluster to join.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value of the search file: key.path=value (repeatable).")] = None,
    seed: Annotated[int | None, typer.Option(help="Root seed (overrides the file's).")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Render plots/ into the search directory.")] = True,
) -> None:
    """Find the best deployment per dollar: prune, bound analytically, allocate by integer program,
    confirm the finalists' goodput by simulation. Writes candidates.csv, best.yaml and plots/."""
    from rich.markup import escape
    from rich.table import Table

    from pdsim.cli import _fail, console, err_console
    from pdsim.search.config import load_search_file
    from pdsim.search.run import run_search

    try:
        if out is None:
            name = load_search_file(experiment, set_ or []).config.name
            out = Path("results") / f"search-{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        res = run_search(experiment, out=out, sets=set_ or [], jobs=jobs, executor=executor, address=address,
                         seed=seed, plots=plots, log=lambda m: err_console.print(m, highlight=False, markup=False))
    except PdsimError as exc:
        _fail(PdsimError(escape(str(exc))))
    except KeyboardInterrupt:
        _fail(RuntimeError(f"interrupted; rerun with --out {out} to reuse the finished simulations"), 130)
    c = res.counts
    console.print(
        f"search: {c['instance_types']} instance types ({c['instance_types_pruned']} pruned), "
        f"{c['deployments_estimated']} deployments estimated, {c['deployments_simulated']} simulated "
        f"({c['simulations']} simulations in {c['rounds']} rounds) in {res.wall_s:.1f}s", highlight=False)
    t = Table(title="best deployments", header_style="bold")
    for col in ("objective", "deployment", "GPUs", "$/h", "goodput req/s", "req/s per $/h", "latency"):
        t.add_column(col)
    for key, b in res.best.items():
        g = b["goodput_rps"]
        derived = any("derived" in p["latency_sources"] for p in b["pools"])
        t.add_row(key, b["deployment"], str(b["gpus"]), f"{b['usd_per_hour']:,.2f}",
                  (f">= {res.target_rate_rps:g} (one probe)" if b["target_check"] else "-") if g is None else f"{g:.3g}",
                  "-" if b["goodput_rps_per_usd_per_hour"] is None else f"{b['goodput_rps_per_usd_per_hour']:.4f}",
                  "[yellow]derived[/]" if derived else "+".join(sorted({p["latency_sources"] for p in b["pools"]})))
    console.print(t)
    if not res.best:
        why = ("every instance type was pruned or no deployment fits the inventory and budget"
               if c["deployments_simulated"] == 0 else "no deployment met the SLO attainment target at any simulated rate")
        console.print(f"no best deployment: {why} (see candidates.csv)", highlight=False)
    console.print(f"search directory: {res.out}  (best.yaml, candidates.csv, plots/)", highlight=False)


__all__ = ["search_command"]
