"""How sure is a measured outcome? Intervals for step 4's figures, and the verdict they allow.

Why: with a dozen prompts and a few samples each, a rate moving 0.49 -> 0.50 is noise, and
8 of 8 held-out pairs right is still compatible with 0.68. Every outcome is reported with its
n and a 95 % interval, and a decision (a verdict, a grade) reads the interval, never the point
estimate. Proportions use Wilson's score interval; a before/after difference uses a seeded
paired bootstrap over prompts (each prompt keeps its before and after together, so the
prompts' own spread is not mistaken for a change).
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054          # two-sided 95 %
BOOTSTRAP_RESAMPLES = 2000
MOVED, NO_CHANGE, WRONG_WAY = "moved toward the preference", "no detectable change", \
    "moved the wrong way"
VERDICTS = (MOVED, NO_CHANGE, WRONG_WAY)


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 95 % interval [low, high] and the n behind it."""

    value: float
    low: float
    high: float
    n: int
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n})"


def wilson(successes: int, n: int, z: float = Z95) -> Estimate:
    """The share successes/n with Wilson's score interval (sound at 0/n and n/n, unlike
    the normal approximation)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson needs 0 <= successes <= n and n > 0, got {successes}/{n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, "Wilson 95 %")


def paired_bootstrap(before, after, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> Estimate:
    """Mean over prompts of (after - before), with a percentile interval from `resamples`
    seeded resamples of the prompts. `before`/`after`: one mean score per prompt."""
    before, after = [float(b) for b in before], [float(a) for a in after]
    if not before or len(before) != len(after):
        raise ValueError(f"paired_bootstrap needs one before and one after per prompt, got "
                         f"{len(before)} and {len(after)}")
    diffs = [a - b for b, a in zip(before, after)]
    n, rng = len(diffs), random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low = means[int(0.025 * (resamples - 1))]
    high = means[int(math.ceil(0.975 * (resamples - 1)))]
    return Estimate(sum(diffs) / n, low, high, n, f"paired bootstrap over prompts, "
                    f"{resamples} resamples, seed {seed}")


def mean_interval(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Estimate:
    """The mean of `values` with a seeded percentile-bootstrap 95 % interval."""
    values = [float(v) for v in values]
    shifted = paired_bootstrap([0.0] * len(values), values, resamples, seed)
    return Estimate(shifted.value, shifted.low, shifted.high, shifted.n,
                    f"bootstrap, {resamples} resamples, seed {seed}")


def verdict(difference: Estimate) -> str:
    """MOVED when the interval lies entirely above 0 (the preferred side: judges score
    higher = more preferred), WRONG_WAY when entirely below, else NO_CHANGE."""
    if difference.low > 0:
        return MOVED
    if difference.high < 0:
        return WRONG_WAY
    return NO_CHANGE
