"""Pure domain objects: requests and their lifecycle, the paged KV block manager."""

from pdsim.core.kv import KVBlockManager
from pdsim.core.request import Phase, RejectReason, Request

__all__ = ["KVBlockManager", "Phase", "RejectReason", "Request"]
