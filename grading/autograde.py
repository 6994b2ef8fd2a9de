"""Grade one submission end to end: plan what to run, execute its notebooks in a sandbox,
copy its artifacts out, and grade them in the grader's own process. Orchestration only:
the jobs are grading.submission (find, plan, copy), grading.sandbox and grading.kernel (run
untrusted notebooks), grading.student_code and grading.student_logps (the exercises' code
alone), grading.checks and grading.integrity (the grade).
"""
from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from labkit import runtime

from .kernel import NotebookRun, execute_notebook
from .rubric import NOTEBOOKS
from .sandbox import REPO, Limits, Sandbox, namespaces_work, tree_size  # noqa: F401
from .submission import copy_artifacts, copy_submission, find_notebooks, plan

WORK_FOLDER = "your work folder"  # what messages say instead of the grader's paths


@dataclass
class Options:
    model: str = "gpt2"
    execute: bool = True
    limits: Limits = field(default_factory=Limits)
    reference: Path = REPO / "notebooks"
    hide: tuple[Path, ...] = ()
    keep_work: bool = False
    threads: int | None = None  # per job: kernels and grader use the same, so that
    # regenerated outputs are computed the way the kernel computed them


class GradingTimeout(BaseException):
    """The grader's own checks on one submission ran past Limits.grading_timeout.
    A BaseException, so that no `except Exception` guard on the way (an item's own, or one
    inside transformers) can swallow it and let the checks run on without a limit."""


def grade_submission(path, name: str, opts: Options, batch_root, out_dir, label="") -> dict:
    """Grade one submission end to end; returns a JSON-able record of everything found.
    Never raises on the submission's account: what goes wrong becomes a note. `label`
    ("[3/8]") prefixes the progress line printed on stderr when grading starts."""
    print(f"{label} start {name}".strip(), file=sys.stderr, flush=True)

    start, path, out = time.monotonic(), Path(path), Path(out_dir) / name
    box = Sandbox(Path(batch_root) / name, opts.model, opts.limits,
                  (Path(batch_root), Path(out_dir), *opts.hide), opts.threads).create()
    runs: list[NotebookRun] = []
    written: list[dict] = []  # the reflection answers, for a person to grade
    # the grader's side of the runtime policy: as many threads as each kernel gets, and
    # library logging off so that the progress lines stay readable
    with runtime.threads(opts.threads), runtime.quiet_libraries():
        results, notes = _grade(path, opts, box, out, start, runs, written)
    isolation = box.isolation()
    box.release()
    return {"name": name, "source": str(path), "steps": [r.to_dict() for r in results],
            "runs": [r.__dict__ for r in runs], "notes": notes, "isolation": isolation,
            "reflections": written, "seconds": time.monotonic() - start}


def _grade(path: Path, opts: Options, box: Sandbox, out: Path, start: float, runs: list,
           written: list):
    """Run (unless opts.execute is off) and grade: (step results, notes)."""
    try:
        if opts.execute:
            notebooks, graded, notes = plan(path, opts.reference)
            notes += _execute(path, notebooks, graded, opts, box, out, start, runs)
            run_dir = box.run_dir
        else:
            run_dir = path / "run" if (path / "run").is_dir() else path
            notebooks, notes = find_notebooks(path) if path.is_dir() else ({}, [])
            graded = [1, 2, 3, 4]
        written += _reflections([notebooks[s] for s in graded if s in notebooks], notes)
        from .policy import base_model

        base = base_model(opts.model)  # the grader's own model: not on the submission's clock
        try:
            with _time_limit(opts.limits.grading_timeout):
                results = _check(run_dir, notebooks, graded, base, box, notes)
        except GradingTimeout:
            results = _timed_out(graded, opts.limits.grading_timeout)
        for run in runs:  # a notebook that stopped explains its step's missing points
            for result in results:
                if result.step == run.step and run.status != "ok":
                    result.hints.insert(0, f"{run.notebook}: {run.status}: {run.message}")
        for result in (r for r in results if r.step in notebooks):  # the file they submitted
            name = Path(notebooks[result.step]).name
            result.hints = [h.replace(NOTEBOOKS[result.step], name) for h in result.hints]
        _hide_paths(box, results, notes, runs)
    finally:
        if not opts.keep_work:
            shutil.rmtree(box.root, ignore_errors=True)
    return results, notes


def _execute(path, notebooks, graded, opts, box, out, start, runs) -> list[str]:
    """Run the planned notebooks in the submission's writable copy, in step order; stop
    when the work folder outgrows its quota. Returns notes."""
    notes = []
    if path.is_dir():  # the whole folder, as the student had it in JupyterLab
        notes += copy_submission(path, box.lab, int(opts.limits.copy_mb * 2**20))
        copies = {s: box.lab / p.relative_to(path) for s, p in notebooks.items()}
    else:  # one notebook; earlier steps from the reference, next to it
        copies = {s: box.lab / (p.name if p == path else NOTEBOOKS[s])
                  for s, p in notebooks.items()}
    deadline, quota = start + opts.limits.total_timeout, opts.limits.disk_gb * 2**30
    over = ""
    for step in range(1, 5):
        src = notebooks.get(step)
        if src is None:
            if step in graded:
                runs.append(NotebookRun(step, NOTEBOOKS[step], "missing", "not in the submission"))
            continue
        dst = copies[step]
        if over:
            runs.append(NotebookRun(step, dst.name, "skipped", f"not run: {over}"))
            continue
        if not dst.is_file():  # left out by the copy's limits, or the reference's
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        runs.append(execute_notebook(dst, step, cell_timeout=opts.limits.cell_timeout,
                                     deadline=deadline, box=box, save_to=out / "executed"))
        used = tree_size(box.work)
        if used > quota:
            over = (f"{WORK_FOLDER} held {used / 2**30:.1f} GB after {dst.name}, over the "
                    f"{opts.limits.disk_gb:g} GB limit")
            notes.append(over)
    return notes


def _check(run_dir, notebooks, graded, base, box, notes):
    """The grade, computed here on a sanitised copy of the artifacts against `base`, the
    grader's own (model, tokenizer, info)."""
    from .integrity import grade_run
    from .results import scored
    from .student_code import check_student_loss
    from .student_logps import check_student_logps

    weights = sum(p.numel() * p.element_size() for p in base[0].parameters())
    graded_run = box.root / "graded"
    notes += [f"ignored {s}" for s in copy_artifacts(run_dir, graded_run,
                                                      3 * weights + (64 << 20))]
    loss = (check_student_loss(notebooks[3], box.run_untrusted, box.root / "extract")
            if 3 in notebooks else (False, "notebook 3 is not in the submission"))
    logps = (check_student_logps(notebooks[3], box.run_untrusted, box.root / "extract")
             if 3 in notebooks else (False, "notebook 3 is not in the submission"))
    results = [r for r in grade_run(graded_run, base, loss) if r.step in graded]
    for result in (r for r in results if r.step == 3):  # exercise 3.3, next to 3.1
        result.items = [i for i in result.items if i.name != "student_logps"]
        result.add([scored(3, "student_logps", *logps)])
    return results


def _timed_out(graded, seconds):
    """Every item of the graded steps failed, saying why: the grade could not finish."""
    from .results import CheckResult, scored
    from .rubric import items_for

    message = (f"not graded: the grader's checks on this submission ran past their "
               f"{seconds:g} s limit (e.g. far more prompts or pairs than the lab asks for)")
    return [CheckResult(s, [scored(s, i.name, False, message) for i in items_for(s)],
                        [message], "failed") for s in graded]


def _importing(frame) -> bool:
    """Is this thread inside an import? An exception raised there leaves the module half
    made in sys.modules (sympy without .core, torch that segfaults on the next import):
    every later submission in this grader process would fail, or crash it."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def _time_limit(seconds: float):
    """Raise GradingTimeout in this (main) thread after `seconds`, once no import is under
    way; no limit off the main thread, where signals cannot be delivered."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def alarm(signum, frame):
        if _importing(frame):  # let the import finish, then strike
            signal.setitimer(signal.ITIMER_REAL, 0.005)
            return
        raise GradingTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _hide_paths(box: Sandbox, results, notes: list, runs: list) -> None:
    """No message shows the grader's temporary folders."""
    import os

    paths = sorted({str(p) for q in (box.lab, box.work, box.root)
                    for p in (q, Path(os.path.realpath(q)))}, key=len, reverse=True)

    def clean(text: str) -> str:
        for p in paths:
            text = text.replace(p, WORK_FOLDER)
        return text

    for result in results:
        result.hints = [clean(h) for h in result.hints]
        for item in result.items:
            item.message = clean(item.message)
    notes[:] = [clean(n) for n in notes]
    for run in runs:
        run.message = clean(run.message)


def _reflections(paths: list[Path], notes: list[str]) -> list[dict]:
    """The submission's written answers (never the reference's: graded notebooks only)."""
    from labkit.reflections import collect_all

    rows = []
    for path in paths:
        try:
            rows += collect_all([path])
        except ValueError as exc:  # an unreadable notebook: its run says so too
            notes.append(f"written answers not collected: {exc}")
    return rows
