"""Recompute instead of trusting: the integrity items only the auto-grader runs, and
`grade_run`, which adds them to the checks' results.

With the grader's own trusted base model `base` = (model, tokenizer, info): verify the
baseline and the aligned outputs by teacher forcing (grading.checks.verify: the same grade on any
device or dtype; a hand-edited token fails), within the caps of `bounds`, and check the training
log against its config and the step-2 data.
"""
from __future__ import annotations

import math
from pathlib import Path

from labkit.steps import Step1Baseline, Step3Training, Step4Report

from labkit.artifacts import finite

from . import bounds
from .common import as_dict, load, training_entries_of
from .step2 import load_pairs
from .policy import load_policy
from .results import CheckItem, scored


def baseline_reproduces_item(run: Path, base) -> CheckItem:
    rec, err = load(Step1Baseline, run)
    if rec is None:
        return scored(1, "baseline_reproduces", False, err)
    made_by = as_dict(rec.model).get("resolved")
    if made_by != base[2].resolved:
        return scored(1, "baseline_reproduces", False, f"the baseline says it was made by "
                      f"{made_by!r}, but this class uses {base[2].resolved!r}")
    return scored(1, "baseline_reproduces", *_verifies(base[0], base[1], rec, rec.outputs,
                                                        rec.output_ids))


def outputs_reproduce_item(run: Path, base) -> CheckItem:
    rec, err = load(Step4Report, run)
    step1, err1 = load(Step1Baseline, run)
    if rec is None or step1 is None:
        return scored(4, "outputs_reproduce", False, err or err1)
    too_much = _bounds_problem(step1)
    if too_much:
        return scored(4, "outputs_reproduce", False, too_much)
    try:
        policy = load_policy(run, base)
    except Exception as exc:  # a missing or mismatched policy is the submission's
        return scored(4, "outputs_reproduce", False, f"cannot load the saved policy: {exc}")
    return scored(4, "outputs_reproduce", *_verifies(policy, base[1], step1, rec.outputs_after,
                                                      rec.outputs_after_ids))


def _bounds_problem(step1: Step1Baseline) -> str | None:
    problems = bounds.spec_problems(step1.generation_spec) + [
        p for p in [bounds.prompts_problem(step1.prompts)] if p]
    return "; ".join(problems) + ": nothing was recomputed" if problems else None


def _verifies(model, tokenizer, step1: Step1Baseline, expected, ids) -> tuple[bool, str]:
    """Could `model` have produced `expected` (the greedy outputs of step 1's prompts with
    step 1's GenerationSpec)? Teacher-forced (grading.checks.verify): the recorded token ids when
    given (their text must decode to `expected`), else the re-tokenized text; one forward
    pass, and a near-tie broken differently on another device or dtype still passes.
    A sampled spec is regenerated exactly (seeded) instead."""
    from labkit.config import GenerationSpec
    from .verify import verify_outputs

    too_much = _bounds_problem(step1)
    if too_much:
        return False, too_much
    prompts = step1.prompts
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) and p
                                                          for p in prompts)):
        return False, "the step-1 prompts are not a list of non-empty strings"
    try:
        spec = GenerationSpec.from_dict(as_dict(step1.generation_spec))
    except (TypeError, ValueError) as exc:
        return False, f"generation_spec is not valid: {exc}"
    if spec.do_sample:
        return _regenerates(model, tokenizer, prompts, spec, expected)
    if not (isinstance(expected, list) and len(expected) == len(prompts)
            and all(isinstance(t, str) for t in expected)):
        return False, f"need one output string per prompt ({len(prompts)} prompts)"
    ids, why = _recorded_ids(tokenizer, expected, ids)
    if why:
        return False, why
    result = verify_outputs(model, tokenizer, prompts, outputs=expected, spec=spec,
                            token_ids=ids, batch_size=spec.batch_size)
    if result.ok:
        return True, (f"all {len(prompts)} outputs verified by teacher forcing ({result.n_tokens}"
                      f" tokens{', re-tokenized from the text' if ids is None else ''}; largest "
                      f"gap {result.max_gap:.3f} logits, tolerance {result.tolerance:g})")
    shown = "; ".join(str(m) for m in result.mismatches[:3])
    return False, (f"the saved model would not produce these outputs: {shown}. The artifact "
                   "was not produced by the saved model with the recorded GenerationSpec")


def _recorded_ids(tokenizer, texts, ids):
    """(ids or None, None) when usable, or (None, why): recorded ids must be one list of
    token ids per output, and decode to the recorded text (an edited text fails here)."""
    if ids is None:
        return None, None
    vocab = len(tokenizer)
    if not (isinstance(ids, list) and len(ids) == len(texts) and all(
            isinstance(row, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                          and 0 <= t < vocab for t in row) for row in ids)):
        return None, (f"the recorded token ids are not one list of token ids (0..{vocab - 1}) "
                      "per output: save generate(..., return_ids=True)'s ids")
    differ = [i + 1 for i, (row, text) in enumerate(zip(ids, texts))
              if tokenizer.decode(row, skip_special_tokens=True) != text]
    if differ:
        return None, (f"outputs {differ[:5]} are not the text their recorded token ids decode "
                      "to: the text was edited after generation, not produced by the saved model")
    return ids, None


def _regenerates(model, tokenizer, prompts, spec, expected) -> tuple[bool, str]:
    """Sampled outputs: generate again with the spec's seed; equal to `expected`?"""
    from labkit.generation import generate

    outputs = generate(model, tokenizer, prompts, spec)
    if outputs == expected:
        return True, f"all {len(outputs)} sampled outputs regenerated exactly (seed {spec.seed})"
    return False, ("regenerating with the recorded seed gives different outputs: the artifact "
                   "was not produced by the saved model")


def log_consistent_item(run: Path, base_info) -> CheckItem:
    """The log must be what this config on this data from this base model produces."""
    rec, err = load(Step3Training, run)
    if rec is None:
        return scored(3, "log_consistent", False, err)
    entries, cfg = training_entries_of(rec), as_dict(rec.dpo_config)
    rows, _, meta, _ = load_pairs(Path(run))
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


def grade_run(run: Path, base, exercises: dict[str, tuple[bool, str]], theme=None):
    """Every step's CheckResult on a (sanitised) run directory, integrity items included.
    `exercises` holds the grade of each exercise's own code (name -> (passed, message):
    student_loss, student_logps), which needs only notebook 3's code, so it is scored even
    when step 3 was not done. A step not done at all gets its other integrity items as "not
    done yet". Each step and each item runs under its own guard: whatever a submission's
    data does, the other steps keep their credit. `theme`: the class's (default: the run's)."""
    from .results import all_failed
    from .rubric import NOT_DONE, items_for
    from .step1 import check_step1
    from .step2 import check_step2
    from .step3 import check_step3
    from .step4 import check_step4

    results = [_guarded_step(step, check, run, all_failed) for step, check in (
        (1, check_step1), (2, lambda r: check_step2(r, theme=theme)),
        (3, lambda r: check_step3(r, base=base)), (4, lambda r: check_step4(r, theme=theme)))]
    recompute = {1: lambda: [bounds.guarded(1, "baseline_reproduces", baseline_reproduces_item,
                                            run, base)],
                 3: lambda: [bounds.guarded(3, "log_consistent", log_consistent_item,
                                            run, base[2])],
                 4: lambda: [bounds.guarded(4, "outputs_reproduce", outputs_reproduce_item,
                                            run, base)]}
    for result in results:
        if result.status == NOT_DONE:
            items = [scored(result.step, i.name, False, NOT_DONE) for i in
                     items_for(result.step, integrity=True) if i.name not in exercises]
        else:
            items = recompute.get(result.step, list)()
        items += [scored(result.step, name, *grade) for name, grade in exercises.items()
                  if any(i.name == name for i in items_for(result.step))]
        result.add(items)
    return results


def _guarded_step(step: int, check, run: Path, all_failed):
    try:
        return check(run)
    except Exception as exc:  # noqa: BLE001 - a guard the items' own guards should pre-empt
        return all_failed(step, f"this step's artifacts could not be checked "
                                f"({type(exc).__name__}: {str(exc)[:200]})")
