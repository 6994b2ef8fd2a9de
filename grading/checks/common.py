"""What every step's check shares: reading a step record tolerantly (a broken artifact is a
message, never an exception), the run directory, and the small value tests.

Checks never raise on a student's mistake: a missing artifact becomes "not done yet" with a
hint, a broken one a failed item whose message says what is wrong. Records are loaded with
`labkit.steps` (strict=False): a malformed field fails only the items that read it.
"""
from __future__ import annotations

from pathlib import Path

from labkit.artifacts import finite
from labkit.steps import Step3Training

from . import bounds
from .results import all_failed, not_done

def load(cls, run: Path):
    """(record, None) or (None, reason): a student's broken artifact is a message. Size and
    nesting depth are bounded before parsing (`bounds.json_problem`)."""
    from labkit.artifacts import ArtifactError

    too_big = bounds.json_problem(cls.path(run))
    if too_big:
        return None, too_big
    try:
        return cls.load(run, strict=False), None
    except ArtifactError as exc:
        return None, str(exc)
    except (RecursionError, MemoryError) as exc:
        return None, f"{cls.FILE} cannot be read ({type(exc).__name__}); re-run its step"


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def run_path(run_dir) -> Path:
    from labkit.artifacts import run_dir as default_run_dir

    return Path(run_dir) if run_dir else default_run_dir(create=False)


def training_entries_of(rec: Step3Training) -> list[dict]:
    from labkit.health import training_entries

    history = rec.log_history if isinstance(rec.log_history, list) else []
    return training_entries([e for e in history if isinstance(e, dict)])


def open_record(step: int, cls, run_dir):
    """(run, record, None), or (run, None, the step's result) when the record's file is
    missing ("not done yet") or cannot be read as that record (every item failed)."""
    run = run_path(run_dir)
    if not cls.exists(run):
        return run, None, not_done(step, cls.FILE)
    rec, err = load(cls, run)
    return run, rec, None if rec is not None else all_failed(step, err)


def list_of(value) -> list:
    return value if isinstance(value, list) else []


def problem_text(problems, limit: int = 4) -> str:
    shown = "; ".join(str(p) for p in problems[:limit])
    return shown + (f" (and {len(problems) - limit} more)" if len(problems) > limit else "")
