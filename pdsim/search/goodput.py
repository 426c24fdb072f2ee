"""Goodput by bisection on the arrival rate (pure: the caller runs the simulations).

Definition (DistServe, Zhong et al., OSDI 2024): the goodput of a deployment is the highest request
rate at which its SLO attainment stays >= the attainment target (``slo.attainment_target``, e.g. 0.9;
attainment = fraction of all requests, rejected ones included, whose TTFT and TPOT meet the targets:
``pdsim.metrics.summary``). A probe at rate ``r`` simulates the search workload compressed or stretched
to ``r`` (same requests and seed: only time is scaled) and *passes* when its attainment >= target.

Search, for one deployment, starting from its analytic capacity ``r0``:

1. probe ``r0``; while every probe passed, double the rate (at most ``r0 x 2**GROW_STEPS``); while every
   probe failed, halve it (at most ``r0 / 2**SHRINK_STEPS``: goodput 0 below that);
2. then bisect between ``lo`` (highest passing rate) and ``hi`` (lowest failing rate above it) at the
   midpoint until ``(hi - lo) / lo <= rate_tolerance`` or ``max_probes`` simulations are spent.

The goodput reported is ``lo``: a rate that was simulated and met the target; the true knee lies in
``[lo, hi)`` if attainment is monotone in the rate. Rates are rounded to 6 significant digits so the
probes' configs (and their sha256 cache keys) are reproducible text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["GROW_STEPS", "SHRINK_STEPS", "Bisection", "round_rate"]

# Search-effort bounds, not physical constants: the bracket search looks up to 2**6 = 64x above and
# 2**10 = 1024x below the analytic estimate before reporting ``capped`` / ``zero`` (measured: the analytic
# capacity of pdsim.search.capacity was 0.7-2.6x the simulated goodput on experiments/search_llama70b.yaml
# and the test cases, docs/search.md).
GROW_STEPS = 6
SHRINK_STEPS = 10


def round_rate(r: float) -> float:
    """``r`` rounded to 6 significant digits."""
    return float(f"{r:.6g}")


@dataclass
class Bisection:
    """The state of one deployment's goodput search.

    Attributes:
        start_rps: the first probe's rate (the analytic capacity), > 0.
        rate_tolerance: relative width of the final bracket.
        max_probes: most probes.
        probes: ``(rate, passed)`` in the order they were run.
    """

    start_rps: float
    rate_tolerance: float
    max_probes: int
    probes: list[tuple[float, bool]] = field(default_factory=list)

    def __post_init__(self):
        if not (self.start_rps > 0 and math.isfinite(self.start_rps)):
            raise ValueError(f"start_rps must be finite and > 0, got {self.start_rps}")

    @property
    def lo(self) -> float:
        passed = [r for r, ok in self.probes if ok]
        return max(passed) if passed else 0.0

    @property
    def hi(self) -> float:
        lo = self.lo
        failed = [r for r, ok in self.probes if not ok and r > lo]
        return min(failed) if failed else math.inf

    @property
    def goodput_rps(self) -> float:
        return self.lo

    @property
    def status(self) -> str:
        """``bracketed`` (converged), ``capped`` (passed at the highest rate tried), ``zero`` (failed at the
        lowest), ``max_probes`` (ran out) or ``running``."""
        lo, hi = self.lo, self.hi
        if lo > 0 and math.isfinite(hi) and (hi - lo) / lo <= self.rate_tolerance:
            return "bracketed"
        if self.probes and lo == 0 and min(r for r, _ in self.probes) <= self._floor():
            return "zero"
        if lo > 0 and not math.isfinite(hi) and lo >= self._ceiling():
            return "capped"
        if len(self.probes) >= self.max_probes:
            return "max_probes"
        return "running"

    def _ceiling(self) -> float:
        return round_rate(self.start_rps * 2**GROW_STEPS)

    def _floor(self) -> float:
        return round_rate(self.start_rps / 2**SHRINK_STEPS)

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when done."""
        if not self.probes:
            return round_rate(self.start_rps)
        if self.status != "running":
            return None
        lo, hi = self.lo, self.hi
        if lo == 0:
            rate = min(r for r, _ in self.probes) / 2
        elif not math.isfinite(hi):
            rate = min(lo * 2, self._ceiling())
        else:
            rate = (lo + hi) / 2
        rate = round_rate(rate)
        if any(r == rate for r, _ in self.probes):  # rounding collapsed the bracket
            return None
        return rate

    def record(self, rate: float, passed: bool) -> None:
        self.probes.append((float(rate), bool(passed)))
