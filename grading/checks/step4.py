"""check_step4: the report against step 1 and step 3, its metrics, and whether the style
moved toward the stated preference (`moved_toward_preference`).

The direction check applies only where a style judge exists (the teaching model with a theme
that has a judge, e.g. `plain`: `labkit.teaching.judge_style`, which prefers "plain"); for
any other model or theme the item is not applicable and passes. A dataset whose chosen and rejected answers are swapped against the
preference trains the style the wrong way: the item fails and the message says the pairs
look swapped.
"""
from __future__ import annotations

from pathlib import Path

from labkit.artifacts import finite
from labkit.steps import Step1Baseline, Step2Meta, Step3Training, Step4Report

from . import rubric
from .bounds import guarded
from .common import as_dict, load, open_record
from .results import CheckItem, CheckResult, scored, step_result


def check_step4(run_dir=None, theme=None) -> CheckResult:
    """`theme`: the class's Theme (its judge); default: labkit's current one."""
    run, rec, early = open_record(4, Step4Report, run_dir)
    if early:
        return early
    step1, err1 = load(Step1Baseline, run)
    return step_result(4, [guarded(4, "same_prompts_spec", _same_as_step1, rec, step1, err1),
                           guarded(4, "same_policy", _same_policy, run, rec),
                           guarded(4, "outputs_changed", _outputs_changed, rec),
                           guarded(4, "metrics", _metrics, rec, step1, theme),
                           guarded(4, "moved_toward_preference", moved_item, run, rec, step1,
                                   theme)])


def _same_as_step1(rec: Step4Report, step1, err1) -> CheckItem:
    if step1 is None:
        return scored(4, "same_prompts_spec", False, f"step 1 unreadable: {err1}")
    differ = [k for k, v, v1 in (("prompts", rec.prompts, step1.prompts),
                                 ("generation_spec", rec.generation_spec, step1.generation_spec),
                                 ("outputs_before", rec.outputs_before, step1.outputs))
              if v != v1]
    return scored(4, "same_prompts_spec", not differ, "same prompts, outputs and GenerationSpec "
                  "as step 1" if not differ else f"differs from step 1: {', '.join(differ)}; "
                  "compare with the saved baseline, do not rebuild it")


def _same_policy(run: Path, rec: Step4Report) -> CheckItem:
    from labkit.artifacts import ArtifactError, weights_sha256

    training, _ = load(Step3Training, run)
    try:
        actual = weights_sha256(run / Step3Training.POLICY_DIR)
    except (ArtifactError, OSError):
        actual = None
    claimed = rec.policy_sha256
    ok = bool(claimed) and claimed == actual == getattr(training, "policy_sha256", None)
    return scored(4, "same_policy", ok, "the report is about the step-3 policy" if ok else
                  "policy_sha256 differs from the saved step-3 policy: reload it from "
                  f"{Step3Training.POLICY_DIR}/ and re-run")


def _outputs_changed(rec: Step4Report) -> CheckItem:
    before, after = rec.outputs_before, rec.outputs_after
    if not (isinstance(before, list) and isinstance(after, list) and len(before) == len(after)):
        return scored(4, "outputs_changed", False, "outputs_before/outputs_after are missing "
                      "or of different lengths")
    n = sum(b != a for b, a in zip(before, after))
    return scored(4, "outputs_changed", n > 0, f"{n}/{len(after)} outputs changed" if n else
                  "no output changed: the policy behaves like the base model")


def _metrics(rec: Step4Report, step1, theme=None) -> CheckItem:
    metrics = as_dict(rec.metrics)
    # a judge only knows the teaching model's styles: null is right for GPT-2, and for a
    # theme without a judge (the class's theme: LABKIT_THEME)
    nullable = set() if judge_for(step1, theme) else {"style_rate_before", "style_rate_after"}
    missing = [k for k in rubric.METRIC_KEYS if not finite(metrics.get(k))
               and not (k in nullable and k in metrics and metrics[k] is None)]
    return scored(4, "metrics", not missing, f"missing or not finite: {', '.join(missing)}"
                  if missing else "all metrics present")



# ----------------------------------------------------------------------------- direction
def judge_for(step1, theme=None):
    """The class theme's judge when the run used the teaching model, else None: a judge
    reads only the teaching model's styles, and some themes have none."""
    from labkit.themes import load_theme

    model = getattr(step1, "model", None)
    if isinstance(model, dict) and model.get("is_teaching") is True:
        return (theme or load_theme()).judge
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
    swapped = sum(judge(r["chosen"]) != judge.preferred == judge(r["rejected"]) for r in rows)
    return swapped, len(rows)


def moved_item(run, rec: Step4Report, step1, theme=None) -> CheckItem:
    judge = judge_for(step1, theme)
    if judge is None:
        return scored(4, "moved_toward_preference", True, "no style judge for this model: "
                      "not applicable")
    metrics = rec.metrics if isinstance(rec.metrics, dict) else {}
    before, after = metrics.get("style_rate_before"), metrics.get("style_rate_after")
    if not all(finite(v) for v in (before, after)):
        return scored(4, "moved_toward_preference", False, "style_rate_before/after are not "
                      "recorded: run the style-rate cell, then save the report")
    swapped, judged = swapped_pairs(run, judge)
    moved = after > before
    preferred = judge.preferred
    text = (f"{preferred}-style rate on the held-out concepts {before:.2f} -> {after:.2f}: "
            + ("moved toward" if moved else "did not move toward")
            + f" the stated preference ({preferred!r})")
    if judged and swapped * 2 > judged:
        text += (f". {swapped}/{judged} of your pairs reject the {preferred} answer and choose "
                 "the other: chosen and rejected look swapped against the preference, so DPO "
                 "trained the opposite style")
    return scored(4, "moved_toward_preference", moved and not swapped * 2 > judged, text)
