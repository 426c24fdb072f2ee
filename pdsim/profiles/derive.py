"""Derived (roofline) profiles for GPUs nobody has measured: ``pdsim profiles derive``.

A derived profile has the tables of an aiconfigurator import (``gemm``, ``attention_prefill``,
``attention_decode``, ``elementwise``, ``collective``, ``memcpy``) on grids that cover what the op-level
latency model (``pdsim.latency.oplevel``) looks up, but every number is *computed* from the GPU's
datasheet row in ``pdsim/data/gpu_specs.csv`` with a roofline whose efficiency factors were fitted on
the measured / imported NVIDIA profiles. It is never a measurement (``source_kind: derived``).

Per op (one GPU; flops F, bytes moved B; all parameters positive, fitted per op family)::

    t = max(F / (peak x eff_compute), B / (mem_bw x eff_mem)) + c0

- ``gemm`` (``Y[m,n] = X[m,k] W[k,n]``, separately for bf16 and fp8): F = 2 m n k,
  B = (m k + k n) x in_bytes + m n x 2 (bf16 output); ``eff_compute = eff_max x m/(m+m_half) x
  n/(n+n_half) x k/(k+k_half)`` (tile quantisation and occupancy at small dimensions), ``eff_mem`` and
  ``c0`` constant.
- ``attention_prefill`` (causal, b sequences of s tokens, h query / kv KV heads of d): F = 2 b h d s
  (s+1) (QK^T and PV over the s(s+1)/2 causal pairs), B = b s d (2h + 2kv) x 2 (read Q, K, V, write
  O); ``eff_compute = eff_max x s/(s+s_half)``.
- ``attention_decode`` (one query per sequence, context c): B = b (c + c_min) 2 kv d x 2 + 2 b h d x 2;
  ``t = B / (mem_bw x eff_mem) + c0``. ``c_min`` is a per-sequence overhead expressed as tokens of KV
  read (KV tiles, block tables). There is no compute term: F/B = h/kv <= 16 flop/byte for every model
  pdsim knows, far below the flop/byte balance of any GPU in the catalog (>= 110), so it never binds.
- ``elementwise`` (per op): B = bytes-per-element-factor x tokens x width x 2 with the factors of
  ``pdsim.latency.oplevel`` (rmsnorm/layernorm/rope/gelu/embedding 2, add/silu_mul 3);
  ``t = B / (mem_bw x eff_mem(op)) + c0(op)``.
- ``collective`` (per op, NCCL/RCCL, ``message_bytes`` per rank as in the profile format):
  ``t = f(op, w) x bytes / (link_bw(w) x eff_bus(op)) + c0(op) + c_rank(op) x (w - 1)`` with the
  bus-bandwidth factors of nccl-tests (all_reduce 2(w-1)/w, reduce_scatter (w-1)/w, all_gather w-1 for a
  per-rank contribution, send_recv 1) and ``link_bw`` the intra-node bandwidth per GPU and direction of
  the csv (``intra_node_bw_gbps_unidir_per_gpu``), reduced on a point-to-point mesh to the links that
  reach the other ranks (see ``LinkTopology``).
- ``memcpy``: no source measures copies, so nothing is fitted: d2d = 2 B / (mem_bw x eff_mem(gemm.bf16))
  + c0(gemm.bf16); h2d / d2h = B / (pcie_bw x 0.8) + 10 us on the PCIe x16 link of the csv's
  ``pcie_gen`` (``PCIE_EFFICIENCY``, ``PCIE_LATENCY_S``: assumed, not fitted).

Fit: least squares on log latency over every NVIDIA GPU with a gpu_specs row jointly (one parameter set
per op family, so it transfers to an unmeasured GPU), each GPU weighted equally (and each source
within a GPU). Sources: measured / imported profiles under ``gpu_profiles/`` (aiconfigurator for GEMM,
attention and collectives; Vidur for elementwise ops and send/recv); derived profiles are never used.
Fit quality is the median and P90 of ``|predicted / measured - 1|`` per GPU and family, in sample and
leave-one-GPU-out (fit without the GPU, predict it): the second is the honest estimate of a derived
profile's error on a new GPU *of a vendor and software stack the fit has seen*. The fitted factors
live in ``pdsim/data/roofline_fit.yaml`` with the sha256 of every source table, so deriving does not
refit and a changed source is detected (``--refit`` recomputes). Details, figures and assumptions:
``docs/derived_profiles.md``.
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import least_squares

from pdsim.errors import ConfigError, ProfileError
from pdsim.hardware.gpus import PCIE_X16_NOMINAL_GBYTES_PER_S, GpuSpec, load_gpu_catalog, lookup_gpu
from pdsim.profiles.format import (
    LATENCY,
    META_FILE,
    Profile,
    ProfileMeta,
    SoftwareInfo,
    SourceInfo,
    load_profile,
    today,
    write_profile,
)

FIT_FORMAT = "pdsim-roofline-fit/1"
FIT_FILE = "roofline_fit.yaml"  # in pdsim/data
DOCS = "docs/derived_profiles.md"

# GPUs shipped with a derived profile under gpu_profiles/<slug>-derived (``--all``).
SHIPPED = ("MI300X", "MI325X", "MI250X", "A10G", "L4", "H100-PCIe")

# Host <-> device copies: not fitted (no source measures them). PCIe x16 per direction as in
# aiconfigurator's systems/*.yaml ``pcie_bw`` (Gen4 32 GB/s, Gen5 64 GB/s; ai-dynamo/aiconfigurator@095f58a5;
# ``pdsim.hardware.gpus.PCIE_X16_NOMINAL_GBYTES_PER_S``) times an assumed achieved fraction, plus its
# ``p2p_latency`` (10 us).
PCIE_EFFICIENCY = 0.8
PCIE_LATENCY_S = 10e-6

TP_DEGREES = (1, 2, 4, 8)
WORLD_SIZES = (2, 4, 8)

# bytes moved per element of width, as pdsim.latency.oplevel's elementwise roofline counts them
ELEMENTWISE_BYTES_FACTOR = {"rmsnorm": 2, "layernorm": 2, "add": 3, "embedding": 2, "rope": 2, "gelu": 2, "silu_mul": 3}
# nccl-tests bus-bandwidth factors for a per-rank message of B bytes (format: message_bytes per rank)
_BUS_FACTOR: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "all_reduce": lambda w: 2.0 * (w - 1.0) / w,
    "reduce_scatter": lambda w: (w - 1.0) / w,
    "all_gather": lambda w: w - 1.0,
    "send_recv": lambda w: np.ones_like(w),
}


# ---------------------------------------------------------------------------------------------------
# Device facts
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LinkTopology:
    """Intra-node GPU-to-GPU bandwidth a collective of ``w`` ranks gets, per GPU and direction.

    Attributes:
        kind: ``switch`` (NVLink + NVSwitch: the full per-GPU bandwidth at any ``w``), ``mesh``
            (point-to-point links, fully connected: a rank reaches the ``w - 1`` others over one link each,
            so ``min(w - 1, links) x per_link``), ``pcie`` (no GPU link: the PCIe x16 path of the csv) or
            ``table`` (explicit per world size, for multi-die packages).
        unidir_bytes_per_s: the csv's ``intra_node_bw_gbps_unidir_per_gpu`` (per device).
        links: number of links of a mesh.
        by_world: (world size, bytes/s) pairs of a ``table`` topology.
        description: where the numbers come from.
    """

    kind: str
    unidir_bytes_per_s: float
    links: int = 0
    by_world: tuple[tuple[int, float], ...] = ()
    description: str = ""

    def bandwidth(self, world: int) -> float:
        """Bytes/s per GPU and direction available to a collective over ``world`` ranks."""
        if self.kind == "mesh":
            return self.unidir_bytes_per_s * min(world - 1, self.links) / self.links
        if self.kind == "table":
            table = dict(self.by_world)
            if world not in table:
                raise ProfileError(f"no link bandwidth for {world} ranks ({self.description})")
            return table[world]
        return self.unidir_bytes_per_s


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """One device as software sees it (one GCD of a multi-die package), from the csv datasheet row.

    Attributes:
        gpu: the catalog name (``pdsim/data/gpu_specs.csv``).
        vendor: ``NVIDIA`` or ``AMD``.
        device_type: ``cuda`` or ``rocm``.
        device_name: a readable name saying the numbers are derived.
        bf16_flops, fp8_flops: dense tensor peaks per device, FLOP/s (fp8 NaN where unsupported).
        mem_bw_bytes_per_s: peak memory bandwidth per device.
        memory_bytes: device memory (decimal GB x 1e9, as ``pdsim.hardware.gpus``).
        pcie_bytes_per_s: host link per direction (PCIe x16 of the csv's generation).
        link: intra-node GPU-to-GPU topology.
        datasheet_source: the csv row's ``source`` column.
        per_package: devices per package (2 for MI250X); the csv row describes the package.
        notes: assumptions specific to this device.
    """

    gpu: str
    vendor: str
    device_type: str
    device_name: str
    bf16_flops: float
    fp8_flops: float
    mem_bw_bytes_per_s: float
    memory_bytes: int
    pcie_bytes_per_s: float
    link: LinkTopology
    datasheet_source: str
    per_package: int = 1
    notes: tuple[str, ...] = ()

    @property
    def has_fp8(self) -> bool:
        return self.fp8_flops > 0


# Multi-die packages: the csv row is the package; software sees each die (GCD) as one device.
# MI250X: 2 GCDs; in-package pair over 4 Infinity Fabric links (200 GB/s per direction), other GCDs over
# one or two 50 GB/s links (ROCm docs docs/conceptual/gpu-arch/mi250.md, ROCm/ROCm@e396b489: "four AMD
# Infinity Fabric links ... 200 GB/sec peak transfer bandwidth between the two GCDs", "50 GB/sec per link";
# each GCD has its own PCIe Gen4 x16 link). A ring over 4 or 8 GCDs crosses single-link hops: 50 GB/s.
_PACKAGES: dict[str, tuple[int, tuple[tuple[int, float], ...], str]] = {
    "MI250X": (
        2,
        ((2, 200e9), (4, 50e9), (8, 50e9)),
        "MI250X GCD: 2 ranks = the in-package GCD pair over 4 Infinity Fabric links (200 GB/s per direction); "
        "4 or 8 ranks = a ring crossing single inter-package links (50 GB/s per direction) "
        "(ROCm docs docs/conceptual/gpu-arch/mi250.md, ROCm/ROCm@e396b489)",
    ),
}


def _csv_rows(path: Path | None = None) -> dict[str, dict[str, str]]:
    if path is None:
        text = resources.files("pdsim.data").joinpath("gpu_specs.csv").read_text()
    else:
        text = Path(path).read_text()
    return {row["gpu"]: row for row in csv.DictReader(io.StringIO(text))}


def _topology(row: dict[str, str], spec: GpuSpec) -> LinkTopology:
    """Classify the csv's ``intra_node_interconnect`` text (see ``LinkTopology``)."""
    text = row.get("intra_node_interconnect", "")
    unidir = spec.intra_node_gbps_unidir * 1e9
    if not unidir > 0:
        raise ProfileError(f"gpu_specs.csv: {spec.name}: intra_node_bw_gbps_unidir_per_gpu is missing")
    if text.startswith("PCIe"):
        return LinkTopology("pcie", unidir, description=f"PCIe only ({text}); csv {spec.intra_node_gbps_unidir:g} GB/s per direction")
    if "NVLink" in text:
        return LinkTopology("switch", unidir, description=f"{text}; csv {spec.intra_node_gbps_unidir:g} GB/s per GPU and direction")
    m = re.search(r"(\d+)\s*links?\s*x\s*([\d.]+)\s*GB/s bidir", text)
    if "Infinity Fabric" in text and m:
        links = int(m.group(1))
        return LinkTopology(
            "mesh", unidir, links=links,
            description=f"{text}; csv {spec.intra_node_gbps_unidir:g} GB/s per GPU and direction over {links} links "
            f"({spec.intra_node_gbps_unidir / links:g} GB/s each); w ranks use min(w-1, {links}) links",
        )
    raise ProfileError(f"gpu_specs.csv: {spec.name}: cannot classify intra_node_interconnect {text!r}")


def device_facts(gpu: str, csv_path: Path | None = None) -> DeviceFacts:
    """The datasheet facts of one device of ``gpu`` (a ``gpu_specs.csv`` name).

    Raises:
        ConfigError: unknown GPU.
        ProfileError: the row lacks a figure the roofline needs (bf16 peak, memory bandwidth, link).
    """
    catalog = load_gpu_catalog(csv_path)
    spec = lookup_gpu(catalog, gpu, "pdsim profiles derive --gpu")
    row = _csv_rows(csv_path)[spec.name]
    for what, value in (("bf16_dense_tflops", spec.bf16_dense_flops), ("mem_bw_tbps", spec.mem_bw_bytes_per_s)):
        if not value > 0:
            raise ProfileError(f"gpu_specs.csv: {spec.name}: {what} is missing; cannot derive a roofline profile")
    if spec.vendor not in ("NVIDIA", "AMD"):
        raise ProfileError(f"gpu_specs.csv: {spec.name}: vendor {spec.vendor!r} has no device type in the profile format (cuda, rocm)")
    if spec.pcie_gen not in PCIE_X16_NOMINAL_GBYTES_PER_S:
        raise ProfileError(f"gpu_specs.csv: {spec.name}: pcie_gen {row.get('pcie_gen')!r} not one of "
                           f"{['Gen%d' % g for g in sorted(PCIE_X16_NOMINAL_GBYTES_PER_S)]}")
    vendor_name = "AMD Instinct" if spec.vendor == "AMD" else "NVIDIA"
    notes: list[str] = []
    per_package = 1
    link = _topology(row, spec)
    name = f"{vendor_name} {spec.name} (derived from datasheet)"
    if spec.name in _PACKAGES:
        per_package, by_world, desc = _PACKAGES[spec.name]
        link = LinkTopology("table", spec.intra_node_gbps_unidir * 1e9 / per_package, by_world=by_world, description=desc)
        name = f"{vendor_name} {spec.name}, one GCD of {per_package} (derived from datasheet)"
        notes.append(
            f"one GCD: gpu_specs.csv describes the {spec.name} package ({row['mem_gb']} GB, {row['mem_bw_tbps']} TB/s, "
            f"{row['bf16_dense_tflops']} TFLOPS bf16); software sees {per_package} devices, so this profile is one of them "
            f"with 1/{per_package} of each figure; a pdsim GPU {spec.name} in a deployment is the package"
        )
    return DeviceFacts(
        gpu=spec.name,
        vendor=spec.vendor,
        device_type="rocm" if spec.vendor == "AMD" else "cuda",
        device_name=name,
        bf16_flops=spec.bf16_dense_flops / per_package,
        fp8_flops=(spec.fp8_dense_flops / per_package) if spec.fp8_dense_flops > 0 else math.nan,
        mem_bw_bytes_per_s=spec.mem_bw_bytes_per_s / per_package,
        memory_bytes=int(round(spec.memory_bytes / per_package)),
        pcie_bytes_per_s=PCIE_X16_NOMINAL_GBYTES_PER_S[spec.pcie_gen] * 1e9,
        link=link,
        datasheet_source=row.get("source", ""),
        per_package=per_package,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------------
# The roofline per op family (shared by the fit and the derivation)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One fitted op family: parameter names, starting points of the fit and the latency formula.

    ``predict(p, df)`` takes the parameters by name and a frame with the family's feature columns (as
    ``fit_rows`` and ``derive_tables`` build them) and returns seconds. The fit starts from each of
    ``starts`` and keeps the lowest loss (the max() of the roofline makes the loss non-convex: prefill
    attention has two local minima). ``branches(p, df)``, for the families with a max() (GEMM, prefill
    attention), returns its two arguments (compute seconds, memory seconds; ``predict`` is their max plus
    ``c0_s``), so that the fit can find a minimum that lies on the crease where they are equal
    (``fit_family``).
    """

    name: str
    params: tuple[str, ...]
    starts: tuple[tuple[float, ...], ...]
    predict: Callable[[dict[str, float], pd.DataFrame], np.ndarray]
    branches: Callable[[dict[str, float], pd.DataFrame], tuple[np.ndarray, np.ndarray]] | None = None


def _col(df: pd.DataFrame, c: str) -> np.ndarray:
    return df[c].to_numpy(dtype=float)


def _gemm_branches(p: dict[str, float], df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    m, n, k = _col(df, "m"), _col(df, "n"), _col(df, "k")
    flops = 2.0 * m * n * k
    data = (m * k + k * n) * _col(df, "in_bytes") + m * n * 2.0
    eff = p["eff_max"] * m / (m + p["m_half"]) * n / (n + p["n_half"]) * k / (k + p["k_half"])
    return flops / (_col(df, "peak_flops") * eff), data / (_col(df, "mem_bw") * p["eff_mem"])


def _gemm_predict(p: dict[str, float], df: pd.DataFrame) -> np.ndarray:
    return np.maximum(*_gemm_branches(p, df)) + p["c0_s"]


def _prefill_branches(p: dict[str, float], df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    b, s = _col(df, "batch_size"), _col(df, "seq_len")
    h, kv, d = _col(df, "num_heads"), _col(df, "num_kv_heads"), _col(df, "head_dim")
    flops = 2.0 * b * h * d * s * (s + 1.0)
    data = b * s * d * (2.0 * h + 2.0 * kv) * 2.0
    eff = p["eff_max"] * s / (s + p["s_half"])
    return flops / (_col(df, "peak_flops") * eff), data / (_col(df, "mem_bw") * p["eff_mem"])


def _prefill_predict(p: dict[str, float], df: pd.DataFrame) -> np.ndarray:
    return np.maximum(*_prefill_branches(p, df)) + p["c0_s"]


def _decode_predict(p: dict[str, float], df: pd.DataFrame) -> np.ndarray:
    b, c = _col(df, "batch_size"), _col(df, "context_len")
    h, kv, d = _col(df, "num_heads"), _col(df, "num_kv_heads"), _col(df, "head_dim")
    data = b * (c + p["c_min_tokens"]) * 2.0 * kv * d * 2.0 + 2.0 * b * h * d * 2.0
    return data / (_col(df, "mem_bw") * p["eff_mem"]) + p["c0_s"]


def _elementwise_predict(p: dict[str, float], df: pd.DataFrame) -> np.ndarray:
    data = _col(df, "bytes_factor") * _col(df, "num_tokens") * _col(df, "width") * 2.0
    return data / (_col(df, "mem_bw") * p["eff_mem"]) + p["c0_s"]


def _collective_predict(p: dict[str, float], df: pd.DataFrame) -> np.ndarray:
    w = _col(df, "world_size")
    t = _col(df, "bus_factor") * _col(df, "message_bytes") / (_col(df, "link_bw") * p["eff_bus"]) + p["c0_s"]
    if "c_rank_s" in p:
        t = t + p["c_rank_s"] * (w - 1.0)
    return t


def families() -> dict[str, Family]:
    """Every fitted family by name (``gemm.bf16``, ..., ``elementwise.rmsnorm``, ``collective.all_reduce``)."""
    out = {
        "gemm.bf16": Family("gemm.bf16", ("eff_max", "m_half", "n_half", "k_half", "eff_mem", "c0_s"),
                            ((0.8, 100.0, 100.0, 100.0, 0.8, 5e-6),), _gemm_predict, _gemm_branches),
        "gemm.fp8": Family("gemm.fp8", ("eff_max", "m_half", "n_half", "k_half", "eff_mem", "c0_s"),
                           ((0.8, 100.0, 100.0, 100.0, 0.8, 5e-6),), _gemm_predict, _gemm_branches),
        "attention_prefill": Family("attention_prefill", ("eff_max", "s_half", "eff_mem", "c0_s"),
                                    ((0.6, 1000.0, 0.5, 1e-5), (0.6, 500.0, 0.6, 1e-5), (0.6, 128.0, 0.7, 5e-6)),
                                    _prefill_predict, _prefill_branches),
        "attention_decode": Family("attention_decode", ("eff_mem", "c_min_tokens", "c0_s"), ((0.8, 50.0, 1e-5),), _decode_predict),
    }
    for op in ELEMENTWISE_BYTES_FACTOR:
        out[f"elementwise.{op}"] = Family(f"elementwise.{op}", ("eff_mem", "c0_s"), ((0.7, 3e-6),), _elementwise_predict)
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        out[f"collective.{op}"] = Family(f"collective.{op}", ("eff_bus", "c0_s", "c_rank_s"),
                                         ((0.6, 5e-6, 1e-6), (0.3, 2e-5, 3e-6)), _collective_predict)
    out["collective.send_recv"] = Family("collective.send_recv", ("eff_bus", "c0_s"), ((0.6, 5e-6),), _collective_predict)
    return out


COLLECTIVE_FIT_ROWS = "collective (fit rows)"  # collectives without the 4/8-rank rows of PCIe-only GPUs


def report_group(family: str) -> str:
    """The reported op family of a fitted family (elementwise and collective ops are pooled)."""
    return family.split(".")[0] if family.startswith(("elementwise.", "collective.")) else family


# ---------------------------------------------------------------------------------------------------
# Fit data from source profiles
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SourceProfile:
    """A measured or imported profile the fit reads: its name, GPU and the sha256 of the tables used."""

    name: str
    gpu: str
    source_kind: str
    tables: dict[str, str]


def default_profiles_root() -> Path:
    """``gpu_profiles/`` of the pdsim source checkout."""
    return Path(__file__).resolve().parents[2] / "gpu_profiles"


def default_fit_path() -> Path:
    """``pdsim/data/roofline_fit.yaml``."""
    return Path(__file__).resolve().parents[1] / "data" / FIT_FILE


_TABLES_USED = ("gemm", "attention_prefill", "attention_decode", "elementwise", "collective")


def discover_sources(root: Path | None = None, csv_path: Path | None = None) -> tuple[list[Profile], list[str]]:
    """Measured / imported NVIDIA profiles under ``root`` whose GPU has a gpu_specs row.

    Returns:
        (profiles to fit on, sorted by name; one line per profile left out and why).
    """
    root = root or default_profiles_root()
    catalog = load_gpu_catalog(csv_path)
    use, skipped = [], []
    for meta_file in sorted(root.glob(f"*/{META_FILE}")):
        prof = load_profile(meta_file.parent)
        m = prof.meta
        if m.source_kind == "derived":
            continue
        if m.vendor != "NVIDIA":
            skipped.append(f"{m.name}: vendor {m.vendor} (the fit is on NVIDIA GPUs only)")
        elif not m.gpu or m.gpu not in catalog:
            skipped.append(f"{m.name}: no gpu_specs.csv row for its device ({m.device_name}), so no datasheet to fit against")
        elif not any(prof.has(t) for t in _TABLES_USED):
            skipped.append(f"{m.name}: none of the tables {list(_TABLES_USED)}")
        else:
            use.append(prof)
    return use, skipped


def _device_columns(df: pd.DataFrame, facts: DeviceFacts, dtype: str = "bf16") -> pd.DataFrame:
    df = df.copy()
    df["peak_flops"] = facts.fp8_flops if dtype == "fp8" else facts.bf16_flops
    df["mem_bw"] = facts.mem_bw_bytes_per_s
    return df


def fit_rows(profile: Profile, csv_path: Path | None = None) -> dict[str, pd.DataFrame]:
    """The rows of ``profile`` each family fits on, with feature columns, ``latency_s``, ``gpu`` and
    ``source``. Selection (see docs/derived_profiles.md): aiconfigurator GEMMs (bf16, fp8), attention
    with bf16 activations and KV cache and head_dim 128 (what every catalog model uses), NCCL
    collectives (send_recv from Vidur), Vidur elementwise ops (fp16: the same bytes as bf16); collectives
    over 4 or 8 ranks of PCIe-only GPUs are left out of the fit (see ``collective_fit_mask``)."""
    facts = device_facts(profile.meta.gpu, csv_path)
    out: dict[str, pd.DataFrame] = {}
    tag = {"gpu": facts.gpu, "source": profile.name}
    if profile.has("gemm"):
        g = profile.table("gemm")
        for dt in ("bf16", "fp8"):
            rows = g[g.dtype == dt]
            if len(rows) and not (dt == "fp8" and not facts.has_fp8):
                df = _device_columns(rows[["m", "n", "k", LATENCY]], facts, dt)
                df["in_bytes"] = 2.0 if dt == "bf16" else 1.0
                out[f"gemm.{dt}"] = df.assign(**tag)
    for table in ("attention_prefill", "attention_decode"):
        if profile.has(table):
            a = profile.table(table)
            rows = a[(a.dtype == "bf16") & (a.kv_dtype == "bf16") & (a.head_dim == 128)]
            if len(rows):
                out[table] = _device_columns(rows.drop(columns=["dtype", "kv_dtype"]), facts).assign(**tag)
    if profile.has("elementwise"):
        e = profile.table("elementwise")
        for op, rows in e[e.dtype.isin(["fp16", "bf16"])].groupby("op", sort=True):
            df = _device_columns(rows[["num_tokens", "width", LATENCY]], facts)
            df["bytes_factor"] = float(ELEMENTWISE_BYTES_FACTOR[str(op)])
            out[f"elementwise.{op}"] = df.assign(**tag)
    if profile.has("collective"):
        c = profile.table("collective")
        c = c[c.backend == "nccl"]
        for op, rows in c.groupby("op", sort=True):
            df = _collective_columns(rows[["world_size", "message_bytes", LATENCY]], str(op), facts)
            out[f"collective.{op}"] = df.assign(**tag)
    for key in list(out):
        out[key] = out[key].drop(columns=[c for c in ("source_rows", "kernel_source") if c in out[key].columns]).reset_index(drop=True)
    return out


def _collective_columns(df: pd.DataFrame, op: str, facts: DeviceFacts) -> pd.DataFrame:
    df = df.copy()
    w = df["world_size"].to_numpy(dtype=float)
    df["bus_factor"] = _BUS_FACTOR[op](w)
    df["link_bw"] = [facts.link.bandwidth(int(v)) for v in df["world_size"]]
    df["link_kind"] = facts.link.kind
    return df


def collective_fit_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows a collective family is fitted on: all but 4- and 8-rank collectives of PCIe-only GPUs.

    The one PCIe-only source (L40S, aiconfigurator) reaches 20 GB/s bus bandwidth over 2 ranks but
    only ~5 and ~1.5 GB/s over 4 and 8 (host topology: no peer-to-peer path through a switch); a
    datasheet cannot predict that, and fitting it would drag the NVLink factors down. Those rows are
    still reported in the fit quality."""
    if "link_kind" not in df.columns:
        return np.ones(len(df), dtype=bool)
    return ~((df["link_kind"] == "pcie") & (df["world_size"] > 2)).to_numpy()


def collect_rows(profiles: Sequence[Profile], csv_path: Path | None = None) -> dict[str, pd.DataFrame]:
    """Rows of every family over ``profiles``, concatenated."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for prof in profiles:
        for fam, df in fit_rows(prof, csv_path).items():
            parts.setdefault(fam, []).append(df)
    return {fam: pd.concat(dfs, ignore_index=True) for fam, dfs in sorted(parts.items())}


# ---------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------
def _weights(df: pd.DataFrame) -> np.ndarray:
    """Each GPU weighs the same in the loss, and each source within a GPU (rows of a (gpu, source) pair
    share 1 / (rows x sources of the gpu)); returned as square roots (residual multipliers)."""
    n_pair = df.groupby(["gpu", "source"])["gpu"].transform("size").to_numpy(dtype=float)
    n_src = df.groupby("gpu")["source"].transform("nunique").to_numpy(dtype=float)
    return 1.0 / np.sqrt(n_pair * n_src)


# least_squares tolerances of the fit (xtol, ftol, gtol), far below the 1e-6 to which the fitted factors are
# reproducible (tests/test_derive.py); see fit_family.
FIT_TOL = 1e-12
# A row is on the crease of the roofline's max() when |log(compute time / memory time)| is below this. At
# the prefill-attention minimum the crease rows are within 1e-8 and the next rows are > 1e-4 away.
CREASE_GAP = 1e-6
# Step in log eff_mem off the crease that must raise the loss on both sides (the crease point is a minimum).
_CREASE_STEP = 1e-6


def fit_family(family: Family, df: pd.DataFrame) -> dict[str, float]:
    """Least squares on log latency (parameters in log space, so all stay positive).

    The max() of a roofline family makes the loss piecewise smooth, with a crease where a row's compute
    and memory times are equal. A minimum can lie on such a crease, where the gradient does not vanish:
    prefill attention's does (36 L40S rows at 64 tokens and 8 query heads per KV head are balanced there).
    least_squares (trf, finite-difference Jacobian) then zigzags across the crease, its trust region
    shrinks, and it stops on ``xtol`` at a point along the crease that depends on rounding (scipy version,
    BLAS) and on the start: 5e-5 relative from the minimum in eff_max, 8e-6 apart between scipy 1.17 and
    an older scipy, the losses equal to 1e-8. So when the best point is on a crease (``CREASE_GAP``) the fit is polished on
    it: eff_mem is eliminated by the crease equation of the row closest to it (memory time = compute time,
    in closed form), which leaves a smooth problem in the other parameters, solved with a central-difference
    Jacobian to ``FIT_TOL``. The polished point is kept if its loss is no higher and stepping off the
    crease to either side raises it (a minimum of the full loss, not only along the crease). Refits then
    agree to <= 2e-7 relative (prefill ~1e-8 from either scipy version's stall point), the accuracy of the
    finite-difference Jacobian. (GEMM's loss, with ~220k kinks, also has neighbouring local minima on its
    crease ~8e-6 away, 1e-11 lower in relative loss, that starts within ~1 % of the minimum can reach; from
    its documented start, perturbed by up to 10 %, the fit agrees to 2e-9.)

    Raises:
        ProfileError: no rows, or the optimiser did not converge.
    """
    if family.name.startswith("collective."):
        df = df[collective_fit_mask(df)]
    if df.empty:
        raise ProfileError(f"roofline fit {family.name}: no rows to fit")
    y = np.log(df[LATENCY].to_numpy(dtype=float))
    w = _weights(df)

    def residual(x: np.ndarray) -> np.ndarray:
        p = dict(zip(family.params, np.exp(x)))
        return (np.log(family.predict(p, df)) - y) * w

    best = None
    for start in family.starts:
        res = least_squares(residual, np.log(np.asarray(start, dtype=float)), method="trf",
                            xtol=FIT_TOL, ftol=FIT_TOL, gtol=FIT_TOL, max_nfev=400)
        if res.success and np.all(np.isfinite(res.x)) and (best is None or res.cost < best.cost):
            best = res
    if best is None:
        raise ProfileError(f"roofline fit {family.name}: optimiser failed from every start ({res.message})")
    x = best.x if family.branches is None else _polish_on_crease(family, df, residual, best.x)
    return {k: float(v) for k, v in zip(family.params, np.exp(x))}


def _polish_on_crease(family: Family, df: pd.DataFrame, residual: Callable[[np.ndarray], np.ndarray],
                      x: np.ndarray) -> np.ndarray:
    """The minimum on the max()'s crease through the row of ``df`` closest to it at ``x`` (log
    parameters), or ``x`` when no row is on a crease or the crease point is not a better minimum (see
    ``fit_family``)."""
    comp, mem = family.branches(dict(zip(family.params, np.exp(x))), df)
    gap = np.abs(np.log(comp / mem))
    i = int(np.argmin(gap))
    if not gap[i] < CREASE_GAP:
        return x
    row = df.iloc[[i]]
    j = family.params.index("eff_mem")

    def on_crease(z: np.ndarray) -> np.ndarray:
        full = np.insert(z, j, 0.0)  # eff_mem 1: the memory branch is bytes / mem_bw
        c, m = family.branches(dict(zip(family.params, np.exp(full))), row)
        full[j] = math.log(m[0] / c[0])  # the eff_mem at which the row's memory time equals its compute time
        return full

    def loss(v: np.ndarray) -> float:
        r = residual(v)
        return 0.5 * float(r @ r)

    res = least_squares(lambda z: residual(on_crease(z)), np.delete(x, j), method="trf", jac="3-point",
                        xtol=FIT_TOL, ftol=FIT_TOL, gtol=FIT_TOL, max_nfev=400)
    if not (res.success and np.all(np.isfinite(res.x))):
        return x
    polished = on_crease(res.x)
    f = loss(polished)
    if f > loss(x):
        return x
    for step in (_CREASE_STEP, -_CREASE_STEP):
        off = polished.copy()
        off[j] += step
        if loss(off) <= f:
            return x
    return polished


def fit_all(rows: dict[str, pd.DataFrame], exclude_gpu: str | None = None) -> dict[str, dict[str, float]]:
    """Fit every family that has rows (optionally without one GPU's rows)."""
    fams = families()
    out = {}
    for name, df in rows.items():
        if exclude_gpu is not None:
            df = df[df.gpu != exclude_gpu]
        if df.empty or (name.startswith("collective.") and not collective_fit_mask(df).any()):
            continue
        out[name] = fit_family(fams[name], df)
    return out


def _errors(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.abs(pred / meas - 1.0)


def _summary(err: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(err)), "p90": float(np.quantile(err, 0.9)), "rows": int(len(err))}


def quality(rows: dict[str, pd.DataFrame], params: dict[str, dict[str, float]], leave_one_out: bool = True,
            progress: Callable[[str], None] | None = None,
            loo_params: dict[str, dict[str, dict[str, float]]] | None = None) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Fit quality: ``{"in_sample"|"leave_one_out": {key: {gpu | "all": {median, p90, rows}}}}``, where
    key is a reported group (``report_group``), a fitted family, or ``COLLECTIVE_FIT_ROWS``.

    In sample: the given ``params`` on every row (collective rows left out of the fit included). Leave
    one out: for each GPU, every family is refitted without it and predicts its rows; those parameters
    are stored into ``loo_params[gpu][family]`` when a dict is given.
    """
    fams = families()
    errs: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {"in_sample": {}, "leave_one_out": {}}

    def record(kind: str, name: str, df: pd.DataFrame, e: np.ndarray) -> None:
        keys = {report_group(name), name}
        if name.startswith("collective."):
            keys.add(COLLECTIVE_FIT_ROWS)
        mask = collective_fit_mask(df) if name.startswith("collective.") else np.ones(len(df), dtype=bool)
        for gpu, idx in df.groupby("gpu").indices.items():
            for key in keys:
                sel = idx[mask[idx]] if key == COLLECTIVE_FIT_ROWS else idx
                if len(sel):
                    errs[kind].setdefault(key, {}).setdefault(gpu, []).append(e[sel])

    for name, df in rows.items():
        if name not in params:
            continue
        record("in_sample", name, df, _errors(fams[name].predict(params[name], df), df[LATENCY].to_numpy(dtype=float)))
    if leave_one_out:
        gpus = sorted(set().union(*[set(df.gpu) for df in rows.values()]))
        for gpu in gpus:
            if progress:
                progress(f"leave-one-out: fitting without {gpu}")
            for name, df in rows.items():
                held = df[df.gpu == gpu]
                rest = df[df.gpu != gpu]
                if held.empty and loo_params is not None and name in params:
                    loo_params.setdefault(gpu, {})[name] = params[name]  # the GPU has no rows: same fit
                if held.empty or rest.empty:
                    continue
                if name.startswith("collective.") and not collective_fit_mask(rest).any():
                    continue
                p = fit_family(fams[name], rest)
                if loo_params is not None:
                    loo_params.setdefault(gpu, {})[name] = p
                record("leave_one_out", name, held.reset_index(drop=True),
                       _errors(fams[name].predict(p, held), held[LATENCY].to_numpy(dtype=float)))
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for kind, groups in errs.items():
        out[kind] = {}
        for grp, by_gpu in sorted(groups.items()):
            cat = {gpu: np.concatenate(parts) for gpu, parts in sorted(by_gpu.items())}
            out[kind][grp] = {gpu: _summary(e) for gpu, e in cat.items()}
            out[kind][grp]["all"] = _summary(np.concatenate(list(cat.values())))
    return out


# ---------------------------------------------------------------------------------------------------
# The fit file
# ---------------------------------------------------------------------------------------------------
@dataclass
class RooflineFit:
    """``pdsim/data/roofline_fit.yaml``: fitted parameters, their sources and the fit quality."""

    params: dict[str, dict[str, float]]
    sources: list[SourceProfile]
    excluded: list[str] = field(default_factory=list)
    quality: dict = field(default_factory=dict)
    date: str = ""
    command: str = ""
    path: Path | None = None
    loo_params: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # per held-out GPU; not stored

    def to_yaml(self) -> str:
        data = {
            "format": FIT_FORMAT,
            "date": self.date,
            "command": self.command,
            "model": f"roofline max(F / (peak x eff_compute), B / (mem_bw x eff_mem)) + c0 per op family; see pdsim/profiles/derive.py and {DOCS}",
            "sources": [{"profile": s.name, "gpu": s.gpu, "source_kind": s.source_kind, "tables": dict(s.tables)} for s in self.sources],
            "excluded": list(self.excluded),
            "params": {k: dict(v) for k, v in self.params.items()},
            "quality": self.quality,
        }
        header = (
            "# Roofline efficiency factors fitted on measured / imported NVIDIA profiles (pdsim profiles derive --refit).\n"
            "# Generated; do not edit by hand. Units: *_s seconds, c_min_tokens tokens, m/n/k/s_half elements, eff_* fractions.\n"
        )
        return header + yaml.safe_dump(data, sort_keys=False, width=120)

    def write(self, path: Path) -> None:
        Path(path).write_text(self.to_yaml())
        self.path = Path(path)

    def check_sources(self, root: Path | None = None) -> list[str]:
        """Differences between the recorded sources and the profiles under ``root`` now: one line per
        source whose table sha256 changed or that is missing (an empty list: the fit is current)."""
        root = root or default_profiles_root()
        out = []
        for s in self.sources:
            d = root / s.name
            if not (d / META_FILE).is_file():
                out.append(f"{s.name}: missing under {root}")
                continue
            meta = load_profile(d).meta
            for table, sha in s.tables.items():
                now = meta.tables.get(table)
                if now is None or now.sha256 != sha:
                    out.append(f"{s.name}/{table}: sha256 {'missing' if now is None else now.sha256[:12]} != fitted {sha[:12]}")
        return out


def load_fit(path: Path | None = None) -> RooflineFit:
    """Read the fit file (``pdsim/data/roofline_fit.yaml`` by default).

    Raises:
        ProfileError: missing file, other format, or a family without its parameters.
    """
    path = Path(path) if path is not None else default_fit_path()
    if not path.is_file():
        raise ProfileError(f"{path}: no roofline fit; run `pdsim profiles derive --refit`")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FIT_FORMAT:
        raise ProfileError(f"{path}: format must be {FIT_FORMAT!r}, got {raw.get('format') if isinstance(raw, dict) else raw!r}")
    fams = families()
    params = {}
    for name, p in (raw.get("params") or {}).items():
        if name not in fams:
            raise ProfileError(f"{path}: params: unknown family {name!r}")
        missing = [k for k in fams[name].params if k not in p]
        if missing:
            raise ProfileError(f"{path}: params.{name}: missing {missing}")
        bad = {k: v for k, v in p.items() if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v))}
        if bad:
            raise ProfileError(f"{path}: params.{name}: values must be finite and > 0, got {bad}")
        params[name] = {k: float(p[k]) for k in fams[name].params}
    sources = [SourceProfile(s["profile"], s["gpu"], s.get("source_kind", "imported"), dict(s.get("tables") or {})) for s in raw.get("sources") or []]
    return RooflineFit(params=params, sources=sources, excluded=list(raw.get("excluded") or []), quality=raw.get("quality") or {},
                       date=str(raw.get("date", "")), command=str(raw.get("command", "")), path=path)


def source_records(profiles: Sequence[Profile], rows: dict[str, pd.DataFrame]) -> list[SourceProfile]:
    """The sources with the sha256 of each table the fit read from them."""
    used: dict[str, set[str]] = {}
    for fam, df in rows.items():
        table = {"gemm": "gemm", "attention_prefill": "attention_prefill", "attention_decode": "attention_decode",
                 "elementwise": "elementwise", "collective": "collective"}[fam.split(".")[0]]
        for src in set(df.source):
            used.setdefault(src, set()).add(table)
    out = []
    for p in profiles:
        if p.name in used:
            out.append(SourceProfile(p.name, p.meta.gpu or "", p.source_kind, {t: p.meta.tables[t].sha256 for t in sorted(used[p.name])}))
    return out


def refit(root: Path | None = None, csv_path: Path | None = None, leave_one_out: bool = True,
          command: str = "pdsim profiles derive --refit", progress: Callable[[str], None] | None = None) -> tuple[RooflineFit, dict[str, pd.DataFrame]]:
    """Fit every family on the profiles under ``root`` (and its quality); nothing is written.

    Returns:
        (the fit, the rows it was fitted on).
    """
    profiles, skipped = discover_sources(root, csv_path)
    if not profiles:
        raise ProfileError(f"no measured or imported NVIDIA profile with a gpu_specs row under {root or default_profiles_root()}")
    rows = collect_rows(profiles, csv_path)
    if progress:
        progress(f"fitting {len(rows)} families on {', '.join(p.name for p in profiles)}")
    params = fit_all(rows)
    loo_params: dict[str, dict[str, dict[str, float]]] = {}
    q = quality(rows, params, leave_one_out=leave_one_out, progress=progress, loo_params=loo_params)
    fit = RooflineFit(params=params, sources=source_records(profiles, rows), excluded=skipped, quality=q, date=today(),
                      command=command, loo_params=loo_params)
    return fit, rows


def refit_params(fit: RooflineFit, root: Path | None = None, csv_path: Path | None = None) -> dict[str, dict[str, float]]:
    """Refit the parameters on exactly the sources recorded in ``fit`` (reproducibility check)."""
    root = root or default_profiles_root()
    profiles = [load_profile(root / s.name) for s in fit.sources]
    return fit_all(collect_rows(profiles, csv_path))


# ---------------------------------------------------------------------------------------------------
# Grids of a derived profile
# ---------------------------------------------------------------------------------------------------
GEMM_M = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096, 8192, 16384, 32768)
GEMM_NK_BASE = tuple(2**i for i in range(5, 17))  # 32 .. 65536
PREFILL_BATCH = tuple(2**i for i in range(9))  # 1 .. 256
PREFILL_SEQ = (1, 16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 10240, 12288, 16384)
PREFILL_MAX_TOKENS = 131072  # batch x seq_len, as the aiconfigurator grids
DECODE_BATCH = tuple(2**i for i in range(12))  # 1 .. 2048
DECODE_CONTEXT = tuple(2**i - 1 for i in range(1, 18))  # 1, 3, 7, ..., 131071 (aiconfigurator's steps)
DECODE_KV_MEMORY_FRACTION = 1 / 16  # one layer's KV read <= memory / 16 (every catalog model has >= 16 layers)
ELEMENTWISE_TOKENS = tuple(2**i for i in range(16))  # 1 .. 32768
ELEMENTWISE_WIDTH_BASE = tuple(2**i for i in range(9, 17))  # 512 .. 65536
COLLECTIVE_BYTES = tuple(2**i for i in range(6, 31))  # 64 B .. 1 GiB
MEMCPY_BYTES = tuple(2**i for i in range(10, 33, 2))  # 1 KiB .. 4 GiB


@dataclass(frozen=True, slots=True)
class ModelShapes:
    """Per-GPU shapes the catalog models need at TP 1/2/4/8 (``pdsim.latency.oplevel.layer_shapes``)."""

    gemm_n: tuple[int, ...]
    gemm_k: tuple[int, ...]
    heads: tuple[tuple[int, int, int], ...]  # (query heads, KV heads, head_dim) per GPU
    widths: dict[str, tuple[int, ...]]  # elementwise op -> widths


def model_shapes(tp_degrees: Sequence[int] = TP_DEGREES) -> ModelShapes:
    """Shapes of every dense model in ``pdsim/data/models.yaml`` (MoE models, which need a ``moe`` table
    that derived profiles do not have, and MLA models, which pdsim cannot model yet, are skipped) at each
    TP degree."""
    from pdsim.latency.oplevel import layer_shapes
    from pdsim.models.arch import load_model_catalog, model_from_hf_config

    ns, ks, heads = set(), set(), set()
    widths: dict[str, set[int]] = {op: set() for op in ELEMENTWISE_BYTES_FACTOR}
    for name, entry in load_model_catalog().items():
        try:
            m = model_from_hf_config(name, entry)
        except ConfigError:
            continue
        if m.is_moe:  # a derived profile has no moe table, so an MoE model cannot run on it
            continue
        for tp in tp_degrees:
            layers, lm_head = layer_shapes(m, tp)
            for s in [*layers, lm_head]:
                ns.add(s.n)
                ks.add(s.k)
            q, kv = math.ceil(m.num_attention_heads / tp), m.kv_heads_per_gpu(tp)
            heads.add((q, kv, m.head_dim))
            widths["layernorm" if m.norm_bias else "rmsnorm"].add(m.hidden_size)
            widths["add"].add(m.hidden_size)
            widths["embedding"].add(m.hidden_size)
            widths["silu_mul" if m.gated_mlp else "gelu"].add(math.ceil(m.intermediate_size / tp))
            if m.rotary:
                widths["rope"].add((q + kv) * m.head_dim)
    return ModelShapes(tuple(sorted(ns)), tuple(sorted(ks)), tuple(sorted(heads)), {k: tuple(sorted(v)) for k, v in widths.items()})


def _frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def derive_tables(facts: DeviceFacts, params: dict[str, dict[str, float]], shapes: ModelShapes | None = None) -> dict[str, pd.DataFrame]:
    """Every table of a derived profile of ``facts`` (see the module docstring for the formulas).

    Raises:
        ProfileError: ``params`` lacks a family the tables need.
    """
    fams = families()
    shapes = shapes or model_shapes()

    def need(name: str) -> dict[str, float]:
        if name not in params:
            raise ProfileError(f"roofline fit has no parameters for {name!r}; run `pdsim profiles derive --refit`")
        return params[name]

    tables: dict[str, pd.DataFrame] = {}

    # GEMM: m x (log grid U model n) x (log grid U model k); model n above 65536 (LM heads) as extra pairs
    ns = sorted(set(GEMM_NK_BASE) | {n for n in shapes.gemm_n if n <= GEMM_NK_BASE[-1]})
    ks = sorted(set(GEMM_NK_BASE) | {k for k in shapes.gemm_k if k <= GEMM_NK_BASE[-1]})
    pairs = {(n, k) for n in ns for k in ks}
    pairs |= {(n, k) for n in shapes.gemm_n if n > GEMM_NK_BASE[-1] for k in ks}
    pairs_arr = np.array(sorted(pairs), dtype=np.int64)
    parts = []
    for dt in ("bf16", "fp8"):
        if dt == "fp8" and not facts.has_fp8:
            continue
        m = np.repeat(np.array(GEMM_M, dtype=np.int64), len(pairs_arr))
        nk = np.tile(pairs_arr, (len(GEMM_M), 1))
        df = pd.DataFrame({"dtype": dt, "m": m, "n": nk[:, 0], "k": nk[:, 1]})
        feats = _device_columns(df, facts, dt).assign(in_bytes=2.0 if dt == "bf16" else 1.0)
        df[LATENCY] = fams[f"gemm.{dt}"].predict(need(f"gemm.{dt}"), feats)
        parts.append(df)
    tables["gemm"] = pd.concat(parts, ignore_index=True)

    # Attention: the head configurations the catalog models need per GPU
    rows = [("bf16", "bf16", b, s, h, kv, d) for (h, kv, d) in shapes.heads for b in PREFILL_BATCH for s in PREFILL_SEQ
            if b * s <= PREFILL_MAX_TOKENS]
    df = _frame(rows, ["dtype", "kv_dtype", "batch_size", "seq_len", "num_heads", "num_kv_heads", "head_dim"])
    df[LATENCY] = fams["attention_prefill"].predict(need("attention_prefill"), _device_columns(df, facts))
    tables["attention_prefill"] = df

    kv_budget = facts.memory_bytes * DECODE_KV_MEMORY_FRACTION
    rows = []
    for (h, kv, d) in shapes.heads:
        per_token = 2 * kv * d * 2  # one layer's K and V, bf16
        for b in DECODE_BATCH:
            for c in DECODE_CONTEXT:
                if c == DECODE_CONTEXT[0] or b * c * per_token <= kv_budget:
                    rows.append(("bf16", "bf16", b, c, h, kv, d))
    df = _frame(rows, ["dtype", "kv_dtype", "batch_size", "context_len", "num_heads", "num_kv_heads", "head_dim"])
    df[LATENCY] = fams["attention_decode"].predict(need("attention_decode"), _device_columns(df, facts))
    tables["attention_decode"] = df

    # Elementwise
    parts = []
    for op, factor in ELEMENTWISE_BYTES_FACTOR.items():
        widths = sorted(set(ELEMENTWISE_WIDTH_BASE) | set(shapes.widths.get(op, ())))
        df = _frame([(op, "bf16", t, w) for w in widths for t in ELEMENTWISE_TOKENS], ["op", "dtype", "num_tokens", "width"])
        feats = _device_columns(df, facts).assign(bytes_factor=float(factor))
        df[LATENCY] = fams[f"elementwise.{op}"].predict(need(f"elementwise.{op}"), feats)
        parts.append(df)
    tables["elementwise"] = pd.concat(parts, ignore_index=True)

    # Collectives
    backend = "rccl" if facts.vendor == "AMD" else "nccl"
    parts = []
    for op in ("all_reduce", "all_gather", "reduce_scatter", "send_recv"):
        worlds = (2,) if op == "send_recv" else WORLD_SIZES
        df = _frame([(op, backend, "bf16", w, b) for w in worlds for b in COLLECTIVE_BYTES],
                    ["op", "backend", "dtype", "world_size", "message_bytes"])
        feats = _collective_columns(df, op, facts)
        df[LATENCY] = fams[f"collective.{op}"].predict(need(f"collective.{op}"), feats)
        parts.append(df)
    tables["collective"] = pd.concat(parts, ignore_index=True)

    # memcpy (not fitted; module docstring)
    g = need("gemm.bf16")
    b = np.array(MEMCPY_BYTES, dtype=float)
    d2d = 2.0 * b / (facts.mem_bw_bytes_per_s * g["eff_mem"]) + g["c0_s"]
    host = b / (facts.pcie_bytes_per_s * PCIE_EFFICIENCY) + PCIE_LATENCY_S
    tables["memcpy"] = pd.concat([
        pd.DataFrame({"direction": "d2d", "bytes": np.array(MEMCPY_BYTES, dtype=np.int64), LATENCY: d2d}),
        pd.DataFrame({"direction": "h2d", "bytes": np.array(MEMCPY_BYTES, dtype=np.int64), LATENCY: host}),
        pd.DataFrame({"direction": "d2h", "bytes": np.array(MEMCPY_BYTES, dtype=np.int64), LATENCY: host}),
    ], ignore_index=True)
    for name, df in tables.items():
        for c in df.columns:
            if c not in ("dtype", "kv_dtype", "op", "backend", "direction", LATENCY):
                df[c] = df[c].astype(np.int64)
        # float32 (7 significant digits, far finer than the model's accuracy) keeps a profile < 2 MB
        df[LATENCY] = df[LATENCY].astype(np.float32)
    return tables


# ---------------------------------------------------------------------------------------------------
# Deriving a profile
# ---------------------------------------------------------------------------------------------------
def profile_name(gpu: str) -> str:
    """Directory / profile name of a derived profile: ``MI300X`` -> ``mi300x-derived``,
    ``H100-PCIe`` -> ``h100_pcie-derived``."""
    return re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_") + "-derived"


def _loo_line(fit: RooflineFit) -> str:
    loo = (fit.quality or {}).get("leave_one_out") or {}
    parts = []
    for grp in ("gemm.bf16", "gemm.fp8", "attention_prefill", "attention_decode", "elementwise", "collective"):
        s = (loo.get(grp) or {}).get("all")
        if s:
            parts.append(f"{grp} median {s['median']:.0%} / P90 {s['p90']:.0%}")
    return "; ".join(parts) if parts else "not computed"


def derive_profile(gpu: str, out: Path, fit: RooflineFit | None = None, command: str | None = None,
                   csv_path: Path | None = None, shapes: ModelShapes | None = None) -> Profile:
    """Compute and write the derived profile of ``gpu`` into directory ``out``.

    Raises:
        ConfigError: unknown GPU.
        ProfileError: the datasheet row lacks a figure, or the fit lacks a family.
    """
    fit = fit or load_fit()
    facts = device_facts(gpu, csv_path)
    out = Path(out)
    tables = derive_tables(facts, fit.params, shapes)
    link = facts.link
    if link.kind == "pcie":
        link_note = (
            f"collectives: no GPU-to-GPU link; the PCIe x16 path ({link.unidir_bytes_per_s / 1e9:g} GB/s per direction, "
            "csv intra_node_bw_gbps_unidir_per_gpu) with the fitted bus efficiency. The one measured PCIe-only GPU (L40S) "
            "reached that over 2 ranks but only ~5 and ~1.5 GB/s bus bandwidth over 4 and 8 ranks, so 4- and 8-rank "
            "collectives here are likely optimistic (host topology dependent)"
        )
    else:
        link_note = f"collectives: {link.description}; " + ", ".join(
            f"{w} ranks {link.bandwidth(w) / 1e9:g} GB/s" for w in WORLD_SIZES)
    notes = [
        f"NOT A MEASUREMENT: every latency is a roofline on the datasheet figures of {facts.gpu} in pdsim/data/gpu_specs.csv "
        f"with efficiency factors fitted on NVIDIA measurements ({', '.join(s.name for s in fit.sources)}; "
        f"pdsim/data/roofline_fit.yaml, fitted {fit.date}). Formulas, factors and errors: {DOCS}.",
        f"expected error (leave-one-NVIDIA-GPU-out, |derived/measured - 1|): {_loo_line(fit)}.",
        f"device figures used: bf16 {facts.bf16_flops / 1e12:g} TFLOPS, fp8 "
        + (f"{facts.fp8_flops / 1e12:g} TFLOPS" if facts.has_fp8 else "none (no fp8 GEMM table)")
        + f", memory bandwidth {facts.mem_bw_bytes_per_s / 1e12:g} TB/s, memory {facts.memory_bytes / 1e9:g} GB, "
        f"host link PCIe x16 {facts.pcie_bytes_per_s / 1e9:g} GB/s per direction.",
        link_note + ".",
        "memcpy: not fitted (no source measures copies): d2d at the GEMM family's memory efficiency, h2d/d2h at "
        f"{PCIE_EFFICIENCY:g} of PCIe x16 + {PCIE_LATENCY_S * 1e6:g} us (assumed).",
        "attention: bf16 activations and KV cache only (no fp8 KV rows); head configurations of the models in "
        "pdsim/data/models.yaml at TP 1/2/4/8.",
    ]
    if facts.vendor == "AMD":
        notes.append(
            "AMD: the efficiency factors come from NVIDIA GPUs and CUDA kernels (cuBLAS/CUTLASS, FlashAttention/FlashInfer, "
            "NCCL); ROCm kernels (hipBLASLt, CK/Triton attention, RCCL) reaching a different fraction of peak is not "
            "modelled and not validated by the leave-one-out error, which only measures transfer between NVIDIA GPUs."
        )
    notes.extend(facts.notes)
    meta = ProfileMeta(
        name=out.name,
        source_kind="derived",
        device_type=facts.device_type,  # type: ignore[arg-type]
        vendor=facts.vendor,
        device_name=facts.device_name,
        gpu=facts.gpu,
        memory_bytes=facts.memory_bytes,
        device_count=max(WORLD_SIZES),
        date=today(),
        command=command or f"pdsim profiles derive --gpu {facts.gpu} --out {out}",
        software=SoftwareInfo(framework="pdsim roofline derivation (pdsim/profiles/derive.py)"),
        source=SourceInfo(
            files=["pdsim/data/gpu_specs.csv", f"pdsim/data/{FIT_FILE}", DOCS],
            reference=f"gpu_specs.csv row {facts.gpu}: {facts.datasheet_source}",
            notes=f"roofline factors fitted {fit.date} on {', '.join(s.name for s in fit.sources)} "
                  f"(table sha256 recorded in pdsim/data/{FIT_FILE})",
        ),
        notes="\n".join(notes),
    )
    return write_profile(out, meta, tables)


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
_GROUP_ORDER = ("gemm.bf16", "gemm.fp8", "attention_prefill", "attention_decode", "elementwise", "collective", COLLECTIVE_FIT_ROWS)


def _pct(s: dict | None) -> str:
    return f"{s['median']:.1%} / {s['p90']:.1%}" if s else "-"


def quality_markdown(q: dict) -> str:
    """Markdown tables of median / P90 absolute relative error per GPU (rows) and family (columns)."""
    lines = []
    for kind, title in (("in_sample", "In sample (fit on all GPUs)"), ("leave_one_out", "Leave one GPU out (fit on the others, predict it)")):
        groups = q.get(kind) or {}
        if not groups:
            continue
        cols = [g for g in _GROUP_ORDER if g in groups]
        gpus = sorted({gpu for g in cols for gpu in groups[g] if gpu != "all"})
        lines += [f"#### {title}: median / P90 of |predicted / measured - 1|", "",
                  "| GPU | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for gpu in [*gpus, "all"]:
            name = "**all GPUs (pooled rows)**" if gpu == "all" else gpu
            lines.append(f"| {name} | " + " | ".join(_pct(groups[g].get(gpu)) for g in cols) + " |")
        lines.append("")
    ins, loo = q.get("in_sample") or {}, q.get("leave_one_out") or {}
    detail = [k for k in ins if k.startswith(("elementwise.", "collective."))]
    if detail:
        lines += ["#### Per op (all GPUs pooled): median / P90", "", "| op | in sample | leave one GPU out |", "|---|---|---|"]
        lines += [f"| {k} | {_pct(ins[k].get('all'))} | {_pct((loo.get(k) or {}).get('all'))} |" for k in detail]
        lines.append("")
    return "\n".join(lines)


def params_markdown(params: dict[str, dict[str, float]]) -> str:
    """Markdown table of the fitted parameters."""
    lines = ["| family | parameters |", "|---|---|"]
    for name, p in params.items():
        def fmt(k: str, v: float) -> str:
            if k.endswith("_s"):
                return f"{k[:-2]} = {v * 1e6:.3g} us"
            return f"{k} = {v:.4g}"
        lines.append(f"| {name} | " + ", ".join(fmt(k, v) for k, v in p.items()) + " |")
    return "\n".join(lines)


ITERATION_CASES = (
    ("Llama-3.1-8B", 1, "prefill 1 x 2048", ("prefill", 2048, 1)),
    ("Llama-3.1-8B", 1, "decode 64 x ctx 2048", ("decode", 64, 2048)),
    ("Llama-3.1-70B", 8, "prefill 1 x 2048", ("prefill", 2048, 1)),
    ("Llama-3.1-70B", 8, "decode 64 x ctx 2048", ("decode", 64, 2048)),
)


def iteration_check(fit_rows_: dict[str, pd.DataFrame], root: Path | None = None, csv_path: Path | None = None,
                    progress: Callable[[str], None] | None = None,
                    loo_params: dict[str, dict[str, dict[str, float]]] | None = None) -> list[dict]:
    """End-to-end leave-one-out: for each GPU with an aiconfigurator profile, derive its profile from
    factors fitted without it (``loo_params[gpu]`` when given, else refitted) and compare ``OpLevelModel``
    iteration times (the derived profile alone vs the imported profile alone, each with the GPU's
    datasheet for the op-level model's fallbacks)."""
    from pdsim.latency.oplevel import OpLevelModel
    from pdsim.models.arch import load_model_catalog, model_from_hf_config

    root = root or default_profiles_root()
    catalog = load_gpu_catalog(csv_path)
    models = load_model_catalog()
    out = []
    imported = [p for p in discover_sources(root, csv_path)[0] if p.has("gemm") and p.has("attention_prefill") and p.has("attention_decode")]
    shapes = model_shapes()
    for prof in imported:
        gpu = prof.meta.gpu
        if progress:
            progress(f"iteration check: {gpu}")
        params = (loo_params or {}).get(gpu) or fit_all(fit_rows_, exclude_gpu=gpu)
        with tempfile.TemporaryDirectory() as tmp:
            fit = RooflineFit(params=params, sources=[], date="leave-one-out")
            derived = derive_profile(gpu, Path(tmp) / profile_name(gpu), fit=fit, csv_path=csv_path, shapes=shapes)
            for model_name, tp, label, (kind, a, b) in ITERATION_CASES:
                model = model_from_hf_config(model_name, models[model_name])
                spec = catalog[gpu]
                times, note = [], ""
                for p in (derived, prof):
                    lm = OpLevelModel([p], model, tp=tp, gpu=spec)
                    times.append(lm.prefill_s(a, b) if kind == "prefill" else lm.decode_s(a, a * b))
                    if p is prof and str(lm.sources.get("collective.all_reduce", "")).startswith("analytic"):
                        note = f"imported profile has no {tp}-rank all-reduce: its side uses the analytic ring fallback"
                out.append({"gpu": gpu, "model": f"{model_name} TP{tp}", "case": label, "measured_ms": times[1] * 1e3,
                            "derived_ms": times[0] * 1e3, "error": times[0] / times[1] - 1.0, "note": note})
    return out


def iteration_markdown(rows: list[dict]) -> str:
    lines = ["| GPU | model | case | imported profile (ms) | derived, GPU left out (ms) | derived / imported - 1 | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gpu']} | {r['model']} | {r['case']} | {r['measured_ms']:.3f} | {r['derived_ms']:.3f} "
                     f"| {r['error']:+.1%} | {r.get('note', '')} |")
    return "\n".join(lines)


def report_markdown(fit: RooflineFit, iteration_rows: list[dict] | None = None) -> str:
    parts = [f"### Fitted parameters ({fit.date})", "", params_markdown(fit.params), "",
             "Sources: " + ", ".join(f"{s.name} ({s.gpu})" for s in fit.sources), ""]
    if fit.excluded:
        parts += ["Not used: " + "; ".join(fit.excluded), ""]
    parts.append(quality_markdown(fit.quality))
    if iteration_rows:
        parts += ["#### Iteration times (op-level model), leave one GPU out", "", iteration_markdown(iteration_rows), ""]
    return "\n".join(parts)


if __name__ == "__main__":  # python -m pdsim.profiles.derive --report  (same as `pdsim profiles derive ...`)
    from pdsim.profiles.cli import profiles_app

    profiles_app(["derive", *sys.argv[1:]])
