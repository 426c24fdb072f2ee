"""Importers: public latency measurements converted into pdsim profiles (``source_kind: imported``).

Two sources are supported, each in its own module:

- ``aiconfigurator``: NVIDIA ai-dynamo/aiconfigurator's perf database (vLLM kernel timings per GPU
  system: GEMM, prefill and decode attention, NCCL and vLLM custom all-reduce); Apache-2.0.
- ``vidur``: microsoft/vidur's profiling data (per-op timings of a decoder layer's linear and
  elementwise ops, and NCCL all-reduce / send-recv); MIT.

Every importer reads the raw files of a local copy of the upstream repository's data (the directory
layout is described in each module), converts units once (milliseconds -> seconds), maps the upstream
columns onto the table semantics of ``pdsim.profiles.format`` and writes the profile with
``write_profile``. What was dropped and why is written into ``ProfileMeta.notes``; the repository,
commit, licence and the raw files used are in ``ProfileMeta.source``.

``SHIPPED`` lists the imported profiles committed under ``gpu_profiles/``; ``pdsim profiles import
SOURCE SRC_DIR --all`` regenerates them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pdsim.errors import ProfileError
from pdsim.profiles.format import LATENCY, TABLES


@dataclass(frozen=True, slots=True)
class ShippedImport:
    """One committed imported profile: ``source`` (importer), ``target`` (system / device name) and
    the profile directory name under ``gpu_profiles/``."""

    source: str
    target: str
    name: str


def _shipped() -> tuple[ShippedImport, ...]:
    from pdsim.profiles.importers.aiconfigurator import SHIPPED_SYSTEMS
    from pdsim.profiles.importers.vidur import SHIPPED_DEVICES

    out = [ShippedImport("aiconfigurator", s, f"{s}-aiconfigurator") for s in SHIPPED_SYSTEMS]
    out += [ShippedImport("vidur", d, f"{d}-vidur") for d in SHIPPED_DEVICES]
    return tuple(out)


SOURCES = ("aiconfigurator", "vidur")


def shipped_imports(source: str | None = None) -> tuple[ShippedImport, ...]:
    """The committed imported profiles (of one ``source`` if given)."""
    if source is not None and source not in SOURCES:
        raise ProfileError(f"unknown import source {source!r}; known: {list(SOURCES)}")
    return tuple(s for s in _shipped() if source is None or s.source == source)


def read_commit(src_dir: Path, commit: str | None) -> str:
    """The upstream commit: ``commit`` if given, else the first word of ``src_dir/COMMIT``.

    Raises:
        ProfileError: neither is available (an imported profile must name its commit).
    """
    if commit:
        return commit
    f = src_dir / "COMMIT"
    if f.is_file():
        words = f.read_text().split()
        if words:
            return words[0]
    raise ProfileError(f"{src_dir}: no COMMIT file; pass --commit with the upstream commit of these files")


def copy_license(src_dir: Path, dest: Path) -> Path | None:
    """Copy ``src_dir/LICENSE`` to ``dest`` (one shared copy beside the profiles); None when absent."""
    lic = src_dir / "LICENSE"
    if not lic.is_file():
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file() or dest.read_bytes() != lic.read_bytes():
        shutil.copyfile(lic, dest)
    return dest


def merge_duplicates(df: pd.DataFrame, table: str, extra_first: tuple[str, ...] = ()) -> tuple[pd.DataFrame, int]:
    """Collapse rows with the same key of ``table`` into one: the median ``latency_s``, the first value
    of each ``extra_first`` column, and ``source_rows`` = how many raw rows were merged.

    Returns:
        The merged frame and the number of raw rows that were merged away.
    """
    keys = list(TABLES[table][0])
    agg = {LATENCY: (LATENCY, "median"), "source_rows": (LATENCY, "size")}
    for c in extra_first:
        agg[c] = (c, "first")
    out = df.groupby(keys, sort=True, as_index=False).agg(**agg)
    out["source_rows"] = out["source_rows"].astype("int64")
    return out, len(df) - len(out)


def import_profile(source: str, src_dir: Path, target: str, out_dir: Path, *, commit: str | None = None):
    """Run the importer of ``source`` (``aiconfigurator``: ``target`` is the system; ``vidur``: the
    device). Returns the written ``Profile``."""
    if source == "aiconfigurator":
        from pdsim.profiles.importers.aiconfigurator import import_aiconfigurator

        return import_aiconfigurator(src_dir, target, out_dir, commit=commit)
    if source == "vidur":
        from pdsim.profiles.importers.vidur import import_vidur

        return import_vidur(src_dir, target, out_dir, commit=commit)
    raise ProfileError(f"unknown import source {source!r}; known: {list(SOURCES)}")


__all__ = [
    "SOURCES",
    "ShippedImport",
    "copy_license",
    "import_profile",
    "merge_duplicates",
    "read_commit",
    "shipped_imports",
]
