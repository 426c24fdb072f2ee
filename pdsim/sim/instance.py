"""One instance (a model replica on TP GPUs of one type) as a SimPy process.

The engine loop reads like a real engine: ask the batch scheduler for the next batch, spend the
iteration time the latency model gives, apply the outcome. Pure-decode batches run as a *window* of
identical iterations scheduled with one alarm event (``Scheduler.decode_horizon``); a request that
arrives during the window cuts it at the end of the iteration in progress, exactly where an engine
stepping one iteration at a time would first see it. Iteration end times are accumulated in the same
order in both modes, so results are bit-identical to stepping every iteration (``max_window=1``;
tests/test_sim.py checks it).

With pipeline parallelism (``stages`` > 1) the loop keeps up to ``stages`` batches in flight, one
per stage, like vLLM v1's batch queue (``max_concurrent_batches`` = PP size, ``step_with_batch_queue``
in ``vllm/v1/engine/core.py``): whenever fewer are in flight it forms the next batch from requests not
already in one (``BatchScheduler.in_flight``), and the batch goes through the stages in order. Stage
``s`` of batch ``k`` starts when stage ``s-1`` of batch ``k`` has ended (its time includes the hand-off)
and stage ``s`` of batch ``k-1`` is free (a flow shop; batches never overtake), so a batch takes the sum
of its stage times and a full pipeline completes one batch per slowest stage time. The whole schedule
of a batch is known when it is formed (earlier batches fixed every stage's free time); the loop steps
one batch at a time (no decode windows). See docs/pipeline.md.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from typing import Callable

import simpy

from pdsim.core.request import Request
from pdsim.errors import InvariantViolation
from pdsim.latency.base import LatencyModel
from pdsim.scheduling.batch import Batch, BatchScheduler, Completion


class Instance:
    """The engine loop of one instance.

    Args:
        env: the SimPy environment.
        name: e.g. ``prefill/3``; ``index`` is its position in its pool.
        scheduler: the batch scheduler (its type fixes the role).
        latency: the instance's latency model.
        max_window: most iterations one pure-decode window may cover (1 = step every iteration).
        on_completion: called with (instance, completion, time_s) after every window.
        stages: pipeline-parallel stages (1 = no PP); with more, ``latency.stage_times_s`` gives that
            many stage times and up to ``stages`` batches are in flight.
    """

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        index: int,
        scheduler: BatchScheduler,
        latency: LatencyModel,
        max_window: int,
        on_completion: Callable[["Instance", Completion, float], None],
        stages: int = 1,
    ):
        self.env = env
        self.name = name
        self.index = index
        self.scheduler = scheduler
        self.latency = latency
        self.max_window = max_window
        self.on_completion = self._counting(on_completion)
        self.held_requests = 0  # requests given to this instance (enqueue, offer) and not yet gone
        self.clock_s = 0.0
        self.busy_s = 0.0
        self.iterations = 0
        self.windows = 0
        self._wake: simpy.Event | None = None
        self._idle = True
        self._bounds: list[float] = []
        self._target = 0
        self._gen = 0
        self._window_decode = 0
        self._window_batch: Batch | None = None  # the batch of the window in flight
        if stages < 1:
            raise ValueError(f"{name}: stages must be >= 1, got {stages}")
        self.stages = stages
        self.stage_busy_s = [0.0] * stages  # time each stage spent on batches
        self._in_flight: deque[tuple[Batch, float]] = deque()  # (batch, end of its last stage), in order
        self._head_due = False
        env.process(self._run() if stages == 1 else self._run_pipelined())

    # -- outside world -----------------------------------------------------------------------------
    def enqueue(self, req: Request) -> None:
        """A new request for this instance."""
        self.held_requests += 1
        self.scheduler.enqueue(req)
        self.poke()

    def keep_for_decode(self, req: Request) -> None:
        """A prefill instance keeps a request it prefilled and decodes it (Splitwise's mixed pool)."""
        self.held_requests += 1
        self.scheduler.keep(req)  # type: ignore[attr-defined]  # a PrefillOnlyScheduler, by construction
        self.poke()

    def can_hold_whole(self, req: Request) -> bool:
        """Whether this instance has KV room now for all of ``req`` (prompt + output), keeping its watermark."""
        return self.scheduler.kv.can_admit(req.id, req.prompt_tokens + req.output_tokens)

    def poke(self) -> None:
        """Something changed for the scheduler: let it look at the next iteration boundary."""
        if self.stages > 1:  # a pipeline forms a batch whenever fewer than ``stages`` are in flight
            wake = self._wake
            if len(self._in_flight) < self.stages and wake is not None and not wake.triggered:
                wake.succeed()
            return
        if self._idle:
            wake = self._wake
            if wake is not None and not wake.triggered:
                wake.succeed()
            return
        now = self.env.now
        idx = bisect_left(self._bounds, now)
        if idx < self._target:
            self._target = idx
            self._arm(self._bounds[idx])

    def cached_prefix_tokens(self, req: Request) -> int:
        """Prompt tokens of ``req`` whose KV this instance's prefix cache holds (0 without prefix caching)."""
        return self.scheduler.cached_prefix_tokens(req)

    def load_tokens(self, now_s: float) -> int:
        """Outstanding tokens (prefill to do + outputs to generate) as of ``now_s``."""
        load = self.scheduler.load_tokens
        if self._window_decode and not self._idle:
            done = min(bisect_right(self._bounds, now_s), self._target + 1)
            load -= done * self._window_decode
        return load

    def outstanding_requests(self, now_s: float) -> int:
        """Requests held as of ``now_s``, for the ``jsq`` router: given to this instance (``enqueue``,
        ``offer``) and not yet finished or handed off, i.e. waiting, in a batch (prefilling or
        decoding), swapped out, and on a decode instance also waiting for blocks or in KV transfer.

        Inside a multi-iteration decode window the batch's requests can only finish at the window's
        last iteration (``decode_horizon`` stops there), so the count is exact mid-window; once that
        iteration has ended (as in ``load_tokens``, an iteration ending at ``now_s`` counts as done)
        the requests it finishes are no longer counted, even before the engine loop has applied it.
        """
        n = self.held_requests
        if self._window_decode and not self._idle:
            k = len(self._bounds)
            if self._target == k - 1 and self._bounds[-1] <= now_s:
                n -= sum(1 for r in self._window_batch.decode if r.output_tokens - r.generated <= k)
        return n

    def _counting(self, on_completion: Callable[["Instance", Completion, float], None]):
        """``on_completion`` that first forgets the requests a completion finished or handed off."""
        def counted(inst: "Instance", done: Completion, t_s: float) -> None:
            inst.held_requests -= len(done.finished) + len(done.handed_off)
            on_completion(inst, done, t_s)
        return counted

    # -- engine loop -------------------------------------------------------------------------------
    def _arm(self, at_s: float) -> None:
        self._gen += 1
        gen = self._gen
        alarm = self.env.timeout(max(at_s - self.env.now, 0.0))
        alarm.callbacks.append(lambda _ev: self._ring(gen))

    def _ring(self, gen: int) -> None:
        if gen == self._gen and self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _before_schedule(self) -> None:
        """Role hook run at every iteration boundary, before the batch is formed."""

    def _run(self):
        env = self.env
        sched = self.scheduler
        latency = self.latency
        while True:
            self._before_schedule()
            batch = sched.next_batch()
            if batch is None:
                self._idle = True
                self._wake = env.event()
                yield self._wake
                self.clock_s = env.now
                continue
            self._idle = False
            start = self.clock_s
            for req in batch.prefill:
                if req.prefill_start_s != req.prefill_start_s:
                    req.prefill_start_s = start
            bounds, gaps = self._plan(batch, start)
            self._bounds = bounds
            self._target = len(bounds) - 1
            self._window_decode = len(batch.decode) if batch.is_pure_decode else 0
            self._window_batch = batch
            self._wake = env.event()
            self._arm(bounds[-1])
            # Only the alarm of the current target wakes a busy instance (``poke`` re-arms earlier).
            yield self._wake
            n = self._target + 1
            self._window_decode = 0
            end = bounds[n - 1]
            self.busy_s += end - start
            self.clock_s = end
            self.iterations += n
            self.windows += 1
            if batch.is_pure_decode:
                latency.record_decode(len(batch.decode), n)
            completion = sched.complete(batch, n, bounds, gaps[n - 1])
            self._idle = True  # no window in flight while callbacks run
            self.on_completion(self, completion, end)

    # -- pipelined engine loop (stages > 1) ---------------------------------------------------------
    def _arm_head(self, at_s: float) -> None:
        """Alarm at the end of the oldest in-flight batch (supersedes earlier alarms)."""
        self._gen += 1
        gen = self._gen
        alarm = self.env.timeout(max(at_s - self.env.now, 0.0))
        alarm.callbacks.append(lambda _ev: self._ring_head(gen))

    def _ring_head(self, gen: int) -> None:
        if gen == self._gen:
            self._head_due = True
            if self._wake is not None and not self._wake.triggered:
                self._wake.succeed()

    def _run_pipelined(self):
        env = self.env
        sched = self.scheduler
        pp = self.stages
        in_flight = self._in_flight
        busy = sched.in_flight
        stage_free = [0.0] * pp
        stage_busy = self.stage_busy_s
        armed_for: float | None = None
        while True:
            now = env.now
            if self._head_due:  # the oldest batch has left the last stage
                self._head_due = False
                batch, end = in_flight.popleft()
                armed_for = None
                now = end
                for req in batch.prefill:
                    busy.discard(req.id)
                for req in batch.decode:
                    busy.discard(req.id)
                self.iterations += 1
                self.windows += 1
                self.clock_s = end
                self.on_completion(self, sched.complete(batch, 1, [end], 0.0), end)
            while len(in_flight) < pp:
                self._before_schedule()
                batch = sched.next_batch()
                if batch is None:
                    break
                in_flight.append((batch, self._launch(batch, now, stage_free, stage_busy, busy)))
            self._idle = not in_flight
            self._wake = env.event()
            if in_flight and armed_for is None:
                armed_for = in_flight[0][1]
                self._arm_head(armed_for)
            yield self._wake

    def _launch(self, batch: Batch, now_s: float, stage_free: list[float], stage_busy: list[float], busy: set[int]) -> float:
        """Schedule ``batch`` through every stage from ``now_s``; returns the end of its last stage."""
        ids = [r.id for r in batch.prefill] + [r.id for r in batch.decode]
        if not busy.isdisjoint(ids):
            raise InvariantViolation(f"{self.name}: requests {sorted(busy.intersection(ids))} scheduled in two in-flight batches")
        busy.update(ids)
        times = self.latency.stage_times_s(batch.shape)
        if len(times) != self.stages:
            raise InvariantViolation(f"{self.name}: latency model gave {len(times)} stage times for {self.stages} stages")
        swap_s = batch.swap_s  # every stage's GPUs swap their own KV shard before computing
        t = now_s
        for s, dt in enumerate(times):
            start = stage_free[s] if stage_free[s] > t else t
            if s == 0:
                for req in batch.prefill:
                    if req.prefill_start_s != req.prefill_start_s:
                        req.prefill_start_s = start
            t = start + dt + swap_s
            stage_free[s] = t
            stage_busy[s] += t - start
        self.busy_s += sum(times) / self.stages + swap_s
        return t

    def _plan(self, batch: Batch, start_s: float) -> tuple[list[float], list[float]]:
        """End times of the window's iterations and the running max of the gaps between them."""
        if not batch.is_pure_decode:
            return [start_s + self.latency.iteration_s(batch.shape) + batch.swap_s], [0.0]
        k = self.scheduler.decode_horizon(batch, self.max_window)
        b = len(batch.decode)
        ctx = batch.shape.decode_context_tokens
        decode_s = self.latency.decode_s
        t = start_s + decode_s(b, ctx) + batch.swap_s
        bounds = [t]
        gaps = [0.0]
        max_gap = 0.0
        for _ in range(k - 1):
            ctx += b
            prev = t
            t = t + decode_s(b, ctx)
            bounds.append(t)
            gap = t - prev
            if gap > max_gap:
                max_gap = gap
            gaps.append(max_gap)
        return bounds, gaps


class DecodeInstance(Instance):
    """Decode instance of a disaggregated deployment: reserves KV for incoming transfers first."""

    def __init__(self, *args, start_transfer: Callable[["DecodeInstance", Request], None], **kwargs):
        self._start_transfer = start_transfer
        super().__init__(*args, **kwargs)

    def offer(self, req: Request) -> None:
        """A prefilled request routed here; it waits for KV blocks, then for its transfer."""
        self.held_requests += 1
        self.scheduler.offer(req)  # type: ignore[attr-defined]  # a DecodeOnlyScheduler, by construction
        self.poke()

    def has_room_for(self, req: Request) -> bool:
        """Whether this decode instance could reserve ``req``'s KV now (no transfer waiting before it,
        blocks free keeping the watermark, a sequence seat)."""
        sched = self.scheduler
        return (not sched.pending  # type: ignore[attr-defined]
                and sched.kv.can_admit(req.id, req.kv_tokens)
                and len(sched.running) + sched.in_transfer + len(sched.waiting) < sched.limits.max_num_seqs)  # type: ignore[attr-defined]

    def accept(self, req: Request) -> None:
        """The request's KV has arrived."""
        self.scheduler.accept(req)  # type: ignore[attr-defined]
        self.poke()

    def _before_schedule(self) -> None:
        for req in self.scheduler.reserve_pending():  # type: ignore[attr-defined]
            self._start_transfer(self, req)
