"""Paged KV cache block manager of one instance (vLLM's PagedAttention accounting).

Memory is split in blocks of ``block_size`` tokens; a request holding ``n`` tokens of KV holds
``ceil(n / block_size)`` blocks. Capacity comes from the instance's memory budget (see
``pdsim.sim.cluster.kv_capacity_blocks``). Every allocation is checked: usage above capacity raises
``InvariantViolation`` rather than being ignored.
"""

from __future__ import annotations

from pdsim.errors import InvariantViolation


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``tokens`` tokens: ceil(tokens / block_size)."""
    return -(-tokens // block_size)


class KVBlockManager:
    """Counts blocks per request.

    Args:
        capacity_blocks: blocks the instance can hold (>= 1).
        block_size: tokens per block.
        watermark_blocks: blocks kept free when admitting new prefills (vLLM's watermark, default 1% of
            the cache), so running decodes have room to grow; decode growth may use them.
    """

    __slots__ = ("capacity_blocks", "block_size", "watermark_blocks", "used_blocks", "held", "peak_used_blocks")

    def __init__(self, capacity_blocks: int, block_size: int, watermark_blocks: int = 0):
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self.watermark_blocks = watermark_blocks
        self.used_blocks = 0
        self.peak_used_blocks = 0
        self.held: dict[int, int] = {}

    @property
    def free_blocks(self) -> int:
        return self.capacity_blocks - self.used_blocks

    def extra_blocks(self, request_id: int, tokens: int) -> int:
        """Blocks a request must add to hold ``tokens`` tokens (0 if it already holds enough)."""
        need = -(-tokens // self.block_size) - self.held.get(request_id, 0)
        return need if need > 0 else 0

    def can_admit(self, request_id: int, tokens: int) -> bool:
        """Whether a new prefill of ``tokens`` tokens fits, keeping the watermark free."""
        return self.extra_blocks(request_id, tokens) <= self.free_blocks - self.watermark_blocks

    def can_grow(self, request_id: int, tokens: int) -> bool:
        """Whether a running request can grow to ``tokens`` tokens (may use the watermark)."""
        return self.extra_blocks(request_id, tokens) <= self.free_blocks

    def ensure(self, request_id: int, tokens: int) -> None:
        """Grow a request's allocation to hold ``tokens`` tokens.

        Raises:
            InvariantViolation: the allocation would exceed capacity (callers check first).
        """
        extra = self.extra_blocks(request_id, tokens)
        if extra == 0:
            if request_id not in self.held:
                self.held[request_id] = 0
            return
        if extra > self.free_blocks:
            raise InvariantViolation(
                f"KV over capacity: request {request_id} needs {extra} more blocks, {self.free_blocks} free "
                f"of {self.capacity_blocks}"
            )
        self.held[request_id] = self.held.get(request_id, 0) + extra
        self.used_blocks += extra
        if self.used_blocks > self.peak_used_blocks:
            self.peak_used_blocks = self.used_blocks

    def free(self, request_id: int) -> int:
        """Release every block of a request; returns how many."""
        n = self.held.pop(request_id, 0)
        self.used_blocks -= n
        if self.used_blocks < 0:
            raise InvariantViolation(f"KV usage negative after freeing request {request_id}")
        return n
