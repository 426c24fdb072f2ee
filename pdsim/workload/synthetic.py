"""Synthetic open-loop arrival processes (renewal processes).

Both generators draw i.i.d. inter-arrival gaps and return their cumulative sum, so **the first arrival is
at the first gap draw, not at t = 0** (a process observed from t = 0, as in a stationary renewal process
started at an arrival). Randomness comes only from the ``numpy.random.Generator`` passed in; never from
the global ``numpy.random`` or ``random`` state.

Exactly one of ``n`` (number of arrivals) or ``duration_s`` (keep arrivals with ``t < duration_s``) must
be given.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["gamma_arrivals_s", "poisson_arrivals_s"]


def poisson_arrivals_s(
    rate_rps: float,
    rng: np.random.Generator,
    *,
    n: int | None = None,
    duration_s: float | None = None,
) -> np.ndarray:
    """Arrival times of a homogeneous Poisson process.

    Inter-arrival gaps are exponential with mean ``1 / rate_rps`` seconds.

    Args:
        rate_rps: mean arrival rate in requests per second, > 0.
        rng: source of randomness.
        n: number of arrivals to return (>= 1); exclusive with ``duration_s``.
        duration_s: return every arrival with ``t < duration_s`` seconds (> 0); may be empty.

    Returns:
        float64 array of arrival times in seconds, non-decreasing; the first is the first gap (> 0).

    Raises:
        ValueError: ``rate_rps`` not finite and > 0, or not exactly one of ``n`` / ``duration_s``
            given, or ``n`` < 1, or ``duration_s`` not finite and > 0.
    """
    _check_rate(rate_rps)
    mean_gap_s = 1.0 / rate_rps
    return _renewal_arrivals_s(lambda size: rng.exponential(mean_gap_s, size), mean_gap_s, 1.0, n, duration_s)


def gamma_arrivals_s(
    rate_rps: float,
    cv: float,
    rng: np.random.Generator,
    *,
    n: int | None = None,
    duration_s: float | None = None,
) -> np.ndarray:
    """Arrival times of a Gamma renewal process (bursty for ``cv > 1``, regular for ``cv < 1``).

    Inter-arrival gaps are Gamma distributed with mean ``1 / rate_rps`` and coefficient of variation
    ``cv`` (std / mean): shape ``k = 1 / cv**2``, scale ``theta = 1 / (rate_rps * k)``, so that
    mean = ``k * theta`` = ``1 / rate_rps`` and CV = ``1 / sqrt(k)`` = ``cv``. ``cv = 1`` is a Poisson
    process in distribution (but not draw for draw). This is the burstiness model used by e.g.
    AlpaServe (Li et al., OSDI'23) and DistServe (Zhong et al., OSDI'24).

    Args:
        rate_rps: mean arrival rate in requests per second, > 0.
        cv: coefficient of variation of the gaps, > 0.
        rng: source of randomness.
        n: number of arrivals to return (>= 1); exclusive with ``duration_s``.
        duration_s: return every arrival with ``t < duration_s`` seconds (> 0); may be empty.

    Returns:
        float64 array of arrival times in seconds, non-decreasing; the first is the first gap.

    Raises:
        ValueError: invalid ``rate_rps`` or ``cv`` (not finite and > 0), or not exactly one of ``n`` /
            ``duration_s`` given, or ``n`` < 1, or ``duration_s`` not finite and > 0.
    """
    _check_rate(rate_rps)
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"cv must be finite and > 0, got {cv}")
    shape = 1.0 / cv**2
    scale_s = 1.0 / (rate_rps * shape)
    mean_gap_s = 1.0 / rate_rps
    return _renewal_arrivals_s(lambda size: rng.gamma(shape, scale_s, size), mean_gap_s, cv, n, duration_s)


def _check_rate(rate_rps: float) -> None:
    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate_rps must be finite and > 0, got {rate_rps}")


def _renewal_arrivals_s(
    draw_gaps_s: Callable[[int], np.ndarray],
    mean_gap_s: float,
    cv: float,
    n: int | None,
    duration_s: float | None,
) -> np.ndarray:
    """Cumulative sums of gaps: ``n`` of them, or all those below ``duration_s``.

    In duration mode gaps are drawn in chunks sized from the expected count plus a few standard
    deviations (count variance ~ expected * cv**2), so that one chunk almost always suffices; chunk
    sizes depend only on the arguments, so the result is deterministic for a given generator state.
    """
    if (n is None) == (duration_s is None):
        raise ValueError("give exactly one of n or duration_s")
    if n is not None:
        if int(n) != n or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n}")
        return np.cumsum(draw_gaps_s(int(n)), dtype=np.float64)
    duration_s = float(duration_s)  # type: ignore[arg-type]  # not None: checked above
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be finite and > 0, got {duration_s}")
    expected = duration_s / mean_gap_s
    chunk = int(expected + 6.0 * max(cv, 1.0) * math.sqrt(expected) + 16)
    pieces: list[np.ndarray] = []
    t_end_s = 0.0
    while t_end_s < duration_s:
        times = t_end_s + np.cumsum(draw_gaps_s(chunk), dtype=np.float64)
        pieces.append(times)
        t_end_s = float(times[-1])
    arrivals = np.concatenate(pieces)
    return arrivals[arrivals < duration_s]
