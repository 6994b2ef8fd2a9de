"""check_step4: the report against step 1 and step 3, its metrics, and the measured outcome
(`moved_toward_preference` and `not_worse`, in grading.outcome).
"""
from __future__ import annotations

from pathlib import Path

from labkit.artifacts import finite
from labkit.steps import Step1Baseline, Step3Training, Step4Report

from . import rubric
from .bounds import guarded
from .common import as_dict, load, open_record
from .outcome import judge_for, moved_item, worse_item
from .results import CheckItem, CheckResult, scored, step_result


def check_step4(run_dir=None, theme=None) -> CheckResult:
    """`theme`: the class's Theme (its judge, its bounds); default: labkit's current one."""
    run, rec, early = open_record(4, Step4Report, run_dir)
    if early:
        return early
    step1, err1 = load(Step1Baseline, run)
    return step_result(4, [guarded(4, "same_prompts_spec", _same_as_step1, rec, step1, err1),
                           guarded(4, "same_policy", _same_policy, run, rec),
                           guarded(4, "outputs_changed", _outputs_changed, rec),
                           guarded(4, "metrics", _metrics, rec, step1, theme),
                           guarded(4, "moved_toward_preference", moved_item, run, rec, step1,
                                   theme),
                           guarded(4, "not_worse", worse_item, rec, theme)])


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
    # the judge's means are null only for a theme without a judge
    nullable = set() if judge_for(step1, theme) else {"style_rate_before", "style_rate_after"}
    missing = [k for k in rubric.METRIC_KEYS if not finite(metrics.get(k))
               and not (k in nullable and k in metrics and metrics[k] is None)]
    return scored(4, "metrics", not missing, f"missing or not finite: {', '.join(missing)}"
                  if missing else "all metrics present")
