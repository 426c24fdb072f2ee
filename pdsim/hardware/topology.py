"""Where instances sit and what a KV transfer between two of them costs (pure domain, no SimPy).

The model (docs/interconnect.md has the full text, with sources):

- **Nodes.** GPUs sit in nodes of ``gpus_per_node`` GPUs of one type. Instances are placed in order,
  prefill pool first, then decode pool (``place_instances``): an instance takes the next
  ``tp x pp`` free slots of the current node, or starts a new node when they do not fit (an instance
  never straddles two nodes unless it is larger than a node, in which case it takes whole nodes); a
  pool of another GPU type, or any decode pool with ``placement: separate``, starts a new node.
- **Links.** Inside a node, GPUs talk over an intra-node link (``nvlink``, ``xgmi`` or ``pcie``;
  ``pdsim.hardware.links``). Each node has ``nics`` NICs; NIC ``j`` serves the GPU slots
  ``[j g / n, (j + 1) g / n)`` (rail-optimised, one NIC per GPU by default as in a DGX H100), and an
  instance uses the NICs of its GPUs. Every port is one direction of one physical link and is a
  contended resource in the simulation: transfers through a port are serialised FIFO, like the
  existing ``kv_link`` model. A transfer holds all the ports of its route at once (acquired in one
  global order, so two transfers never deadlock).
- **Paths.** ``direct``: same node -> the intra-node link, else the NICs with GPU-direct RDMA.
  ``host_staged`` (automatic when the two pools' vendors differ): device -> host (``d2h``) over each
  prefill GPU's PCIe link, host -> host over the NICs, host -> device (``h2d``) on each decode GPU.
  The steps run one after the other (store and forward, not pipelined).
- **Costs**, for ``B`` unique KV bytes of a request (``DeploymentPlan.kv_transfer_bytes``, GQA-aware):
  wire bytes ``W = ceil(B x bits / kv_dtype_bits)`` (``B`` without compression). Each GPU holds a
  fraction ``f = kv_bytes_per_token_per_gpu(tp, pp) / kv_bytes_per_token`` of the KV (``1 / (tp pp)``
  unless heads are replicated). Link time = ``latency_s + W / (min(GPUs or NICs at the two ends) x
  per-link bandwidth)``; ``d2h`` / ``h2d`` = one GPU's copy of ``f W`` bytes (the GPUs copy in
  parallel) from the profile's ``memcpy`` table where present, else ``f W / PCIe x16 bandwidth``;
  layout conversion (vendors, block sizes or TP x PP differ) = one device copy of ``f_dst B`` bytes
  (profile ``memcpy`` ``d2d`` where present, else read + write at datasheet HBM bandwidth:
  ``2 f_dst B / hbm``); compression = a quantize pass on each prefill GPU, ``(f_src B + f_src W) / hbm``,
  plus a dequantize pass on each decode GPU, ``(f_dst W + f_dst B) / hbm`` (memory-bound kernels at
  datasheet bandwidth: lower bounds).
- **Layer-wise streaming** (DistServe, Splitwise, Mooncake): with ``L`` layers, prefill iteration time
  ``T`` and path time ``X``, layer ``i`` can leave when it is computed, at ``i T / L``; the part still to
  send when the prefill ends is ``tail = max(X / L, X - (L - 1) T / L)`` (``layerwise_tail_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from pdsim.errors import ConfigError, InvariantViolation
from pdsim.hardware.gpus import PCIE_X16_NOMINAL_GBYTES_PER_S, GpuSpec
from pdsim.hardware.links import (
    LINK_DEFAULTS,
    NIC_DEFAULTS,
    XGMI_LINK_GBYTES_PER_S,
    LinkSpec,
)
from pdsim.latency.base import LookupStats
from pdsim.latency.interp import Curve
from pdsim.profiles.format import load_profile

# Port categories; a key is (category, a, b) and keys sort in this order (the global acquisition order).
LINK_OUT, HOST_OUT, NIC_OUT, NIC_IN, HOST_IN, LINK_IN = range(6)
PORT_NAMES = ("link_out", "host_out", "nic_out", "nic_in", "host_in", "link_in")

PATHS = ("direct", "host_staged")


@dataclass(frozen=True, slots=True)
class InstanceSite:
    """Where one instance's GPUs are: ``slots`` is a tuple of (node, slot within the node)."""

    slots: tuple[tuple[int, int], ...]

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(sorted({n for n, _ in self.slots}))

    def nics(self, gpus_per_node: int, nics_per_node: int) -> tuple[tuple[int, int], ...]:
        """(node, NIC) pairs serving this instance's GPUs (NIC ``j`` serves slots ``[j g/n, (j+1) g/n)``)."""
        return tuple(sorted({(n, s * nics_per_node // gpus_per_node) for n, s in self.slots}))


def place_instances(pools: list[tuple[str, int, int]], gpus_per_node: int, separate: bool) -> tuple[tuple[InstanceSite, ...], ...]:
    """Place the instances of ``pools`` (each ``(gpu_name, instances, gpus_per_instance)``, prefill first).

    Rule: instances fill nodes in order; an instance that does not fit the rest of the current node
    starts the next one; one larger than a node takes ``gpus / gpus_per_node`` whole nodes; a pool whose
    GPU type differs from the previous pool's (a node holds one GPU type), or every pool after the
    first when ``separate``, starts a new node.

    Raises:
        ConfigError: an instance larger than a node whose GPU count is not a multiple of ``gpus_per_node``.
    """
    node, slot = 0, 0
    prev_gpu: str | None = None
    out = []
    for gpu_name, instances, per in pools:
        if prev_gpu is not None and (separate or gpu_name != prev_gpu) and slot > 0:
            node, slot = node + 1, 0
        prev_gpu = gpu_name
        sites = []
        for _ in range(instances):
            if per > gpus_per_node:
                if per % gpus_per_node:
                    raise ConfigError(
                        f"topology.gpus_per_node: an instance of {per} GPUs ({gpu_name}) spans nodes but is not a "
                        f"multiple of gpus_per_node={gpus_per_node}")
                if slot > 0:
                    node, slot = node + 1, 0
                full = per // gpus_per_node
                sites.append(InstanceSite(tuple((node + k, s) for k in range(full) for s in range(gpus_per_node))))
                node += full
                continue
            if slot + per > gpus_per_node:
                node, slot = node + 1, 0
            sites.append(InstanceSite(tuple((node, s) for s in range(slot, slot + per))))
            slot += per
            if slot == gpus_per_node:
                node, slot = node + 1, 0
        out.append(tuple(sites))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class CopyModel:
    """Time of one GPU's copy of ``n`` bytes in one direction (``d2h``, ``h2d`` or ``d2d``).

    Either a piecewise-linear curve through a profile's ``memcpy`` rows (``curve``; linear extrapolation
    above the largest size, clamped below the smallest, as ``pdsim.latency.interp.Curve``), or
    ``n / bytes_per_s`` from a datasheet bandwidth. ``source`` says which, for the manifest.
    """

    source: str
    bytes_per_s: float = math.nan
    curve: Curve | None = None

    def time_s(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        if self.curve is not None:
            return self.curve.at(float(nbytes), LookupStats(), "bytes", clamp_low=True)
        return nbytes / self.bytes_per_s


def copy_model_from_profiles(profiles, direction: str, fallback_bytes_per_s: float, fallback_source: str,
                             where: str = "") -> CopyModel:
    """The first profile's ``memcpy`` rows of ``direction``, else the datasheet fallback.

    Args:
        profiles: ``pdsim.profiles.format.Profile`` objects of the pool's latency model (may be empty).
        direction: ``d2h``, ``h2d`` or ``d2d``.
        fallback_bytes_per_s: bandwidth used when no profile has such rows (must be finite and > 0).
        fallback_source: how the fallback was obtained (e.g. ``PCIe Gen5 x16 spec``).
        where: the pool, for the error message.

    Raises:
        ConfigError: no profile rows and no usable fallback bandwidth.
    """
    for prof in profiles:
        if not prof.has("memcpy"):
            continue
        df: pd.DataFrame = prof.table("memcpy")
        rows = df[df["direction"] == direction].sort_values("bytes")
        if len(rows):
            curve = Curve(tuple(float(v) for v in rows["bytes"]), tuple(float(v) for v in rows["latency_s"]))
            return CopyModel(source=f"profile {prof.name} memcpy {direction} ({prof.source_kind})", curve=curve)
    if not (fallback_bytes_per_s > 0 and math.isfinite(fallback_bytes_per_s)):
        raise ConfigError(f"{where}: no memcpy {direction} profile rows and no datasheet bandwidth to fall back on "
                          f"({fallback_source})")
    return CopyModel(source=fallback_source, bytes_per_s=fallback_bytes_per_s)


def intra_node_link(gpu: GpuSpec, kind: str, gbytes_per_s: float | None, latency_s: float, where: str) -> LinkSpec:
    """The intra-node link of one GPU type: kind ``auto`` picks ``nvlink`` / ``xgmi`` / ``pcie``.

    Bandwidth (per GPU pair, per direction; ``pdsim.hardware.links.INTRA_NODE_KINDS``): ``nvlink`` and
    ``pcie`` the csv's ``intra_node_bw_gbps_unidir_per_gpu``; ``xgmi`` one link (``XGMI_LINK_GBYTES_PER_S``).
    ``auto``: AMD -> ``xgmi``; otherwise ``pcie`` when the csv figure is at most the nominal PCIe x16
    bandwidth of the GPU's generation, else ``nvlink``.

    Raises:
        ConfigError: no bandwidth known for this GPU and kind (set ``intra_node_gbytes_per_s``).
    """
    if kind == "auto":
        if gpu.vendor == "AMD":
            kind = "xgmi"
        else:
            pcie = PCIE_X16_NOMINAL_GBYTES_PER_S.get(gpu.pcie_gen, math.nan)
            kind = "pcie" if gpu.intra_node_gbps_unidir <= pcie else "nvlink"
    if gbytes_per_s is None:
        gbytes_per_s = XGMI_LINK_GBYTES_PER_S.get(gpu.name, math.nan) if kind == "xgmi" else gpu.intra_node_gbps_unidir
    if not (gbytes_per_s > 0 and math.isfinite(gbytes_per_s)):
        raise ConfigError(f"{where}.intra_node_gbytes_per_s: no {kind} bandwidth known for {gpu.name}; set it")
    return LinkSpec(kind, bandwidth_gbps=gbytes_per_s * 8.0, latency_s=latency_s)


@dataclass(frozen=True, slots=True)
class PoolEnd:
    """One side of the transfer (the prefill or the decode pool), resolved.

    Attributes:
        gpu: the GPU spec; ``tp``, ``pp``: parallelism; ``block_size``: KV block size (tokens).
        kv_fraction_per_gpu: fraction of the request's KV one GPU holds (``f`` in the module docstring).
        sites: where each instance's GPUs are.
        d2h, h2d, d2d: copy models of one GPU of this pool.
    """

    gpu: GpuSpec
    tp: int
    pp: int
    block_size: int
    kv_fraction_per_gpu: float
    sites: tuple[InstanceSite, ...]
    d2h: CopyModel
    h2d: CopyModel
    d2d: CopyModel

    @property
    def gpus_per_instance(self) -> int:
        return self.tp * self.pp

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.gpu.mem_bw_bytes_per_s


@dataclass(frozen=True, slots=True)
class TransferCost:
    """One request's KV transfer, uncontended (seconds, bytes).

    Attributes:
        path: ``intra_node``, ``network`` (GPU-direct RDMA) or ``host_staged``.
        kv_bytes: unique KV bytes of the request (uncompressed).
        wire_bytes: bytes on the link (compressed when ``kv_compression_bits`` is set).
        d2h_s, network_s, h2d_s: the steps of the path (``network_s`` is the intra-node link time on
            an ``intra_node`` path, and includes the link's fixed latency).
        convert_s: layout conversion / re-shard on the decode GPUs.
        compress_s: quantize (prefill GPUs) + dequantize (decode GPUs).
        resources: the ports the transfer holds, in acquisition order.
    """

    path: str
    kv_bytes: int
    wire_bytes: int
    d2h_s: float
    network_s: float
    h2d_s: float
    convert_s: float
    compress_s: float
    resources: tuple[tuple[int, int, int], ...]

    @property
    def total_s(self) -> float:
        return self.d2h_s + self.network_s + self.h2d_s + self.convert_s + self.compress_s


def layerwise_tail_s(total_s: float, prefill_s: float, layers: int) -> float:
    """Time left after the prefill ends when each layer's KV is sent as soon as it is computed.

    Layer ``i`` (1..L) is computed at ``i T / L`` and its transfer takes ``X / L``; transfers go one at a
    time. If ``X / L <= T / L`` every layer leaves before the next is done and only the last layer's
    transfer remains; otherwise the transfers run back to back from ``T / L`` and end at
    ``T / L + X``. Both cases: ``tail = max(X / L, X - (L - 1) T / L)`` (DistServe, Zhong et al. OSDI
    2024, Sec. 4 and Splitwise, Patel et al. ISCA 2024, Sec. 4.3 overlap the KV transfer with the
    prefill layer by layer; the pipeline algebra is ours).

    Args:
        total_s: the whole path's time ``X`` for the request.
        prefill_s: the prefill iteration time ``T`` (NaN or <= 0: nothing overlaps).
        layers: ``L`` >= 1.
    """
    if not prefill_s > 0:
        return total_s
    return max(total_s / layers, total_s - (layers - 1) * prefill_s / layers)


@dataclass(frozen=True, slots=True)
class TopologyPlan:
    """A disaggregated deployment's interconnect, resolved (read-only during a run).

    Attributes:
        gpus_per_node, nics_per_node, placement: as configured (``placement`` ``pack`` or ``separate``).
        prefill, decode: the two ends.
        intra: the intra-node link (per GPU pair, per direction), when both pools share a GPU type.
        nic: one NIC, one direction.
        path: ``direct`` or ``host_staged`` (after ``auto`` is resolved).
        path_reason: why (``auto: vendors differ`` ...).
        layerwise: layer-wise streaming of the KV during the prefill.
        layers: model layers (``L`` of the streaming formula).
        kv_dtype_bits, compression_bits: KV precision and the wire precision (None: uncompressed).
        convert: whether the decode side converts the layout (vendors, block sizes or TP x PP differ).
    """

    gpus_per_node: int
    nics_per_node: int
    placement: str
    prefill: PoolEnd
    decode: PoolEnd
    intra: LinkSpec | None
    nic: LinkSpec
    path: str
    path_reason: str
    layerwise: bool
    layers: int
    kv_dtype_bits: int
    compression_bits: int | None
    convert: bool

    def same_node(self, src: int, dst: int) -> bool:
        a, b = self.prefill.sites[src].nodes, self.decode.sites[dst].nodes
        return len(a) == 1 and a == b

    def wire_bytes(self, kv_bytes: int) -> int:
        if self.compression_bits is None:
            return kv_bytes
        return -(-kv_bytes * self.compression_bits // self.kv_dtype_bits)

    def cost(self, src: int, dst: int, kv_bytes: int) -> TransferCost:
        """The uncontended cost of moving ``kv_bytes`` from prefill instance ``src`` to decode ``dst``."""
        p, d = self.prefill, self.decode
        wire = self.wire_bytes(kv_bytes)
        same = self.same_node(src, dst)
        d2h_s = h2d_s = network_s = 0.0
        res: list[tuple[int, int, int]] = []
        if self.path == "direct" and same:
            path = "intra_node"
            if self.intra is None:
                raise InvariantViolation(f"prefill/{src} and decode/{dst} share a node but their GPU types differ")
            lanes = min(p.gpus_per_instance, d.gpus_per_instance)
            network_s = self.intra.latency_s + wire / (lanes * self.intra.bytes_per_s)
            res += [(LINK_OUT, src, 0), (LINK_IN, dst, 0)]
        else:
            path = "network" if self.path == "direct" else "host_staged"
            if not same:
                src_nics = p.sites[src].nics(self.gpus_per_node, self.nics_per_node)
                dst_nics = d.sites[dst].nics(self.gpus_per_node, self.nics_per_node)
                lanes = min(len(src_nics), len(dst_nics))
                network_s = self.nic.latency_s + wire / (lanes * self.nic.bytes_per_s)
                res += [(NIC_OUT, n, j) for n, j in src_nics] + [(NIC_IN, n, j) for n, j in dst_nics]
            if path == "host_staged":
                d2h_s = p.d2h.time_s(p.kv_fraction_per_gpu * wire)
                h2d_s = d.h2d.time_s(d.kv_fraction_per_gpu * wire)
                res += [(HOST_OUT, src, 0), (HOST_IN, dst, 0)]
        convert_s = d.d2d.time_s(d.kv_fraction_per_gpu * kv_bytes) if self.convert else 0.0
        compress_s = 0.0
        if self.compression_bits is not None:
            compress_s = (p.kv_fraction_per_gpu * (kv_bytes + wire) / p.hbm_bytes_per_s
                          + d.kv_fraction_per_gpu * (wire + kv_bytes) / d.hbm_bytes_per_s)
        return TransferCost(path, kv_bytes, wire, d2h_s, network_s, h2d_s, convert_s, compress_s, tuple(sorted(res)))

    def visible_s(self, total_s: float, prefill_s: float) -> float:
        """Time the transfer takes after the prefill ends (all of it unless ``layerwise``)."""
        return layerwise_tail_s(total_s, prefill_s, self.layers) if self.layerwise else total_s

    @property
    def nodes(self) -> int:
        used = {n for end in (self.prefill, self.decode) for site in end.sites for n, _ in site.slots}
        return len(used)

    def describe(self) -> dict:
        def end(e: PoolEnd) -> dict:
            return {"gpu": e.gpu.name, "vendor": e.gpu.vendor, "nodes": sorted({n for s in e.sites for n in s.nodes}),
                    "kv_fraction_per_gpu": e.kv_fraction_per_gpu, "d2h": e.d2h.source, "h2d": e.h2d.source,
                    "d2d": e.d2d.source}
        return {
            "gpus_per_node": self.gpus_per_node, "nics_per_node": self.nics_per_node, "placement": self.placement,
            "nodes": self.nodes, "path": self.path, "path_reason": self.path_reason,
            "intra_node": None if self.intra is None else {
                "kind": self.intra.kind, "gbytes_per_s": self.intra.bandwidth_gbps / 8.0, "latency_s": self.intra.latency_s},
            "nic": {"kind": self.nic.kind, "gbps": self.nic.bandwidth_gbps, "latency_s": self.nic.latency_s},
            "layerwise": self.layerwise, "layers": self.layers, "kv_dtype_bits": self.kv_dtype_bits,
            "kv_compression_bits": self.compression_bits, "layout_conversion": self.convert,
            "prefill": end(self.prefill), "decode": end(self.decode),
        }


def _profiles_of(pool) -> list:
    """Profiles behind a pool's op-level latency source (none for other latency kinds)."""
    source = pool.latency_source
    if source[0] != "op_level":
        return []
    return [load_profile(p) for p in source[1]]


def _pool_end(pool, sites: tuple[InstanceSite, ...], model, kv_dtype_bytes: int, where: str) -> PoolEnd:
    gpu: GpuSpec = pool.gpu
    profiles = _profiles_of(pool)
    pcie_bytes_per_s = gpu.host_link_gbps * 1e9 / 8.0
    pcie = f"{gpu.name} PCIe Gen{gpu.pcie_gen} x16 spec ({gpu.host_link_gbps / 8:.1f} GB/s per direction)"
    hbm = f"{gpu.name} HBM read + write at datasheet {gpu.mem_bw_bytes_per_s / 1e12:.2f} TB/s"
    fraction = model.kv_bytes_per_token_per_gpu(pool.tp, pool.pp, kv_dtype_bytes) / model.kv_bytes_per_token(kv_dtype_bytes)
    return PoolEnd(
        gpu=gpu, tp=pool.tp, pp=pool.pp, block_size=pool.scheduler.block_size, kv_fraction_per_gpu=fraction, sites=sites,
        d2h=copy_model_from_profiles(profiles, "d2h", pcie_bytes_per_s, pcie, where),
        h2d=copy_model_from_profiles(profiles, "h2d", pcie_bytes_per_s, pcie, where),
        # a d2d copy of n bytes reads n and writes n bytes
        d2d=copy_model_from_profiles(profiles, "d2d", gpu.mem_bw_bytes_per_s / 2.0, hbm, where),
    )


def resolve_topology(cfg, prefill, decode, model, kv_dtype_bytes: int, where: str) -> TopologyPlan:
    """Resolve a ``TopologyConfig`` for a disaggregated deployment's two pools (``PoolPlan`` objects).

    Raises:
        ConfigError: compression bits not below the KV dtype's, an unknown intra-node bandwidth, or a
            placement that cannot be made; each names ``where`` and the field.
    """
    kv_bits = 8 * kv_dtype_bytes
    if cfg.kv_compression_bits is not None and cfg.kv_compression_bits >= kv_bits:
        raise ConfigError(
            f"{where}.topology.kv_compression_bits: {cfg.kv_compression_bits} bits does not compress a {kv_bits}-bit KV cache")
    gpn = cfg.gpus_per_node
    try:
        p_sites, d_sites = place_instances(
            [(prefill.gpu.name, prefill.instances, prefill.tp * prefill.pp),
             (decode.gpu.name, decode.instances, decode.tp * decode.pp)], gpn, cfg.placement == "separate")
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    intra = None
    if prefill.gpu.name == decode.gpu.name:
        latency = cfg.intra_node_latency_s if cfg.intra_node_latency_s is not None else LINK_DEFAULTS["nvlink"].latency_s
        intra = intra_node_link(prefill.gpu, cfg.intra_node, cfg.intra_node_gbytes_per_s, latency, f"{where}.topology")
    base = NIC_DEFAULTS[cfg.nic]
    nic = LinkSpec(cfg.nic, bandwidth_gbps=cfg.nic_gbps if cfg.nic_gbps is not None else base.bandwidth_gbps,
                   latency_s=cfg.nic_latency_s if cfg.nic_latency_s is not None else base.latency_s)
    vendors_differ = prefill.gpu.vendor != decode.gpu.vendor
    if cfg.path == "auto":
        path = "host_staged" if vendors_differ else "direct"
        reason = f"auto: {'vendors differ' if vendors_differ else 'same vendor'} ({prefill.gpu.vendor} -> {decode.gpu.vendor})"
    else:
        path, reason = cfg.path, "configured"
    convert = (vendors_differ or prefill.scheduler.block_size != decode.scheduler.block_size
               or (prefill.tp, prefill.pp) != (decode.tp, decode.pp))
    return TopologyPlan(
        gpus_per_node=gpn, nics_per_node=cfg.nics_per_node or gpn, placement=cfg.placement,
        prefill=_pool_end(prefill, p_sites, model, kv_dtype_bytes, f"{where}.prefill"),
        decode=_pool_end(decode, d_sites, model, kv_dtype_bytes, f"{where}.decode"),
        intra=intra, nic=nic, path=path, path_reason=reason, layerwise=cfg.layerwise, layers=model.num_layers,
        kv_dtype_bits=kv_bits, compression_bits=cfg.kv_compression_bits, convert=convert,
    )
