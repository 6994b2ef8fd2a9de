"""Step 4's measured outcome: did the policy write more like the preference than the base model?

`k` answers are sampled (seeded, the same GenerationSpec for both models) for each of the
judge's prompts, before and after training; the theme's judge scores each answer. Per prompt
the mean score before and after; the change is the mean over prompts of (after - before), with
a seeded paired bootstrap interval over prompts (labkit.stats). The verdict reads the interval:
`moved toward the preference`, `no detectable change` or `moved the wrong way`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import GenerationSpec
from .generation import generate
from .stats import Estimate, mean_interval, paired_bootstrap, verdict, wilson

SAMPLES_PER_PROMPT = 8
SAMPLE_TOKENS = 40


def sampling_spec(seed: int = 0, k: int = SAMPLES_PER_PROMPT,
                  max_new_tokens: int = SAMPLE_TOKENS) -> GenerationSpec:
    """The decoding of the outcome's samples: k seeded samples per prompt."""
    return GenerationSpec(max_new_tokens=max_new_tokens, do_sample=True, num_samples=k, seed=seed)


@dataclass(frozen=True)
class Outcome:
    """The judge's mean score before and after (each with n and a 95 % interval), the
    change with its interval, and the verdict."""

    judge: str
    unit: str
    preferred: str
    k: int
    prompts: tuple[str, ...]
    scores_before: tuple[float, ...]   # mean score per prompt
    scores_after: tuple[float, ...]
    before: Estimate
    after: Estimate
    difference: Estimate
    verdict: str

    def to_dict(self) -> dict:
        return {"judge": self.judge, "unit": self.unit, "preferred": self.preferred, "k": self.k,
                "prompts": list(self.prompts), "scores_before": list(self.scores_before),
                "scores_after": list(self.scores_after), "before": self.before.to_dict(),
                "after": self.after.to_dict(), "difference": self.difference.to_dict(),
                "verdict": self.verdict}

    def __str__(self) -> str:
        return (f"judge {self.judge} ({self.unit}), {self.k} samples x {len(self.prompts)} "
                f"prompts\n  before {self.before}\n  after  {self.after}\n  change "
                f"{self.difference.value:+.2f}, 95 % interval [{self.difference.low:+.2f}, "
                f"{self.difference.high:+.2f}] ({self.difference.method})\n  verdict: "
                f"{self.verdict}")


def outcome_from_samples(judge, prompts, before, after) -> Outcome:
    """The outcome of `before`/`after` (one list of sampled texts per prompt) under `judge`
    (a labkit.judges.Judge for the model in use). The bootstrap's seed is fixed
    (labkit.stats), so the grader recomputes the same interval from the recorded scores."""
    prompts, before, after = list(prompts), list(before), list(after)
    if not prompts or not len(prompts) == len(before) == len(after):
        raise ValueError(f"need samples for every prompt: {len(prompts)} prompts, "
                         f"{len(before)} before, {len(after)} after")
    scored = [[[judge.score(t) for t in texts] for texts in side] for side in (before, after)]
    means = [tuple(sum(s) / len(s) for s in side) for side in scored]
    k = len(scored[0][0])
    if judge.kind == "label":    # a share of all samples: Wilson
        ends = [wilson(int(sum(map(sum, side))), sum(map(len, side))) for side in scored]
    else:                        # a mean score: bootstrap over the prompts' means
        ends = [mean_interval(m) for m in means]
    difference = paired_bootstrap(*means)
    return Outcome(judge.function, judge.unit, judge.preferred, k, tuple(prompts), *means,
                   *ends, difference, verdict(difference))


def measure_outcome(judge, reference, policy, tokenizer, seed: int = 0,
                    k: int = SAMPLES_PER_PROMPT) -> tuple[Outcome, list, list]:
    """Sample `k` answers per judge prompt from both models (seeded by `seed`, the same
    draws for both) and measure the outcome; returns (outcome, samples before, after)."""
    spec = sampling_spec(seed, k)
    prompts = list(judge.prompts)
    before = generate(reference, tokenizer, prompts, spec)
    after = generate(policy, tokenizer, prompts, spec)
    if k == 1:
        before, after = [[t] for t in before], [[t] for t in after]
    return outcome_from_samples(judge, prompts, before, after), before, after


def heldout_estimate(accuracy: float, n: int) -> Estimate:
    """Held-out preference accuracy (a share of `n` pairs) with its Wilson interval."""
    return wilson(round(accuracy * n), n)
