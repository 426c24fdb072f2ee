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
