"""Small statistics helpers shared by the harness and its workers (standard library only)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def jain(counts: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when every worker got the same share, 1/n at worst."""
    if not counts:
        return math.nan
    total = sum(counts)
    squares = sum(c * c for c in counts)
    if squares == 0:
        return math.nan
    return total * total / (len(counts) * squares)


def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def median(values: Iterable[object]) -> float | None:
    """Median of the finite numbers in ``values``; None when there are none."""
    numbers = [float(v) for v in values if finite(v)]  # type: ignore[arg-type]
    if not numbers:
        return None
    return statistics.median(numbers)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
