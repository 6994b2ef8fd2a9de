"""Exercise 3.3 (compute_sequence_logps), graded from notebook 3 alone, like
`student_code.check_student_loss`: the notebook's imports/defs/constants (never its training
cells) run in a sandboxed child on fresh random logits chosen here; the child only reports
numbers, and the grader compares them with `labkit.dpo.completion_logps` (the core of
`labkit.dpo.sequence_logps`) in its own process, naming the classic bug in its hint.

Scored as the step-3 item `student_logps`; the auto-grader runs it with exercise 3.1 in one
process (`student_code.check_exercises`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..checks.exercise_cases import LOGPS
from .student_code import check_exercise


def check_student_logps(notebook_path: str | Path, run: Callable, workdir: Path,
                        timeout: float = 60, seed: int | None = None) -> tuple[bool, str]:
    """(passed, message) of exercise 3.3 alone (`student_code.check_exercise`: the same
    fresh inputs and unspoofable channel as exercise 3.1)."""
    return check_exercise(LOGPS, notebook_path, run, workdir, timeout, seed)
