"""Sweeps, the pure part: grid parsing and expansion, point hashing, and the on-disk point store.

A sweep point is the experiment with one value of every grid axis applied as a ``--set`` override.
It is stored under the sha256 of its *resolved* config (the validated experiment's
``model_dump(mode="json")`` plus the seed, as canonical JSON), so the same resolved config is simulated
once, whichever grid or command line produced it.

Store layout (``OUT``)::

    points/<hash>/     a normal run directory (config.resolved.yaml, summary.csv, ...) + point.json
    failed/<hash>.txt  the error message of a point that failed (retried on the next run)
    .tmp-<hash>-...    a point being written; renamed into points/ when complete
    sweep.csv          one row per (point, deployment, workload), rebuilt at the end of every run
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pdsim.errors import ConfigError


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid key.path=v1,v2`` axis: the key, the raw value texts and their YAML-parsed values."""

    key: str
    raw: tuple[str, ...]
    values: tuple[Any, ...]


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes (so ``[1,2],[3,4]`` is two values)."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_grid(specs: list[str]) -> list[GridAxis]:
    """Parse ``key.path=v1,v2,...`` specs (values parsed as YAML, like ``--set``).

    Raises:
        ConfigError: no ``=``, empty key, an empty value, an unparsable value, or a key given twice.
    """
    axes: list[GridAxis] = []
    seen: set[str] = set()
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid {spec!r}: expected KEY.PATH=V1,V2,...")
        key, text = spec.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--grid {spec!r}: empty key")
        if key in seen:
            raise ConfigError(f"--grid {key}: key given twice")
        seen.add(key)
        raw = _split_top_level(text)
        if any(r == "" for r in raw):
            raise ConfigError(f"--grid {spec!r}: empty value (expected KEY.PATH=V1,V2,...)")
        values = []
        for r in raw:
            try:
                values.append(yaml.safe_load(r))
            except yaml.YAMLError as exc:
                raise ConfigError(f"--grid {key}: cannot parse value {r!r}: {exc}") from None
        axes.append(GridAxis(key, tuple(raw), tuple(values)))
    return axes


def yaml_text(value: Any) -> str:
    """One-line YAML text of a value that ``yaml.safe_load`` reads back equal (an override's value text).

    Raises:
        ConfigError: a value that does not survive the round trip (should not happen for YAML input).
    """
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1, allow_unicode=True, sort_keys=False)
    text = text.removesuffix("\n...\n").strip()  # the document-end marker PyYAML adds after a bare scalar
    if repr(yaml.safe_load(text)) != repr(value):  # repr: 1, 1.0 and True differ; nan equals nan
        raise ConfigError(f"cannot write grid value {value!r} as a one-line YAML value")
    return text


def axes_from_block(block) -> list[GridAxis]:
    """The axes of an experiment's ``sweep:`` block (``pdsim.config.schema.SweepConfig``), in file order."""
    if block is None:
        return []
    return [GridAxis(key, tuple(yaml_text(v) for v in values), tuple(values)) for key, values in block.grid.items()]


def merge_axes(file_axes: list[GridAxis], cli_axes: list[GridAxis]) -> tuple[list[GridAxis], list[str]]:
    """The file's axes plus the command line's: a ``--grid`` key the file also has replaces the file's
    values in place (the command line wins, like ``--set`` over the YAML); new keys are appended.

    Returns:
        ``(axes, replaced keys)``.
    """
    cli = {a.key: a for a in cli_axes}
    merged = [cli.get(a.key, a) for a in file_axes]
    replaced = [a.key for a in file_axes if a.key in cli]
    file_keys = {a.key for a in file_axes}
    merged += [a for a in cli_axes if a.key not in file_keys]
    return merged, replaced


def expand_grid(axes: list[GridAxis]) -> list[dict[str, int]]:
    """The cross product, as value indices per key, in ``--grid`` order (the last axis varies fastest).

    No axes gives one point (the experiment itself).
    """
    keys = [a.key for a in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(range(len(a.values)) for a in axes))]


def point_overrides(axes: list[GridAxis], point: dict[str, int]) -> list[str]:
    """The ``--set`` overrides of one point (raw value text, parsed by the loader exactly like ``--set``)."""
    return [f"{a.key}={a.raw[point[a.key]]}" for a in axes]


def point_values(axes: list[GridAxis], point: dict[str, int]) -> dict[str, Any]:
    """Key -> parsed grid value of one point."""
    return {a.key: a.values[point[a.key]] for a in axes}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def resolved_config(config, seed: int) -> dict:
    """The resolved config of a point: the validated experiment with defaults filled in, plus the seed.

    The ``sweep:`` block is not part of it (a point is the same config whichever grid produced it).
    """
    resolved = config.model_dump(mode="json", exclude={"sweep"})
    resolved["seed"] = seed
    return resolved


def point_hash(config, seed: int) -> str:
    """sha256 (hex) of the canonical JSON of the resolved config plus seed."""
    return hashlib.sha256(canonical_json(resolved_config(config, seed)).encode()).hexdigest()


class PointStore:
    """The directory of a sweep: finished points, failures and in-progress temp dirs."""

    TMP_PREFIX = ".tmp-"

    def __init__(self, out: Path):
        self.out = Path(out)
        self.points = self.out / "points"
        self.failed = self.out / "failed"

    def prepare(self) -> int:
        """Create the layout and discard temp dirs left by killed runs; returns how many were discarded."""
        self.points.mkdir(parents=True, exist_ok=True)
        self.failed.mkdir(parents=True, exist_ok=True)
        stale = [p for p in self.out.iterdir() if p.name.startswith(self.TMP_PREFIX)]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return len(stale)

    def point_dir(self, h: str) -> Path:
        return self.points / h

    def is_done(self, h: str) -> bool:
        return (self.points / h).is_dir()

    def new_tmp(self, h: str) -> Path:
        tmp = self.out / f"{self.TMP_PREFIX}{h}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, h: str) -> bool:
        """Rename a complete temp dir into ``points/<hash>``; False (and tmp removed) if it already exists."""
        try:
            os.rename(tmp, self.points / h)
        except OSError:
            if not self.is_done(h):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        (self.failed / f"{h}.txt").unlink(missing_ok=True)
        return True

    def record_failure(self, h: str, message: str) -> Path:
        path = self.failed / f"{h}.txt"
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(message.rstrip() + "\n")
        os.replace(tmp, path)
        return path


def csv_value(v: Any) -> Any:
    """A grid value as a sweep.csv cell (mappings and lists as JSON)."""
    return canonical_json(v) if isinstance(v, (dict, list)) else v
