"""Import NVIDIA aiconfigurator's vLLM perf database into pdsim profiles.

Source: https://github.com/ai-dynamo/aiconfigurator (Apache-2.0). The perf database lives under
``aic-core/src/aiconfigurator_core/systems/`` upstream: one hardware file ``<system>.yaml`` per system
and Parquet tables ``data/<system>/<op>/<backend>/<version>/<table>.parquet``. A local copy may keep
that layout or the flat one of ``shared/data/profiles/aiconfigurator`` (``systems/<system>.yaml`` and
``data/<system>/...`` side by side, ``COMMIT`` and ``LICENSE`` at the top).

Every upstream table has ``framework, version, device, op_name, kernel_source, ..., latency`` with
``latency`` in **milliseconds**: the mean over CUDA-graph replays of the op (``collector/helper.py``
``benchmark_with_power``: elapsed time / runs / repeats); NCCL rows are the out-of-place ``time`` of
nccl-tests (average over its iterations), converted from microseconds to milliseconds by the collector.
pdsim stores seconds (``latency_s = latency / 1000``); no spread columns (upstream keeps none).

Table mapping (backend ``vllm``; the newest version directory that holds each table is used):

- ``gemm/vllm/<v>/gemm_perf.parquet`` -> ``gemm``: ``gemm_dtype`` bfloat16 -> bf16 (kernel
  ``torch.nn.functional.linear`` / ``vllm_default``), fp8 -> fp8 (per-tensor scaled W8A8, e.g.
  ``CutlassFP8ScaledMMLinearKernel``); fp8_block (block-scaled FP8), nvfp4 and other quantised formats
  are dropped (pdsim's dtypes cannot name them). ``m, n, k`` as upstream (``Y = X[m, k] W[k, n]``).
- ``attention/vllm/<v>/context_attention_perf.parquet`` -> ``attention_prefill``: ``window_size == 0``
  only (full causal attention; a missing ``window_size`` column means 0), ``beam_width == 1``,
  ``seq_len = isl`` (the collector runs ``query_lens = seq_lens = isl``, no cached prefix).
- ``attention/vllm/<v>/generation_attention_perf.parquet`` -> ``attention_decode``: window 0 only;
  ``context_len = isl + step - 1``. Evidence (``collector/vllm/collect_attn.py``): a generation case
  runs vLLM's attention with ``seq_lens = [input_len]`` and ``query_lens = [1]`` (``input_len - 1``
  keys pre-filled in the paged cache, the new token's K/V written by the step) and logs ``isl = 1``,
  ``step = input_len``; the sweep passes ``input_len = s - 1`` for ``s`` in 2 .. 131072, hence the
  upstream steps 1, 3, ..., 131071. The query therefore attends to exactly ``step`` keys (the new token's
  included), i.e. ``isl + step - 1`` with ``isl == 1``. aiconfigurator's own loader keys these rows by
  ``s = isl + step`` (one more than the keys the kernel read; it queries with ``s = prompt + step + 1``);
  pdsim keeps the number of keys actually attended. Rows with ``isl != 1`` are refused (their
  semantics are not documented upstream).
- ``comm/nccl/<v>/nccl_perf.parquet`` -> ``collective``, backend ``nccl``: ops all_reduce, all_gather,
  reduce_scatter (alltoall is dropped: the format has no such op). ``message_size`` is in
  **elements** (``collector/collect_nccl.py``: ``message_size = size // bytes_per_element`` where
  ``size`` is nccl-tests' ``-b`` in bytes); bytes = elements x element size (half 2, int8 1, ...).
  nccl-tests' size is the whole buffer: for all_reduce and reduce_scatter it is what each rank
  contributes, for all_gather it is the gathered output, so each rank contributes
  ``(count // ranks)`` elements rounded down to 16 bytes (``AllGatherGetCollByteCount``); pdsim's
  ``message_bytes`` is the per-rank contribution (``pdsim/profiles/format.py``). int8 rows are dropped
  (no int8 dtype in the format; the half rows cover the same byte sizes).
- ``comm/vllm/<v>/custom_allreduce_perf.parquet`` -> ``collective`` op all_reduce, backend
  ``vllm_custom_graph`` / ``vllm_custom_eager`` (upstream ``backend`` vllm_graph / vllm_eager: vLLM's
  ``tensor_model_parallel_all_reduce`` captured in a CUDA graph or run eagerly; vLLM picks its custom
  all-reduce for small messages and falls back to NCCL / symmetric memory above its size limit, and
  the rows time whatever vLLM dispatched). ``message_size`` is in **elements** (``collector/
  collect_all_reduce.py``: the input is ``torch.ones([size // 4096, 4096])`` or ``[1, size]``).
- ``moe/vllm/<v>/moe_perf.parquet`` -> ``moe``: vLLM's ``fused_experts`` (``collector/vllm/collect_moe.py``)
  timed on one GPU for ``num_tokens`` bf16 hidden states with the routing (top-k ids and weights)
  computed beforehand, so ``latency`` is the fused routed-expert kernel of one MoE layer (permute, gate/up
  grouped GEMM, SiLU x mul, down grouped GEMM, weighted combine): no router GEMM, no communication.
  ``inter_size`` is the expert's full intermediate size; the GPU holds ``inter_size // moe_tp_size`` of
  ``num_experts / moe_ep_size`` experts (``determine_expert_map``). Kept: ``distribution == balanced``
  (``balanced_logits``: every expert gets the same number of tokens; the power-law rows model skewed
  routing, which pdsim does not model) and ``moe_dtype`` bfloat16 -> bf16, fp8 -> fp8 (per-tensor W8A8,
  ``fp8_w8a8_moe_quant_config`` with static activation scales). Dropped, with counts in the notes:
  fp8_block, nvfp4, mxfp4 and int4 rows (no pdsim dtype) and the power-law rows. Column names as
  upstream; ``moe_dtype`` -> ``dtype``.
- ``mla`` tables are not imported (no such table in profile format v1).

Duplicate keys: rows of one key measured by several ``kernel_source`` values keep the kernel with the
most rows in that upstream table (the backend vLLM selects for most shapes on that GPU; ties: the
lexicographically last name, i.e. the newer of fa3/fa4); rows repeated with the same kernel are merged
into their median. ``source_rows`` counts the raw rows behind each output row; ``kernel_source`` is
kept as an extra column.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

from pdsim.errors import ProfileError
from pdsim.profiles.format import (
    LATENCY,
    Profile,
    ProfileMeta,
    SoftwareInfo,
    SourceInfo,
    read_parquet,
    require_columns,
    today,
    write_profile,
)
from pdsim.profiles.importers import copy_license, merge_duplicates, read_commit

REPOSITORY = "https://github.com/ai-dynamo/aiconfigurator"
LICENSE = "Apache-2.0"
LICENSE_FILE = "aiconfigurator.LICENSE"
UPSTREAM_SYSTEMS_DIR = "aic-core/src/aiconfigurator_core/systems"
BACKEND = "vllm"

# aiconfigurator system -> name in pdsim/data/gpu_specs.csv (None: the GPU has no row there).
SYSTEM_GPUS: dict[str, str | None] = {
    "a100_sxm": "A100-80GB-SXM",
    "h100_sxm": "H100-SXM",
    "h200_sxm": "H200-SXM",
    "b200_sxm": "B200",
    "b300_sxm": "B300",
    "gb200": "GB200",
    "gb300": None,
    "l40s": "L40S",
    "rtx_pro_6000_server": None,
}
# Intel b60 (XPU) is not imported: profile format v1 has no device_type for it (cuda, rocm, cpu).
SHIPPED_SYSTEMS = tuple(SYSTEM_GPUS)

GEMM_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "fp8": "fp8"}
ATTN_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "fp8": "fp8"}
# nccl-tests / torch dtype name -> (pdsim dtype, bytes per element)
COMM_DTYPES = {
    "half": ("fp16", 2),
    "float16": ("fp16", 2),
    "bfloat16": ("bf16", 2),
    "float": ("fp32", 4),
    "float32": ("fp32", 4),
    "f8e4m3": ("fp8", 1),
    "fp8": ("fp8", 1),
}
NCCL_OPS = ("all_reduce", "all_gather", "reduce_scatter")
MOE_DTYPES = {"bfloat16": "bf16", "fp8": "fp8"}
MOE_DISTRIBUTIONS = ("balanced",)
MOE_KEYS = ("num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size")
CUSTOM_AR_BACKENDS = {"vllm_graph": "vllm_custom_graph", "vllm_eager": "vllm_custom_eager"}


# ---------------------------------------------------------------------------------------------------
# Locating the raw files
# ---------------------------------------------------------------------------------------------------


def _version_key(v: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+_]", v))


class _Layout:
    """Where a system's yaml and tables are, and the upstream path of each file used."""

    def __init__(self, src_dir: Path, system: str):
        src_dir = Path(src_dir)
        candidates = [src_dir / "systems", src_dir / UPSTREAM_SYSTEMS_DIR, src_dir]
        systems_dir = next((d for d in candidates if (d / f"{system}.yaml").is_file()), None)
        if systems_dir is None:
            known = sorted(p.stem for d in candidates if d.is_dir() for p in d.glob("*.yaml"))
            raise ProfileError(f"{src_dir}: no {system}.yaml under systems/ or {UPSTREAM_SYSTEMS_DIR}/; systems found: {known}")
        self.src_dir = src_dir
        self.yaml_file = systems_dir / f"{system}.yaml"
        try:
            self.spec = yaml.safe_load(self.yaml_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ProfileError(f"{self.yaml_file}: malformed YAML: {exc}") from None
        data_rel = str(self.spec.get("data_dir") or f"data/{system}")
        # upstream: data_dir is relative to the systems directory; the flat copy keeps data/ beside systems/
        for base in (systems_dir, src_dir):
            if (base / data_rel).is_dir():
                self.base = base
                self.data_dir = base / data_rel
                break
        else:
            raise ProfileError(f"{self.yaml_file}: data_dir {data_rel!r} not found under {systems_dir} or {src_dir}")
        self.files: list[Path] = [self.yaml_file]

    def upstream(self, path: Path) -> str:
        """The path of a raw file in the upstream repository."""
        if path == self.yaml_file:
            return f"{UPSTREAM_SYSTEMS_DIR}/{path.name}"
        return f"{UPSTREAM_SYSTEMS_DIR}/{path.relative_to(self.base).as_posix()}"

    def table(self, op: str, backend: str, name: str) -> Path | None:
        """The newest version's ``<name>.parquet`` under ``data/<system>/<op>/<backend>/``, or None."""
        root = self.data_dir / op / backend
        if not root.is_dir():
            return None
        for vdir in sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: _version_key(d.name), reverse=True):
            f = vdir / f"{name}.parquet"
            if f.is_file():
                self.files.append(f)
                return f
        return None


def _read(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    df = read_parquet(path)
    require_columns(df, required, str(path))
    return df


def _seconds(df: pd.DataFrame, where: str) -> pd.Series:
    lat = pd.to_numeric(df["latency"], errors="coerce")
    bad = df.loc[~((lat > 0) & (lat < float("inf")))]
    if len(bad):
        raise ProfileError(f"{where}: latency must be finite and > 0 (ms); first bad row: {bad.head(1).to_dict('records')}")
    return lat / 1000.0


def _pick_kernel(df: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep, for each key measured by several ``kernel_source`` values, the kernel with the most rows
    in ``df`` (ties: the lexicographically last name). Returns the rows kept and the rows dropped per
    kernel."""
    if "kernel_source" not in df.columns or df.kernel_source.nunique() <= 1:
        return df, {}
    counts = df.kernel_source.value_counts()
    rank = {k: (int(n), k) for k, n in counts.items()}
    order = sorted(rank, key=lambda k: rank[k], reverse=True)
    priority = {k: i for i, k in enumerate(order)}
    df = df.assign(_prio=df.kernel_source.map(priority))
    best = df.groupby(keys, sort=False)["_prio"].transform("min")
    keep = df._prio == best
    dropped = df.loc[~keep, "kernel_source"].value_counts().to_dict()
    return df.loc[keep].drop(columns="_prio"), {str(k): int(v) for k, v in dropped.items()}


# ---------------------------------------------------------------------------------------------------
# Table conversions (pure: DataFrame in, DataFrame out, plus notes)
# ---------------------------------------------------------------------------------------------------


def convert_gemm(raw: pd.DataFrame, where: str = "gemm_perf") -> tuple[pd.DataFrame, list[str]]:
    """``gemm_perf`` rows -> the ``gemm`` table (see the module docstring)."""
    notes: list[str] = []
    dropped = raw.loc[~raw.gemm_dtype.isin(list(GEMM_DTYPES)), "gemm_dtype"].value_counts()
    if len(dropped):
        notes.append("gemm: dropped dtypes " + ", ".join(f"{k} ({v} rows)" for k, v in sorted(dropped.items()))
                     + " (no pdsim dtype for block-scaled FP8 or FP4)")
    df = raw.loc[raw.gemm_dtype.isin(list(GEMM_DTYPES))].copy()
    if df.empty:
        raise ProfileError(f"{where}: no rows of a supported dtype ({sorted(GEMM_DTYPES)}); has {sorted(set(raw.gemm_dtype))}")
    out = pd.DataFrame({
        "dtype": df.gemm_dtype.map(GEMM_DTYPES),
        "m": df.m.astype("int64"), "n": df.n.astype("int64"), "k": df.k.astype("int64"),
        LATENCY: _seconds(df, where),
        "kernel_source": df.kernel_source.astype(str),
    })
    out, by_kernel = _pick_kernel(out, ["dtype", "m", "n", "k"])
    if by_kernel:
        notes.append(f"gemm: keys measured by several kernels; kept the kernel with the most rows, dropped {by_kernel}")
    out, merged = merge_duplicates(out, "gemm", ("kernel_source",))
    if merged:
        notes.append(f"gemm: {merged} repeated rows merged into their key's median")
    kernels = out.groupby("dtype").kernel_source.unique()
    notes.append("gemm kernels: " + "; ".join(f"{d}: {', '.join(sorted(v))}" for d, v in kernels.items()))
    return out, notes


def _attention_common(raw: pd.DataFrame, table: str, where: str) -> tuple[pd.DataFrame, list[str]]:
    notes: list[str] = []
    df = raw.copy()
    if "window_size" not in df.columns:
        df["window_size"] = 0
    win = df.window_size != 0
    if win.any():
        notes.append(f"{table}: dropped {int(win.sum())} sliding-window rows (window_size in {sorted(set(df.loc[win, 'window_size']))}); kept window_size 0")
    df = df.loc[~win]
    if "beam_width" in df.columns and (df.beam_width != 1).any():
        n = int((df.beam_width != 1).sum())
        notes.append(f"{table}: dropped {n} rows with beam_width != 1")
        df = df.loc[df.beam_width == 1]
    bad_dt = ~df.attn_dtype.isin(list(ATTN_DTYPES)) | ~df.kv_cache_dtype.isin(list(ATTN_DTYPES))
    if bad_dt.any():
        notes.append(f"{table}: dropped {int(bad_dt.sum())} rows of unsupported dtypes "
                     f"{sorted(set(df.loc[bad_dt, 'attn_dtype']) | set(df.loc[bad_dt, 'kv_cache_dtype']))}")
        df = df.loc[~bad_dt]
    if df.empty:
        raise ProfileError(f"{where}: no full-attention (window_size 0) rows of a supported dtype")
    return df, notes


def _finish_attention(out: pd.DataFrame, table: str) -> tuple[pd.DataFrame, list[str]]:
    notes: list[str] = []
    keys = [c for c in out.columns if c not in (LATENCY, "kernel_source")]
    out, by_kernel = _pick_kernel(out, keys)
    if by_kernel:
        notes.append(f"{table}: keys measured by several kernels; kept the kernel with the most rows, dropped {by_kernel}")
    else:
        notes.append(f"{table}: every key was measured by one kernel (vLLM's backend choice per shape); none dropped")
    out, merged = merge_duplicates(out, table, ("kernel_source",))
    if merged:
        notes.append(f"{table}: {merged} repeated rows (same key and kernel) merged into their key's median")
    ks = out.kernel_source.value_counts()
    notes.append(f"{table} kernels: " + ", ".join(f"{k} ({v})" for k, v in sorted(ks.items())))
    return out, notes


def convert_context_attention(raw: pd.DataFrame, where: str = "context_attention_perf") -> tuple[pd.DataFrame, list[str]]:
    """``context_attention_perf`` rows -> the ``attention_prefill`` table (``seq_len = isl``)."""
    df, notes = _attention_common(raw, "attention_prefill", where)
    if (df.step != 0).any():
        raise ProfileError(f"{where}: context rows with step != 0 (a cached prefix); first: {df.loc[df.step != 0].head(1).to_dict('records')}")
    out = pd.DataFrame({
        "dtype": df.attn_dtype.map(ATTN_DTYPES), "kv_dtype": df.kv_cache_dtype.map(ATTN_DTYPES),
        "batch_size": df.batch_size.astype("int64"), "seq_len": df.isl.astype("int64"),
        "num_heads": df.num_heads.astype("int64"), "num_kv_heads": df.num_key_value_heads.astype("int64"),
        "head_dim": df.head_dim.astype("int64"), LATENCY: _seconds(df, where),
        "kernel_source": df.kernel_source.astype(str),
    })
    out, more = _finish_attention(out, "attention_prefill")
    return out, notes + more


def decode_context_len(isl: pd.Series, step: pd.Series) -> pd.Series:
    """Keys one decode query attends to: ``isl + step - 1`` (``isl`` is 1 in every vLLM row; see the
    module docstring for the collector's semantics)."""
    return isl + step - 1


def convert_generation_attention(raw: pd.DataFrame, where: str = "generation_attention_perf") -> tuple[pd.DataFrame, list[str]]:
    """``generation_attention_perf`` rows -> the ``attention_decode`` table
    (``context_len = isl + step - 1``, the keys attended, the new token's included)."""
    df, notes = _attention_common(raw, "attention_decode", where)
    if (df.isl != 1).any():
        raise ProfileError(
            f"{where}: generation rows with isl != 1 (upstream semantics verified only for isl == 1: "
            f"step = keys attended); first: {df.loc[df.isl != 1].head(1).to_dict('records')}"
        )
    out = pd.DataFrame({
        "dtype": df.attn_dtype.map(ATTN_DTYPES), "kv_dtype": df.kv_cache_dtype.map(ATTN_DTYPES),
        "batch_size": df.batch_size.astype("int64"),
        "context_len": decode_context_len(df.isl.astype("int64"), df.step.astype("int64")),
        "num_heads": df.num_heads.astype("int64"), "num_kv_heads": df.num_key_value_heads.astype("int64"),
        "head_dim": df.head_dim.astype("int64"), LATENCY: _seconds(df, where),
        "kernel_source": df.kernel_source.astype(str),
    })
    out, more = _finish_attention(out, "attention_decode")
    notes.append("attention_decode: context_len = isl + step - 1 = step (isl is 1 in every row): the number of keys "
                 "the query attended, the new token's included (collector/vllm/collect_attn.py: seq_lens=[input_len], "
                 "query_lens=[1], logged isl=1, step=input_len); aiconfigurator's loader keys the same rows by isl + step")
    return out, notes + more


def _comm_dtype(df: pd.DataFrame, col: str, table: str) -> tuple[pd.DataFrame, list[str]]:
    bad = ~df[col].isin(list(COMM_DTYPES))
    notes = []
    if bad.any():
        notes.append(f"{table}: dropped {int(bad.sum())} rows of dtype {sorted(set(df.loc[bad, col]))} (no such pdsim dtype)")
    return df.loc[~bad], notes


def allgather_rank_elements(count: pd.Series, ranks: pd.Series, elt_bytes: pd.Series) -> pd.Series:
    """Elements each rank contributes in nccl-tests' all_gather of ``count`` total elements:
    ``count // ranks`` rounded down to a multiple of 16 bytes (``AllGatherGetCollByteCount``)."""
    align = (16 // elt_bytes).clip(lower=1)
    return (count // ranks) // align * align


def convert_nccl(raw: pd.DataFrame, where: str = "nccl_perf") -> tuple[pd.DataFrame, list[str]]:
    """``nccl_perf`` rows -> ``collective`` rows of backend ``nccl`` (per-rank ``message_bytes``)."""
    notes: list[str] = []
    other = raw.loc[~raw.op_name.isin(NCCL_OPS), "op_name"].value_counts()
    if len(other):
        notes.append("collective (nccl): dropped ops " + ", ".join(f"{k} ({v} rows)" for k, v in sorted(other.items()))
                     + " (not in the format's collective ops)")
    df = raw.loc[raw.op_name.isin(NCCL_OPS)]
    df, more = _comm_dtype(df, "nccl_dtype", "collective (nccl)")
    notes += more
    if df.empty:
        return pd.DataFrame(), notes
    dt = df.nccl_dtype.map(lambda d: COMM_DTYPES[d][0])
    eb = df.nccl_dtype.map(lambda d: COMM_DTYPES[d][1]).astype("int64")
    count = df.message_size.astype("int64")
    world = df.num_gpus.astype("int64")
    per_rank = count.where(df.op_name != "all_gather", allgather_rank_elements(count, world, eb))
    out = pd.DataFrame({
        "op": df.op_name.astype(str), "backend": "nccl", "dtype": dt, "world_size": world,
        "message_bytes": per_rank * eb, LATENCY: _seconds(df, where), "kernel_source": df.kernel_source.astype(str),
    })
    zero = out.message_bytes <= 0
    if zero.any():
        notes.append(f"collective (nccl): dropped {int(zero.sum())} all_gather rows whose per-rank share rounds to 0 bytes")
        out = out.loc[~zero]
    notes.append("collective (nccl): message_size is in elements (collector/collect_nccl.py); message_bytes = the "
                 "per-rank contribution: elements x dtype bytes for all_reduce and reduce_scatter, and for all_gather "
                 "the gathered total / world_size (nccl-tests sizes all_gather by its output)")
    return out, notes


def convert_custom_allreduce(raw: pd.DataFrame, where: str = "custom_allreduce_perf") -> tuple[pd.DataFrame, list[str]]:
    """``custom_allreduce_perf`` rows -> ``collective`` all_reduce rows of backend
    ``vllm_custom_graph`` / ``vllm_custom_eager``."""
    notes: list[str] = []
    unknown = sorted(set(raw.backend) - set(CUSTOM_AR_BACKENDS))
    if unknown:
        raise ProfileError(f"{where}: unknown backend values {unknown}; expected {sorted(CUSTOM_AR_BACKENDS)}")
    df, more = _comm_dtype(raw, "allreduce_dtype", "collective (vllm custom all-reduce)")
    notes += more
    if df.empty:
        return pd.DataFrame(), notes
    eb = df.allreduce_dtype.map(lambda d: COMM_DTYPES[d][1]).astype("int64")
    size = df.message_size.astype("int64")
    # the collector's tensor: [1, size] up to 4096 elements, else [size // 4096, 4096]
    elements = size.where(size <= 4096, size // 4096 * 4096)
    out = pd.DataFrame({
        "op": "all_reduce", "backend": df.backend.map(CUSTOM_AR_BACKENDS),
        "dtype": df.allreduce_dtype.map(lambda d: COMM_DTYPES[d][0]), "world_size": df.num_gpus.astype("int64"),
        "message_bytes": elements * eb, LATENCY: _seconds(df, where), "kernel_source": df.kernel_source.astype(str),
    })
    notes.append("collective (vllm custom all-reduce): message_size is in elements (collector/collect_all_reduce.py); "
                 "message_bytes = elements x dtype bytes; backend vllm_custom_graph / vllm_custom_eager = vLLM's "
                 "tensor_model_parallel_all_reduce in a CUDA graph / eagerly (custom all-reduce where vLLM picks it, "
                 "its NCCL fallback above the custom kernel's size limit)")
    return out, notes


def convert_moe(raw: pd.DataFrame, where: str = "moe_perf") -> tuple[pd.DataFrame, list[str]]:
    """``moe_perf`` rows -> the ``moe`` table (balanced bf16 / fp8 rows; see the module docstring).
    Returns an empty frame (and a note) when no row is kept."""
    notes: list[str] = []
    other = raw.loc[~raw.moe_dtype.isin(list(MOE_DTYPES)), "moe_dtype"].value_counts()
    if len(other):
        notes.append("moe: dropped dtypes " + ", ".join(f"{k} ({v} rows)" for k, v in sorted(other.items()))
                     + " (no pdsim dtype for block-scaled FP8, FP4 or INT4 experts)")
    df = raw.loc[raw.moe_dtype.isin(list(MOE_DTYPES))]
    skew = df.loc[~df.distribution.isin(MOE_DISTRIBUTIONS), "distribution"].value_counts()
    if len(skew):
        notes.append("moe: dropped distributions " + ", ".join(f"{k} ({v} rows)" for k, v in sorted(skew.items()))
                     + " (skewed routing; pdsim models balanced routing only)")
    df = df.loc[df.distribution.isin(MOE_DISTRIBUTIONS)]
    if df.empty:
        notes.append(f"moe: no {'/'.join(MOE_DISTRIBUTIONS)} rows of dtype {', '.join(sorted(MOE_DTYPES))}; no moe table")
        return pd.DataFrame(), notes
    out = pd.DataFrame({
        "dtype": df.moe_dtype.map(MOE_DTYPES), "distribution": df.distribution.astype(str),
        **{k: df[k].astype("int64") for k in MOE_KEYS},
        LATENCY: _seconds(df, where), "kernel_source": df.kernel_source.astype(str),
    })
    out, by_kernel = _pick_kernel(out, ["dtype", "distribution", *MOE_KEYS])
    if by_kernel:
        notes.append(f"moe: keys measured by several kernels; kept the kernel with the most rows, dropped {by_kernel}")
    out, merged = merge_duplicates(out, "moe", ("kernel_source",))
    if merged:
        notes.append(f"moe: {merged} repeated rows merged into their key's median")
    kernels = out.groupby("dtype").kernel_source.unique()
    notes.append("moe: latency = vLLM fused_experts of one layer for num_tokens tokens (no router GEMM, no "
                 "communication); inter_size unsharded (GPU holds inter_size / moe_tp_size); kernels: "
                 + "; ".join(f"{d}: {', '.join(sorted(v))}" for d, v in kernels.items()))
    return out, notes


# ---------------------------------------------------------------------------------------------------
# The importer
# ---------------------------------------------------------------------------------------------------


def _versions(df: pd.DataFrame) -> str:
    return ",".join(sorted(set(df.version.astype(str)))) if "version" in df.columns else "?"


def import_aiconfigurator(src_dir: str | Path, system: str, out_dir: str | Path, *, commit: str | None = None) -> Profile:
    """Convert aiconfigurator's vLLM tables of ``system`` into the profile directory ``out_dir``.

    Args:
        src_dir: a copy of aiconfigurator's perf database (see the module docstring for the layouts)
            with a ``COMMIT`` file (or pass ``commit``) and, if present, its ``LICENSE`` (copied to
            ``out_dir/../aiconfigurator.LICENSE``).
        system: an aiconfigurator system name (``h100_sxm``, ``b200_sxm``, ``gb200``, ...).
        out_dir: the profile directory to write (created; tables overwritten).
        commit: the upstream commit, when ``src_dir`` has no ``COMMIT`` file.

    Returns:
        The written profile (tables validated).

    Raises:
        ProfileError: the system, a table or a column is missing, a latency is not positive, or the
            rows contradict the documented semantics (e.g. decode rows with ``isl != 1``).
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    commit = read_commit(src_dir, commit)
    lay = _Layout(src_dir, system)
    gpu_spec = lay.spec.get("gpu") or {}
    tables: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    devices: set[str] = set()
    versions: dict[str, str] = {}

    attn_cols = ("device", "kernel_source", "batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim",
                 "attn_dtype", "kv_cache_dtype", "step", "latency")
    for table, (op, name, cols, convert) in {
        "gemm": ("gemm", "gemm_perf", ("device", "kernel_source", "gemm_dtype", "m", "n", "k", "latency"), convert_gemm),
        "attention_prefill": ("attention", "context_attention_perf", attn_cols, convert_context_attention),
        "attention_decode": ("attention", "generation_attention_perf", attn_cols, convert_generation_attention),
    }.items():
        f = lay.table(op, BACKEND, name)
        if f is not None:
            raw = _read(f, cols)
            devices |= set(raw.device.astype(str))
            versions[table] = f"vllm {_versions(raw)}"
            tables[table], more = convert(raw, str(f))
            notes += more
    comm: list[pd.DataFrame] = []
    nccl_version = None
    f = lay.table("comm", "nccl", "nccl_perf")
    if f is not None:
        raw = _read(f, ("device", "op_name", "kernel_source", "nccl_dtype", "num_gpus", "message_size", "latency"))
        devices |= set(raw.device.astype(str))
        nccl_version = _versions(raw)
        versions["collective nccl"] = f"nccl-tests with NCCL {nccl_version}"
        df, more = convert_nccl(raw, str(f))
        notes += more
        comm.append(df)
    f = lay.table("comm", BACKEND, "custom_allreduce_perf")
    if f is not None:
        raw = _read(f, ("device", "kernel_source", "allreduce_dtype", "num_gpus", "message_size", "latency", "backend"))
        devices |= set(raw.device.astype(str))
        versions["collective vllm custom"] = f"vllm {_versions(raw)} (directory {f.parent.name})"
        df, more = convert_custom_allreduce(raw, str(f))
        notes += more
        comm.append(df)
    comm = [c for c in comm if len(c)]
    if comm:
        merged, n = merge_duplicates(pd.concat(comm, ignore_index=True), "collective", ("kernel_source",))
        if n:
            notes.append(f"collective: {n} repeated rows merged into their key's median")
        tables["collective"] = merged
    f = lay.table("moe", BACKEND, "moe_perf")
    if f is not None:
        raw = _read(f, ("device", "kernel_source", "moe_dtype", "distribution", *MOE_KEYS, "latency"))
        df, more = convert_moe(raw, str(f))
        notes += more
        if len(df):
            devices |= set(raw.device.astype(str))
            versions["moe"] = f"vllm {_versions(raw)}"
            tables["moe"] = df
        else:
            lay.files.remove(f)  # nothing of it is in the profile
    if not tables:
        raise ProfileError(f"{lay.data_dir}: no vllm gemm, attention or comm tables found")
    if len(devices) != 1:
        raise ProfileError(f"{lay.data_dir}: tables name several devices {sorted(devices)}; expected one")
    skipped = sorted(p.name for p in lay.data_dir.iterdir() if p.is_dir() and p.name not in ("gemm", "attention", "comm", "moe"))
    if skipped:
        notes.append(f"not imported: {', '.join(skipped)} tables (profile format v1 has no such tables)")
    notes.append("table versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))
    notes.append("latency: aiconfigurator's mean over CUDA-graph replays (nccl: nccl-tests average), ms -> s; no spread columns")

    framework_version = versions.get("gemm") or versions.get("attention_prefill") or next(iter(versions.values()))
    command = f"pdsim profiles import aiconfigurator {src_dir} --system {system} --out {out_dir}"
    lic = copy_license(src_dir, out_dir.parent / LICENSE_FILE)
    world = int(tables["collective"].world_size.max()) if "collective" in tables else 1
    meta = ProfileMeta(
        name=out_dir.name,
        source_kind="imported",
        device_type="cuda",
        vendor="NVIDIA",
        device_name=devices.pop(),
        gpu=SYSTEM_GPUS.get(system),
        memory_bytes=int(gpu_spec["mem_capacity"]) if gpu_spec.get("mem_capacity") else None,
        device_count=max(world, 1),
        date=today(),
        command=command,
        software=SoftwareInfo(framework=framework_version, nccl=nccl_version),
        source=SourceInfo(
            repository=REPOSITORY,
            commit=commit,
            license=f"{LICENSE} (../{LICENSE_FILE})" if lic else LICENSE,
            files=[lay.upstream(p) for p in lay.files],
            reference=f"aiconfigurator perf database, system {system} (backend vllm)",
            notes="memory_bytes is gpu.mem_capacity of the system yaml; upstream paths are relative to the repository root",
        ),
        notes="\n".join(notes),
    )
    return write_profile(out_dir, meta, tables)
