"""grading: the DPO Lab's checks and auto-grader.

In a notebook, `grading.check(N)` grades step N's artifacts and shows the result. For a
class, `python -m grading SUBMISSION... --out DIR` runs each submission in isolation and
grades it with the same checks plus integrity checks. Folders by job: `checks/` (pure
checks, rubric, results), `run/` (running untrusted code), and the front ends beside them
(docs/architecture.md).
"""
from pathlib import Path

from .checks import CheckItem, CheckResult, check, check_step1, check_step2, check_step3, check_step4

REPO = Path(__file__).resolve().parents[1]  # the lab's root: labkit/, grading/, notebooks/

__all__ = ["CheckItem", "CheckResult", "check", "check_step1", "check_step2", "check_step3",
           "check_step4"]
