"""Hardware catalog (pure domain ring): GPU datasheet facts and prices, KV links."""

from pdsim.hardware.gpus import GpuSpec, load_gpu_catalog
from pdsim.hardware.links import LINK_DEFAULTS, LinkSpec

__all__ = ["GpuSpec", "load_gpu_catalog", "LinkSpec", "LINK_DEFAULTS"]
