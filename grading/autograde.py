"""Grade one submission end to end: plan what to run, execute its notebooks in a sandbox,
copy its artifacts out, and grade them in the grader's own process. Orchestration only:
the jobs are grading.submission (find, plan, copy), grading.sandbox and grading.kernel (run
untrusted notebooks), grading.student_code and grading.student_logps (the exercises' code
alone), grading.checks and grading.integrity (the grade).
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit import runtime

from .kernel import NotebookRun, execute_notebook
from .rubric import NOTEBOOKS
from .sandbox import REPO, Limits, Sandbox, namespaces_work  # noqa: F401 - re-exported
from .submission import copy_artifacts, find_notebooks, plan


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
    return {"name": name, "source": str(path), "steps": [r.to_dict() for r in results],
            "runs": [r.__dict__ for r in runs], "notes": notes, "isolation": box.isolation(),
            "reflections": written, "seconds": time.monotonic() - start}


def _grade(path: Path, opts: Options, box: Sandbox, out: Path, start: float, runs: list,
           written: list):
    """Run (unless opts.execute is off) and grade: (step results, notes)."""
    from .integrity import grade_run
    from .policy import base_model
    from .results import scored
    from .student_code import check_student_loss
    from .student_logps import check_student_logps

    try:
        if opts.execute:
            notebooks, graded, notes = plan(path, opts.reference)
            deadline = start + opts.limits.total_timeout
            for step in range(1, 5):
                src = notebooks.get(step)
                if src is None:
                    if step in graded:
                        runs.append(NotebookRun(step, NOTEBOOKS[step], "missing",
                                                "not in the submission"))
                    continue
                dst = box.work / "notebooks" / NOTEBOOKS[step]
                dst.parent.mkdir(exist_ok=True)
                shutil.copyfile(src, dst)
                run = execute_notebook(dst, step, cell_timeout=opts.limits.cell_timeout,
                                       deadline=deadline, box=box, save_to=out / "executed")
                run.message = run.message.replace(str(box.work), "<work>")
                runs.append(run)
            run_dir = box.run_dir
        else:
            run_dir = path / "run" if (path / "run").is_dir() else path
            notebooks, notes = find_notebooks(path) if path.is_dir() else ({}, [])
            graded = [1, 2, 3, 4]
        written += _reflections([notebooks[s] for s in graded if s in notebooks], notes)
        graded_run = box.root / "graded"
        notes += [f"ignored {s}" for s in copy_artifacts(run_dir, graded_run)]
        base = base_model(opts.model)
        loss = (check_student_loss(notebooks[3], box.run_untrusted, box.root / "extract")
                if 3 in notebooks else (False, "notebook 3 is not in the submission"))
        logps = (check_student_logps(notebooks[3], box.run_untrusted, box.root / "extract")
                 if 3 in notebooks else (False, "notebook 3 is not in the submission"))
        results = [r for r in grade_run(graded_run, base, loss) if r.step in graded]
        for result in (r for r in results if r.step == 3):  # exercise 3.3, next to 3.1
            result.items = [i for i in result.items if i.name != "student_logps"]
            result.add([scored(3, "student_logps", *logps)])
        for run in runs:  # a notebook that stopped explains its step's missing points
            for result in results:
                if result.step == run.step and run.status != "ok":
                    result.hints.insert(0, f"{run.notebook}: {run.status}: {run.message}")
    finally:
        if not opts.keep_work:
            shutil.rmtree(box.root, ignore_errors=True)
    return results, notes


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
