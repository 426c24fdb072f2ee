"""Timing one op: warm-up, adaptive repeat count, median and spread, and host-contention checks.

Method (the practice of triton's ``do_bench``, nccl-tests and vLLM's benchmark scripts):

1. Warm-up: untimed calls, so that lazy initialisation, the caching allocator, the CPU thread pool and
   library autotuning (cuBLAS/hipBLASLt heuristics) are out of the way: one call, plus
   ``warmup_calls - 1`` more when it took under 50 ms. The last warm-up calls' median (or the single
   call's time) is the estimate that sets the repeat count.
2. Repeats: ``TimingPolicy.repeats_for(estimate)`` timed calls (repeat until the calls add up to
   ``min_total_s``, between ``min_repeats`` and ``max_repeats``).
3. Each call is timed on its own:

   - GPU (CUDA and ROCm/HIP): a pair of ``torch.cuda.Event(enable_timing=True)`` recorded on the
     current stream around the call, all calls enqueued back to back, one ``torch.cuda.synchronize``
     at the end; the device-side time of each call is ``start.elapsed_time(end)``.
   - CPU: ``time.perf_counter_ns`` around the call (torch CPU ops are synchronous).

4. Result: the median as ``latency_s``, the 10th and 90th percentiles (linear interpolation, as
   ``numpy.percentile``) as ``latency_p10_s`` / ``latency_p90_s``, and the number of timed calls.

Cache state: an optional ``flush`` callable runs before every timed call, outside the timed region.
``profile_tools.ops`` passes one for GEMMs and attention (the weights and KV cache of one layer are
evicted by the other layers' before they are used again in a real forward pass) and none for
elementwise ops, copies and collectives (their inputs are the previous op's fresh outputs).

Host contention (CPU timings only): a shared machine's other processes steal cores, and a torch op
running on an OpenMP team stalls for a whole scheduler slice when one of its threads is preempted
(we saw 16 ms instead of 0.3 ms on a 2-core VM). ``HostLoadMeter`` reads ``/proc/stat`` and the
process's own CPU time around each attempt; when other processes used more than
``CONTENDED_FRACTION`` of the machine, the point is measured again after a pause (0.5 s, doubling up
to ``MAX_PAUSE_S``; ``max_attempts`` in all, within the run's ``contention_wait_budget_s``), and the
least disturbed attempt is kept. The other processes' share of the kept attempt is stored in the
``other_cpu_util`` column.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from profile_tools.plan import TimingPolicy

CONTENDED_FRACTION = 0.10  # other processes' share of all cores above which an attempt is redone
MAX_PAUSE_S = 10.0  # longest pause before re-measuring a contended point (pauses double from 0.5 s)


@dataclass(frozen=True, slots=True)
class Measurement:
    """Latency statistics of one point, in seconds.

    Attributes:
        latency_s: median of the timed calls.
        latency_p10_s, latency_p90_s: 10th and 90th percentiles.
        repeats: timed calls.
        other_cpu_util: share of all host cores other processes used while this point was timed
            (None where unknown: GPU timings, hosts without ``/proc/stat``, or an interval too short
            for jiffy resolution that showed no clear contention).
    """

    latency_s: float
    latency_p10_s: float
    latency_p90_s: float
    repeats: int
    other_cpu_util: float | None = None

    def row(self) -> dict:
        out = {"latency_s": self.latency_s, "latency_p10_s": self.latency_p10_s,
               "latency_p90_s": self.latency_p90_s, "repeats": self.repeats}
        if self.other_cpu_util is not None:
            out["other_cpu_util"] = round(self.other_cpu_util, 4)
        return out  # a table mixing both gets NaN where unknown


def summarize(times_s: list[float], other_cpu_util: float | None = None) -> Measurement:
    """Median, p10, p90 and count of per-call times (seconds)."""
    arr = np.asarray(times_s, dtype=float)
    p10, p50, p90 = np.percentile(arr, [10, 50, 90])
    return Measurement(float(p50), float(p10), float(p90), len(arr), other_cpu_util)


class HostLoadMeter:
    """CPU time used by other processes over an interval, from ``/proc/stat`` (Linux only).

    ``other share = (busy jiffies of all CPUs / USER_HZ - this process's CPU time) / (wall x CPUs)``,
    where busy = user + nice + system + irq + softirq + steal (``man 5 proc``). Resolution is one
    jiffy (10 ms at USER_HZ = 100) per CPU, so short intervals read noisy; ``contended`` allows for it.
    """

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/stat")
        self.hz = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.cpus = os.cpu_count() or 1

    def _busy_s(self) -> float:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        vals = [int(v) for v in parts[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / self.hz

    def start(self) -> tuple[float, float, float] | None:
        if not self.available:
            return None
        return (time.perf_counter(), self._busy_s(), time.process_time())

    def other_share(self, started: tuple[float, float, float] | None) -> tuple[float | None, float]:
        """(other processes' share of all cores since ``started``, the interval's wall seconds)."""
        if started is None:
            return None, 0.0
        wall = time.perf_counter() - started[0]
        busy = self._busy_s() - started[1]
        own = time.process_time() - started[2]
        if wall <= 0:
            return 0.0, wall
        return min(1.0, max(0.0, (busy - own) / (wall * self.cpus))), wall

    def _noise(self, wall_s: float) -> float:
        return 2.0 / self.hz / max(wall_s * self.cpus, 1e-9)  # two jiffies of rounding, as a share

    def resolves(self, wall_s: float) -> bool:
        """True when an interval this long can tell ``CONTENDED_FRACTION`` from rounding noise."""
        return self._noise(wall_s) <= CONTENDED_FRACTION

    def contended(self, share: float | None, wall_s: float) -> bool:
        """Other processes clearly used more than ``CONTENDED_FRACTION`` of the cores."""
        if share is None:
            return False
        return share > max(CONTENDED_FRACTION, self._noise(wall_s))


class HostClock:
    """Times calls with ``time.perf_counter_ns`` (CPU ops, and host-side waits)."""

    kind = "host"

    def time_calls(self, fn: Callable[[], object], n: int, flush: Callable[[], object] | None) -> list[float]:
        out = []
        for _ in range(n):
            if flush is not None:
                flush()
            t0 = time.perf_counter_ns()
            fn()
            out.append((time.perf_counter_ns() - t0) * 1e-9)
        return out


class CudaEventClock:
    """Times calls with CUDA/HIP events on the current stream of ``device`` (device-side time)."""

    kind = "cuda_events"

    def __init__(self, torch_module, device) -> None:
        self.torch = torch_module
        self.device = device

    def time_calls(self, fn: Callable[[], object], n: int, flush: Callable[[], object] | None) -> list[float]:
        torch = self.torch
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda.synchronize(self.device)
        for i in range(n):
            if flush is not None:
                flush()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]  # elapsed_time is in ms


class Timer:
    """Measures points under one ``TimingPolicy`` with one clock, re-measuring contended host points.

    Attributes:
        remeasured: points measured more than once because of host contention.
        still_contended: points whose best attempt was still contended.
    """

    def __init__(self, clock, policy: TimingPolicy, sleep: Callable[[float], None] = time.sleep,
                 meter: HostLoadMeter | None = None) -> None:
        self.clock = clock
        self.policy = policy
        self.meter = meter if meter is not None else (HostLoadMeter() if clock.kind == "host" else None)
        self.wait_left_s = policy.contention_wait_budget_s
        self._sleep = sleep
        self.remeasured = 0
        self.still_contended = 0

    def _attempt(self, fn, flush) -> tuple[Measurement, bool]:
        started = self.meter.start() if self.meter else None
        first = self.clock.time_calls(fn, 1, flush)[0]  # warm-up call, also the first estimate
        estimate = first
        if self.policy.warmup_calls > 1 and first < 0.05:
            warm = self.clock.time_calls(fn, self.policy.warmup_calls - 1, flush)
            estimate = float(np.median(warm))
        times = self.clock.time_calls(fn, self.policy.repeats_for(estimate), flush)
        if self.meter is None:
            return summarize(times), False
        share, wall = self.meter.other_share(started)
        contended = self.meter.contended(share, wall)
        if not contended and not self.meter.resolves(wall):
            share = None  # too short to tell (only a clear contention is reported)
        return summarize(times, share), contended

    def measure(self, fn: Callable[[], object], flush: Callable[[], object] | None = None) -> Measurement:
        """Time ``fn`` (see the module docstring); returns the least contended attempt."""
        best, contended = self._attempt(fn, flush)
        attempts = 1
        while contended and attempts < self.policy.max_attempts and self.wait_left_s > 0:
            pause = min(0.5 * 2 ** (attempts - 1), MAX_PAUSE_S, self.wait_left_s)
            self._sleep(pause)
            self.wait_left_s -= pause
            if attempts == 1:
                self.remeasured += 1
            again, again_contended = self._attempt(fn, flush)
            attempts += 1
            if (again_contended, again.other_cpu_util or 0.0, again.latency_s) < (
                contended, best.other_cpu_util or 0.0, best.latency_s
            ):
                best, contended = again, again_contended
        if contended:
            self.still_contended += 1
        return best
