"""Paged KV cache block manager of one instance (vLLM's PagedAttention accounting), with an optional
prefix cache.

Memory is split in blocks of ``block_size`` tokens; a request holding ``n`` tokens of KV holds
``ceil(n / block_size)`` blocks. Capacity comes from the instance's memory budget (see
``pdsim.core.memory.kv_capacity_blocks``). Every allocation is checked: usage above capacity raises
``InvariantViolation`` rather than being ignored.

Prefix caching (vLLM's automatic prefix caching; SGLang's RadixAttention): the KV of a prompt's
leading *prefix units* is kept, after the request that computed it is gone, under the unit's hash,
and a later request whose prompt starts with the same units reuses it instead of recomputing it.
A unit is ``prefix_unit_tokens`` tokens (a multiple of ``block_size``): the granularity at which the
workload identifies shared content, e.g. the Mooncake traces' ``hash_ids``, one per 512-token block
(Qin et al., "Mooncake", FAST 2025; https://github.com/kvcache-ai/Mooncake, FAST25-release). As in
vLLM, only full units are cached, a request reuses the longest run of cached units from its start,
and at least one prompt token is always computed (a whole-prompt hit recomputes the last unit).
Cached units are reference-counted; units no request references stay resident and are evicted least
recently used first, only when an allocation needs their blocks. Their blocks count as used
(``used_blocks``) until evicted, and as ``available_blocks`` for allocations.
"""

from __future__ import annotations

from collections import OrderedDict

from pdsim.errors import InvariantViolation


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``tokens`` tokens: ceil(tokens / block_size)."""
    return -(-tokens // block_size)


class KVBlockManager:
    """Counts blocks per request, and the cached prefix units.

    Args:
        capacity_blocks: blocks the instance can hold (>= 1).
        block_size: tokens per block.
        watermark_blocks: blocks kept free when admitting new prefills (vLLM's watermark, default 1% of
            the cache), so running decodes have room to grow; decode growth may use them.
        prefix_unit_tokens: tokens per cached prefix unit (a multiple of ``block_size``); 0 disables
            prefix caching.

    Raises:
        ValueError: capacity below one block, or a unit that is not a whole number of blocks.
    """

    __slots__ = (
        "capacity_blocks", "block_size", "watermark_blocks", "used_blocks", "held", "peak_used_blocks",
        "unit_tokens", "unit_blocks", "cache", "lru", "evictable_blocks", "refs", "next_unit", "evicted_units",
    )

    def __init__(self, capacity_blocks: int, block_size: int, watermark_blocks: int = 0, prefix_unit_tokens: int = 0):
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        if prefix_unit_tokens < 0 or prefix_unit_tokens % block_size:
            raise ValueError(f"prefix_unit_tokens must be a multiple of block_size {block_size}, got {prefix_unit_tokens}")
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self.watermark_blocks = watermark_blocks
        self.used_blocks = 0
        self.peak_used_blocks = 0
        self.held: dict[int, int] = {}  # request id -> blocks it holds privately
        self.unit_tokens = prefix_unit_tokens
        self.unit_blocks = prefix_unit_tokens // block_size
        self.cache: dict[int, int] = {}  # unit hash -> requests referencing it
        self.lru: OrderedDict[int, None] = OrderedDict()  # unreferenced cached units, least recent first
        self.evictable_blocks = 0
        self.refs: dict[int, list[int]] = {}  # request id -> cached units it references
        self.next_unit: dict[int, int] = {}  # request id -> first prompt unit not yet reused or published
        self.evicted_units = 0

    @property
    def free_blocks(self) -> int:
        """Blocks not used by anything (cached units excluded)."""
        return self.capacity_blocks - self.used_blocks

    @property
    def available_blocks(self) -> int:
        """Blocks an allocation can get: free ones plus unreferenced cached units (evicted on demand)."""
        return self.capacity_blocks - self.used_blocks + self.evictable_blocks

    def _holding(self, request_id: int) -> int:
        refs = self.refs.get(request_id)
        return self.held.get(request_id, 0) + (len(refs) * self.unit_blocks if refs else 0)

    def blocks_of(self, request_id: int) -> int:
        """Blocks a request uses, its share of cached units included."""
        return self._holding(request_id)

    def extra_blocks(self, request_id: int, tokens: int) -> int:
        """Blocks a request must add to hold ``tokens`` tokens (0 if it already holds enough)."""
        need = -(-tokens // self.block_size) - self.held.get(request_id, 0)
        if self.refs:  # (hot path: empty unless prefix caching is in use)
            refs = self.refs.get(request_id)
            if refs:
                need -= len(refs) * self.unit_blocks
        return need if need > 0 else 0

    def can_admit(self, request_id: int, tokens: int) -> bool:
        """Whether a new prefill of ``tokens`` tokens fits, keeping the watermark free."""
        return self.extra_blocks(request_id, tokens) <= self.available_blocks - self.watermark_blocks

    def can_grow(self, request_id: int, tokens: int) -> bool:
        """Whether a running request can grow to ``tokens`` tokens (may use the watermark)."""
        need = -(-tokens // self.block_size) - self.held.get(request_id, 0)
        if self.refs:
            refs = self.refs.get(request_id)
            if refs:
                need -= len(refs) * self.unit_blocks
        return need <= self.capacity_blocks - self.used_blocks + self.evictable_blocks

    def ensure(self, request_id: int, tokens: int) -> None:
        """Grow a request's allocation to hold ``tokens`` tokens, evicting unreferenced cached units
        (least recently used first) when free blocks do not suffice.

        Raises:
            InvariantViolation: the allocation would exceed capacity (callers check first).
        """
        extra = self.extra_blocks(request_id, tokens)
        if extra == 0:
            if request_id not in self.held:
                self.held[request_id] = 0
            return
        if extra > self.free_blocks:
            self._evict(extra - self.free_blocks)
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
        """Release a request's private blocks and its references to cached units; returns the private
        blocks freed (units it referenced stay cached, evictable once unreferenced)."""
        n = self.held.pop(request_id, 0)
        self.used_blocks -= n
        if self.used_blocks < 0:
            raise InvariantViolation(f"KV usage negative after freeing request {request_id}")
        self.next_unit.pop(request_id, None)
        refs = self.refs.pop(request_id, None)
        if refs:
            cache, lru = self.cache, self.lru
            for h in refs:
                count = cache[h] - 1
                cache[h] = count
                if count == 0:
                    lru[h] = None
                    self.evictable_blocks += self.unit_blocks
        return n

    # -- prefix cache ------------------------------------------------------------------------------
    def _max_units(self, hash_ids, prompt_tokens: int) -> int:
        """Units a prompt may reuse: full units only, leaving at least one token to compute."""
        return min(len(hash_ids), (prompt_tokens - 1) // self.unit_tokens)

    def cached_units(self, hash_ids, prompt_tokens: int) -> int:
        """Leading units of a prompt that are cached now (0 without prefix caching or hash ids)."""
        if not self.unit_blocks or not hash_ids:
            return 0
        cache = self.cache
        n = 0
        for h in hash_ids[: self._max_units(hash_ids, prompt_tokens)]:
            if h not in cache:
                break
            n += 1
        return n

    def can_admit_prefix(self, request_id: int, tokens: int, hash_ids, units: int) -> bool:
        """Whether a request holding nothing yet fits ``tokens`` tokens of KV, keeping the watermark free,
        when it reuses its first ``units`` cached units (which stop being evictable once referenced)."""
        need = -(-tokens // self.block_size) - units * self.unit_blocks - self._holding(request_id)
        revived = sum(1 for h in hash_ids[:units] if self.cache[h] == 0) * self.unit_blocks if units else 0
        return max(need, 0) <= self.available_blocks - revived - self.watermark_blocks

    def acquire_prefix(self, request_id: int, hash_ids, units: int) -> None:
        """Reference the first ``units`` cached units of ``hash_ids`` for ``request_id``."""
        if not units:
            return
        cache, lru = self.cache, self.lru
        refs = self.refs.setdefault(request_id, [])
        self.next_unit[request_id] = units
        for h in hash_ids[:units]:
            count = cache[h]
            if count == 0:
                del lru[h]
                self.evictable_blocks -= self.unit_blocks
            cache[h] = count + 1
            refs.append(h)

    def publish(self, request_id: int, hash_ids, computed_tokens: int, prompt_tokens: int) -> None:
        """Cache the full prompt units a request has computed (its private blocks become a cached unit
        it references); a unit already cached by another request stays private to this one."""
        if not self.unit_blocks or not hash_ids:
            return
        done = min(computed_tokens, prompt_tokens, len(hash_ids) * self.unit_tokens) // self.unit_tokens
        start = self.next_unit.get(request_id, 0)
        if done <= start:
            return
        self.next_unit[request_id] = done
        refs = self.refs.setdefault(request_id, [])
        cache, ub = self.cache, self.unit_blocks
        held = self.held
        for h in hash_ids[start:done]:
            if h in cache:
                continue
            if held.get(request_id, 0) < ub:
                raise InvariantViolation(f"request {request_id} publishes a prefix unit it does not hold")
            held[request_id] -= ub
            cache[h] = 1
            refs.append(h)

    def _evict(self, blocks: int) -> None:
        lru, cache, ub = self.lru, self.cache, self.unit_blocks
        while blocks > 0 and lru:
            h, _ = lru.popitem(last=False)
            del cache[h]
            self.used_blocks -= ub
            self.evictable_blocks -= ub
            self.evicted_units += 1
            blocks -= ub

    def check_drained(self, where: str) -> None:
        """After a run: no request holds blocks; only unreferenced cached units remain.

        Raises:
            InvariantViolation: otherwise.
        """
        if self.held or any(self.refs.values()) or self.used_blocks != self.evictable_blocks or any(self.cache.values()):
            raise InvariantViolation(
                f"{where} holds {self.used_blocks} KV blocks after the run ({self.evictable_blocks} in unreferenced "
                f"cached prefix units, {len(self.held)} requests still holding blocks)"
            )
