"""``pdsim profiles ...`` commands: list, show, import and derive latency profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

profiles_app = typer.Typer(no_args_is_help=True, help="List, inspect, import and derive latency profiles (gpu_profiles/).")


# --- pdsim profiles list / show ---------------------------------------------------------------------
KIND_STYLE = {"measured": "green", "imported": "cyan", "derived": "yellow"}
TABLE_ABBREV = {"attention_prefill": "attn_prefill", "attention_decode": "attn_decode", "elementwise": "eltwise", "collective": "coll"}


@profiles_app.command("list")
def list_command() -> None:
    """Every profile under the search roots ($PDSIM_PROFILES, ./gpu_profiles, the pdsim checkout's):
    name, source kind, vendor, device, date, tables. Derived profiles are computed, not measured."""
    from rich.console import Console
    from rich.table import Table

    from pdsim.errors import PdsimError
    from pdsim.profiles.format import list_profile_dirs, load_profile

    console = Console(width=200) if not Console().is_terminal else Console()
    t = Table(title="latency profiles", header_style="bold")
    for col in ("name", "kind", "vendor", "device", "gpu", "date", "tables"):
        t.add_column(col)
    bad = []
    for d in list_profile_dirs():
        try:
            p = load_profile(d)
        except PdsimError as exc:
            bad.append(str(exc))
            continue
        m = p.meta
        kind = m.source_kind
        t.add_row(m.name, f"[{KIND_STYLE[kind]}]{kind}[/]", m.vendor, m.device_name, m.gpu or "-", m.date,
                  " ".join(TABLE_ABBREV.get(k, k) for k in m.tables))
    console.print(t)
    for msg in bad:
        typer.echo(f"error: {msg}", err=True)
    if bad:
        raise typer.Exit(2)


@profiles_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Profile name (see `pdsim profiles list`) or directory.")],
    table: Annotated[Optional[str], typer.Option("--table", help="Print this table's rows (e.g. gemm).")] = None,
    rows: Annotated[int, typer.Option(help="Rows to print with --table.")] = 20,
) -> None:
    """A profile's metadata (provenance, software, notes) and a summary of each table (rows, key ranges)."""
    import yaml

    from pdsim.errors import PdsimError
    from pdsim.profiles.format import TABLES, find_profile

    try:
        p = find_profile(name)
        meta = p.meta.model_dump(mode="json", exclude_none=True)
        tables = meta.pop("tables")
        typer.echo(yaml.safe_dump(meta, sort_keys=False, width=100).rstrip())
        if p.source_kind == "derived":
            typer.echo("NOTE: derived profile: computed from datasheets, not a measurement.")
        for tname in tables:
            df = p.table(tname)
            keys, str_keys = TABLES[tname]
            ranges = ", ".join(
                f"{k} {sorted(set(df[k]))}" if k in str_keys else f"{k} {df[k].min()}..{df[k].max()}" for k in keys
            )
            typer.echo(f"{tname}: {len(df)} rows; {ranges}; latency_s {df.latency_s.min():.3g}..{df.latency_s.max():.3g}")
        if table is not None:
            typer.echo(p.table(table).head(rows).to_string(index=False))
    except PdsimError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


# --- pdsim profiles import ------------------------------------------------------------------------


@profiles_app.command("import")
def import_command(
    source: Annotated[str, typer.Argument(help="aiconfigurator, vidur, or all (SRC_DIR then holds aiconfigurator/ and vidur/).")],
    src_dir: Annotated[Path, typer.Argument(help="Local copy of the upstream data (aiconfigurator: systems/ + data/ + COMMIT; vidur: profiling/).")],
    system: Annotated[Optional[str], typer.Option("--system", help="aiconfigurator system, e.g. h100_sxm.")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="vidur compute device: a100, h100 or a40.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Profile directory (with --all: the parent directory; default gpu_profiles).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Regenerate every shipped profile of SOURCE under --out.")] = False,
    commit: Annotated[Optional[str], typer.Option("--commit", help="Upstream commit, when SRC_DIR has no COMMIT file.")] = None,
) -> None:
    """Convert public measurements (aiconfigurator, vidur) into pdsim profiles (source_kind imported).

    Examples: ``pdsim profiles import aiconfigurator SRC --system h100_sxm --out gpu_profiles/h100_sxm-aiconfigurator``,
    ``pdsim profiles import vidur SRC --gpu h100 --out gpu_profiles/h100-vidur``,
    ``pdsim profiles import all shared/data/profiles --out gpu_profiles`` (every shipped imported profile).
    """
    from pdsim.errors import PdsimError
    from pdsim.profiles.importers import SOURCES, ShippedImport, import_profile, shipped_imports

    try:
        if source == "all":
            if system or gpu or commit:
                raise typer.BadParameter("'all' imports every shipped profile with each source's COMMIT; drop --system / --gpu / --commit")
            jobs = [(s, src_dir / s.source, (out or Path("gpu_profiles")) / s.name) for s in shipped_imports()]
        elif source not in SOURCES:
            raise typer.BadParameter(f"unknown source {source!r}; expected one of {[*SOURCES, 'all']}")
        elif all_:
            if system or gpu:
                raise typer.BadParameter("--all imports every shipped target; drop --system / --gpu")
            jobs = [(s, src_dir, (out or Path("gpu_profiles")) / s.name) for s in shipped_imports(source)]
        else:
            target, flag, other = (system, "--system", gpu) if source == "aiconfigurator" else (gpu, "--gpu", system)
            if other is not None:
                raise typer.BadParameter(f"{source} takes {flag}, not {'--gpu' if flag == '--system' else '--system'}")
            if not target:
                raise typer.BadParameter(f"{source} needs {flag} (or --all)")
            job = ShippedImport(source, target, f"{target}-{source}")
            jobs = [(job, src_dir, out or Path("gpu_profiles") / job.name)]
        for job, src, dest in jobs:
            prof = import_profile(job.source, src, job.target, dest, commit=commit)
            rows = ", ".join(f"{t} {i.rows}" for t, i in prof.meta.tables.items())
            typer.echo(f"{prof.name}: {rows} -> {dest}")
    except PdsimError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


# --- pdsim profiles derive --------------------------------------------------------------------------
@profiles_app.command("derive")
def derive_command(
    gpu: Annotated[Optional[list[str]], typer.Option("--gpu", help="GPU name in pdsim/data/gpu_specs.csv (repeatable), e.g. MI300X.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Profile directory (one --gpu), or the parent directory with --all (default gpu_profiles).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Derive every shipped derived profile (MI300X, MI325X, MI250X, A10G, L4, H100-PCIe).")] = False,
    refit: Annotated[bool, typer.Option("--refit", help="Refit the roofline factors on the measured/imported NVIDIA profiles (with leave-one-GPU-out) and write the fit file.")] = False,
    report: Annotated[bool, typer.Option("--report", help="Refit (without writing) and print the fitted parameters and fit quality as markdown.")] = False,
    fit_file: Annotated[Optional[Path], typer.Option("--fit", help="Fit file (default pdsim/data/roofline_fit.yaml).")] = None,
    sources: Annotated[Optional[Path], typer.Option("--sources", help="Directory of the source profiles of a refit (default the checkout's gpu_profiles/).")] = None,
) -> None:
    """Derived (roofline) profiles for GPUs nobody has measured, computed from the datasheet with
    efficiency factors fitted on NVIDIA measurements (source_kind derived; never a measurement).

    Examples: ``pdsim profiles derive --gpu MI300X --out gpu_profiles/mi300x-derived``,
    ``pdsim profiles derive --all``, ``pdsim profiles derive --refit``, ``pdsim profiles derive --report``.
    See docs/derived_profiles.md.
    """
    import shlex

    from pdsim.errors import PdsimError
    from pdsim.profiles import derive as d

    def progress(msg: str) -> None:
        typer.echo(msg, err=True)

    try:
        if not (gpu or all_ or refit or report):
            raise typer.BadParameter("give --gpu NAME, --all, --refit or --report")
        if gpu and all_:
            raise typer.BadParameter("--gpu and --all exclude each other")
        fit_path = fit_file or d.default_fit_path()
        if refit or report:
            fit, rows = d.refit(sources, progress=progress)
            iteration_rows = d.iteration_check(rows, sources, progress=progress, loo_params=fit.loo_params) if report else None
            if refit:
                fit.write(fit_path)
                typer.echo(f"roofline fit -> {fit_path}", err=True)
            if report:
                typer.echo(d.report_markdown(fit, iteration_rows))
        if not (gpu or all_):
            return
        fit = d.load_fit(fit_path)
        stale = fit.check_sources(sources)
        if stale:
            typer.echo("warning: the source profiles changed since the roofline fit (run `pdsim profiles derive --refit`): "
                       + "; ".join(stale), err=True)
        if all_:
            jobs = [(g, (out or Path("gpu_profiles")) / d.profile_name(g)) for g in d.SHIPPED]
        else:
            if len(gpu) > 1 and out is not None:
                raise typer.BadParameter("--out names one profile directory; give one --gpu (or none, for gpu_profiles/<name>)")
            jobs = [(g, out or Path("gpu_profiles") / d.profile_name(d.device_facts(g).gpu)) for g in gpu]
        for g, dest in jobs:
            command = f"pdsim profiles derive --gpu {shlex.quote(g)} --out {shlex.quote(str(dest))}"
            prof = d.derive_profile(g, dest, fit=fit, command=command)
            size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
            rows = ", ".join(f"{t} {i.rows}" for t, i in prof.meta.tables.items())
            typer.echo(f"{prof.name} (derived): {rows}; {size / 1e6:.2f} MB -> {dest}")
    except PdsimError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
