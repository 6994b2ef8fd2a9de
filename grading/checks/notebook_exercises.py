"""Exercises 3.1 and 3.3 graded inside the notebook, exactly as the auto-grader grades them.

Why: `grading.check(3)` used to leave `student_loss` and `student_logps` to the auto-grader,
so a notebook could show the exercise's self-check "NOT YET" right above "PASSED 15/15".
Here the functions the student defined in this kernel get the auto-grader's own random
cases, the same `call`, the same comparison and the same rule against calling the reference
(all in `exercise_cases`), so both verdicts agree. The student's own kernel runs them:
nothing untrusted is involved in grading here.
"""
from __future__ import annotations

import ast

from .exercise_cases import EXERCISES, KEPT, Exercise, fresh_seed, reference_calls
from .results import CheckItem, CheckResult, scored


def session_source(namespace: dict) -> str:
    """The imports and definitions of every cell run in this kernel (IPython's `In`)."""
    kept = []
    for cell in namespace.get("In") or []:
        try:
            tree = ast.parse(cell)
        except (SyntaxError, ValueError, TypeError):
            continue
        kept += [ast.get_source_segment(cell, n) for n in tree.body if isinstance(n, KEPT)]
    return "\n".join(s for s in kept if s)


def exercise_item(exercise: Exercise, namespace: dict, source: str) -> CheckItem:
    """One exercise's item: the notebook's function on fresh random cases."""
    import torch

    name, function = exercise.item, exercise.function
    fn = namespace.get(function)
    if not callable(fn):
        return scored(3, name, False, f"{function} is not defined in this kernel: run "
                      "its cell, then this one")
    calls = reference_calls(source, function) if source else []
    if calls:
        return scored(3, name, False, f"{function} calls {', '.join(calls)}: the "
                      "exercise asks you to write it yourself")
    helpers = {"torch": torch}
    exec(exercise.call, helpers)  # noqa: S102 - the grader's own call(fn, case), as in the fork
    cases = exercise.make_cases(fresh_seed())
    try:
        answers = [helpers["call"](fn, case) for case in cases]
    except Exception as exc:  # noqa: BLE001 - the student's code failed: that is the verdict
        return scored(3, name, False, f"{function} raised {type(exc).__name__}: {exc}")
    return scored(3, name, *exercise.compare(cases, answers))


def with_exercises(result: CheckResult, namespace: dict) -> CheckResult:
    """`result` (step 3) with the exercise items scored from this kernel's functions."""
    if result.step != 3 or not result.items or not any(
            namespace.get(ex.function) for ex in EXERCISES):
        return result
    from .rubric import NOT_DONE_HINTS

    source = session_source(namespace)
    result.add([exercise_item(ex, namespace, source) for ex in EXERCISES])
    if not result.passed and not result.hints:
        result.hints.append(NOT_DONE_HINTS[3])
    return result
