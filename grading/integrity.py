"""Recompute instead of trusting: the integrity items only the auto-grader runs, and
`grade_run`, which adds them to the checks' results.

With the grader's own trusted base model `base` = (model, tokenizer, info): regenerate the
baseline and the aligned outputs with the recorded GenerationSpec, and check the training
log against its config and the step-2 data.
"""
from __future__ import annotations

import math
from pathlib import Path

from labkit.steps import Step1Baseline, Step3Training, Step4Report

from . import checks
from .checks import as_dict, finite
from .policy import load_policy
from .results import CheckItem, scored


def baseline_reproduces_item(run: Path, base) -> CheckItem:
    rec, err = checks.load(Step1Baseline, run)
    if rec is None:
        return scored(1, "baseline_reproduces", False, err)
    made_by = as_dict(rec.model).get("resolved")
    if made_by != base[2].resolved:
        return scored(1, "baseline_reproduces", False, f"the baseline says it was made by "
                      f"{made_by!r}, but this class uses {base[2].resolved!r}")
    return scored(1, "baseline_reproduces", *_regenerates(base[0], base[1], rec, rec.outputs))


def outputs_reproduce_item(run: Path, base) -> CheckItem:
    rec, err = checks.load(Step4Report, run)
    step1, err1 = checks.load(Step1Baseline, run)
    if rec is None or step1 is None:
        return scored(4, "outputs_reproduce", False, err or err1)
    try:
        policy = load_policy(run, base)
    except Exception as exc:  # a missing or mismatched policy is the submission's
        return scored(4, "outputs_reproduce", False, f"cannot load the saved policy: {exc}")
    return scored(4, "outputs_reproduce", *_regenerates(policy, base[1], step1,
                                                         rec.outputs_after))


def _regenerates(model, tokenizer, step1: Step1Baseline, expected) -> tuple[bool, str]:
    """Generate step 1's prompts with step 1's GenerationSpec; equal to `expected`?"""
    from labkit.config import GenerationSpec
    from labkit.generation import generate

    try:
        spec = GenerationSpec.from_dict(as_dict(step1.generation_spec))
        outputs = generate(model, tokenizer, step1.prompts, spec)
    except Exception as exc:  # a bad spec or prompt list is the submission's
        return False, f"cannot regenerate: {exc}"
    if outputs == expected:
        return True, f"all {len(outputs)} outputs regenerated exactly"
    bad = [i + 1 for i, (a, b) in enumerate(zip(outputs, expected or [])) if a != b]
    return False, (f"regenerating gives different outputs (prompts {bad[:5] or 'all'}): "
                   "the artifact was not produced by the saved model")


def log_consistent_item(run: Path, base_info) -> CheckItem:
    """The log must be what this config on this data from this base model produces."""
    rec, err = checks.load(Step3Training, run)
    if rec is None:
        return scored(3, "log_consistent", False, err)
    entries, cfg = checks.training_entries_of(rec), as_dict(rec.dpo_config)
    rows, _, meta, _ = checks.load_pairs(Path(run))
    lr, n = cfg.get("learning_rate"), rec.n_pairs
    problems = [] if finite(lr) and lr > 0 else [f"learning_rate is {lr!r}: nothing can be "
                                                  "learned at 0"]
    if rows is None or n != len(rows) or rec.pairs_sha256 != getattr(meta, "pairs_sha256", None):
        problems.append("not trained on the saved step-2 pairs (n_pairs or pairs_sha256 differ)")
    problems += _step_count_problems(cfg, n, entries)
    logged = [e["learning_rate"] for e in entries if finite(e.get("learning_rate"))]
    if logged and finite(lr) and not 0 < max(logged) <= lr * (1 + 1e-6):
        problems.append(f"the logged learning rates (max {max(logged):g}) do not fit "
                        f"learning_rate={lr:g}")
    trained_from = as_dict(rec.base_model).get("resolved")
    if trained_from != base_info.resolved:
        problems.append(f"trained from {trained_from!r}, but this class uses "
                        f"{base_info.resolved!r}")
    return scored(3, "log_consistent", not problems, "; ".join(problems) or
                  f"{len(entries)} logged steps fit the config and the step-2 data")


def _step_count_problems(cfg: dict, n, entries: list[dict]) -> list[str]:
    bs, epochs = cfg.get("per_device_train_batch_size"), cfg.get("num_train_epochs")
    if not (finite(bs) and bs >= 1 and finite(epochs) and epochs > 0 and isinstance(n, int)):
        return ["dpo_config lacks per_device_train_batch_size/num_train_epochs"]
    accumulation = cfg.get("gradient_accumulation_steps") or 1
    expected = math.ceil(math.ceil(n / bs) / accumulation * epochs)
    last = max((e["step"] for e in entries if finite(e.get("step"))), default=0)
    return [] if last == expected else [f"the log ends at step {last}, but {n} pairs at batch "
                                        f"{bs} for {epochs} epochs make {expected} steps"]


def grade_run(run: Path, base, student_loss: tuple[bool, str]):
    """Every step's CheckResult on a (sanitised) run directory, integrity items included.
    A step not done at all gets its integrity items as "not done yet" too, except
    student_loss, which needs only notebook 3's code."""
    from .rubric import NOT_DONE, items_for

    results = [checks.check_step1(run), checks.check_step2(run),
               checks.check_step3(run, base=base), checks.check_step4(run)]
    recompute = {1: lambda: [baseline_reproduces_item(run, base)],
                 3: lambda: [log_consistent_item(run, base[2])],
                 4: lambda: [outputs_reproduce_item(run, base)]}
    for result in results:
        if result.status == NOT_DONE:
            items = [scored(result.step, i.name, False, NOT_DONE) for i in
                     items_for(result.step, integrity=True) if i.name != "student_loss"]
        else:
            items = recompute.get(result.step, list)()
        if result.step == 3:
            items.append(scored(3, "student_loss", *student_loss))
        result.add(items)
    return results
