"""One instance (a model replica on TP GPUs of one type) as a SimPy process.

The engine loop reads like a real engine: ask the batch scheduler for the next batch, spend the
iteration time the latency model gives, apply the outcome. Pure-decode batches run as a *window* of
identical iterations scheduled with one alarm event (``Scheduler.decode_horizon``); a request that
arrives during the window cuts it at the end of the iteration in progress, exactly where an engine
stepping one iteration at a time would first see it. Iteration end times are accumulated in the same
order in both modes, so results are bit-identical to stepping every iteration (``max_window=1``;
tests/test_sim.py checks it).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Callable

import simpy

from pdsim.core.request import Request
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
    ):
        self.env = env
        self.name = name
        self.index = index
        self.scheduler = scheduler
        self.latency = latency
        self.max_window = max_window
        self.on_completion = on_completion
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
        env.process(self._run())

    # -- outside world -----------------------------------------------------------------------------
    def enqueue(self, req: Request) -> None:
        """A new request for this instance."""
        self.scheduler.enqueue(req)
        self.poke()

    def poke(self) -> None:
        """Something changed for the scheduler: let it look at the next iteration boundary."""
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
        self.scheduler.offer(req)  # type: ignore[attr-defined]  # a DecodeOnlyScheduler, by construction
        self.poke()

    def accept(self, req: Request) -> None:
        """The request's KV has arrived."""
        self.scheduler.accept(req)  # type: ignore[attr-defined]
        self.poke()

    def _before_schedule(self) -> None:
        for req in self.scheduler.reserve_pending():  # type: ignore[attr-defined]
            self._start_transfer(self, req)
