"""A submission as the grader finds it: which notebook is which step, what to run for it,
and a sanitised copy of its run directory's artifacts (regular files of the step records
only) for grading.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..checks.bounds import MAX_JSON_BYTES
from ..checks.rubric import NOTEBOOKS

STEP_FROM_NAME = re.compile(r"^0?([1-4])(?:[_\-\s.]|$)")
COPY_PREFIX = re.compile(r"^(?:copy\s+of\s+)+", re.IGNORECASE)  # Drive's "Copy of X.ipynb"
STEP_FROM_CHECK = re.compile(r"grading\.check\(\s*([1-4])\s*[,)]")


def notebook_step(path: Path) -> int | None:
    """Which step a notebook is: by its name (01_..., 3-train.ipynb, as downloads rename it:
    "Copy of 03_train_dpo.ipynb", "03_train_dpo (1).ipynb"), else by the `grading.check(N)`
    it calls. None when neither tells."""
    name = COPY_PREFIX.sub("", path.name)
    for step, canonical in NOTEBOOKS.items():
        if name == canonical:
            return step
    match = STEP_FROM_NAME.match(name)
    if match:
        return int(match.group(1))
    try:
        found = STEP_FROM_CHECK.findall(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return int(found[-1]) if found else None


def notebooks_by_step(folder: Path) -> tuple[dict[int, list[Path]], list[str]]:
    """{step: [notebooks]} in a submission folder (or its notebooks/ subfolder), and notes
    on the notebooks not recognised as a step."""
    candidates = sorted(p for d in (folder, folder / "notebooks") if d.is_dir()
                        for p in d.glob("*.ipynb") if p.is_file() and not p.is_symlink())
    by_step: dict[int, list[Path]] = {}
    notes = []
    for path in candidates:
        step = notebook_step(path)
        if step is None:
            notes.append(f"{path.name}: not recognised as one of the lab's notebooks (ignored)")
        else:
            by_step.setdefault(step, []).append(path)
    return dict(sorted(by_step.items())), notes


def find_notebooks(folder: Path) -> tuple[dict[int, Path], list[str]]:
    """{step: notebook} in a folder, and notes; of two for one step, the one with the lab's
    own name (else the last by name) is used and the note says which was not."""
    by_step, notes = notebooks_by_step(folder)
    found = {}
    for step, paths in by_step.items():
        found[step] = next((p for p in paths if p.name == NOTEBOOKS[step]), paths[-1])
        notes += [f"{p.name}: a second notebook for step {step} (ignored)"
                  for p in paths if p != found[step]]
    return found, notes


def duplicates_message(by_step: dict[int, list[Path]]) -> str | None:
    """The refusal of a folder holding two notebooks for one step, or None."""
    clashes = {s: paths for s, paths in by_step.items() if len(paths) > 1}
    if not clashes:
        return None
    listed = "; ".join(f"step {s}: " + ", ".join(p.name for p in paths)
                       for s, paths in clashes.items())
    return (f"refused: more than one notebook for the same step ({listed}). Nothing was "
            "run: keep exactly one notebook per step (delete the copies) and submit again")


def copy_artifacts(src: Path, dst: Path, max_policy_bytes: int | None = None) -> list[str]:
    """Copy the step artifacts of a run directory for grading: regular files only (a
    symlink could point anywhere), JSON/JSONL at most bounds.MAX_JSON_BYTES, the policy folder only when its
    files' sizes (lstat, before anything is read) stay within `max_policy_bytes`, nothing
    else from the folder (checkpoints, caches). Returns what was left out, and why."""
    from labkit.steps import Step1Baseline, Step2Meta, Step3Training, Step4Report

    dst.mkdir(parents=True, exist_ok=True)
    if Path(src).is_symlink():  # e.g. run/ -> another student's run/
        return [f"{Path(src).name}/ (a symbolic link: nothing in it was graded)"]
    skipped: list[str] = []
    names = [Step1Baseline.FILE, Step2Meta.PAIRS_FILE, Step2Meta.FILE, Step3Training.FILE,
             Step4Report.FILE]
    policy = Path(src) / Step3Training.POLICY_DIR
    if policy.is_dir() and not policy.is_symlink():
        files = _regular_files(policy)
        size = sum(info.st_size for _, info in files)
        if max_policy_bytes is not None and size > max_policy_bytes:
            skipped.append(f"{Step3Training.POLICY_DIR}/ ({size / 2**20:.0f} MB: far larger "
                           "than the base model, not read)")
        else:
            (dst / Step3Training.POLICY_DIR).mkdir(exist_ok=True)
            names += [f"{Step3Training.POLICY_DIR}/{p.name}" for p in policy.iterdir()]
    for name in names:
        path = Path(src) / name
        try:
            info = path.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            skipped.append(f"{name} (not a regular file)")
        elif path.suffix in {".json", ".jsonl"} and info.st_size > MAX_JSON_BYTES:
            skipped.append(f"{name} (larger than {MAX_JSON_BYTES >> 20} MB)")
        else:
            shutil.copyfile(path, dst / name)
    return skipped


def _regular_files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """(path, lstat) of the regular files directly in `folder`."""
    found = []
    for entry in os.scandir(folder):
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(info.st_mode):
            found.append((Path(entry.path), info))
    return found


def copy_submission(src: Path, dst: Path, max_bytes: int, max_files: int = 2000) -> list[str]:
    """Copy a submission's folder (its notebooks and whatever else the student shipped) to
    `dst`, the kernels' writable working copy: regular files and folders only, sizes taken
    from lstat before anything is read, notebooks first, at most `max_bytes` and
    `max_files` in all. Returns what was left out, and why."""
    files, skipped = [], []
    for top, dirs, names in os.walk(src):  # os.walk does not follow links to folders
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(top, d)))
        for name in sorted(names):
            path = Path(top, name)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                files.append((path, info.st_size))
            else:
                skipped.append(f"{path.relative_to(src)} (not a regular file: not copied)")
    files.sort(key=lambda f: (f[0].suffix != ".ipynb", len(f[0].relative_to(src).parts)))
    total = 0
    for n, (path, size) in enumerate(files):
        rel = path.relative_to(src)
        if n >= max_files or total + size > max_bytes:
            skipped.append(f"{rel} (over the {max_bytes / 2**20:.0f} MB / {max_files} files "
                           "a submission's folder may bring: not copied)")
            continue
        total += size
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / rel, follow_symlinks=False)
    return skipped


@dataclass
class Plan:
    """What to run for a submission and what to grade: `notebooks` {step: path} to run
    (the submission's, and for a single notebook the reference's earlier steps), `graded`
    steps, and `notes` on what was ambiguous. `source` is the submission as given."""

    source: Path
    notebooks: dict[int, Path]
    graded: list[int]
    notes: list[str] = field(default_factory=list)

    @property
    def whole_folder(self) -> bool:
        return self.source.is_dir()

    def copy_into(self, lab: Path, max_bytes: int, skip=()) -> tuple[dict[int, Path], list[str]]:
        """Put the notebooks in `lab`, the kernels' working copy: a folder is copied whole
        (as the student had it in JupyterLab); a single notebook goes next to the
        reference's earlier steps, except the `skip` steps (shared reference records stand
        in for them). Returns ({step: copy}, notes on what was left out)."""
        notes = copy_submission(self.source, lab, max_bytes) if self.whole_folder else []
        copies = {s: lab / (p.relative_to(self.source) if self.whole_folder
                            and p.is_relative_to(self.source)
                            else p.name if p == self.source else NOTEBOOKS[s])
                  for s, p in self.notebooks.items() if s not in skip}
        for step, copy in copies.items():  # left out by the copy's limits, or the reference's
            if not copy.is_file():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.notebooks[step], copy)
        return copies, notes

    def graded_notebooks(self) -> list[Path]:
        """The submission's own notebooks of the graded steps (never the reference's)."""
        return [self.notebooks[s] for s in self.graded if s in self.notebooks]


def plan(path: Path, reference: Path) -> Plan:
    """A folder of several notebooks is the whole lab; a single notebook, alone or the only
    one in its folder, is graded alone, its earlier steps made by the reference solution.
    A folder with two notebooks for one step is refused: nothing runs, the note says why."""
    if not path.is_dir():
        return _single(path, path, reference, [])
    by_step, notes = notebooks_by_step(path)
    refusal = duplicates_message(by_step)
    if refusal:
        return Plan(path, {}, sorted(by_step) if len(by_step) == 1 else [1, 2, 3, 4],
                    [refusal, *notes])
    if len(by_step) == 1:
        (only,), = by_step.values()
        return _single(path, only, reference, notes)
    return Plan(path, {s: paths[0] for s, paths in by_step.items()}, [1, 2, 3, 4], notes)


def _single(source: Path, path: Path, reference: Path, notes: list[str]) -> Plan:
    """The plan for one notebook (`path`, given as `source`: itself or its folder)."""
    step, problem = notebook_step(path), _unreadable(path)
    if step is None:
        problem = problem or "not recognised as one of the lab notebooks"
        return Plan(source, {}, [1, 2, 3, 4], [*notes, f"{path.name}: {problem}"])
    ref, _ = find_notebooks(reference) if reference.is_dir() else ({}, [])
    earlier = {s: ref[s] for s in range(1, step) if s in ref}
    notes = notes + ([f"steps {', '.join(map(str, earlier))} were run from the reference "
                      "solution (not graded)"] if earlier else [])
    return Plan(source, {**earlier, step: path}, [step], notes)


def plan_existing(path: Path) -> tuple[Plan, Path]:
    """(plan, run directory) for grading an existing run without executing anything."""
    found, notes = find_notebooks(path) if path.is_dir() else ({}, [])
    return Plan(path, found, [1, 2, 3, 4], notes), path / "run" if (path / "run").is_dir() else path


def _unreadable(path: Path) -> str | None:
    import nbformat

    try:
        nbformat.read(str(path), as_version=4)
        return None
    except Exception as exc:  # any parse/validation failure is the submission's
        return f"not a valid notebook ({type(exc).__name__}: {str(exc)[:200]})"
