"""Continuous batching in the vLLM style, as pure two-phase objects.

``next_batch()`` forms the next iteration from a token budget (``max_num_batched_tokens``), a cap on
running sequences (``max_num_seqs``) and the KV blocks (like vLLM's ``schedule()``), and
``complete(batch, iterations, end_times_s)`` applies its outcome (like ``update_from_output()``).

Policy (vLLM v1 scheduler, as documented in vLLM's ``v1/core/sched/scheduler.py``):

1. Running requests are scheduled first, in admission order. A decoding request needs a KV slot for
   the token it feeds; a request part-way through a chunked prefill gets its next chunk. When the KV
   cache has no room, the most recently admitted running request is preempted (see *Preemption*).
2. Then swapped-out requests are swapped back in, first come first served (see *Preemption*); while
   any request is swapped out no new request is admitted (vLLM v0 "prioritises swapped requests").
3. Waiting requests are admitted first come, first served, while the token budget, the sequence cap
   and the KV cache (keeping a watermark of free blocks) allow. The head of the queue blocks the rest
   (no skipping). Nothing is admitted in an iteration that preempted.

Chunked prefill (Sarathi-Serve, Agrawal et al., OSDI 2024; vLLM's ``enable_chunked_prefill``): off, a
prompt (re-)prefills whole in one iteration and must fit the token budget. On, each request has
computed tokens (``kv_tokens``) catching up with its prefill target (``prefill_target``: the prompt,
plus the tokens generated before a recompute preemption); an iteration gives it a chunk of at most the
remaining budget and ``long_prefill_token_threshold`` tokens (0 = no cap), so long prompts share
iterations with decodes; the token is emitted by the iteration that computes the last chunk. Running
requests (decodes and partial prefills) are scheduled in order while budget remains, as vLLM v1 does;
a decode that finds the budget spent waits for the next iteration.

Preemption (vLLM's ``preemption_mode``): *recompute* frees the victim's blocks and puts it back at the
front of the waiting queue; it later re-prefills its prompt plus the tokens it had generated.
*swap* (vLLM v0) copies a decoding victim's KV blocks to host memory over the GPU's host link (the
iteration is charged ``bytes per GPU / host link bandwidth``, as vLLM v0's ``swap_out`` runs before
the forward pass), frees them on the GPU, and swaps them back in (charged likewise) when blocks are
available; a victim in the middle of a prefill, or one that does not fit the remaining host swap space,
is recomputed instead. Both count in ``Request.preemptions``; swaps also in ``Request.swaps``.

Prefix caching (``pdsim.core.kv``): on admission a request reuses the cached leading units of its
prompt (``Request.hash_ids``), computes only the rest, and publishes the units it computes.

Roles are types: ``ColocatedScheduler`` (prefill then decode on the same instance),
``PrefillOnlyScheduler`` (hands each request off after its prefill; its KV blocks stay held until the
transfer ends) and ``DecodeOnlyScheduler`` (reserves blocks for incoming KV before the transfer,
decodes, and re-prefills locally what it preempts).

Multi-iteration windows: when the next iteration is pure decode, ``decode_horizon`` says how many
identical iterations follow (until the first request finishes, the KV cache cannot grow, or a limit),
so the simulator can schedule one event for the whole window. It is exact: every admission check
that failed at the window's start keeps failing inside it (available blocks only shrink, the sequence
count and budget are constant), and the window is one iteration long whenever the step preempted,
swapped or continued a chunked prefill.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from pdsim.core.kv import KVBlockManager, blocks_for
from pdsim.core.request import Phase, Request
from pdsim.latency.base import BatchShape


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """Batch limits of one instance.

    Attributes:
        max_num_batched_tokens: tokens one iteration may process (prompt tokens + one per decode).
        max_num_seqs: requests one iteration may hold.
        chunked_prefill: split prefills into chunks within the budget (see module doc).
        long_prefill_token_threshold: most tokens one request may prefill in one iteration when
            chunking (0 = no cap other than the budget).
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    chunked_prefill: bool = False
    long_prefill_token_threshold: int = 0


@dataclass(frozen=True, slots=True)
class SwapSpace:
    """Host memory for swap preemption, per GPU of the instance (each GPU swaps its own KV shard over
    its own host link, in parallel).

    Attributes:
        capacity_blocks: KV blocks the host swap space holds (vLLM ``swap_space`` GiB per GPU / bytes per
            block per GPU).
        bytes_per_block: bytes of one KV block on one GPU.
        host_link_bytes_per_s: host link bandwidth per GPU per direction, bytes/s.
    """

    capacity_blocks: int
    bytes_per_block: int
    host_link_bytes_per_s: float

    def transfer_s(self, blocks: int) -> float:
        """Time to copy ``blocks`` blocks one way between GPU and host memory."""
        return blocks * self.bytes_per_block / self.host_link_bytes_per_s


@dataclass(slots=True)
class Batch:
    """One iteration: requests prefilled (with the tokens each computes now) and requests decoding."""

    prefill: list[Request]
    prefill_tokens: list[int]
    decode: list[Request]
    shape: BatchShape
    preempted: bool = False
    swap_s: float = 0.0  # host<->device KV swap time charged to this iteration (swap preemption)

    @property
    def is_pure_decode(self) -> bool:
        return not self.prefill


@dataclass(slots=True)
class Completion:
    """What an iteration window produced."""

    finished: list[Request] = field(default_factory=list)
    handed_off: list[Request] = field(default_factory=list)


class BatchScheduler:
    """Shared machinery; use one of the role types.

    Args:
        kv: the instance's KV block manager (its prefix cache, if any, is used on admission).
        limits: batch limits and chunking.
        swap: host swap space for swap preemption; None preempts by recompute.
    """

    def __init__(self, kv: KVBlockManager, limits: SchedulerLimits, swap: SwapSpace | None = None):
        self.kv = kv
        self.limits = limits
        self.swap = swap
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.swapped: deque[Request] = deque()
        self.swap_used_blocks = 0
        self.load_tokens = 0  # prefill tokens still to process + output tokens still to generate
        self.preemptions = 0
        self.swaps = 0
        self.swapped_blocks = 0  # blocks swapped out over the run (each is swapped in once)
        self.prefix_hit_tokens = 0
        self.prefill_tokens_computed = 0
        # request id -> time of every token it was given (first token included), when a caller asks
        # for per-token times (``simulate(..., token_times=...)``); None keeps the hot path free of it
        self.token_times: dict[int, list[float]] | None = None
        self._budget = 0
        self._swap_blocks = 0  # blocks swapped (out + in) in the batch being formed
        # ids of requests in batches still in flight (pipeline parallelism: the engine adds a batch's
        # requests when it starts and removes them before ``complete``); always empty without PP
        self.in_flight: set[int] = set()
        self._reduced_limits: dict[int, tuple[SchedulerLimits, SchedulerLimits]] = {}  # seats -> (limits, with those seats)

    # -- intake ------------------------------------------------------------------------------------
    def enqueue(self, req: Request) -> None:
        """A new request routed to this instance, waiting for prefill."""
        req.phase = Phase.QUEUED
        self.waiting.append(req)
        self.load_tokens += self._load_of_new(req)

    def _load_of_new(self, req: Request) -> int:
        return req.prompt_tokens + req.output_tokens

    def cached_prefix_tokens(self, req: Request) -> int:
        """Prompt tokens of ``req`` already in this instance's prefix cache (0 without prefix caching)."""
        kv = self.kv
        if not kv.unit_blocks or req.hash_ids is None:
            return 0
        return kv.cached_units(req.hash_ids, req.prompt_tokens) * kv.unit_tokens

    @property
    def has_work(self) -> bool:
        """Requests waiting for prefill, running or swapped out (in-flight KV transfers are not work yet)."""
        return bool(self.waiting or self.running or self.swapped)

    # -- forming a batch ---------------------------------------------------------------------------
    def next_batch(self) -> Batch | None:
        if self.in_flight:
            return self._next_batch_beside_in_flight()
        self._swap_blocks = 0
        if self.limits.chunked_prefill:
            prefill, tokens, squares, decode, preempted = self._schedule_running_chunked()
        else:
            decode, preempted = self._grow_running()
            prefill, tokens, squares = [], [], 0
            self._budget = self.limits.max_num_batched_tokens - len(decode)
        if not preempted:
            if self.swapped:
                decode.extend(self._swap_in(len(prefill) + len(decode)))
            if not self.swapped:
                p, t, sq = self._admit_waiting(len(prefill) + len(decode))
                prefill.extend(p)
                tokens.extend(t)
                squares += sq
        if not decode and not prefill:
            return None
        shape = BatchShape(
            prefill_tokens=sum(tokens),
            prefill_seqs=len(prefill),
            decode_seqs=len(decode),
            decode_context_tokens=sum(r.kv_tokens for r in decode) + len(decode),
            prefill_square_tokens=squares,
        )
        swap_s = self.swap.transfer_s(self._swap_blocks) if self._swap_blocks else 0.0
        return Batch(prefill, tokens, decode, shape, preempted, swap_s)

    def _next_batch_beside_in_flight(self) -> Batch | None:
        """``next_batch`` while other batches are in flight (PP): their requests are hidden from the
        running list, so they are neither scheduled again nor preempted (an in-flight batch uses their
        KV), and they hold seats of ``max_num_seqs``. vLLM v1 does the same: a running request whose
        scheduled tokens have not come back has ``num_new_tokens == 0`` and is skipped, and its seat cap
        counts every running request (``vllm/v1/core/sched/scheduler.py``, ``schedule``)."""
        busy = self.in_flight
        everyone = self.running
        limits = self.limits
        self.running = [r for r in everyone if r.id not in busy]
        seats = max(limits.max_num_seqs - len(busy), 0)
        reduced = self._reduced_limits.get(seats)
        if reduced is None or reduced[0] is not limits:
            reduced = self._reduced_limits[seats] = (limits, replace(limits, max_num_seqs=seats))
        self.limits = reduced[1]
        self.in_flight = set()
        try:
            batch = self.next_batch()
        finally:
            kept = self.running
            self.running, self.limits, self.in_flight = everyone, limits, busy
        ids = {r.id for r in kept}
        old = {r.id for r in everyone}
        self.running = [r for r in everyone if r.id in busy or r.id in ids] + [r for r in kept if r.id not in old]
        return batch

    def _grow_running(self) -> tuple[list[Request], bool]:
        """Without chunking: reserve a KV slot for every running request's next token, preempting from
        the tail."""
        kv = self.kv
        running = self.running
        preempted = False
        i = 0
        while i < len(running):
            req = running[i]
            if not kv.can_grow(req.id, req.kv_tokens + 1):
                preempted = True
                if not self._make_room(req, req.kv_tokens + 1):
                    break  # req itself was preempted (the last one left)
            kv.ensure(req.id, req.kv_tokens + 1)
            i += 1
        return list(running), preempted

    def _schedule_running_chunked(self) -> tuple[list[Request], list[int], int, list[Request], bool]:
        """With chunking: running requests in order, a decode token or the next prefill chunk each,
        while budget remains; preempts from the tail when KV runs out."""
        kv = self.kv
        running = self.running
        budget = self.limits.max_num_batched_tokens
        cap = self.limits.long_prefill_token_threshold
        prefill: list[Request] = []
        tokens: list[int] = []
        decode: list[Request] = []
        squares = 0
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            if req.phase is Phase.PREFILL:
                n = min(req.prefill_target - req.kv_tokens, budget)
                if cap:
                    n = min(n, cap)
            else:
                n = 1
            if not kv.can_grow(req.id, req.kv_tokens + n):
                preempted = True
                if not self._make_room(req, req.kv_tokens + n):
                    break  # req itself was preempted (the last one left)
            kv.ensure(req.id, req.kv_tokens + n)
            if req.phase is Phase.PREFILL:
                prefill.append(req)
                tokens.append(n)
                squares += n * (n + 2 * req.kv_tokens)
            else:
                decode.append(req)
            budget -= n
            i += 1
        self._budget = budget
        return prefill, tokens, squares, decode, preempted

    def _make_room(self, req: Request, tokens: int) -> bool:
        """Preempt running requests from the tail (most recently admitted first) until ``req`` can grow
        to ``tokens`` tokens; False when ``req`` itself had to go."""
        running, kv = self.running, self.kv
        while not kv.can_grow(req.id, tokens):
            victim = running.pop()
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Request) -> None:
        """Preempt a running request: swap it out when possible, else recompute it."""
        req.preemptions += 1
        self.preemptions += 1
        swap = self.swap
        if swap is not None and req.phase is Phase.DECODE:
            blocks = self.kv.blocks_of(req.id)
            if self.swap_used_blocks + blocks <= swap.capacity_blocks:
                self.kv.free(req.id)
                self.swap_used_blocks += blocks
                self.swapped_blocks += blocks
                self._swap_blocks += blocks
                req.swaps += 1
                self.swaps += 1
                req.phase = Phase.SWAPPED
                self.swapped.append(req)
                return
        # recompute: redo what was computed (a decoding request re-prefills prompt + generated tokens)
        self.load_tokens += req.kv_tokens + (1 if req.phase is Phase.DECODE else 0)
        self.kv.free(req.id)
        req.kv_tokens = 0
        req.phase = Phase.QUEUED
        self.waiting.appendleft(req)

    def _swap_in(self, scheduled: int) -> list[Request]:
        """Bring swapped-out requests back, FCFS, while blocks (keeping the watermark), seats and budget
        allow; they decode in this iteration."""
        out: list[Request] = []
        swapped, kv = self.swapped, self.kv
        seats = self.limits.max_num_seqs - scheduled
        while swapped and seats > 0 and self._budget > 0:
            req = swapped[0]
            if not kv.can_admit(req.id, req.kv_tokens + 1):
                break
            swapped.popleft()
            blocks = blocks_for(req.kv_tokens, kv.block_size)
            self.swap_used_blocks -= blocks
            self._swap_blocks += blocks
            kv.ensure(req.id, req.kv_tokens + 1)
            req.phase = Phase.DECODE
            self.running.append(req)
            out.append(req)
            seats -= 1
            self._budget -= 1
        return out

    def _admit_waiting(self, scheduled: int) -> tuple[list[Request], list[int], int]:
        budget = self._budget
        seats = self.limits.max_num_seqs - scheduled
        chunked = self.limits.chunked_prefill
        cap = self.limits.long_prefill_token_threshold
        admitted: list[Request] = []
        tokens: list[int] = []
        squares = 0
        waiting, kv = self.waiting, self.kv
        caching = kv.unit_blocks > 0
        while waiting and seats > 0 and budget > 0:
            req = waiting[0]
            target = req.prefill_tokens_needed
            hash_ids = req.hash_ids if caching else None
            units = kv.cached_units(hash_ids, req.prompt_tokens) if hash_ids else 0
            cached = units * kv.unit_tokens
            n = target - cached
            if chunked:
                n = min(n, budget, cap) if cap else min(n, budget)
            elif n > budget:
                break
            if units:
                if not kv.can_admit_prefix(req.id, cached + n, hash_ids, units):
                    break
                kv.acquire_prefix(req.id, hash_ids, units)
            elif not kv.can_admit(req.id, n):
                break
            kv.ensure(req.id, cached + n)
            waiting.popleft()
            if req.prefill_target == 0:  # first admission
                req.prefix_hit_tokens = cached
                self.prefix_hit_tokens += cached
            req.prefill_target = target
            req.kv_tokens = cached
            self.load_tokens -= cached
            req.phase = Phase.PREFILL
            req.in_running = n < target - cached  # a partial prefill continues from the running list
            if req.in_running:
                self.running.append(req)
            admitted.append(req)
            tokens.append(n)
            squares += n * (n + 2 * cached)
            budget -= n
            seats -= 1
        self._budget = budget
        return admitted, tokens, squares

    # -- windows -----------------------------------------------------------------------------------
    def decode_horizon(self, batch: Batch, max_iterations: int) -> int:
        """How many identical pure-decode iterations can run from now (>= 1)."""
        if batch.prefill or batch.preempted or batch.swap_s or max_iterations <= 1:
            return 1
        decode = batch.decode
        k = min(max_iterations, min(r.output_tokens - r.generated for r in decode))
        if k <= 1:
            return 1
        kv = self.kv
        free = kv.available_blocks
        bs = kv.block_size
        held = kv.held if not kv.refs else {r.id: kv.blocks_of(r.id) for r in decode}
        # Iteration j (0-based) needs room for kv_tokens + j + 1 tokens; iteration 0 is allocated.
        def extra(n: int) -> int:
            return sum(max(-(-(r.kv_tokens + n) // bs) - held[r.id], 0) for r in decode)

        if len(decode) * (-(-k // bs) + 1) <= free or extra(k) <= free:
            return k
        lo, hi = 1, k  # extra(lo) <= free (iteration 0 fits), extra(hi) > free
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if extra(mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    # -- applying an outcome -----------------------------------------------------------------------
    def complete(self, batch: Batch, iterations: int, end_times_s: list[float], max_gap_s: float) -> Completion:
        """Apply ``iterations`` iterations of ``batch`` that ended at ``end_times_s``.

        Args:
            batch: the batch ``next_batch`` returned.
            iterations: iterations run (1 unless the batch is pure decode).
            end_times_s: end time of each iteration, seconds (length >= iterations).
            max_gap_s: longest iteration among iterations 2..n of the window (0 when n == 1), for ITL.
        """
        out = Completion()
        t_first = end_times_s[0]
        t_last = end_times_s[iterations - 1]
        kv = self.kv
        if self.token_times is not None:
            log = self.token_times
            ends = end_times_s[:iterations]
            for req in batch.decode:
                log.setdefault(req.id, []).extend(ends)
            for req, n in zip(batch.prefill, batch.prefill_tokens):
                if req.kv_tokens + n >= req.prefill_target:
                    log.setdefault(req.id, []).append(t_first)
        for req in batch.decode:
            req.generated += iterations
            req.kv_tokens += iterations
            if iterations > 1:
                kv.ensure(req.id, req.kv_tokens)
            req.record_token(t_first)
            if iterations > 1:
                if not (max_gap_s <= req.itl_max_s):
                    req.itl_max_s = max_gap_s
                req.last_token_s = t_last
        self.load_tokens -= iterations * len(batch.decode)
        leaving = False  # a request that was in the running list leaves it
        caching = kv.unit_blocks > 0
        for req, n in zip(batch.prefill, batch.prefill_tokens):
            req.kv_tokens += n
            self.load_tokens -= n
            self.prefill_tokens_computed += n
            if caching and req.hash_ids is not None:
                kv.publish(req.id, req.hash_ids, req.kv_tokens, req.prompt_tokens)
            if req.kv_tokens < req.prefill_target:
                continue  # a chunk; the prefill goes on next iteration
            req.generated += 1
            if req.first_token_s != req.first_token_s:
                req.first_token_s = t_first
            req.record_token(t_first)
            self.load_tokens -= 1
            leaving |= self._after_prefill(req, out, t_first)
        if leaving or any(r.generated >= r.output_tokens for r in batch.decode):
            keep = []
            for req in self.running:
                phase = req.phase
                if phase is Phase.DECODE:
                    if req.generated >= req.output_tokens:
                        self._finish(req, t_last, out)
                    else:
                        keep.append(req)
                elif phase is Phase.PREFILL:
                    keep.append(req)
            self.running = keep
        return out

    def _after_prefill(self, req: Request, out: Completion, t_s: float) -> bool:
        """A request's prefill is done (first token emitted); returns whether it leaves the running list
        (requests whose prefill was chunked are in it already; whole prefills join it here)."""
        if req.generated >= req.output_tokens:
            self._finish(req, t_s, out)
            return req.in_running
        req.phase = Phase.DECODE
        if not req.in_running:
            self.running.append(req)
        return False

    def _finish(self, req: Request, t_s: float, out: Completion) -> None:
        req.phase = Phase.FINISHED
        req.finish_s = t_s
        self.kv.free(req.id)
        out.finished.append(req)


class ColocatedScheduler(BatchScheduler):
    """Prefill and decode on the same instance, mixed in one iteration."""


class PrefillOnlyScheduler(BatchScheduler):
    """Prefill instance of a disaggregated deployment.

    After its prefill a request (first token emitted) is handed off for KV transfer; its blocks stay
    held until ``release`` is called when the transfer ends. Requests with one output token finish
    here.
    """

    def _load_of_new(self, req: Request) -> int:
        return req.prompt_tokens + 1

    def _after_prefill(self, req: Request, out: Completion, t_s: float) -> bool:
        if req.generated >= req.output_tokens:
            self._finish(req, t_s, out)
        else:
            req.phase = Phase.TRANSFER
            out.handed_off.append(req)
        return req.in_running

    def keep(self, req: Request) -> None:
        """Decode ``req`` here instead of handing it off (Splitwise's mixed pool): its blocks stay, it
        joins the running batch."""
        req.phase = Phase.DECODE
        self.running.append(req)
        self.load_tokens += req.output_tokens - req.generated

    def release(self, req: Request) -> None:
        """The KV of ``req`` has left this instance: free its blocks."""
        self.kv.free(req.id)


class DecodeOnlyScheduler(BatchScheduler):
    """Decode instance of a disaggregated deployment.

    Incoming requests are ``offer``-ed after their prefill; ``reserve_pending`` reserves their blocks
    first come, first served (keeping the watermark) before the KV transfer starts, and ``accept``
    adds a transferred request to the running batch. A request preempted here re-prefills locally.
    """

    def __init__(self, kv: KVBlockManager, limits: SchedulerLimits, swap: SwapSpace | None = None):
        super().__init__(kv, limits, swap)
        self.pending: deque[Request] = deque()
        self.in_transfer = 0

    def offer(self, req: Request) -> None:
        self.pending.append(req)
        self.load_tokens += req.output_tokens - req.generated

    def reserve_pending(self) -> list[Request]:
        """Reserve KV blocks for waiting transfers, FCFS; returns those whose transfer may start."""
        out = []
        pending, kv = self.pending, self.kv
        while pending and len(self.running) + self.in_transfer + len(self.waiting) < self.limits.max_num_seqs:
            req = pending[0]
            if not kv.can_admit(req.id, req.kv_tokens):
                break
            kv.ensure(req.id, req.kv_tokens)
            pending.popleft()
            self.in_transfer += 1
            out.append(req)
        return out

    def accept(self, req: Request) -> None:
        """The KV of ``req`` has arrived: it decodes from the next iteration on."""
        self.in_transfer -= 1
        req.phase = Phase.DECODE
        self.running.append(req)
