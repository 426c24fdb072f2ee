"""Writing a run directory (edge ring). The contract other tools read:

- ``config.resolved.yaml``: the validated experiment with every default filled in (plus the seed used);
- ``manifest.json``: pdsim version, git sha when available, seed, command line, sha256 of every trace
  and profile used, the resolved deployments (KV capacity, memory budget, price), each workload's arrival
  process (open loop and its request count, or closed loop and its clients), latency lookups out
  of the measured range per pair, wall time;
- ``requests.parquet`` and ``requests.csv``: ``pdsim.metrics.records.REQUEST_COLUMNS``;
- ``summary.csv``: ``pdsim.metrics.summary.SUMMARY_COLUMNS``;
- ``instances.csv``: per-instance iterations, busy time, peak KV blocks, preemptions;
- ``plots/`` and ``report.md``: rendered from the files above by ``pdsim plot DIR``.

Files are written to a temporary name and renamed, so an interrupted write never leaves a truncated
file that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pdsim import __version__
from pdsim.core.hashing import sha256_file
from pdsim.config.load import LoadedExperiment
from pdsim.config.workload import TraceLengths, TraceWorkload
from pdsim.sim.runner import RunResult
from pdsim.workload.build import describe_workload


def git_sha(start: Path) -> str | None:
    """The git commit of the checkout holding ``start``, or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def input_files(exp: LoadedExperiment, result: RunResult) -> dict[str, str]:
    """Path -> sha256 of every trace and profile the run read."""
    paths: set[Path] = set()
    for spec in exp.config.workloads.values():
        if isinstance(spec, TraceWorkload):
            paths.add(exp.resolve(spec.path))
        lengths = getattr(spec, "lengths", None)
        if isinstance(lengths, TraceLengths):
            paths.add(exp.resolve(lengths.path))
    sources = [s for plan in result.plans for pool in plan.pools
               for s in (pool.latency_source, *(st.latency_source for st in pool.stages))]
    for source in sources:
        if source[0] == "splitwise_table":
            paths.add(Path(source[1]))
        elif source[0] == "op_level":
            for prof_dir in source[1]:
                paths.add(Path(prof_dir) / "profile.yaml")
                paths.update(Path(prof_dir) / f"{t}.parquet" for t in _profile_tables(prof_dir))
    return {str(p): sha256_file(p) for p in sorted(paths)}


def _profile_tables(prof_dir: str) -> list[str]:
    from pdsim.profiles.format import load_profile

    return sorted(load_profile(prof_dir).meta.tables)


def default_run_dir(exp: LoadedExperiment) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{exp.config.name}-{stamp}"


def write_run_dir(out: Path, exp: LoadedExperiment, result: RunResult, seed: int, argv: list[str] | None = None) -> Path:
    """Write the run directory ``out`` (created if needed); returns it."""
    out.mkdir(parents=True, exist_ok=True)
    resolved = exp.config.model_dump(mode="json")
    resolved["seed"] = seed
    _atomic_write(out / "config.resolved.yaml", lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False)))
    _atomic_write(out / "requests.parquet", lambda p: result.requests.to_parquet(p, index=False))
    _atomic_write(out / "requests.csv", lambda p: result.requests.to_csv(p, index=False))
    _atomic_write(out / "summary.csv", lambda p: result.summary.to_csv(p, index=False))
    _atomic_write(out / "instances.csv", lambda p: result.instances.to_csv(p, index=False))
    manifest = {
        "pdsim_version": __version__,
        "git_sha": git_sha(Path(__file__).parent),
        "experiment": exp.config.name,
        "experiment_file": str(exp.path),
        "seed": seed,
        "command": argv if argv is not None else sys.argv,
        "python": sys.version.split()[0],
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs_sha256": input_files(exp, result),
        "deployments": [p.describe() for p in result.plans],
        "workloads": {name: describe_workload(wl) for name, wl in result.workloads.items()},
        "latency_lookups": result.latency_stats,
        "wall_s": result.wall_s,
    }
    _atomic_write(out / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=2, default=str)))
    return out
