"""check_step3: the DPO run (trained, finite, healthy), the saved policy, and the student's
loss against TRL's."""
from __future__ import annotations

from labkit.artifacts import finite
from labkit.steps import Step3Training

from .bounds import guarded
from .common import as_dict, load, run_path, training_entries_of
from .results import CheckItem, CheckResult, all_failed, not_done, scored, step_result


def check_step3(run_dir=None, base=None) -> CheckResult:
    """`base`: (model, tokenizer, info) to compare the policy with; by default the base
    model recorded in the artifact (grading.checks.policy loads it; the auto-grader passes its own)."""
    from .policy import policy_changed_item

    run = run_path(run_dir)
    policy_dir = run / Step3Training.POLICY_DIR
    if not Step3Training.exists(run) and not policy_dir.exists():
        return not_done(3, Step3Training.FILE)
    rec, err = load(Step3Training, run)
    if rec is None:
        return all_failed(3, err)
    entries = training_entries_of(rec)
    has_policy = policy_dir.is_dir()
    trained = scored(3, "trained", len(entries) >= 3 and has_policy,
                     f"{len(entries)} logged training steps"
                     + ("" if len(entries) >= 3 else " (at least 3: set logging_steps=1)")
                     + ("" if has_policy else f"; {Step3Training.POLICY_DIR}/ is missing: "
                        "save the policy"))
    return step_result(3, [trained, guarded(3, "finite_losses", _finite_losses, entries),
                           guarded(3, "health", _health, rec),
                           guarded(3, "policy_changed", policy_changed_item, run, rec, base),
                           guarded(3, "crosscheck", _crosscheck, rec, entries)])


def _finite_losses(entries: list[dict]) -> CheckItem:
    bad = [i + 1 for i, e in enumerate(entries) if not finite(e.get("loss"))]
    if not entries:
        return scored(3, "finite_losses", False, "no loss was logged")
    return scored(3, "finite_losses", not bad, f"loss is not a finite number at logged steps "
                  f"{bad[:5]}" if bad else "all logged losses are finite")


def _health(rec: Step3Training) -> CheckItem:
    """labkit.health's verdict, recomputed from log_history (the recorded one is ignored)."""
    from labkit.health import diagnose

    beta = as_dict(rec.dpo_config).get("beta")
    try:
        diagnosis = diagnose(rec.log_history or [], beta=beta if finite(beta) else None)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return scored(3, "health", False, f"log_history cannot be read: {exc}")
    ok = diagnosis.verdict not in {"no_learning", "diverged", "too_short"}
    return scored(3, "health", ok, f"{diagnosis.verdict}: " + "; ".join(diagnosis.reasons)
                  + ("" if ok else f". What to do: {diagnosis.advice}"))


def _crosscheck(rec: Step3Training, entries: list[dict]) -> CheckItem:
    """Your loss vs TRL's on the same pairs (recomputed from the two numbers, not taken from
    abs_diff), and, when recorded, your step-1 loss vs TRL's first *logged* loss."""
    cc = as_dict(rec.crosscheck)
    student, trl = cc.get("student_loss"), cc.get("trl_loss")
    if not (finite(student) and finite(trl)):
        return scored(3, "crosscheck", False, "no finite crosscheck student_loss/trl_loss: run "
                      "the cross-check cell (crosscheck_with_trl with your loss) after training")
    pairs = {"on the trained policy": (student, trl)}
    first, logged = as_dict(cc.get("first_step")), entries[0].get("loss") if entries else None
    if finite(first.get("student_loss")) and finite(logged):
        pairs["at TRL's first logged step"] = (first["student_loss"], logged)
    worst = max(abs(a - b) for a, b in pairs.values())
    text = "; ".join(f"{k}: yours {a:.6f} vs TRL {b:.6f}" for k, (a, b) in pairs.items())
    return scored(3, "crosscheck", worst < 1e-4, text + ("" if worst < 1e-4 else
                  f" - |diff| {worst:.2e} >= 1e-4: check compute_dpo_loss against the formula "
                  "(beta, chosen minus rejected log-ratios, -logsigmoid, the mean)"))
