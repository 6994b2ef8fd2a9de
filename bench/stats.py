"""Timing helpers: medians over repetitions, interleaved A/B runs, ratios.

The bench machine is shared (2 cores, other jobs), so a single timing means little: every
figure is the median of >= 3 repetitions, and competing variants run interleaved
(A, B, A, B, ...) so that slow drift in the background load hits both alike.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(values) -> dict:
    """Median, min, max and the raw repetitions (kept for anyone who doubts the median)."""
    values = [float(v) for v in values]
    return {"median": median(values), "min": min(values, default=None),
            "max": max(values, default=None), "reps": values}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def interleave(variants: dict[str, Callable[[], object]], reps: int,
               log: Callable[[str], None] = print) -> dict[str, list]:
    """Run each variant `reps` times, round-robin, -> {name: [(seconds, result), ...]}."""
    runs: dict[str, list] = {name: [] for name in variants}
    for rep in range(reps):
        for name, fn in variants.items():
            seconds, result = timed(fn)
            runs[name].append((seconds, result))
            log(f"  rep {rep + 1}/{reps} {name}: {seconds:.2f} s")
    return runs
