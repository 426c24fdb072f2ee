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
     current stream around the call; the device-side time of each call is ``start.elapsed_time(end)``.
     An event pair brackets device work only if the device is still busy with earlier work when the
     host records the start event, so that the call's kernels are already queued when the device
     reaches it. Otherwise the device idles between the start event and the kernel while the host
     launches it, and the pair measures the host's launch rate. How that is ensured:

     - With a ``flush`` (GEMM, attention): the flush runs before each call (zeroing 256 MiB, about
       100 us of device work), which keeps the device busy while the host enqueues start event,
       call and end event. All calls are enqueued back to back, one ``torch.cuda.synchronize`` at
       the end.
     - Without a flush (elementwise ops, copies), a "blocking kernel", the practice of NVIDIA
       nvbench (``nvbench::blocking_kernel`` holds the stream while the events and the kernel are
       enqueued): before the calls the stream gets a ``torch.cuda._sleep(cycles)`` spin kernel,
       so the host runs ahead of the device and each pair brackets only device work. The spin is
       sized at ``HOST_S_PER_CALL`` (50 us) per call to enqueue, at most ``MAX_SPIN_S``, and
       converted to cycles at the device's reported clock rate (``clock_rate``, kHz; 2 GHz where
       not reported), later at the rate measured on the previous spin (which also covers spin
       counters that do not count core cycles: gfx11 spins on the constant wall clock). The calls
       are enqueued in chunks of at most ``MAX_CALLS_PER_SPIN`` behind one spin each, because a
       stream queues only about a thousand launches before the host blocks (nvbench advises "~32
       kernel launches max" behind its blocking kernel), and a blocked host waits for the spin to
       end. The spin sits between its own event pair, never inside a call's pair, and that pair
       checks the chunk afterwards: the spin started after the host began to enqueue the chunk,
       so if the host finished in less time than the spin ran, every call was queued before the
       device reached it. A chunk that fails the check is discarded and enqueued again behind a
       longer spin (at least twice the host's measured time per call) with half the calls, up to
       ``SPIN_RETRIES`` times per op; after that the op's calls are timed back to back and
       counted in ``CudaEventClock.uncovered_calls``. Without ``torch.cuda._sleep`` (CUDA and HIP
       builds of torch have it), the calls are enqueued back to back, as with a flush, and
       ``CudaEventClock.method_note`` (a line for the profile's notes) says so.

     Why: on an NVIDIA H200 (torch 2.11) the first measured profile's elementwise table, timed
     without the spin (withdrawn; kept in ``benchmarks/results/h200/elementwise_launch_bound.parquet``),
     had an ``add`` of 1 x 4096 bf16 elements at 25 us, flat up to 1024 tokens, and rmsnorm at 85 us flat:
     ops of a few KiB to a few MiB on a GPU with 4.8 TB/s, timed at the host's launch rate (8-16 us of host
     time per kernel launch on that machine, ``benchmarks/results/h200/decode_step_profile_cudnn.txt``;
     rmsnorm launches several kernels).
   - CPU: ``time.perf_counter_ns`` around the call (torch CPU ops are synchronous).

4. Result: the median as ``latency_s``, the 10th and 90th percentiles (linear interpolation, as
   ``numpy.percentile``) as ``latency_p10_s`` / ``latency_p90_s``, and the number of timed calls.

Cache state: an optional ``flush`` callable runs before every timed call, outside the timed region.
``profile_tools.ops`` passes one for GEMMs and attention (the weights and KV cache of one layer are
evicted by the other layers' before they are used again in a real forward pass) and none for
elementwise ops, copies and collectives (their inputs are the previous op's fresh outputs; on a GPU
the elementwise ops and copies are timed behind a spin kernel instead, see 3.).

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

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from profile_tools.plan import TimingPolicy

CONTENDED_FRACTION = 0.10  # other processes' share of all cores above which an attempt is redone
MAX_PAUSE_S = 10.0  # longest pause before re-measuring a contended point (pauses double from 0.5 s)

# GPU calls timed without a flush are enqueued behind a spin kernel (see the module docstring, 3.)
HOST_S_PER_CALL = 50e-6  # first allowance for the host's enqueueing of one call (events and the op's launches)
MAX_SPIN_S = 0.2  # longest spin kernel
MAX_CALLS_PER_SPIN = 32  # calls enqueued behind one spin (a stream queues about a thousand launches)
SPIN_RETRIES = 3  # chunks of one op enqueued again when the host's enqueueing outlasted their spin
FALLBACK_CLOCK_HZ = 2e9  # spin-counter rate assumed when the device reports no clock rate
MIN_RATE_SPIN_S = 1e-3  # shortest spin whose measured duration updates the spin-counter rate


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


def device_clock_hz(torch, device) -> float:
    """The device's reported core clock in Hz (``clock_rate`` is in kHz), or ``FALLBACK_CLOCK_HZ``."""
    props = torch.cuda.get_device_properties(device)
    khz = getattr(props, "clock_rate", 0) or 0
    return khz * 1e3 if khz > 0 else FALLBACK_CLOCK_HZ


class CudaEventClock:
    """Times calls with CUDA/HIP events on the current stream of ``device`` (device-side time).

    Attributes:
        can_spin: ``torch.cuda._sleep`` exists, so calls without a flush are timed behind a spin kernel.
        spin_cycles_per_s: spin-counter rate used to size the spins (reported clock, then measured).
        uncovered_calls: calls without a flush timed back to back after all ``SPIN_RETRIES`` retries
            of their op failed (the host's enqueueing outlasted every spin, as when a call waits for
            the device); such calls may read the host's launch rate.
        method_note: one line for the profile's notes saying how calls without a flush were timed.
    """

    kind = "cuda_events"

    def __init__(self, torch_module, device, host_clock_s: Callable[[], float] = time.perf_counter) -> None:
        self.torch = torch_module
        self.device = device
        self._host_clock_s = host_clock_s
        self.can_spin = hasattr(torch_module.cuda, "_sleep")
        self.spin_cycles_per_s = device_clock_hz(torch_module, device) if self.can_spin else None
        self.uncovered_calls = 0
        if self.can_spin:
            self.method_note = (
                "GPU ops without a cache flush (elementwise, copies): each chunk of up to "
                f"{MAX_CALLS_PER_SPIN} calls enqueued behind a torch.cuda._sleep spin kernel (blocking kernel, "
                f"as nvbench; {HOST_S_PER_CALL * 1e6:.0f} us per call, longer for slower hosts, at most "
                f"{MAX_SPIN_S * 1e3:.0f} ms), so the CUDA-event pairs time device work, not the host's launch rate")
        else:
            self.method_note = (
                "GPU ops without a cache flush (elementwise, copies): torch.cuda._sleep missing in this torch "
                "build, calls enqueued back to back; ops shorter than their host launch time read as the launch rate")
        # learned on one op (by id()), from the first allowances, in _time_behind_spins
        self._tuned_for: int | None = None
        self._host_s_per_call = HOST_S_PER_CALL
        self._calls_per_spin = MAX_CALLS_PER_SPIN
        self._retries_left = SPIN_RETRIES

    def time_calls(self, fn: Callable[[], object], n: int, flush: Callable[[], object] | None) -> list[float]:
        if flush is None and self.can_spin:
            return self._time_behind_spins(fn, n)
        return self._time_back_to_back(fn, n, flush)

    def _time_back_to_back(self, fn: Callable[[], object], n: int, flush: Callable[[], object] | None) -> list[float]:
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

    def _time_behind_spins(self, fn: Callable[[], object], n: int) -> list[float]:
        """``n`` calls in chunks, each chunk behind one spin kernel; a chunk whose enqueueing outlasted
        its spin is enqueued again behind a longer spin with fewer calls (module docstring, 3.)."""
        if self._tuned_for != id(fn):  # a new op: start again from the first allowances
            self._tuned_for = id(fn)
            self._host_s_per_call = HOST_S_PER_CALL
            self._calls_per_spin = MAX_CALLS_PER_SPIN
            self._retries_left = SPIN_RETRIES
        out: list[float] = []
        if self._retries_left >= 0:
            self.torch.cuda.synchronize(self.device)
        while len(out) < n and self._retries_left >= 0:
            fits = max(1, int(MAX_SPIN_S / self._host_s_per_call))
            k = min(n - len(out), self._calls_per_spin, fits)
            times, host_s, spun_s = self._chunk(fn, k, min(k * self._host_s_per_call, MAX_SPIN_S))
            if host_s < spun_s:
                out.extend(times)
                continue
            self._retries_left -= 1
            if self._retries_left >= 0:  # enqueue the chunk again
                self._host_s_per_call = max(2 * self._host_s_per_call, 2 * host_s / k)
                if k > 1:  # the host may have blocked on a full launch queue
                    self._calls_per_spin = max(1, k // 2)
            else:  # given up on this op: keep what it gave, its remaining calls back to back
                out.extend(times)
                self.uncovered_calls += k
        if len(out) < n:
            self.uncovered_calls += n - len(out)
            out.extend(self._time_back_to_back(fn, n - len(out), None))
        return out

    def _chunk(self, fn: Callable[[], object], k: int, spin_s: float) -> tuple[list[float], float, float]:
        """Enqueue a spin of about ``spin_s`` seconds, then ``k`` timed calls; wait for them. The device
        must be idle on entry.

        Returns:
            The calls' device times, the host's seconds to enqueue spin and calls, and the seconds
            the spin held the stream (between its own events, never inside a call's pair).
        """
        torch = self.torch
        spin_start = torch.cuda.Event(enable_timing=True)
        spin_end = torch.cuda.Event(enable_timing=True)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(k)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(k)]
        cycles = max(1, math.ceil(spin_s * self.spin_cycles_per_s))
        t0 = self._host_clock_s()
        spin_start.record()
        torch.cuda._sleep(cycles)
        launch_s = self._host_clock_s() - t0
        spin_end.record()
        for start, end in zip(starts, ends):
            start.record()
            fn()
            end.record()
        host_s = self._host_clock_s() - t0
        torch.cuda.synchronize(self.device)
        spun_s = spin_start.elapsed_time(spin_end) * 1e-3  # elapsed_time is in ms
        # spun_s includes the wait between spin_start (run at once by the idle device) and the spin's
        # launch, at most launch_s: spun_s - launch_s is at most the spin's own duration, so the rate
        # is at least the true one and later spins come out no shorter than planned.
        if spun_s - launch_s >= MIN_RATE_SPIN_S and launch_s <= 0.5 * spun_s:
            self.spin_cycles_per_s = cycles / (spun_s - launch_s)
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)], host_s, spun_s


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
