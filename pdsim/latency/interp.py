"""Interpolation primitives of the latency models, with a stated out-of-range policy.

``Curve`` is piecewise linear in (x, y); ``LogCurve`` is piecewise linear in (log x, log y), exact for
power laws (attention time grows as s^2 in compute-bound prefill and as the KV read in decode); and
``ColumnTable`` holds one ``LogCurve`` per value of a second key (the batch size), where a column covers
only part of the x range (measured grids often skip the largest batch x length products). Both are
evaluated in pure Python on small tuples because the simulator calls them once per iteration.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from pdsim.latency.base import LookupStats


@dataclass(frozen=True, slots=True)
class Curve:
    """Piecewise-linear y(x) through measured points (x strictly increasing).

    Out of range: above the last point, linear extrapolation from the last two points; below the first,
    clamped to the first value (``clamp_low``) or extrapolated (never below 0). Either is counted in
    ``stats`` under ``axis + "_above"`` / ``"_below"``.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def at(self, v: float, stats: LookupStats, axis: str, clamp_low: bool) -> float:
        x, y = self.x, self.y
        if v <= x[0]:
            if v < x[0]:
                stats.out_of_range(axis + "_below")
            if clamp_low or len(x) == 1:
                return y[0]
            return max(y[0] + (y[1] - y[0]) * (v - x[0]) / (x[1] - x[0]), 0.0)
        if v >= x[-1]:
            if v > x[-1]:
                stats.out_of_range(axis + "_above")
            if len(x) == 1:
                return y[-1]
            return y[-1] + (y[-1] - y[-2]) * (v - x[-1]) / (x[-1] - x[-2])
        i = bisect.bisect_left(x, v)  # x[i-1] < v <= x[i]
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        return y0 + (y1 - y0) * (v - x0) / (x1 - x0)

    def eval_many(self, xs) -> list[float]:
        """Values at many points without counting (precomputation); same out-of-range rule, clamp low."""
        scratch = LookupStats()
        return [self.at(float(v), scratch, "", clamp_low=True) for v in xs]


@dataclass(frozen=True, slots=True)
class LogCurve:
    """y(x) piecewise linear in log-log space through measured points (x > 0, y > 0, x increasing).

    Inside the range: exact at the points, a power law between them. Below the first point: clamped to
    the first value. Above the last point: ``y_last x (x / x_last) ** exponent_above`` (the caller
    states the physics, e.g. 2 for prefill attention over sequence length, 1 for decode attention over
    context). Out-of-range lookups are counted by the caller (``ColumnTable.at``).
    """

    logx: tuple[float, ...]
    logy: tuple[float, ...]
    exponent_above: float = 1.0

    @classmethod
    def from_points(cls, xs, ys, exponent_above: float = 1.0) -> "LogCurve":
        return cls(tuple(math.log(float(v)) for v in xs), tuple(math.log(float(v)) for v in ys), exponent_above)

    @property
    def x_max(self) -> float:
        return math.exp(self.logx[-1])

    def at(self, v: float) -> float:
        lx, ly = self.logx, self.logy
        u = math.log(v) if v > 0 else lx[0]
        if u <= lx[0]:
            return math.exp(ly[0])
        if u >= lx[-1]:
            return math.exp(ly[-1] + self.exponent_above * (u - lx[-1]))
        i = bisect.bisect_left(lx, u)
        x0, x1, y0, y1 = lx[i - 1], lx[i], ly[i - 1], ly[i]
        return math.exp(y0 + (y1 - y0) * (u - x0) / (x1 - x0))


@dataclass(frozen=True, slots=True)
class ColumnTable:
    """f(b, x): one ``LogCurve`` over x per measured batch size b.

    Lookup at (b, x):

    - between two measured batch sizes whose curves both reach x: log-log interpolation in b;
    - above the largest batch size whose curve reaches x: that column's value x b / b_col (work grows
      linearly in the batch once the device is saturated; the measured grid stops at large b x x);
    - x above every column's range (from the smallest batch size up): the curve's power-law
      extrapolation, counted as out of range (``axis_above``); b above the largest measured batch
      size, likewise counted (``batch_above``).
    """

    batches: tuple[int, ...]
    curves: tuple[LogCurve, ...]

    def at(self, b: float, x: float, stats: LookupStats | None, axis: str) -> float:
        batches, curves = self.batches, self.curves
        i = bisect.bisect_right(batches, b) - 1  # batches[i] <= b
        if i < 0:
            i = 0
        if stats is not None and b > batches[-1]:
            stats.out_of_range(axis + "_batch_above")
        lo = i
        while lo >= 0 and x > curves[lo].x_max:
            lo -= 1
        if lo < 0:  # x beyond every column at or below b: extrapolate the smallest batch's curve
            if stats is not None:
                stats.out_of_range(axis + "_above")
            return curves[0].at(x) * b / batches[0]
        y_lo = curves[lo].at(x)
        if lo == i and i + 1 < len(batches) and b > batches[i] and x <= curves[i + 1].x_max:
            y_hi = curves[i + 1].at(x)
            b0, b1 = batches[i], batches[i + 1]
            w = (math.log(b) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return math.exp((1 - w) * math.log(y_lo) + w * math.log(y_hi))
        return y_lo * b / batches[lo]
