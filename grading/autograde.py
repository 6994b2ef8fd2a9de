"""Grade one submission end to end, top to bottom: plan what to run, execute its notebooks in
a sandbox, collect a sanitised copy of their artifacts, grade that copy in the grader's own
process, and render the result. One `Options` record goes in, one `SubmissionResult` comes
out. The jobs themselves live in `run/` (submission, sandbox, kernel, the exercise runners,
the time limit) and `check/` (the checks, integrity, the report).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit import runtime

from . import REPO
from .checks.gradescope_format import write_results
from .checks.report import NotebookRun, SubmissionResult
from .checks.rubric import NOTEBOOKS
from .run.kernel import execute_notebook
from .run.limits import Limits
from .run.reference_cache import SHARED_RUN, copy_reference, restore, shared_steps
from .run.sandbox import Sandbox, tree_size
from .run.submission import Plan, copy_artifacts, plan, plan_existing
from .run.time_limit import GradingTimeout, time_limit
from .run.unprivileged import account

WORK_FOLDER = "your work folder"  # what messages say instead of the grader's paths


@dataclass(frozen=True)
class Options:
    """How a batch is graded: the class's model and theme, the limits, and the switches."""

    model: str = "gpt2"
    theme: str | None = None  # a shipped theme's name or a .toml path; None: labkit's default
    execute: bool = True
    limits: Limits = field(default_factory=Limits)
    reference: Path = REPO / "notebooks"
    keep_work: bool = False
    threads: int | None = None  # per job: kernels and grader use the same, so that
    # regenerated outputs are computed the way the kernel computed them
    namespaces: bool = True  # False: kernels run without them even where they work
    integrity_visibility: str = "visible"
    out: Path = Path("graded")  # out/<name>/: results.json, feedback.md, executed notebooks
    stage: object = None  # run.stage.Stage: staged once per batch for the kernels'
    # unprivileged user (root without namespaces); made per submission when None
    reference_cache: bool = True  # the reference steps a submission lacks: run once, shared

    def kernel_settings(self) -> dict:
        """The LABKIT_* configuration every kernel of the batch gets."""
        settings = {"LABKIT_MODEL": self.model, "LABKIT_SKIP_OPTIONAL": "1"}
        if self.theme:
            settings["LABKIT_THEME"] = self.theme
        return settings


def grade_submission(path, name: str, opts: Options, batch_root, label="") -> SubmissionResult:
    """Grade one submission. Never raises on the submission's account: what goes wrong
    becomes a note or a failed item. `label` ("[3/8]") prefixes the progress line."""
    print(f"{label} start {name}".strip(), file=sys.stderr, flush=True)
    start, path = time.monotonic(), Path(path)
    result = SubmissionResult(name, str(path))
    # untrusted code runs as an unprivileged user where the grader is root without
    # namespaces; all its processes are killed, and checked gone, before this returns
    with account(opts.stage, opts.model, opts.namespaces, opts.theme) as user:
        box = Sandbox(Path(batch_root) / name, opts.model, opts.limits, opts.threads,
                      opts.kernel_settings(), opts.namespaces, account=user).create()
        # the grader's side of the runtime policy: as many threads as each kernel gets, and
        # library logging off so that the progress lines stay readable
        exercises = None
        try:
            with runtime.threads(opts.threads), runtime.quiet_libraries():
                work, run_dir = ((plan(path, opts.reference), box.run_dir) if opts.execute
                                 else plan_existing(path))
                exercises = start_exercises(work, box)
                if opts.execute:
                    shared = shared_steps(work, opts, batch_root, _warn)  # off the clock
                    result.runs = execute(work, opts, box, time.monotonic(), result.notes,
                                          shared)
                result.notes[:0] = work.notes
                graded_run = collect(run_dir, box, opts.model, result.notes)
                result.reflections = written_answers(work, result.notes)
                result.steps = grade(work, graded_run, box, opts, result.runs, exercises)
                hide_paths(box, result)
        finally:
            if exercises is not None:
                exercises.cancel()
            result.isolation = box.isolation()
            box.release()
            if not opts.keep_work:
                shutil.rmtree(box.root, ignore_errors=True)
    result.seconds = time.monotonic() - start
    return result


def execute(work: Plan, opts: Options, box: Sandbox, start: float, notes: list,
            shared=((), {}, None)) -> list:
    """Run the planned notebooks in the sandbox's copy, in step order; stop when the work
    folder outgrows its quota (said in `notes`). The `shared` reference steps (steps,
    files, cache entry) are not run, and their notebooks (solutions) never reach the
    sandbox: their cached records are copied in, read-only, and put back after the run if a
    notebook changed them. Returns the NotebookRuns."""
    steps, files, entry = shared
    copies, left_out = work.copy_into(box.lab, int(opts.limits.copy_mb * 2**20), skip=steps)
    notes += left_out
    if steps:
        copy_reference(entry, box.run_dir)
    deadline, quota = start + opts.limits.total_timeout, opts.limits.disk_gb * 2**30
    runs, over = [], ""
    for step in range(1, 5):
        if step not in copies:
            if step in steps:
                runs.append(NotebookRun(step, NOTEBOOKS[step], "ok", SHARED_RUN))
            elif step in work.graded:
                runs.append(NotebookRun(step, NOTEBOOKS[step], "missing", "not in the submission"))
            continue
        if over:
            runs.append(NotebookRun(step, copies[step].name, "skipped", f"not run: {over}"))
            continue
        runs.append(execute_notebook(copies[step], step, cell_timeout=opts.limits.cell_timeout,
                                     deadline=deadline, box=box,
                                     save_to=opts.out / box.root.name / "executed"))
        used = tree_size(box.work)
        if used > quota:
            over = (f"{WORK_FOLDER} held {used / 2**30:.1f} GB after {copies[step].name}, over "
                    f"the grader's limit of {opts.limits.describe('disk_gb')}")
            notes.append(over)
    if steps:
        notes += [f"{rel}: the reference's file was changed by the submission's notebook; "
                  "the reference's was graded" for rel in restore(box.run_dir, files, entry)]
    return runs


def start_exercises(work: Plan, box: Sandbox):
    """Exercises 3.1/3.3 of the submission's notebook 3 (run.student_code.Started): their
    sandboxed process starts now where it may wait beside the kernels (inside namespaces);
    the student's code in it runs only when `grade` asks for the verdicts."""
    from .run.student_code import start_exercises

    notebook3 = work.notebooks.get(3) if 3 in work.graded else None
    return start_exercises(notebook3, box.start_untrusted, box.root / "extract")


def collect(run_dir: Path, box: Sandbox, model: str, notes: list) -> Path:
    """A sanitised copy of the run's artifacts (regular files of the step records only),
    which is all the grade reads. The policy may be at most a few times the base model."""
    from .checks.policy import base_model

    weights = sum(p.numel() * p.element_size() for p in base_model(model)[0].parameters())
    graded_run = box.root / "graded"
    notes += [f"ignored {s}" for s in copy_artifacts(run_dir, graded_run,
                                                      3 * weights + (64 << 20))]
    return graded_run


def grade(work: Plan, graded_run: Path, box: Sandbox, opts: Options, runs: list,
          exercises) -> list:
    """The step results: the checks and integrity recomputations against the grader's own
    base model, and the `exercises`' code run alone in the sandbox, all within the grading
    time limit. A notebook that stopped explains its step's missing points."""
    from labkit.themes import load_theme

    from .checks.integrity import grade_run
    from .checks.policy import base_model

    base, theme = base_model(opts.model), load_theme(opts.theme)  # off the submission's clock
    try:
        with time_limit(opts.limits.grading_timeout):
            results = [r for r in grade_run(graded_run, base, exercises.verdicts(), theme)
                       if r.step in work.graded]
    except GradingTimeout:
        results = timed_out(work.graded, opts.limits)
    for run in runs:
        for result in results:
            if result.step == run.step and run.status != "ok":
                result.hints.insert(0, f"{run.notebook}: {run.status}: {run.message}")
    for result in (r for r in results if r.step in work.notebooks):  # the file they sent
        name = Path(work.notebooks[result.step]).name
        result.hints = [h.replace(NOTEBOOKS[result.step], name) for h in result.hints]
    return results


def render(result: SubmissionResult, opts: Options) -> dict:
    """Write the submission's results.json (Gradescope's format) and feedback.md into
    opts.out/<name>/, plus record.json (the whole record, for reading back); return its
    gradebook row."""
    folder = opts.out / result.name
    folder.mkdir(parents=True, exist_ok=True)
    write_results(folder / "results.json", result.gradescope(opts.integrity_visibility))
    (folder / "feedback.md").write_text(result.feedback(), encoding="utf-8")
    (folder / "record.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n",
                                        encoding="utf-8")
    return result.gradebook_row()


def timed_out(graded: list[int], limits: Limits) -> list:
    """Every item of the graded steps failed, saying why: the grade could not finish."""
    from .checks.results import CheckResult, scored
    from .checks.rubric import items_for

    message = (f"not graded: the grader's checks on this submission ran past the grader's "
               f"limit of {limits.describe('grading_timeout')} (e.g. far more prompts or "
               "pairs than the lab asks for)")
    return [CheckResult(s, [scored(s, i.name, False, message) for i in items_for(s)],
                        [message], "failed") for s in graded]


def _warn(line: str) -> None:
    print(f"grading: {line}", file=sys.stderr, flush=True)


def hide_paths(box: Sandbox, result: SubmissionResult) -> None:
    """No message shows the grader's temporary folders."""
    paths = sorted({str(p) for q in (box.lab, box.work, box.root)
                    for p in (q, Path(os.path.realpath(q)))}, key=len, reverse=True)

    def clean(text: str) -> str:
        for p in paths:
            text = text.replace(p, WORK_FOLDER)
        return text

    for step in result.steps:
        step.hints = [clean(h) for h in step.hints]
        for item in step.items:
            item.message = clean(item.message)
    result.notes[:] = [clean(n) for n in result.notes]
    for run in result.runs:
        run.message = clean(run.message)


def written_answers(work: Plan, notes: list) -> list[dict]:
    """The submission's written answers (never the reference's: graded notebooks only)."""
    from labkit.reflections import collect_all

    rows = []
    for path in work.graded_notebooks():
        try:
            rows += collect_all([path])
        except ValueError as exc:  # an unreadable notebook: its run says so too
            notes.append(f"written answers not collected: {exc}")
    return rows
