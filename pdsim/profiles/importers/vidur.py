"""Import microsoft/vidur's profiling data into pdsim profiles.

Source: https://github.com/microsoft/vidur (MIT), ``data/profiling/``; Agrawal et al., "Vidur: A
Large-Scale Simulation Framework for LLM Inference", MLSys 2024. A local copy is the ``data/``
directory (``profiling/compute/<device>/<org>/<model>/mlp.csv``, ``profiling/network/<node>/
{all_reduce,send_recv}.csv``, ``LICENSE``; the commit comes from ``--commit`` or a ``COMMIT`` file,
default ``VIDUR_COMMIT``).

Compute (``mlp.csv``): one row per (model, ``num_tokens``, ``num_tensor_parallel_workers`` = TP) with
``time_stats.<op>.{min,max,mean,median,std}`` in **milliseconds** and the model's ``n_head, n_kv_head,
n_embd, n_expanded_embd, vocab_size, use_gated_mlp``. vidur times one decoder block of a reference
model built from sarathi-serve's layers in **fp16** (``vidur/profiling/mlp/mlp_wrapper.py``:
``model.to(dtype=torch.float16)``); each op's time is the sum of the GPU kernel durations inside its
``record_function`` region (kernel time, no launch gaps), over the profiler's repeats (20 with vidur's
default ``record_function`` method; the CSVs do not say which method produced them). ``median`` -> ``latency_s`` (ms / 1000). min/max/std are not percentiles,
so no spread columns are written. The shapes each op timed, per GPU (``vidur/profiling/mlp/
mlp_impl.py``; ``head_dim = n_embd / n_head``, ``t`` = TP, ``m = num_tokens``):

- ``attn_pre_proj``: fused QKV ``ColumnParallelLinear`` -> gemm ``n = (n_head + 2 n_kv_head) head_dim / t``,
  ``k = n_embd`` (with the QKV bias for models that have one: Qwen, phi-2);
- ``attn_post_proj``: ``RowParallelLinear`` -> gemm ``n = n_embd, k = n_head head_dim / t``;
- ``mlp_up_proj``: gate and up fused -> gemm ``n = 2 n_expanded_embd / t`` (gated MLP) or
  ``n_expanded_embd / t`` (plain MLP), ``k = n_embd``;
- ``mlp_down_proj``: gemm ``n = n_embd, k = n_expanded_embd / t``;
- ``input_layernorm``, ``post_attention_layernorm``: elementwise ``rmsnorm`` (``layernorm`` for
  phi-2) of width ``n_embd``;
- ``mlp_act``: ``silu_mul`` (gated) or ``gelu`` (plain) of width ``n_expanded_embd / t``;
- ``attn_rope``: ``rope`` of width ``(n_head + n_kv_head) head_dim / t``;
- ``add``: the residual ``add`` of width ``n_embd``;
- ``emb``: ``embedding`` (``VocabParallelEmbedding``, a gather of ``num_tokens`` rows) of width ``n_embd``.

phi-2 (``microsoft/phi-2``: LayerNorm, GELU MLP, parallel attention/MLP residual, partial rotary 0.4,
``vidur/config/model_config.py`` ``Phi2ModelConfig``) keeps its GEMMs, layernorm and gelu; its
``attn_rope`` (partial rotary: the width is not the format's) and its ``add`` (one op adding three
tensors) are dropped.

Several models (and TP degrees) give the same key (e.g. the 8192-wide norms of every 70B model, or
equal GEMM shards): the key's ``latency_s`` is the median over those rows, ``source_rows`` says how
many. Rows repeated for one (model, num_tokens, TP) are merged the same way.

Network (``all_reduce.csv``, ``send_recv.csv``): ``time_stats.<op>.median`` (ms) of one NCCL kernel
(``vidur/profiling/collectives/collectives_wrapper.py``: kineto, the median kernel time over 11
back-to-back collectives, then the median over 3 such runs), ``size`` in **bytes** (the wrapper writes
``size = elements * 2  # bytes`` of an fp16 buffer, ``collectives_impl.py``), ``num_workers`` ranks,
``devices_per_node`` ranks per node. Only intra-node rows (``devices_per_node == num_workers``) are
kept: the format's collective key has no node dimension. -> ``collective``: backend ``nccl``, dtype
fp16, ``world_size = num_workers``, ``message_bytes = size`` (the tensor each rank contributes;
``send_recv``: the tensor sent), ``op`` all_reduce / send_recv.

Not available: vidur's ``attention.csv`` files (absent from the upstream snapshot), so vidur profiles
have no attention tables; pair one with an aiconfigurator profile for attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.errors import ProfileError
from pdsim.profiles.format import (
    LATENCY,
    Profile,
    ProfileMeta,
    SoftwareInfo,
    SourceInfo,
    require_columns,
    today,
    write_profile,
)
from pdsim.profiles.importers import copy_license, merge_duplicates, read_commit

REPOSITORY = "https://github.com/microsoft/vidur"
VIDUR_COMMIT = "7d47513363ec447a741ac5e47241580b47724fbf"  # 2024-11-19, see shared/data/profiles/PROVENANCE.md
LICENSE = "MIT"
LICENSE_FILE = "vidur.LICENSE"
UPSTREAM_DATA_DIR = "data"
DTYPE = "fp16"


@dataclass(frozen=True, slots=True)
class VidurDevice:
    """A vidur compute device and the network profile of the node it pairs with."""

    device_name: str
    gpu: str | None  # name in pdsim/data/gpu_specs.csv
    network: str  # vidur network_device directory
    node: str  # what the network directory measured


DEVICES: dict[str, VidurDevice] = {
    "a100": VidurDevice("NVIDIA A100 80GB", "A100-80GB-SXM", "a100_dgx", "DGX A100 (8 x A100 80GB SXM, NVSwitch)"),
    "h100": VidurDevice("NVIDIA H100 80GB", "H100-SXM", "h100_dgx", "DGX H100 (8 x H100 SXM, NVSwitch)"),
    "a40": VidurDevice("NVIDIA A40", None, "a40_pairwise_nvlink", "A40 node with pairwise NVLink"),
}
SHIPPED_DEVICES = tuple(DEVICES)

# model id -> how its block differs from a Llama block (vidur/config/model_config.py)
_LAYERNORM_MODELS = {"microsoft/phi-2"}
_PARALLEL_RESIDUAL_MODELS = {"microsoft/phi-2"}  # add = attn + mlp + residual (3 inputs): dropped
_PARTIAL_ROTARY_MODELS = {"microsoft/phi-2"}  # rope width is not (q + k) heads x head_dim: dropped

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("input_layernorm", "post_attention_layernorm", "mlp_act", "attn_rope", "add", "emb")
MLP_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp", "num_tokens",
               "num_tensor_parallel_workers")


def _exact_div(a: pd.Series, b: pd.Series, what: str, where: str) -> pd.Series:
    bad = (a % b) != 0
    if bad.any():
        i = bad.idxmax()
        raise ProfileError(f"{where}: {what}: {int(a[i])} is not divisible by {int(b[i])}")
    return (a // b).astype("int64")


def _median_s(df: pd.DataFrame, op: str) -> pd.Series:
    return pd.to_numeric(df[f"time_stats.{op}.median"], errors="coerce") / 1000.0


def convert_mlp(raw: pd.DataFrame, model: str, where: str = "mlp.csv") -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """One model's ``mlp.csv`` -> (``gemm`` rows, ``elementwise`` rows, notes), not yet merged across
    models (columns: the table's keys, ``latency_s``, ``vidur_op``, ``model``)."""
    require_columns(raw, MLP_COLUMNS, where)
    notes: list[str] = []
    df = raw.copy()
    gated = df.use_gated_mlp.astype(str).str.lower().isin(["true", "1"])
    tp = df.num_tensor_parallel_workers.astype("int64")
    m = df.num_tokens.astype("int64")
    n_head, n_kv = df.n_head.astype("int64"), df.n_kv_head.astype("int64")
    embd, inter = df.n_embd.astype("int64"), df.n_expanded_embd.astype("int64")
    hd = _exact_div(embd, n_head, "head_dim = n_embd / n_head", where)
    inter_t = _exact_div(inter, tp, "n_expanded_embd / TP", where)
    shapes = {
        "attn_pre_proj": (_exact_div((n_head + 2 * n_kv) * hd, tp, "(n_head + 2 n_kv_head) head_dim / TP", where), embd),
        "attn_post_proj": (embd, _exact_div(n_head * hd, tp, "n_head head_dim / TP", where)),
        "mlp_up_proj": (inter_t.where(~gated, 2 * inter_t), embd),
        "mlp_down_proj": (embd, inter_t),
    }
    gemm = []
    for op, (n, k) in shapes.items():
        if f"time_stats.{op}.median" not in df.columns:
            notes.append(f"{model}: no {op} column")
            continue
        gemm.append(pd.DataFrame({"dtype": DTYPE, "m": m, "n": n.astype("int64"), "k": k.astype("int64"),
                                  LATENCY: _median_s(df, op), "vidur_op": op, "model": model}))

    norm = "layernorm" if model in _LAYERNORM_MODELS else "rmsnorm"
    widths = {
        "input_layernorm": (norm, embd),
        "post_attention_layernorm": (norm, embd),
        "mlp_act": (pd.Series(np.where(gated, "silu_mul", "gelu"), index=df.index), inter_t),
        "attn_rope": ("rope", _exact_div((n_head + n_kv) * hd, tp, "(n_head + n_kv_head) head_dim / TP", where)),
        "add": ("add", embd),
        "emb": ("embedding", embd),
    }
    ew = []
    for op, (name, width) in widths.items():
        if f"time_stats.{op}.median" not in df.columns:
            continue  # e.g. phi-2 has no post-attention norm
        if op == "attn_rope" and model in _PARTIAL_ROTARY_MODELS:
            notes.append(f"{model}: attn_rope dropped (partial rotary embedding)")
            continue
        if op == "add" and model in _PARALLEL_RESIDUAL_MODELS:
            notes.append(f"{model}: add dropped (parallel residual: one op adding three tensors)")
            continue
        ew.append(pd.DataFrame({"op": name, "dtype": DTYPE, "num_tokens": m, "width": width.astype("int64"),
                                LATENCY: _median_s(df, op), "vidur_op": op, "model": model}))
    gemm_df = pd.concat(gemm, ignore_index=True) if gemm else pd.DataFrame()
    ew_df = pd.concat(ew, ignore_index=True) if ew else pd.DataFrame()
    return gemm_df, ew_df, notes


def convert_network(raw: pd.DataFrame, op: str, where: str) -> tuple[pd.DataFrame, list[str]]:
    """``all_reduce.csv`` / ``send_recv.csv`` -> ``collective`` rows (intra-node only)."""
    col = f"time_stats.{op}.median"
    require_columns(raw, (col, "num_workers", "size", "devices_per_node"), where)
    notes: list[str] = []
    intra = raw.devices_per_node == raw.num_workers
    if (~intra).any():
        dropped = raw.loc[~intra].groupby(["num_workers", "devices_per_node"]).size()
        notes.append(f"{op}: dropped inter-node rows " + ", ".join(
            f"{w} ranks over {w // d} nodes ({n} rows)" for (w, d), n in dropped.items()))
    df = raw.loc[intra]
    out = pd.DataFrame({
        "op": op, "backend": "nccl", "dtype": DTYPE, "world_size": df.num_workers.astype("int64"),
        "message_bytes": df["size"].astype("int64"), LATENCY: pd.to_numeric(df[col], errors="coerce") / 1000.0,
    })
    return out, notes


def _drop_bad(df: pd.DataFrame, what: str, notes: list[str]) -> pd.DataFrame:
    lat = df[LATENCY]
    bad = ~((lat > 0) & (lat < float("inf")))
    if bad.any():
        notes.append(f"{what}: dropped {int(bad.sum())} rows with a missing or zero median")
    return df.loc[~bad]


def import_vidur(src_dir: str | Path, device: str, out_dir: str | Path, *, commit: str | None = None) -> Profile:
    """Convert vidur's compute and network profiling data of ``device`` into the profile ``out_dir``.

    Args:
        src_dir: vidur's ``data`` directory (holding ``profiling/`` and, if present, ``LICENSE``, copied
            to ``out_dir/../vidur.LICENSE``).
        device: a vidur compute device: ``a100``, ``h100`` or ``a40``.
        out_dir: the profile directory to write.
        commit: the upstream commit (default: ``src_dir/COMMIT`` if present, else ``VIDUR_COMMIT``).

    Returns:
        The written profile (tables validated).

    Raises:
        ProfileError: unknown device, no ``mlp.csv`` for it, missing columns, or shapes that do not
            divide by the TP degree.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if device not in DEVICES:
        raise ProfileError(f"unknown vidur device {device!r}; known: {sorted(DEVICES)}")
    spec = DEVICES[device]
    try:
        commit = read_commit(src_dir, commit)
    except ProfileError:
        commit = VIDUR_COMMIT
    prof_dir = src_dir / "profiling"
    compute_dir = prof_dir / "compute" / device
    mlp_files = sorted(compute_dir.glob("*/*/mlp.csv"))
    if not mlp_files:
        raise ProfileError(f"{compute_dir}: no <org>/<model>/mlp.csv files")
    notes: list[str] = []
    files: list[str] = []
    gemm_parts, ew_parts, models = [], [], []
    for f in mlp_files:
        model = f"{f.parent.parent.name}/{f.parent.name}"
        raw = pd.read_csv(f)
        g, e, more = convert_mlp(raw, model, str(f))
        notes += more
        gemm_parts.append(g)
        ew_parts.append(e)
        models.append(f"{model} (TP {','.join(str(t) for t in sorted(set(raw.num_tensor_parallel_workers)))}; "
                      f"{int(raw.num_tokens.min())}-{int(raw.num_tokens.max())} tokens)")
        files.append(f.relative_to(src_dir).as_posix())
    tables: dict[str, pd.DataFrame] = {}
    gemm = _drop_bad(pd.concat(gemm_parts, ignore_index=True), "gemm", notes)
    tables["gemm"], n = merge_duplicates(gemm, "gemm")
    notes.append(f"gemm: {len(gemm)} op timings -> {len(tables['gemm'])} shapes (equal (m, n, k) across models, TP "
                 f"degrees or repeated rows merged into their median; source_rows counts them)")
    ew = _drop_bad(pd.concat(ew_parts, ignore_index=True), "elementwise", notes)
    tables["elementwise"], n = merge_duplicates(ew, "elementwise")
    notes.append(f"elementwise: {len(ew)} op timings -> {len(tables['elementwise'])} keys (merged likewise)")

    net_dir = prof_dir / "network" / spec.network
    coll = []
    for op in ("all_reduce", "send_recv"):
        f = net_dir / f"{op}.csv"
        if not f.is_file():
            notes.append(f"collective: no {op}.csv for {spec.network}")
            continue
        df, more = convert_network(pd.read_csv(f), op, str(f))
        notes += more
        coll.append(df)
        files.append(f.relative_to(src_dir).as_posix())
    if coll:
        c = _drop_bad(pd.concat(coll, ignore_index=True), "collective", notes)
        tables["collective"], n = merge_duplicates(c, "collective")
        if n:
            notes.append(f"collective: {n} repeated sizes merged into their median")
    notes.insert(0, f"models: {'; '.join(models)}")
    notes.insert(1, f"network: {spec.network} ({spec.node}); intra-node rows only")
    notes.append("no attention tables: vidur's attention.csv files are not in the upstream snapshot; pair with an "
                 "aiconfigurator profile for attention")
    notes.append("latency: median of vidur's repeats (GPU kernel time, ms -> s); min/max/std are not percentiles, no spread columns")
    if spec.gpu is None:
        notes.append(f"gpu: {spec.device_name} has no row in pdsim/data/gpu_specs.csv")
    else:
        notes.append(f"gpu: vidur names only the device ({device!r}); its profiling.md uses one compute profile per SKU "
                     "for both its DGX and pairwise-NVLink nodes (the latter with PCIe / NVL cards), so the form factor "
                     f"of the compute timings is not recorded upstream; gpu names the DGX part ({spec.gpu})")

    lic = copy_license(src_dir, out_dir.parent / LICENSE_FILE)
    world = int(tables["collective"].world_size.max()) if "collective" in tables else 1
    meta = ProfileMeta(
        name=out_dir.name,
        source_kind="imported",
        device_type="cuda",
        vendor="NVIDIA",
        device_name=spec.device_name,
        gpu=spec.gpu,
        memory_bytes=None,
        device_count=max(world, 1),
        date=today(),
        command=f"pdsim profiles import vidur {src_dir} --gpu {device} --out {out_dir}",
        software=SoftwareInfo(framework="vidur profiling (sarathi-serve vidur-branch layers, fp16)"),
        source=SourceInfo(
            repository=REPOSITORY,
            commit=commit,
            license=f"{LICENSE} (../{LICENSE_FILE})" if lic else LICENSE,
            files=[f"{UPSTREAM_DATA_DIR}/{p}" for p in files],
            reference="Agrawal et al., Vidur: A Large-Scale Simulation Framework for LLM Inference, MLSys 2024",
            notes="upstream paths are relative to the repository root; memory_bytes is not recorded by vidur",
        ),
        notes="\n".join(notes),
    )
    return write_profile(out_dir, meta, tables)
