"""GPU datasheet facts and prices.

Source: ``pdsim/data/gpu_specs.csv``, copied from the project's shared data; each row names its
datasheet source and the source and date of its approximate on-demand price (see the ``source`` and
``price_source`` columns). Memory is read as decimal gigabytes (``mem_gb`` x 1e9 bytes), which slightly
under-states GPUs whose capacity is a binary 80 GiB; the KV capacity pdsim computes is therefore a little
conservative.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pdsim.errors import ConfigError


PCIE_X16_NOMINAL_GBYTES_PER_S: dict[int, float] = {4: 32.0, 5: 64.0, 6: 128.0}
"""Nominal PCIe x16 bandwidth per direction, GB/s, by generation (PCI-SIG: 16 / 32 / 64 GT/s per lane
x 16 lanes, before line encoding; the rounded figures that ``gpu_specs.csv`` and aiconfigurator's
``systems/*.yaml`` ``pcie_bw`` quote)."""


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """Datasheet facts of one GPU type.

    Attributes:
        name: catalog name, e.g. ``H100-SXM``.
        vendor: ``NVIDIA``, ``AMD`` or ``Intel``.
        memory_bytes: HBM/GDDR capacity in bytes.
        mem_bw_bytes_per_s: peak memory bandwidth.
        bf16_dense_flops: peak dense BF16 tensor FLOP/s.
        fp8_dense_flops: peak dense FP8 FLOP/s (NaN where unsupported).
        intra_node_gbps_unidir: intra-node GPU-to-GPU bandwidth per GPU per direction, GB/s.
        tdp_w: board power (NaN when unpublished).
        price_usd_per_hour: approximate on-demand price per GPU-hour (NaN when none is known).
        pcie_gen: PCIe generation of the GPU's host link (column ``pcie_gen``; 0 when unknown).
    """

    name: str
    vendor: str
    memory_bytes: int
    mem_bw_bytes_per_s: float
    bf16_dense_flops: float
    fp8_dense_flops: float
    intra_node_gbps_unidir: float
    tdp_w: float
    price_usd_per_hour: float
    pcie_gen: int = 0

    @property
    def host_link_gbps(self) -> float:
        """Raw per-direction bandwidth of the GPU's PCIe x16 host link, Gb/s (NaN when unknown).

        PCI-SIG base specifications: 16 / 32 / 64 GT/s per lane for Gen4 / 5 / 6, 16 lanes, 128b/130b
        encoding for Gen4 and Gen5 (Gen6 FLIT mode is counted at its raw rate). Gen4 x16 = 252 Gb/s
        (31.5 GB/s). Achieved copy bandwidth is lower (packet and protocol overheads); a profile's
        measured ``memcpy`` table, where one exists, is the better figure.
        """
        if self.pcie_gen not in PCIE_X16_NOMINAL_GBYTES_PER_S:
            return math.nan
        encoding = 128 / 130 if self.pcie_gen in (4, 5) else 1.0
        return PCIE_X16_NOMINAL_GBYTES_PER_S[self.pcie_gen] * 8 * encoding


def _float(row: dict[str, str], key: str) -> float:
    value = (row.get(key) or "").strip()
    return float(value) if value else math.nan


def _pcie_gen(text: str) -> int:
    """``Gen5`` or ``Gen6 (per aiconfigurator)`` -> 5 / 6; 0 when absent."""
    text = text.strip()
    return int(text[3]) if text.startswith("Gen") and text[3:4].isdigit() else 0


def load_gpu_catalog(path: Path | None = None) -> dict[str, GpuSpec]:
    """Read the GPU catalog (``pdsim/data/gpu_specs.csv`` by default) into specs by name."""
    if path is None:
        text = resources.files("pdsim.data").joinpath("gpu_specs.csv").read_text()
    else:
        text = Path(path).read_text()
    out: dict[str, GpuSpec] = {}
    for row in csv.DictReader(io.StringIO(text)):
        out[row["gpu"]] = GpuSpec(
            name=row["gpu"],
            vendor=row["vendor"],
            memory_bytes=int(round(_float(row, "mem_gb") * 1e9)),
            mem_bw_bytes_per_s=_float(row, "mem_bw_tbps") * 1e12,
            bf16_dense_flops=_float(row, "bf16_dense_tflops") * 1e12,
            fp8_dense_flops=_float(row, "fp8_dense_tflops") * 1e12,
            intra_node_gbps_unidir=_float(row, "intra_node_bw_gbps_unidir_per_gpu"),
            tdp_w=_float(row, "tdp_w"),
            price_usd_per_hour=_float(row, "approx_price_usd_per_gpu_hr"),
            pcie_gen=_pcie_gen(row.get("pcie_gen") or ""),
        )
    return out


def lookup_gpu(catalog: dict[str, GpuSpec], name: str, where: str) -> GpuSpec:
    """Find a GPU by exact or case-insensitive name.

    Raises:
        ConfigError: unknown GPU, naming the field and listing the known names.
    """
    if name in catalog:
        return catalog[name]
    folded = {k.lower(): v for k, v in catalog.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise ConfigError(f"{where}: unknown GPU {name!r}; known GPUs: {', '.join(sorted(catalog))}")
