"""Step 4's `moved_toward_preference`: did the style move toward the stated preference?

Only where a style judge exists (the teaching model: `labkit.teaching.judge_style`, which
prefers "plain"); for any other model the item is not applicable and passes. A dataset
whose chosen and rejected answers are swapped against the preference trains the style the
wrong way: the item fails and the message says the pairs look swapped (issue 12).
"""
from __future__ import annotations

import math

from labkit.steps import Step2Meta, Step4Report

from .results import CheckItem, scored

PREFERRED, OTHER = "plain", "jargon"


def judge_for(step1):
    """The style judge for the run's model, or None (only the teaching model has one)."""
    model = getattr(step1, "model", None)
    if isinstance(model, dict) and model.get("is_teaching") is True:
        from labkit.teaching import judge_style

        return judge_style
    return None


def swapped_pairs(run, judge) -> tuple[int, int]:
    """(pairs whose chosen reads as the other style and rejected as the preferred one,
    pairs judged): a majority means chosen/rejected are swapped against the preference."""
    try:
        rows, _ = Step2Meta.read_pairs(run)
    except Exception:  # noqa: BLE001 - step 2's own items report an unreadable file
        return 0, 0
    rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("chosen"), str)
            and isinstance(r.get("rejected"), str)]
    swapped = sum(judge(r["chosen"]) == OTHER and judge(r["rejected"]) == PREFERRED
                  for r in rows)
    return swapped, len(rows)


def moved_item(run, rec: Step4Report, step1) -> CheckItem:
    judge = judge_for(step1)
    if judge is None:
        return scored(4, "moved_toward_preference", True, "no style judge for this model: "
                      "not applicable")
    metrics = rec.metrics if isinstance(rec.metrics, dict) else {}
    before, after = metrics.get("style_rate_before"), metrics.get("style_rate_after")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (before, after)):
        return scored(4, "moved_toward_preference", False, "style_rate_before/after are not "
                      "recorded: run the style-rate cell, then save the report")
    swapped, judged = swapped_pairs(run, judge)
    moved = after > before
    text = (f"{PREFERRED}-style rate on the held-out concepts {before:.2f} -> {after:.2f}: "
            + ("moved toward" if moved else "did not move toward")
            + f" the stated preference ({PREFERRED!r})")
    if judged and swapped * 2 > judged:
        text += (f". {swapped}/{judged} of your pairs choose the {OTHER} answer and reject the "
                 f"{PREFERRED} one: chosen and rejected look swapped against the preference, "
                 "so DPO trained the opposite style")
    return scored(4, "moved_toward_preference", moved and not swapped * 2 > judged, text)
