"""Timing helpers: medians over repetitions, interleaved A/B runs, ratios.

The bench machine is shared (2 cores, other jobs), so a single timing means little: every
figure is the median of >= 3 repetitions, and competing variants run interleaved
(A, B, A, B, ...) so that slow drift in the background load hits both alike.
"""
from __future__ import annotations

import os
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


def timed(fn: Callable, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process's threads, result) of one call. CPU time
    does not grow when other jobs compete for the cores, so it backs up a noisy wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def load_average() -> float | None:
    """1-minute load average: above the core count, wall timings are inflated by others."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def ab_order(names: list[str], reps: int):
    """(rep, name) pairs, the order flipping every repetition: A B, B A, A B..."""
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            yield rep, name


def interleave(variants: dict[str, Callable[[], object]], reps: int,
               log: Callable[[str], None] = print) -> dict[str, list]:
    """Run each variant `reps` times, interleaved -> {name: [(wall, cpu, result), ...]}.

    The order flips every repetition (A B, B A, A B...): besides drift, running second is
    itself an advantage (warm allocator and caches) worth ~3% on a 1.4 s training."""
    runs: dict[str, list] = {name: [] for name in variants}
    for rep, name in ab_order(list(variants), reps):
        wall, cpu, result = timed(variants[name])
        runs[name].append((wall, cpu, result))
        log(f"  rep {rep + 1}/{reps} {name}: {wall:.2f} s (CPU {cpu:.2f} s, "
            f"load {load_average()})")
    return runs
