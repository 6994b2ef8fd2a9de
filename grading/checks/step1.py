"""check_step1: the baseline captured before any training."""
from __future__ import annotations

from labkit.steps import Step1Baseline

from . import bounds
from .bounds import guarded
from .common import as_dict, open_record
from .results import CheckItem, CheckResult, scored, step_result


def check_step1(run_dir=None) -> CheckResult:
    run, rec, early = open_record(1, Step1Baseline, run_dir)
    if early:
        return early
    prompts = rec.prompts
    n = len(prompts) if isinstance(prompts, list) and all(
        isinstance(p, str) and p.strip() for p in prompts) else 0
    return step_result(1, [scored(1, "baseline_saved", True, f"{Step1Baseline.FILE} found"),
                           guarded(1, "model_and_spec", _model_and_spec, rec),
                           guarded(1, "held_prompts", _held_prompts, rec, n),
                           guarded(1, "outputs", _outputs, rec, n)])


def _model_and_spec(rec: Step1Baseline) -> CheckItem:
    from labkit.config import GenerationSpec

    resolved = as_dict(rec.model).get("resolved")
    if not (isinstance(resolved, str) and resolved):
        return scored(1, "model_and_spec", False, "the model that made the baseline is not "
                      "recorded (model.resolved): save info.to_dict()")
    if not rec.generation_spec:
        return scored(1, "model_and_spec", False, "no generation_spec recorded")
    try:
        spec = GenerationSpec.from_dict(as_dict(rec.generation_spec))
    except (TypeError, ValueError) as exc:
        return scored(1, "model_and_spec", False, f"generation_spec is not valid: {exc}")
    too_much = bounds.spec_problems(rec.generation_spec)
    if too_much:
        return scored(1, "model_and_spec", False, "; ".join(too_much))
    return scored(1, "model_and_spec", True, f"made by {resolved!r} with {spec}")


def _held_prompts(rec: Step1Baseline, n: int) -> CheckItem:
    """At least 4 on-theme prompts and at least 1 far one (notebook 1's Exercise 1.1), each
    with its kind, within the grader's limits."""
    kinds = rec.prompt_kinds
    kinds_ok = isinstance(kinds, list) and len(kinds) == n and all(
        isinstance(k, str) and k in ("theme", "far") for k in kinds)
    counts = {k: kinds.count(k) for k in ("theme", "far")} if kinds_ok else {}
    problems = [p for p in [bounds.prompts_problem(rec.prompts)] if p]
    if not kinds_ok:
        problems.append("prompt_kinds must say 'theme' or 'far' for each prompt")
    elif counts["theme"] < 4 or counts["far"] < 1:
        problems.append(f"{counts['theme']} on-theme and {counts['far']} far prompts: at least "
                        "4 on-theme and 1 far are needed (theme_prompts and far_prompts)")
    shown = f"{n} held prompts" + (f" ({counts['theme']} on-theme, {counts['far']} far)"
                                   if counts else "")
    return scored(1, "held_prompts", not problems,
                  shown + (": " + "; ".join(problems) if problems else ""))


def _outputs(rec: Step1Baseline, n: int) -> CheckItem:
    outputs = rec.outputs if isinstance(rec.outputs, list) else []
    flat = [o for out in outputs for o in (out if isinstance(out, list) else [out])]
    empty = [i + 1 for i, o in enumerate(flat) if not (isinstance(o, str) and o.strip())]
    if n and len(outputs) == n and not empty:
        return scored(1, "outputs", True, f"{len(flat)} non-empty outputs")
    return scored(1, "outputs", False, f"need one non-empty output per prompt: {n} prompts, "
                  f"{len(outputs)} outputs" + (f", empty: {empty[:5]}" if empty else ""))
