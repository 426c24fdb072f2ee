"""KV-transfer links between instances.

A link has a bandwidth and a fixed per-transfer latency; transfer time = latency_s + bytes / bandwidth
(DESIGN.md, "Formulas"). Concurrent transfers contend: the simulation ring models each instance's
egress (prefill side) and ingress (decode side) port as a capacity-1 resource, so transfers through one
port are serialised in FIFO order.

Defaults per kind (per instance port, one direction), documented so a user can see what they get:

- ``nvlink``: 300 GB/s, 2 us. NVLink 3 on A100 gives 300 GB/s per GPU per direction (NVIDIA A100
  datasheet; ``gpu_specs.csv`` column ``intra_node_bw_gbps_unidir_per_gpu``); used when prefill and
  decode instances share a node.
- ``infiniband``: 1,600 Gb/s (8 x 200 Gb/s HDR NICs of a DGX-A100; a DGX-H100 has 8 x 400 Gb/s NDR, set
  ``bandwidth_gbps: 3200``), 5 us. Splitwise (Patel et al., ISCA 2024, Sec. 4) moves KV between DGX
  machines over InfiniBand.
- ``ethernet``: 100 Gb/s, 20 us (a common data-centre NIC).

The per-transfer latencies (2 / 5 / 20 us) are round figures of the usual order for each fabric, not
measurements; set ``latency_s`` where it matters. Bandwidths in config are in Gb/s (``bandwidth_gbps``, bits) as NICs are sold; pdsim converts once.

The ``topology:`` model (``pdsim.hardware.topology``, docs/interconnect.md) uses finer defaults, below:
intra-node GPU links per GPU and direction (``INTRA_NODE_KINDS``) and per-NIC inter-node links
(``NIC_DEFAULTS``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of an instance's KV port.

    Attributes:
        kind: ``nvlink``, ``infiniband`` or ``ethernet``.
        bandwidth_gbps: gigabits per second.
        latency_s: fixed cost per transfer, seconds.
    """

    kind: str
    bandwidth_gbps: float
    latency_s: float

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_gbps * 1e9 / 8.0

    def transfer_s(self, nbytes: int) -> float:
        """Uncontended transfer time of ``nbytes`` over this link."""
        return self.latency_s + nbytes / self.bytes_per_s


LINK_DEFAULTS: dict[str, LinkSpec] = {
    "nvlink": LinkSpec("nvlink", bandwidth_gbps=2400.0, latency_s=2e-6),
    "infiniband": LinkSpec("infiniband", bandwidth_gbps=1600.0, latency_s=5e-6),
    "ethernet": LinkSpec("ethernet", bandwidth_gbps=100.0, latency_s=20e-6),
}


INTRA_NODE_KINDS = ("nvlink", "xgmi", "pcie")
"""Intra-node GPU-to-GPU link kinds of the topology model.

- ``nvlink``: NVLink through NVSwitch; any GPU reaches any other at its full per-GPU NVLink bandwidth,
  ``gpu_specs.csv`` column ``intra_node_bw_gbps_unidir_per_gpu`` (GB/s per direction): A100 300 (NVLink 3,
  600 GB/s bidirectional), H100/H200 450 (NVLink 4, 900 GB/s bidirectional), B200 900 (NVLink 5).
- ``xgmi``: AMD Infinity Fabric (xGMI), a fully connected mesh without a switch: two GPUs share *one*
  direct link, so a GPU-to-GPU copy gets one link's bandwidth (``XGMI_LINK_GBYTES_PER_S``), not the
  GPU's aggregate over all its links.
- ``pcie``: peer-to-peer over PCIe (GPUs without NVLink: A10G, L4, L40S, H100-PCIe); the same csv
  column, which holds the PCIe x16 figure for these GPUs (32 GB/s Gen4, 64 GB/s Gen5 per direction).
"""

XGMI_LINK_GBYTES_PER_S: dict[str, float] = {
    "MI300X": 64.0,
    "MI325X": 64.0,
    "MI250X": 50.0,
    "MI210": 50.0,
}
"""Bandwidth of one Infinity Fabric (xGMI) link, GB/s per direction, by GPU.

Sources: ``gpu_specs.csv`` column ``intra_node_interconnect``: MI300X and MI325X "7 links x 128 GB/s
bidir" (ROCm docs ``docs/conceptual/gpu-arch/mi300.md``), i.e. 64 GB/s per direction per link (the csv's
448 GB/s per GPU per direction is the sum over 7 links); MI250X and MI210 "100 GB/s bidir" per link, i.e.
50 GB/s per direction (ROCm docs ``mi250.md``: "a peak transfer bandwidth of 50 GB/sec for a 16-wide
link").
"""

NIC_KINDS = ("infiniband", "roce", "ethernet")

NIC_DEFAULTS: dict[str, LinkSpec] = {
    "infiniband": LinkSpec("infiniband", bandwidth_gbps=400.0, latency_s=5e-6),
    "roce": LinkSpec("roce", bandwidth_gbps=400.0, latency_s=5e-6),
    "ethernet": LinkSpec("ethernet", bandwidth_gbps=100.0, latency_s=20e-6),
}
"""One NIC, one direction (the topology model charges ``nics`` of them per node).

- ``infiniband``: NDR 400 Gb/s per NIC: NVIDIA ConnectX-7 (docs.nvidia.com/networking ConnectX-7 user
  manual: "Single-port 400Gb/s"); a DGX H100 has eight of them, one per GPU (NVIDIA DGX H100 User Guide,
  "Network Modules" table mapping each ConnectX-7 port to a GPU); Azure ND MI300X v5 likewise has
  "8x400 Gigabit NDR" InfiniBand with GPUDirect RDMA (Microsoft Learn, ND MI300X v5-series).
- ``roce``: RDMA over Converged Ethernet on the same 400 GbE-capable NIC (ConnectX-7: "NDR 400Gb/s and
  400GbE").
- ``ethernet``: a 100 Gb/s NIC without RDMA.

Latencies are the module's per-transfer figures above (5 us RDMA, 20 us TCP Ethernet): orders of
magnitude, not measurements; set ``nic_latency_s`` where it matters.
"""
