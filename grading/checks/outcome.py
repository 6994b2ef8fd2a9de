"""Step 4's graded outcome: did the policy write more like the preference, beyond the noise?
And did the run make the model worse?

`moved_toward_preference` reads the report's measured outcome (labkit.outcome) and awards its
points only when the 95 % interval of the change lies entirely on the preferred side of 0.
The interval is recomputed here from the recorded per-prompt scores (a hand-edited verdict
counts for nothing). No detectable change scores 0 and says why; the wrong way scores 0 and
says the pairs look swapped; a theme without a judge is "not measured" (no free points).
`not_worse` flags a run whose held-out accuracy lies below chance beyond its interval, or
whose neutral perplexity grew far beyond what the lab's reference run costs.
"""
from __future__ import annotations

from labkit.artifacts import finite
from labkit.stats import MOVED, WRONG_WAY, Estimate, paired_bootstrap, verdict, wilson
from labkit.steps import Step2Meta

from .results import CheckItem, scored

NAME = "moved_toward_preference"


def judge_for(step1, theme=None):
    """The class theme's judge for the model the run used, or None. `theme`: the class's
    Theme (default: labkit's current one, as in a notebook)."""
    from labkit.themes import load_theme

    model = getattr(step1, "model", None)
    is_teaching = isinstance(model, dict) and model.get("is_teaching") is True
    return (theme or load_theme()).judge_for(is_teaching)


def _pair_rows(run, theme=None) -> list[dict]:
    """The student's own readable pairs (the theme's real-model pairs left out)."""
    from labkit.themes import load_theme

    try:
        rows, _ = Step2Meta.read_pairs(run)
    except Exception:  # noqa: BLE001 - step 2's own items report an unreadable file
        return []
    provided = set((theme or load_theme()).provided_rows(rows))
    return [r for i, r in enumerate(rows, start=1) if isinstance(r, dict) and i not in provided
            and isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)]


def swapped_pairs(run, judge, theme=None) -> tuple[int, int]:
    """(own pairs on which the judge prefers rejected over chosen, own pairs judged): a
    majority means chosen/rejected are swapped against the preference."""
    rows = _pair_rows(run, theme)
    return sum(judge.prefers(r["rejected"], r["chosen"]) for r in rows), len(rows)


def _scores(outcome: dict, key: str) -> list[float] | None:
    values = outcome.get(key)
    if isinstance(values, list) and values and all(finite(v) for v in values):
        return [float(v) for v in values]
    return None


def moved_item(run, rec, step1, theme=None) -> CheckItem:
    judge = judge_for(step1, theme)
    if judge is None:
        return scored(4, NAME, False, "not measured: the class theme has no judge that reads "
                      "its preference in generated text, so no points are given for an outcome "
                      "nobody measured (instructor: add a [judge] table to the theme)")
    outcome = rec.outcome if isinstance(getattr(rec, "outcome", None), dict) else {}
    before, after = _scores(outcome, "scores_before"), _scores(outcome, "scores_after")
    if before is None or after is None or len(before) != len(after):
        return scored(4, NAME, False, "the measured outcome is not recorded: run section 4's "
                      "cell (measure_outcome), then save the report with outcome=outcome")
    if outcome.get("judge") != judge.function:
        return scored(4, NAME, False, f"the outcome was measured with {outcome.get('judge')!r}, "
                      f"but this model's judge is {judge.function!r} (theme.judge_for): "
                      "re-run section 4 with the theme's judge")
    change = paired_bootstrap(before, after)
    found = verdict(change)
    text = (f"judge {judge.function} ({judge.unit}): change {_interval(change)} over "
            f"{change.n} prompts: {found}")
    if found == MOVED:
        return scored(4, NAME, True, text + " (the interval excludes 0)")
    if found == WRONG_WAY:
        swapped, judged = swapped_pairs(run, judge, theme)
        return scored(4, NAME, False, text + f". Your pairs look swapped: the judge prefers "
                      f"rejected over chosen on {swapped} of {judged}, so DPO trained the "
                      f"opposite of {judge.preferred!r}. Check which answer you put in chosen")
    return scored(4, NAME, False, text + ": the interval contains 0, so the shift cannot be "
                  "told from sampling noise and earns no points. "
                  + _why_no_change(run, step1, theme))


def _interval(e: Estimate) -> str:
    return f"{e.value:+.2f} [{e.low:+.2f}, {e.high:+.2f}]"


def _why_no_change(run, step1, theme=None) -> str:
    model = getattr(step1, "model", None)
    if isinstance(model, dict) and model.get("is_teaching") is True:
        from labkit.own_words import known_words, unknown_words

        vocab, rows = known_words(), _pair_rows(run, theme)
        alien = [r for r in rows if unknown_words(r["chosen"], r["rejected"], vocab=vocab)]
        if alien:
            return (f"{len(alien)} of your {len(rows)} pairs use words the teaching model has "
                    "never seen: pairs in your own phrasing cost it over 2 nats per token, and "
                    "DPO only re-weights what a model already says (notebook 2's review warned "
                    "about it). Reuse its words or pick chosen/rejected from its own samples")
        return ("the pairs are in the model's words: check that chosen and rejected differ "
                "in the preference itself, and that training was healthy (step 3)")
    return ("DPO on a handful of pairs often leaves what a pretrained model writes unchanged "
            "(docs/models.md): notebook 2 adds the theme's real-model pairs for that where the "
            "theme has them; more, and more varied, pairs help")


def worse_item(rec, theme=None) -> CheckItem:
    """Did the run make the model worse? Held-out accuracy below chance beyond its interval,
    or neutral perplexity up by more than the class theme's `max_perplexity_ratio` (x2 by
    default: the plain theme's reference run costs x1.03, and twice the perplexity is a
    whole extra bit per token)."""
    from labkit.themes import load_theme

    bound = (theme or load_theme()).max_perplexity_ratio
    metrics = rec.metrics if isinstance(rec.metrics, dict) else {}
    worse, fine = [], []
    held = rec.heldout_accuracy if isinstance(getattr(rec, "heldout_accuracy", None), dict) else {}
    accuracy, n = metrics.get("heldout_preference_accuracy"), held.get("n")
    if finite(accuracy) and isinstance(n, int) and n > 0 and 0 <= accuracy <= 1:
        estimate = wilson(round(accuracy * n), n)
        (worse if estimate.high < 0.5 else fine).append(f"held-out accuracy {estimate}")
    ppl = metrics.get("perplexity_before"), metrics.get("perplexity_after")
    if all(finite(p) and p > 0 for p in ppl):
        ratio = ppl[1] / ppl[0]
        (worse if ratio > bound else fine).append(
            f"neutral perplexity {ppl[0]:.2f} -> {ppl[1]:.2f} (x{ratio:.2f}; worse beyond "
            f"x{bound:g}, the theme's bound)")
    if worse:
        return scored(4, "not_worse", False, "WORSE: this run made the model worse: "
                      + "; ".join(worse) + ". Lower the learning rate or epochs, or check the "
                      "pairs")
    return scored(4, "not_worse", bool(fine), "; ".join(fine) if fine else
                  "held-out accuracy (with n) and neutral perplexity are not recorded")
