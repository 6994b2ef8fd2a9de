"""grading: the DPO Lab's checks and auto-grader.

In a notebook, `grading.check(N)` grades step N's artifacts and shows the result. For a
class, `python -m grading SUBMISSION... --out DIR` runs each submission in isolation and
grades it with the same checks plus integrity checks. One module per job: docs/architecture.md.
"""
from .checks import check, check_step1, check_step2, check_step3, check_step4
from .results import CheckItem, CheckResult

__all__ = ["CheckItem", "CheckResult", "check", "check_step1", "check_step2", "check_step3",
           "check_step4"]
