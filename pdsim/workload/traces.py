"""Request trace readers: Azure LLM 2023, Mooncake, and generic CSV / JSONL.

Every reader returns the same frame, one row per request, sorted by arrival:

==================  =========  =============================================================
column              dtype      meaning
==================  =========  =============================================================
``arrival_s``       float64    arrival time in seconds relative to the first request (first = 0.0)
``prompt_tokens``   int64      prompt (context) length in tokens, >= 1
``output_tokens``   int64      generated tokens, >= 1
``hash_ids``        object     (Mooncake / JSONL only, when present) list of int prefix-block hashes
==================  =========  =============================================================

Supported formats:

- ``azure``: Azure LLM inference trace 2023 (Patel et al., "Splitwise: Efficient generative LLM
  inference using phase splitting", ISCA 2024; https://github.com/Azure/AzurePublicDataset, CC-BY 4.0).
  CSV with ``TIMESTAMP`` (datetime string, 100 ns resolution: ``2023-11-16 18:17:03.9799600``),
  ``ContextTokens``, ``GeneratedTokens``.
- ``mooncake``: Mooncake FAST'25 traces (Kimi production; https://github.com/kvcache-ai/Mooncake,
  ``FAST25-release/traces/``, Apache-2.0). JSONL with ``timestamp`` (integer milliseconds),
  ``input_length``, ``output_length``, ``hash_ids`` (512-token prefix-block hashes).
- ``csv``: generic CSV with ``arrival_s``, ``prompt_tokens``, ``output_tokens``.
- ``jsonl``: generic JSONL with the same keys (and optional ``hash_ids``).
- ``auto``: by extension (``.jsonl`` / ``.json`` / ``.ndjson`` -> JSON lines, ``.csv`` -> CSV, otherwise the
  first non-blank character: ``{`` -> JSON lines), then by header: the format whose columns overlap the
  file's columns most.

Columns other than those listed are ignored. Blank lines are skipped. Milliseconds and datetimes exist
only here: arrival times are converted to float seconds once, at load.

Validation fails with a :class:`~pdsim.errors.TraceError` naming the file, the 1-based line number as in
the file (the CSV header is line 1), the column and the offending value, e.g.
``traces/x.csv:17: output_tokens must be >= 1, got 0``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.errors import TraceError

__all__ = ["TRACE_FORMATS", "load_trace"]


@dataclass(frozen=True, slots=True)
class _Format:
    """Column layout of one trace format.

    Attributes:
        name: format name as used in configs.
        container: ``"csv"`` or ``"jsonl"``.
        arrival: name of the arrival-time column in the file.
        arrival_unit: ``"datetime"`` (ISO-8601 strings), ``"ms"`` or ``"s"``.
        prompt: name of the prompt-length column in the file.
        output: name of the output-length column in the file.
    """

    name: str
    container: str
    arrival: str
    arrival_unit: str
    prompt: str
    output: str

    @property
    def columns(self) -> tuple[str, str, str]:
        return (self.arrival, self.prompt, self.output)


_FORMATS: dict[str, _Format] = {
    f.name: f
    for f in (
        _Format("azure", "csv", "TIMESTAMP", "datetime", "ContextTokens", "GeneratedTokens"),
        _Format("csv", "csv", "arrival_s", "s", "prompt_tokens", "output_tokens"),
        _Format("mooncake", "jsonl", "timestamp", "ms", "input_length", "output_length"),
        _Format("jsonl", "jsonl", "arrival_s", "s", "prompt_tokens", "output_tokens"),
    )
}

#: Accepted values of ``fmt`` in :func:`load_trace`.
TRACE_FORMATS: tuple[str, ...] = ("auto", *_FORMATS)

_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


def load_trace(path: Path | str, fmt: str = "auto") -> pd.DataFrame:
    """Read and validate a request trace.

    Args:
        path: trace file (CSV or JSON lines).
        fmt: one of ``"auto"``, ``"azure"``, ``"mooncake"``, ``"csv"``, ``"jsonl"`` (see module doc).

    Returns:
        DataFrame with a RangeIndex and columns ``arrival_s`` (float64, seconds since the first
        request, so the first is 0.0, non-decreasing), ``prompt_tokens`` (int64, >= 1),
        ``output_tokens`` (int64, >= 1) and, when the file has them (Mooncake, JSONL), ``hash_ids``
        (object: one list of int per request).

    Raises:
        TraceError: the file is missing or unreadable; the format is unknown or cannot be detected;
            the trace has no rows; required columns are missing (the message lists the columns found);
            a value is missing, non-numeric, not an integer, or not finite; ``prompt_tokens`` or
            ``output_tokens`` is < 1; a timestamp cannot be parsed; arrival times go back in time.
            Row-level messages read ``{path}:{line}: {column} ..., got {value}``.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in _FORMATS:
        raise TraceError(f"{path}: unknown trace format {fmt!r}; expected one of {', '.join(TRACE_FORMATS)}")
    if not path.is_file():
        raise TraceError(f"{path}: trace file not found")

    container = _FORMATS[fmt].container if fmt != "auto" else _detect_container(path)
    if container == "csv":
        raw = _read_csv(path)
        lines, header_line = _csv_lines(raw), 1
    else:
        raw, lines = _read_jsonl(path)
        header_line = None
    raw, lines = _drop_blank_rows(raw, lines)
    if len(raw) == 0:
        raise TraceError(f"{path}: trace is empty (no requests)")

    spec = _FORMATS[fmt] if fmt != "auto" else _detect_format(path, container, list(raw.columns))
    missing = [c for c in spec.columns if c not in raw.columns]
    if missing:
        where = f"{path}:{header_line}" if header_line is not None else f"{path}"
        found = ", ".join(map(str, raw.columns)) or "(none)"
        raise TraceError(
            f"{where}: missing column(s) {', '.join(missing)} for {spec.name} format; found columns: {found}"
        )

    arrival_s = _arrival_seconds(raw[spec.arrival], spec, lines, path)
    out = {
        "arrival_s": arrival_s,
        "prompt_tokens": _token_column(raw[spec.prompt], spec.prompt, lines, path),
        "output_tokens": _token_column(raw[spec.output], spec.output, lines, path),
    }
    if container == "jsonl" and "hash_ids" in raw.columns:
        out["hash_ids"] = _hash_ids_column(raw["hash_ids"], lines, path)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------- reading


def _detect_container(path: Path) -> str:
    """``"jsonl"`` or ``"csv"``, by extension, else by the first non-blank character."""
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
    return "jsonl" if head.startswith(b"{") else "csv"


def _detect_format(path: Path, container: str, columns: list[str]) -> _Format:
    """Pick the format of ``container`` whose required columns overlap ``columns`` most."""
    candidates = [f for f in _FORMATS.values() if f.container == container]
    scores = [len(set(f.columns) & set(columns)) for f in candidates]
    best = max(scores)
    if best == 0 or scores.count(best) > 1:
        expected = "; ".join(f"{f.name}: {', '.join(f.columns)}" for f in candidates)
        found = ", ".join(map(str, columns)) or "(none)"
        raise TraceError(f"{path}: cannot detect the trace format; found columns: {found}; expected {expected}")
    return candidates[scores.index(best)]


def _read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV keeping blank lines as all-NaN rows, so that row i is file line i + 2."""
    try:
        raw = pd.read_csv(
            path,
            skip_blank_lines=False,
            dtype={"TIMESTAMP": str},  # pandas >= 3 parses floats round-trip exactly by default
        )
    except pd.errors.EmptyDataError:
        raise TraceError(f"{path}: trace is empty (no header, no requests)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise TraceError(f"{path}: cannot parse CSV: {exc}") from None
    if not isinstance(raw.index, pd.RangeIndex):
        # pandas turns an extra leading field into an implicit index column: refuse, do not shift columns.
        raise TraceError(
            f"{path}:2: the row has more fields than the header ({raw.shape[1]} columns: "
            f"{', '.join(map(str, raw.columns))})"
        )
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw


def _csv_lines(raw: pd.DataFrame) -> np.ndarray:
    """1-based file line of each row of a CSV read with ``skip_blank_lines=False`` (header = line 1)."""
    return np.arange(2, len(raw) + 2, dtype=np.int64)


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Parse JSON lines in one ``json.loads`` call; on failure, locate the first bad line.

    Returns:
        (frame of the records, 1-based file line of each record). Blank lines are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: cannot decode as UTF-8: {exc}") from None
    all_lines = text.split("\n")
    numbered = [(i + 1, s) for i, s in enumerate(all_lines) if s.strip()]
    lines = np.fromiter((n for n, _ in numbered), dtype=np.int64, count=len(numbered))
    try:
        records = json.loads("[" + ",".join(s for _, s in numbered) + "]")
    except json.JSONDecodeError:
        records = None
    if records is None or not all(isinstance(r, dict) for r in records):
        _raise_first_bad_json_line(path, numbered)
    return pd.DataFrame.from_records(records), lines


def _raise_first_bad_json_line(path: Path, numbered: list[tuple[int, str]]) -> None:
    for line_no, s in numbered:
        try:
            value = json.loads(s)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}:{line_no}: invalid JSON ({exc.msg}), got {_clip(s)!r}") from None
        if not isinstance(value, dict):
            raise TraceError(f"{path}:{line_no}: expected a JSON object, got {_clip(s)!r}")
    raise TraceError(f"{path}: invalid JSON lines")  # pragma: no cover - a line must have failed above


def _drop_blank_rows(raw: pd.DataFrame, lines: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Drop all-NaN rows (blank CSV lines), keeping the line number of every remaining row."""
    if raw.shape[1] == 0:
        return raw, lines
    blank = raw.isna().all(axis=1).to_numpy()
    if blank.any():
        raw = raw.loc[~blank].reset_index(drop=True)
        lines = lines[~blank]
    return raw, lines


# ------------------------------------------------------------------------------------------ validation


def _numeric(col: pd.Series, name: str, lines: np.ndarray, path: Path, what: str) -> np.ndarray:
    """``col`` as float64 or int64 values; missing or non-numeric entries raise at their line."""
    if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=np.int64)
    if pd.api.types.is_bool_dtype(col.dtype):
        num = pd.Series(np.nan, index=col.index)
    else:
        num = pd.to_numeric(col, errors="coerce")
        # JSON booleans would coerce to 0/1: reject them as non-numeric.
        if col.dtype == object:
            is_bool = col.map(type).isin((bool, np.bool_)).to_numpy()
            if is_bool.any():
                num = num.mask(is_bool)
    values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raw = col.iloc[i]
        if _is_missing(raw):
            raise TraceError(f"{path}:{lines[i]}: {name} is missing")
        raise TraceError(f"{path}:{lines[i]}: {name} must be {what}, got {_show(raw)}")
    return values


def _token_column(col: pd.Series, name: str, lines: np.ndarray, path: Path) -> np.ndarray:
    """Validated int64 token counts (integers >= 1)."""
    values = _numeric(col, name, lines, path, "an integer")
    if values.dtype != np.int64:
        not_int = values != np.floor(values)
        if not_int.any():
            i = int(np.argmax(not_int))
            raise TraceError(f"{path}:{lines[i]}: {name} must be an integer, got {_show(col.iloc[i])}")
        too_big = np.abs(values) >= 2.0**53
        if too_big.any():
            i = int(np.argmax(too_big))
            raise TraceError(f"{path}:{lines[i]}: {name} is out of range, got {_show(col.iloc[i])}")
        values = values.astype(np.int64)
    below = values < 1
    if below.any():
        i = int(np.argmax(below))
        raise TraceError(f"{path}:{lines[i]}: {name} must be >= 1, got {_show(values[i])}")
    return values


def _arrival_seconds(col: pd.Series, spec: _Format, lines: np.ndarray, path: Path) -> np.ndarray:
    """Arrival times as float64 seconds since the first request; must be non-decreasing."""
    name = spec.arrival
    if spec.arrival_unit == "datetime":
        ticks = _datetime_ns(col, name, lines, path)
    else:
        ticks = _numeric(col, name, lines, path, "a finite number")
    back = np.diff(ticks) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        raise TraceError(
            f"{path}:{lines[i]}: {name} goes back in time: got {_show(col.iloc[i])} after "
            f"{_show(col.iloc[i - 1])} on line {lines[i - 1]} (arrival times must be sorted)"
        )
    if spec.arrival_unit == "datetime":
        return (ticks - ticks[0]).astype(np.float64) / 1e9
    if spec.arrival_unit == "ms":
        return (ticks - ticks[0]).astype(np.float64) / 1e3
    seconds = ticks.astype(np.float64)
    return seconds - seconds[0]


def _datetime_ns(col: pd.Series, name: str, lines: np.ndarray, path: Path) -> np.ndarray:
    """Parse ISO-8601 datetime strings (timezone-naive) to int64 nanoseconds."""
    try:
        parsed = pd.to_datetime(col, format="ISO8601", errors="coerce")
    except (ValueError, TypeError):
        parsed = None
    if parsed is None or not pd.api.types.is_datetime64_dtype(parsed.dtype):
        parsed = pd.Series([_parse_one(v) for v in col], index=col.index, dtype="datetime64[ns]")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raw = col.iloc[i]
        if _is_missing(raw):
            raise TraceError(f"{path}:{lines[i]}: {name} is missing")
        raise TraceError(f"{path}:{lines[i]}: {name} is not a valid timestamp, got {_show(raw)}")
    return parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def _parse_one(value: object) -> pd.Timestamp:
    """Fallback for mixed time zones: parse one timestamp, NaT when invalid or timezone-aware."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    return pd.NaT if ts is pd.NaT or ts.tzinfo is not None else ts


def _hash_ids_column(col: pd.Series, lines: np.ndarray, path: Path) -> pd.Series:
    """Mooncake prefix-block hashes: each entry must be a list (of int)."""
    ok = col.map(lambda v: isinstance(v, list)).to_numpy(dtype=bool)
    if not ok.all():
        i = int(np.argmax(~ok))
        if _is_missing(col.iloc[i]):
            raise TraceError(f"{path}:{lines[i]}: hash_ids is missing")
        raise TraceError(f"{path}:{lines[i]}: hash_ids must be a list of int, got {_show(col.iloc[i])}")
    return pd.Series(col.to_numpy(dtype=object), dtype=object)


def _is_missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _show(value: object) -> str:
    """A value for an error message: numbers as written (``0``, ``2.5``), strings quoted (``'abc'``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(_clip(value)) if isinstance(value, str) else _clip(str(value))


def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
