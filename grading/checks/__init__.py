"""The checks a notebook imports: `check(N)` grades step N's artifacts and shows the result.

Pure: they read a run directory's step records and compute; nothing here runs a student's
code. The same functions grade in the auto-grader's own process, so what a student sees is
what the instructor's grader computes. Points come from `rubric`.
"""
from __future__ import annotations

from .results import CheckItem, CheckResult
from .step1 import check_step1
from .step2 import check_step2
from .step3 import check_step3
from .step4 import check_step4

CHECKS = {1: check_step1, 2: check_step2, 3: check_step3, 4: check_step4}

__all__ = ["CHECKS", "CheckItem", "CheckResult", "check", "check_step1", "check_step2",
           "check_step3", "check_step4"]


def check(step: int, run_dir=None) -> CheckResult:
    """Run step `step`'s check on the run directory and show it (HTML in Jupyter, text
    elsewhere). Returns the CheckResult. In a notebook, step 3 also grades exercises 3.1
    and 3.3 from this kernel's functions, as the auto-grader does."""
    if step not in CHECKS:
        raise ValueError(f"grading.check takes a step number 1-4, not {step!r}")
    result = CHECKS[step](run_dir)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:  # exercises 3.1/3.3 from this kernel, as the auto-grader grades them
        from .notebook_exercises import with_exercises

        result = with_exercises(result, shell.user_ns)
    if shell is None:
        print(result)
    else:
        result._ipython_display_()
    return result
