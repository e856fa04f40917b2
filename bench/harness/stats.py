"""Timing and summary statistics shared by the benchmarks."""

from __future__ import annotations

import math
import statistics
import time


def timed(fn) -> float:
    """Wall seconds of one call of fn()."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def percentile(xs: list[float], q: float, *, nearest: bool = False, empty=float("nan")):
    """The q-quantile (0..1) of xs: linear interpolation between the two nearest ranks (numpy's
    default), or with ``nearest`` the sample at the rounded rank; ``empty`` when xs is empty."""
    if not xs:
        return empty
    xs = sorted(xs)
    pos = (len(xs) - 1) * q
    if nearest:
        return xs[min(len(xs) - 1, int(round(pos)))]
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
