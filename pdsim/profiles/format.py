"""The pdsim profile format (version 1): op-level latency curves of one device, with their provenance.

A profile is a directory::

    gpu_profiles/<name>/
        profile.yaml            metadata (``ProfileMeta``): where the numbers came from
        gemm.parquet            one file per table in ``TABLES`` (absent tables are simply absent)
        attention_prefill.parquet
        ...

Every table has a ``latency_s`` column (the median of the repeats, in seconds) and may carry
``latency_p10_s``, ``latency_p90_s`` (spread of the repeats) and ``repeats``. Key columns are listed in
``TABLES``; dtypes use the names in ``DTYPES``. Tables are Parquet so that a measurement is not
edited by hand by accident; ``pdsim profiles show NAME`` prints them.

Source kinds (``ProfileMeta.source_kind``):

- ``measured``: timed by ``pdsim profile`` (``profile_tools/``) on a real device;
- ``imported``: converted from public measurements by ``pdsim profiles import`` (the source repository,
  commit, licence and files are in ``source``);
- ``derived``: computed, e.g. from datasheets with a roofline model (``pdsim profiles derive``); such a
  profile is never presented as a measurement: CLI listings, run manifests and plots label it derived.

Semantics of each table (the shapes are those of one GPU, i.e. already divided by TP):

- ``gemm``: ``Y[m, n] = X[m, k] @ W[k, n]`` (``torch.nn.functional.linear`` with a weight of shape
  ``(n, k)``); m = tokens in the batch.
- ``attention_prefill``: causal self-attention of ``batch_size`` sequences of ``seq_len`` tokens each
  (query length = key length = ``seq_len``), ``num_heads`` query heads and ``num_kv_heads`` KV heads
  of ``head_dim``; ``kv_dtype`` is the KV-cache precision.
- ``attention_decode``: one query token per sequence against ``context_len`` cached keys/values, for
  ``batch_size`` sequences.
- ``collective``: ``op`` in ``all_reduce``, ``all_gather``, ``reduce_scatter``, ``send_recv`` over
  ``world_size`` ranks, ``message_bytes`` per rank (the tensor each rank contributes); ``backend`` names
  the implementation (``nccl``, ``rccl``, ``gloo``, ``vllm_custom_graph``, ...).
- ``memcpy``: copies of ``bytes`` bytes in ``direction`` ``d2d`` (within a device), ``h2d``, ``d2h``
  (pinned host memory where the device has one) or ``p2p`` (between two devices).
- ``elementwise``: memory-bound ops of a decoder layer over ``num_tokens`` x ``width`` elements:
  ``rmsnorm``, ``layernorm``, ``silu_mul`` (width = the MLP intermediate per GPU, input is 2 x width),
  ``gelu``, ``rope`` (width = (q + k) heads x head_dim per GPU), ``add`` (residual), ``embedding``
  (width = hidden; a gather of ``num_tokens`` rows).
- ``moe`` (optional): the routed experts of one mixture-of-experts layer on one GPU for ``num_tokens``
  tokens, as one fused kernel (vLLM ``fused_experts``: token permutation, the experts' gate/up GEMM,
  SiLU x mul, down GEMM and the top-k weighted combine). ``hidden_size``; ``inter_size`` is one
  expert's full intermediate size, of which the GPU holds ``inter_size / moe_tp_size`` for
  ``num_experts / moe_ep_size`` experts; each token goes to ``topk`` experts. ``distribution`` is how
  tokens were spread over experts when timed: ``balanced`` (equal tokens per expert) or
  ``power_law_<alpha>``. Not included: the router GEMM and top-k selection (inputs to the kernel),
  and any communication (TP all-reduce, EP all-to-all). ``dtype`` is the expert weights' precision
  (``fp8``: per-tensor scaled W8A8 with bf16 activations in and out).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pdsim.core.hashing import sha256_file
from pdsim.errors import ProfileError

FORMAT_VERSION = 1
META_FILE = "profile.yaml"
DTYPES = ("fp32", "bf16", "fp16", "fp8")

LATENCY = "latency_s"
SPREAD_COLUMNS = ("latency_p10_s", "latency_p90_s", "repeats")

# table -> (key columns, string-valued key columns)
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gemm": (("dtype", "m", "n", "k"), ("dtype",)),
    "attention_prefill": (
        ("dtype", "kv_dtype", "batch_size", "seq_len", "num_heads", "num_kv_heads", "head_dim"),
        ("dtype", "kv_dtype"),
    ),
    "attention_decode": (
        ("dtype", "kv_dtype", "batch_size", "context_len", "num_heads", "num_kv_heads", "head_dim"),
        ("dtype", "kv_dtype"),
    ),
    "collective": (("op", "backend", "dtype", "world_size", "message_bytes"), ("op", "backend", "dtype")),
    "memcpy": (("direction", "bytes"), ("direction",)),
    "elementwise": (("op", "dtype", "num_tokens", "width"), ("op", "dtype")),
    "moe": (
        ("dtype", "distribution", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size"),
        ("dtype", "distribution"),
    ),
}
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv")
MEMCPY_DIRECTIONS = ("d2d", "h2d", "d2h", "p2p")
ELEMENTWISE_OPS = ("rmsnorm", "layernorm", "silu_mul", "gelu", "rope", "add", "embedding")
MOE_DISTRIBUTION = re.compile(r"balanced|power_law_[0-9]+(\.[0-9]+)?")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceInfo(_Strict):
    """Where imported or derived numbers came from."""

    repository: str | None = None
    commit: str | None = None
    license: str | None = None
    files: list[str] = Field(default_factory=list)
    reference: str | None = None  # paper, datasheet or document
    notes: str | None = None


class SoftwareInfo(_Strict):
    """Software the measurement ran on (all optional; record what is known)."""

    torch: str | None = None
    cuda: str | None = None
    rocm: str | None = None
    driver: str | None = None
    nccl: str | None = None
    framework: str | None = None  # e.g. vllm 0.24.0 for imported kernel timings
    python: str | None = None


class TableInfo(_Strict):
    file: str
    rows: int = Field(ge=0)
    sha256: str


class CacheInfo(_Strict):
    """How a measured profile's GEMM and attention calls were flushed (``pdsim profile --flush``,
    ``--flush-level``; ``profile_tools.ops``). Absent in profiles measured before 2026-12-04, which all
    flushed the last-level cache by writing.

    Attributes:
        flush: ``write`` or ``read``.
        flush_level: ``llc`` (every cache: operands read from memory) or ``l2`` (CPU: the per-core
            caches only: operands read from the last-level cache).
        flush_bytes: the buffer written or read before each call.
        llc_bytes: the device's last-level cache (GPU: L2; CPU: all L3 instances); None if unknown.
    """

    flush: Literal["write", "read"] = "write"
    flush_level: Literal["llc", "l2"] = "llc"
    flush_bytes: int = Field(ge=0)
    llc_bytes: int | None = Field(default=None, ge=0)


class ProfileMeta(_Strict):
    """``profile.yaml``.

    Attributes:
        name: profile name (the directory name).
        source_kind: ``measured``, ``imported`` or ``derived``.
        device_type: ``cuda``, ``rocm`` or ``cpu``.
        vendor: ``NVIDIA``, ``AMD``, ``Intel`` or the CPU vendor.
        device_name: as the device reports it (``torch.cuda.get_device_name``) or the datasheet name.
        gpu: the GPU's name in ``pdsim/data/gpu_specs.csv`` when it has one (None for a CPU).
        memory_bytes: device memory (CPU: the host's RAM).
        device_count: devices visible when measured (collectives need more than one).
        num_threads: CPU threads torch used (CPU profiles).
        date: when measured, imported or derived (ISO date).
        command: the command line that produced the profile.
        software: versions.
        source: provenance of imported or derived numbers.
        mode: ``quick`` or ``full`` sweep (measured profiles).
        cache: how GEMM and attention calls were flushed (measured profiles; ``CacheInfo``).
        notes: anything a reader must know (e.g. tables that are missing and why).
        tables: file, row count and sha256 of each table.
    """

    format_version: Literal[1] = FORMAT_VERSION
    name: str
    source_kind: Literal["measured", "imported", "derived"]
    device_type: Literal["cuda", "rocm", "cpu"]
    vendor: str
    device_name: str
    gpu: str | None = None
    memory_bytes: int | None = Field(default=None, ge=0)
    device_count: int = Field(default=1, ge=1)
    num_threads: int | None = Field(default=None, ge=1)
    date: str
    command: str
    software: SoftwareInfo = SoftwareInfo()
    source: SourceInfo = SourceInfo()
    mode: Literal["quick", "full"] | None = None
    cache: CacheInfo | None = None
    notes: str = ""
    tables: dict[str, TableInfo] = Field(default_factory=dict)


@dataclass
class Profile:
    """A loaded profile: metadata plus tables (each read and validated on first use).

    Attributes:
        path: the profile directory.
        meta: ``profile.yaml``.
    """

    path: Path
    meta: ProfileMeta
    _tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def source_kind(self) -> str:
        return self.meta.source_kind

    def has(self, table: str) -> bool:
        return table in self.meta.tables

    def table(self, table: str) -> pd.DataFrame:
        """The table as a DataFrame (validated).

        Raises:
            ProfileError: the profile has no such table, the file is missing or changed since the
                metadata was written (sha256), or the table is malformed.
        """
        if table in self._tables:
            return self._tables[table]
        if table not in TABLES:
            raise ProfileError(f"{self.path}: unknown table {table!r}; known: {sorted(TABLES)}")
        info = self.meta.tables.get(table)
        if info is None:
            raise ProfileError(f"{self.path}: profile {self.name!r} has no {table!r} table (has: {sorted(self.meta.tables)})")
        file = self.path / info.file
        if not file.is_file():
            raise ProfileError(f"{file}: table file missing (listed in {self.path / META_FILE})")
        digest = sha256_file(file)
        if digest != info.sha256:
            raise ProfileError(
                f"{file}: sha256 {digest} does not match {META_FILE} ({info.sha256}); a measurement must not be edited"
            )
        df = read_parquet(file)
        validate_table(table, df, str(file))
        self._tables[table] = df
        return df

    def describe(self) -> dict:
        """Provenance for run manifests."""
        return {
            "profile": self.name,
            "path": str(self.path),
            "source_kind": self.source_kind,
            "device_name": self.meta.device_name,
            "vendor": self.meta.vendor,
            "date": self.meta.date,
            "tables": {k: v.sha256 for k, v in self.meta.tables.items()},
        }


def read_parquet(path: Path) -> pd.DataFrame:
    """Read a Parquet file.

    Raises:
        ProfileError: the file cannot be read as Parquet.
    """
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ProfileError(f"{path}: cannot read as Parquet: {exc}") from None


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], where: str) -> None:
    """Raise ``ProfileError`` naming the ``columns`` that ``df`` lacks (and those it has), if any."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ProfileError(f"{where}: missing columns {missing} (has {list(df.columns)})")


def validate_table(table: str, df: pd.DataFrame, where: str) -> None:
    """Check a table's columns and values.

    Raises:
        ProfileError: a key or ``latency_s`` column is missing, a numeric key is not a positive
            integer, a latency is not finite and positive, a string key holds an unknown value, or a
            key is duplicated.
    """
    keys, str_keys = TABLES[table]
    require_columns(df, (*keys, LATENCY), where)
    if len(df) == 0:
        raise ProfileError(f"{where}: table is empty")
    for c in keys:
        if c in str_keys:
            continue
        col = df[c]
        if not pd.api.types.is_integer_dtype(col) or (col <= 0).any():
            bad = df.loc[~(pd.to_numeric(col, errors="coerce") > 0)].head(1)
            raise ProfileError(f"{where}: column {c!r} must hold positive integers; first bad row: {bad.to_dict('records')}")
    lat = pd.to_numeric(df[LATENCY], errors="coerce")
    bad = df.loc[~((lat > 0) & (lat < float("inf")))]
    if len(bad):
        raise ProfileError(f"{where}: {LATENCY} must be finite and > 0; first bad row: {bad.head(1).to_dict('records')}")
    allowed = {"dtype": DTYPES, "kv_dtype": DTYPES}
    if table == "collective":
        allowed["op"] = COLLECTIVE_OPS
    if table == "memcpy":
        allowed["direction"] = MEMCPY_DIRECTIONS
    if table == "elementwise":
        allowed["op"] = ELEMENTWISE_OPS
    for c, values in allowed.items():
        if c in df.columns:
            unknown = sorted(set(df[c]) - set(values))
            if unknown:
                raise ProfileError(f"{where}: column {c!r} has unknown values {unknown}; expected {list(values)}")
    if table == "moe":
        bad_dist = sorted(v for v in set(df["distribution"]) if not MOE_DISTRIBUTION.fullmatch(str(v)))
        if bad_dist:
            raise ProfileError(f"{where}: column 'distribution' has unknown values {bad_dist}; expected 'balanced' or 'power_law_<alpha>'")
        bad = df.loc[(df.topk > df.num_experts) | (df.num_experts % df.moe_ep_size != 0) | (df.inter_size % df.moe_tp_size != 0)]
        if len(bad):
            raise ProfileError(
                f"{where}: topk must be <= num_experts, num_experts divisible by moe_ep_size and inter_size by "
                f"moe_tp_size; first bad row: {bad.head(1).to_dict('records')}"
            )
    dup = df.duplicated(subset=list(keys))
    if dup.any():
        raise ProfileError(f"{where}: duplicated key {df.loc[dup, list(keys)].head(1).to_dict('records')}")


def load_profile(path: str | Path) -> Profile:
    """Read ``profile.yaml`` of the profile directory ``path`` (tables are read on first use).

    Raises:
        ProfileError: no such directory or metadata file, malformed YAML or metadata.
    """
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ProfileError(f"{path}: not a pdsim profile (no {META_FILE})")
    try:
        raw = yaml.safe_load(meta_file.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{meta_file}: malformed YAML: {exc}") from None
    try:
        meta = ProfileMeta.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ProfileError(f"{meta_file}: {loc}: {err['msg']} (got {err.get('input')!r})") from None
    return Profile(path=path, meta=meta)


def write_profile(path: str | Path, meta: ProfileMeta, tables: dict[str, pd.DataFrame]) -> Profile:
    """Write ``tables`` (validated, sorted by key) and ``profile.yaml`` into directory ``path``.

    ``meta.tables`` is filled in here (file, rows, sha256); tables are sorted by their key columns so
    the same numbers always give the same bytes.

    Raises:
        ProfileError: a table is unknown or malformed.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    infos: dict[str, TableInfo] = {}
    for name, df in tables.items():
        if name not in TABLES:
            raise ProfileError(f"{path}: unknown table {name!r}; known: {sorted(TABLES)}")
        keys, _ = TABLES[name]
        cols = [*keys, LATENCY, *[c for c in SPREAD_COLUMNS if c in df.columns]]
        extra = [c for c in df.columns if c not in cols]
        df = df[cols + extra].sort_values(list(keys), kind="stable").reset_index(drop=True)
        validate_table(name, df, f"{path}/{name}")
        file = path / f"{name}.parquet"
        df.to_parquet(file, index=False, compression="zstd")
        infos[name] = TableInfo(file=file.name, rows=len(df), sha256=sha256_file(file))
    meta = meta.model_copy(update={"tables": infos})
    data = meta.model_dump(mode="json", exclude_none=True)
    (path / META_FILE).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
    return load_profile(path)


def today() -> str:
    """Today's date (ISO), for ``ProfileMeta.date``."""
    return _dt.date.today().isoformat()


def profile_search_roots() -> list[Path]:
    """Directories searched for profiles by name, in order: ``$PDSIM_PROFILES`` (``os.pathsep``
    separated), ``./gpu_profiles``, and the ``gpu_profiles/`` of the pdsim source checkout."""
    roots = [Path(p) for p in os.environ.get("PDSIM_PROFILES", "").split(os.pathsep) if p]
    roots.append(Path.cwd() / "gpu_profiles")
    roots.append(Path(__file__).resolve().parents[2] / "gpu_profiles")
    out: list[Path] = []
    for r in roots:
        if r.is_dir() and r.resolve() not in [o.resolve() for o in out]:
            out.append(r)
    return out


def find_profile(name_or_path: str, base_dir: Path | None = None) -> Profile:
    """Resolve a profile given as a directory path (relative to ``base_dir``) or a name under the
    search roots (``profile_search_roots``).

    Raises:
        ProfileError: nothing found (the message lists the names available).
    """
    candidates = [Path(name_or_path)]
    if base_dir is not None and not Path(name_or_path).is_absolute():
        candidates.insert(0, base_dir / name_or_path)
    for c in candidates:
        if (c / META_FILE).is_file():
            return load_profile(c)
    for root in profile_search_roots():
        c = root / name_or_path
        if (c / META_FILE).is_file():
            return load_profile(c)
    names = sorted(p.name for p in list_profile_dirs())
    raise ProfileError(f"profile {name_or_path!r} not found (looked in {[str(r) for r in profile_search_roots()]}); available: {names}")


def list_profile_dirs() -> list[Path]:
    """Every profile directory under the search roots (first root wins on a duplicate name)."""
    seen: dict[str, Path] = {}
    for root in profile_search_roots():
        for meta in sorted(root.glob(f"*/{META_FILE}")):
            seen.setdefault(meta.parent.name, meta.parent)
    return [seen[k] for k in sorted(seen)]
