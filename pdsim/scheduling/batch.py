"""Continuous batching in the vLLM style, as pure two-phase objects.

``next_batch()`` forms the next iteration from a token budget (``max_num_batched_tokens``), a cap on
running sequences (``max_num_seqs``) and the KV blocks (like vLLM's ``schedule()``), and
``complete(batch, iterations, end_times_s)`` applies its outcome (like ``update_from_output()``).

Policy (vLLM v1 scheduler without chunked prefill, as documented in vLLM's ``v1/core/sched``):

1. Running requests decode first, in admission order. Each needs a KV slot for the token it feeds;
   when none is free, the most recently admitted running request is preempted by recompute (its
   blocks are freed, it returns to the front of the waiting queue and later re-prefills its prompt
   plus the tokens it had generated). Preemptions are counted per request.
2. Waiting requests are admitted first come, first served, while the token budget (minus one token
   per decoding request), the sequence cap and the KV cache (keeping a watermark of free blocks) allow
   a whole prompt. The head of the queue blocks the rest (no skipping). Nothing is admitted in an
   iteration that preempted.

Roles are types: ``ColocatedScheduler`` (prefill then decode on the same instance),
``PrefillOnlyScheduler`` (hands each request off after its prefill; its KV blocks stay held until the
transfer ends) and ``DecodeOnlyScheduler`` (reserves blocks for incoming KV before the transfer,
decodes, and re-prefills locally what it preempts).

Multi-iteration windows: when the next iteration is pure decode, ``decode_horizon`` says how many
identical iterations follow (until the first request finishes, the KV cache cannot grow, or a limit),
so the simulator can schedule one event for the whole window. It is exact: every admission check
that failed at the window's start keeps failing inside it (free blocks only shrink, the sequence
count and budget are constant), and the window is one iteration long whenever the step preempted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pdsim.core.kv import KVBlockManager
from pdsim.core.request import Phase, Request
from pdsim.latency.base import BatchShape


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """Batch limits of one instance.

    Attributes:
        max_num_batched_tokens: tokens one iteration may process (prompt tokens + one per decode).
        max_num_seqs: requests one iteration may hold.
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256


@dataclass(slots=True)
class Batch:
    """One iteration: requests prefilled (with their token counts) and requests decoding."""

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
    """Shared machinery; use one of the role types."""

    def __init__(self, kv: KVBlockManager, limits: SchedulerLimits):
        self.kv = kv
        self.limits = limits
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.load_tokens = 0  # prefill tokens still to process + output tokens still to generate
        self.preemptions = 0
        # request id -> time of every token it was given (first token included), when a caller asks
        # for per-token times (``simulate(..., token_times=...)``); None keeps the hot path free of it
        self.token_times: dict[int, list[float]] | None = None

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
        return 0

    @property
    def has_work(self) -> bool:
        """Requests waiting for prefill or running (reserved, in-flight KV transfers are not work yet)."""
        return bool(self.waiting or self.running)

    # -- forming a batch ---------------------------------------------------------------------------
    def next_batch(self) -> Batch | None:
        decode, preempted = self._grow_running()
        prefill, tokens = ([], []) if preempted else self._admit_waiting(len(decode))
        if not decode and not prefill:
            return None
        shape = BatchShape(
            prefill_tokens=sum(tokens),
            prefill_seqs=len(prefill),
            decode_seqs=len(decode),
            decode_context_tokens=sum(r.kv_tokens for r in decode) + len(decode),
            prefill_square_tokens=sum(t * t for t in tokens),
        )
        return Batch(prefill, tokens, decode, shape, preempted)

    def _grow_running(self) -> tuple[list[Request], bool]:
        """Reserve a KV slot for every running request's next token, preempting from the tail."""
        kv = self.kv
        running = self.running
        preempted = False
        i = 0
        while i < len(running):
            req = running[i]
            while not kv.can_grow(req.id, req.kv_tokens + 1):
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                kv.ensure(req.id, req.kv_tokens + 1)
                i += 1
        return list(running), preempted

    def _preempt(self, req: Request) -> None:
        self.kv.free(req.id)
        req.kv_tokens = 0
        req.preemptions += 1
        req.phase = Phase.QUEUED
        self.preemptions += 1
        self.waiting.appendleft(req)
        self.load_tokens += req.prefill_tokens_needed

    def _admit_waiting(self, num_decode: int) -> tuple[list[Request], list[int]]:
        budget = self.limits.max_num_batched_tokens - num_decode
        seats = self.limits.max_num_seqs - num_decode
        admitted: list[Request] = []
        tokens: list[int] = []
        waiting, kv = self.waiting, self.kv
        while waiting and seats > 0:
            req = waiting[0]
            n = req.prefill_tokens_needed
            if n > budget or not kv.can_admit(req.id, n):
                break
            kv.ensure(req.id, n)
            waiting.popleft()
            req.phase = Phase.PREFILL
            admitted.append(req)
            tokens.append(n)
            budget -= n
            seats -= 1
        return admitted, tokens

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
        free = kv.free_blocks
        bs = kv.block_size
        held = kv.held
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
            for req in batch.prefill:
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
        for req, n in zip(batch.prefill, batch.prefill_tokens):
            req.kv_tokens = n
            req.generated += 1
            if req.first_token_s != req.first_token_s:
                req.first_token_s = t_first
            req.record_token(t_first)
            self.load_tokens -= n + 1
            self._after_prefill(req, out, t_first)
        if any(r.generated >= r.output_tokens for r in batch.decode):
            keep = []
            for req in self.running:
                if req.generated >= req.output_tokens:
                    self._finish(req, t_last, out)
                else:
                    keep.append(req)
            self.running = keep
        return out

    def _after_prefill(self, req: Request, out: Completion, t_s: float) -> None:
        if req.generated >= req.output_tokens:
            self._finish(req, t_s, out)
        else:
            req.phase = Phase.DECODE
            self.running.append(req)

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

    def _after_prefill(self, req: Request, out: Completion, t_s: float) -> None:
        if req.generated >= req.output_tokens:
            self._finish(req, t_s, out)
        else:
            req.phase = Phase.TRANSFER
            out.handed_off.append(req)

    def release(self, req: Request) -> None:
        """The KV of ``req`` has left this instance: free its blocks."""
        self.kv.free(req.id)


class DecodeOnlyScheduler(BatchScheduler):
    """Decode instance of a disaggregated deployment.

    Incoming requests are ``offer``-ed after their prefill; ``reserve_pending`` reserves their blocks
    first come, first served (keeping the watermark) before the KV transfer starts, and ``accept``
    adds a transferred request to the running batch. A request preempted here re-prefills locally.
    """

    def __init__(self, kv: KVBlockManager, limits: SchedulerLimits):
        super().__init__(kv, limits)
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
