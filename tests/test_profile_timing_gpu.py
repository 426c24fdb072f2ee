"""Specification of ``profile_tools.timing.CudaEventClock`` without a GPU: a simulated host and stream.

The simulation: every enqueue costs the host a launch time; the device runs the stream's work in order,
each item starting once it is enqueued and the previous item is done; an event records the device time
at which the stream reaches it; a stream holds ``queue_depth`` unfinished items, after which an enqueue
blocks the host until the oldest has finished. In it (as on the H200 where the bug was found) a 2 us
kernel launched in 20 us, timed back to back, reads about 20 us; the clock must read 2 us.
"""

from __future__ import annotations

import math
from collections import deque
from types import SimpleNamespace

import pytest

from profile_tools.plan import FULL_TIMING
from profile_tools.timing import (
    FALLBACK_CLOCK_HZ,
    HOST_S_PER_CALL,
    MAX_CALLS_PER_SPIN,
    MAX_SPIN_S,
    SPIN_RETRIES,
    CudaEventClock,
    Timer,
)

US = 1e-6


class _SimStream:
    """A host and one GPU stream (see the module docstring).

    Attributes:
        now_s: host clock.
        log: what reached the stream, in order: ("record", event), ("kernel", name, seconds),
            ("sleep", cycles, seconds).
    """

    def __init__(self, *, launch_s=20 * US, event_launch_s=3 * US, spin_hz=1.5e9, queue_depth=1024):
        self.launch_s = launch_s
        self.event_launch_s = event_launch_s
        self.spin_hz = spin_hz
        self.queue_depth = queue_depth
        self.now_s = 0.0
        self.busy_until_s = 0.0
        self.unfinished: deque[float] = deque()  # end times of enqueued items
        self.log: list[tuple] = []

    def enqueue(self, launch_s: float, run_s: float) -> float:
        """Returns the device time at which the item starts."""
        while self.unfinished and self.unfinished[0] <= self.now_s:
            self.unfinished.popleft()
        if len(self.unfinished) >= self.queue_depth:  # a full queue blocks the host
            self.now_s = max(self.now_s, self.unfinished.popleft())
        self.now_s += launch_s
        start = max(self.now_s, self.busy_until_s)
        self.busy_until_s = start + run_s
        self.unfinished.append(self.busy_until_s)
        return start

    def kernel(self, run_s: float, name: str = "op", launch_s: float | None = None) -> None:
        self.enqueue(self.launch_s if launch_s is None else launch_s, run_s)
        self.log.append(("kernel", name, run_s))

    def synchronize(self, device=None) -> None:
        self.now_s = max(self.now_s, self.busy_until_s)
        self.unfinished.clear()

    def tokens(self) -> str:
        """The log as one letter per item: R record, S sleep, K kernel, F flush."""
        return "".join({"record": "R", "sleep": "S"}.get(e[0]) or ("F" if e[1] == "flush" else "K") for e in self.log)

    def sleeps(self) -> list[tuple]:
        return [e for e in self.log if e[0] == "sleep"]


class _SimEvent:
    def __init__(self, sim: _SimStream, enable_timing: bool = False) -> None:
        assert enable_timing
        self.sim = sim
        self.t = None

    def record(self) -> None:
        self.t = self.sim.enqueue(self.sim.event_launch_s, 0.0)
        self.sim.log.append(("record", self))

    def elapsed_time(self, end: _SimEvent) -> float:
        return (end.t - self.t) * 1e3  # ms, as torch


def _fake_torch(sim: _SimStream, *, clock_rate_khz: int | None = 1_500_000, has_sleep: bool = True):
    def sleep(cycles: int) -> None:
        run_s = cycles / sim.spin_hz
        sim.enqueue(sim.launch_s, run_s)
        sim.log.append(("sleep", cycles, run_s))

    props = SimpleNamespace(name="Sim GPU") if clock_rate_khz is None else SimpleNamespace(clock_rate=clock_rate_khz)
    cuda = SimpleNamespace(Event=lambda enable_timing=False: _SimEvent(sim, enable_timing), synchronize=sim.synchronize,
                           get_device_properties=lambda device: props)
    if has_sleep:
        cuda._sleep = sleep
    return SimpleNamespace(cuda=cuda)


def _clock(sim: _SimStream, **kw) -> CudaEventClock:
    return CudaEventClock(_fake_torch(sim, **kw), "cuda:0", host_clock_s=lambda: sim.now_s)


def _chunks(tokens: str) -> list[int]:
    """Calls per spin, from a log of the form (R S R (R K+ R)*)*; fails on any other shape."""
    out = []
    for part in tokens.split("RSR")[1:]:
        calls = part.split("RR")
        assert part.startswith("R") and part.endswith("R"), part
        assert all(set(c.strip("R")) == {"K"} for c in calls), part  # each call: start event, kernels, end event
        out.append(len(calls))
    assert tokens.startswith("RSR"), tokens[:20]
    return out


# ---- the simulation reproduces the bug --------------------------------------------------------

def test_without_sleep_calls_are_timed_back_to_back_and_read_the_launch_rate():
    sim = _SimStream()
    clock = _clock(sim, has_sleep=False)
    times = clock.time_calls(lambda: sim.kernel(2 * US), 20, None)
    assert not clock.can_spin and "torch.cuda._sleep missing" in clock.method_note
    assert sim.tokens() == "RKR" * 20  # the old behaviour: no spin
    # start event, then the kernel's 20 us launch and the end event's 3 us: the host, not the 2 us kernel
    assert times == pytest.approx([23 * US] * 20, abs=1e-12)


# ---- unflushed calls: behind a spin kernel ----------------------------------------------------

def test_unflushed_calls_time_the_kernel_not_the_host_launch_rate():
    sim = _SimStream()
    clock = _clock(sim)
    times = clock.time_calls(lambda: sim.kernel(2 * US), 60, None)
    assert len(times) == 60
    assert times == pytest.approx([2 * US] * 60, abs=1e-12)
    assert clock.uncovered_calls == 0
    assert "torch.cuda._sleep spin kernel" in clock.method_note


def test_each_chunk_sits_behind_its_own_spin_never_inside_an_event_pair():
    sim = _SimStream()
    clock = _clock(sim)
    clock.time_calls(lambda: sim.kernel(2 * US), 100, None)
    # per chunk: the spin between its own two events, then start event, kernel, end event per call
    assert sim.tokens() == "".join("RSR" + "RKR" * k for k in (32, 32, 32, 4))
    assert _chunks(sim.tokens()) == [MAX_CALLS_PER_SPIN] * 3 + [4]


def test_spin_is_sized_from_the_number_of_calls_at_the_reported_clock():
    sim = _SimStream(spin_hz=1.98e9)
    clock = _clock(sim, clock_rate_khz=1_980_000)
    clock.time_calls(lambda: sim.kernel(2 * US), 5, None)
    clock.time_calls(lambda: sim.kernel(2 * US), 1, None)
    (_, cycles5, _), (_, cycles1, _) = sim.sleeps()
    assert cycles5 == math.ceil(5 * HOST_S_PER_CALL * 1.98e9)
    assert cycles1 == math.ceil(1 * HOST_S_PER_CALL * 1.98e9)


def test_spin_falls_back_to_2_ghz_when_no_clock_rate_is_reported():
    sim = _SimStream(spin_hz=2e9)
    clock = _clock(sim, clock_rate_khz=None)
    assert clock.spin_cycles_per_s == FALLBACK_CLOCK_HZ == 2e9
    clock.time_calls(lambda: sim.kernel(2 * US), 3, None)
    assert sim.sleeps()[0][1] == math.ceil(3 * HOST_S_PER_CALL * 2e9)


def test_spin_rate_is_corrected_from_the_measured_spin():
    # a spin counter far slower than the reported clock (gfx11 spins on the 100 MHz wall clock)
    sim = _SimStream(spin_hz=100e6)
    clock = _clock(sim, clock_rate_khz=2_500_000)
    times = clock.time_calls(lambda: sim.kernel(2 * US), 96, None)
    assert times == pytest.approx([2 * US] * 96, abs=1e-12)
    first, *rest = [run_s for _, _, run_s in sim.sleeps()]
    assert first == pytest.approx(32 * HOST_S_PER_CALL * 25)  # 25x too long before anything was measured
    for run_s in rest:  # then within the spin's launch gap of the planned 1.6 ms
        assert run_s == pytest.approx(32 * HOST_S_PER_CALL, rel=0.02)


def test_a_host_slower_than_the_allowance_gets_a_longer_spin_until_it_is_covered():
    # an op of 8 kernels of 1 us, each launched in 25 us: 200 us of host time per call, 4x the allowance
    sim = _SimStream(launch_s=25 * US)

    def op():
        for _ in range(8):
            sim.kernel(1 * US)

    clock = _clock(sim)
    times = clock.time_calls(op, 1, None)  # the warm-up call
    assert times == pytest.approx([8 * US], abs=1e-12)
    assert len(sim.sleeps()) > 1 and clock.uncovered_calls == 0  # the chunk was enqueued again
    spins = len(sim.sleeps())
    times = clock.time_calls(op, 60, None)  # the timed calls of the same op start from what was learned
    assert times == pytest.approx([8 * US] * 60, abs=1e-12)
    assert len(sim.sleeps()) - spins == 2  # 32 + 28 calls, none enqueued again
    assert clock.uncovered_calls == 0


def test_a_full_launch_queue_shrinks_the_chunks():
    # a stream that holds 40 unfinished items: 32 calls of 3 items each fill it behind the spin
    sim = _SimStream(queue_depth=40)
    clock = _clock(sim)
    times = clock.time_calls(lambda: sim.kernel(2 * US), 60, None)
    assert times == pytest.approx([2 * US] * 60, abs=1e-12)
    assert clock.uncovered_calls == 0
    kept = _chunks(sim.tokens())[-1]
    assert 3 * kept + 3 <= 40  # the last chunk (and its spin's three items) fits in the queue


@pytest.mark.parametrize("launch_s, n", [(10e-3, 40), (150e-3, 3)])
def test_spins_never_exceed_the_cap_and_chunks_shrink_to_fit(launch_s, n):
    sim = _SimStream(launch_s=launch_s)  # a host needing 10 or 150 ms per launch
    clock = _clock(sim)
    times = clock.time_calls(lambda: sim.kernel(2 * US), n, None)
    assert times == pytest.approx([2 * US] * n, abs=1e-12)
    assert clock.uncovered_calls == 0
    for _, _, run_s in sim.sleeps():
        assert run_s <= MAX_SPIN_S * 1.001
    first, *kept = _chunks(sim.tokens())
    assert first == min(n, MAX_CALLS_PER_SPIN) and sum(kept) == n  # the first chunk failed and was redone
    allowance = 2 * launch_s  # at least the host's time per call, doubled
    assert max(kept) <= max(1, MAX_SPIN_S / allowance)  # as many calls as the capped spin covers


def test_an_op_that_waits_for_the_device_is_given_up_after_the_retries_and_counted():
    sim = _SimStream()

    def op():
        sim.kernel(2 * US)
        sim.synchronize()  # as .item() would: the host waits for the spin every time

    clock = _clock(sim)
    times = clock.time_calls(op, 8, None)
    assert len(times) == 8
    assert len(sim.sleeps()) == SPIN_RETRIES + 1  # the first chunk, enqueued again SPIN_RETRIES times
    # the chunk shrank to 1 call, kept after the last retry; the other 7 calls back to back, no spin
    assert sim.tokens().endswith("RSR" + "RKR" + "RKR" * 7)
    assert clock.uncovered_calls == 8
    clock.time_calls(op, 5, None)  # the same op again: back to back at once
    assert len(sim.sleeps()) == SPIN_RETRIES + 1 and clock.uncovered_calls == 13


def test_a_new_op_starts_again_from_the_first_allowance():
    sim = _SimStream(launch_s=25 * US)

    def slow():
        for _ in range(8):
            sim.kernel(1 * US)

    clock = _clock(sim)
    clock.time_calls(slow, 1, None)
    n = len(sim.sleeps())
    clock.time_calls(lambda: sim.kernel(2 * US), 1, None)
    assert sim.sleeps()[n][2] == pytest.approx(HOST_S_PER_CALL, rel=0.01)


# ---- flushed calls: unchanged -----------------------------------------------------------------

def test_flushed_calls_enqueue_no_spin_and_the_flush_keeps_the_device_busy():
    sim = _SimStream()
    clock = _clock(sim)
    times = clock.time_calls(lambda: sim.kernel(2 * US), 10, lambda: sim.kernel(100 * US, "flush"))
    assert sim.tokens() == "FRKR" * 10
    assert not sim.sleeps()
    assert times == pytest.approx([2 * US] * 10, abs=1e-12)


# ---- through the Timer ------------------------------------------------------------------------

def test_timer_reports_the_kernel_time_of_an_unflushed_gpu_op():
    sim = _SimStream()
    timer = Timer(_clock(sim), FULL_TIMING)
    m = timer.measure(lambda: sim.kernel(3 * US))
    assert m.latency_s == pytest.approx(3 * US, abs=1e-12)
    assert m.repeats == FULL_TIMING.max_repeats and m.other_cpu_util is None
