"""Crafted submissions for the grader tests: copies of the solution notebooks, edited with
nbformat the way a student (or a cheater) would edit them."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
NAMES = {1: "01_baseline.ipynb", 2: "02_preferences.ipynb", 3: "03_train_dpo.ipynb",
         4: "04_before_after.ipynb"}


def solution(dest: Path) -> Path:
    """The four solution notebooks in a fresh folder: a whole-lab submission."""
    dest.mkdir(parents=True)
    for name in NAMES.values():
        shutil.copyfile(NOTEBOOKS / name, dest / name)
    return dest


def single(step: int, dest: Path) -> Path:
    """One solution notebook alone, e.g. a Gradescope assignment for step 3 only."""
    dest.mkdir(parents=True)
    shutil.copyfile(NOTEBOOKS / NAMES[step], dest / NAMES[step])
    return dest / NAMES[step]


def _cells(path: Path):
    return nbformat.read(str(path), as_version=4)


def replace(path: Path, old: str, new: str) -> None:
    """Replace text in the one code cell that holds it."""
    nb = _cells(path)
    hits = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
    assert len(hits) == 1, f"{old!r} is in {len(hits)} cells of {path.name}"
    hits[0].source = hits[0].source.replace(old, new)
    nbformat.write(nb, str(path))


def inject(path: Path, code: str, after: str | None = None, before: str | None = None) -> None:
    """Insert a code cell after the cell containing `after`, or before the one containing
    `before`."""
    nb = _cells(path)
    key = after or before
    index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and key in c.source)
    nb.cells.insert(index + 1 if after else index, nbformat.v4.new_code_cell(code))
    nbformat.write(nb, str(path))


HOSTILE = '''
# Everything a cheating or curious notebook might try; none of it may change the grade.
import glob, json, os, pathlib
import grading, grading.checks as gc
from grading.checks.results import CheckItem, CheckResult

fake = lambda *args, **kwargs: CheckResult(1, [CheckItem("fake", 1000, True, "pwned")])
gc.check_step1 = gc.check_step2 = gc.check_step3 = gc.check_step4 = fake
gc.CHECKS.update({{n: fake for n in (1, 2, 3, 4)}})
attempts = {{}}
for target in [pathlib.Path.cwd() / "results.json", pathlib.Path.home() / "results.json",
               pathlib.Path({out!r}) / "hostile" / "results.json",
               pathlib.Path({out!r}) / "gradebook.csv", pathlib.Path({outside!r}) / "pwned.txt",
               pathlib.Path({repo!r}) / "pwned.txt"]:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({{"score": 1000, "tests": []}}))
        attempts[str(target)] = "written"
    except OSError as exc:
        attempts[str(target)] = f"refused: {{type(exc).__name__}}"
print("WRITE ATTEMPTS", attempts)
found = [os.environ.get("GRADER_TEST_SECRET"), os.environ.get("HF_TOKEN")]
for path in glob.glob("/proc/*/environ") + [{secret_file!r}]:
    try:
        found.append(open(path, "rb").read().decode("latin-1"))
    except OSError:
        pass
leaks = [f for f in found if f and ("GRADER_TEST_SECRET" in f or "HF_TOKEN" in f or {marker!r} in f)]
print("LEAKED:", leaks if leaks else "NOTHING")
'''


ATTEMPTS = '''
import json, os, subprocess, sys
found = {{"uid": os.getuid()}}
for key, path, mode in {targets!r}:
    try:
        with open(path, mode) as handle:
            handle.read(100) if mode == "r" else handle.write("pwned")
        found[key] = "done"
    except OSError as exc:
        found[key] = type(exc).__name__
'''


def probe(solution: Path, results: Path, source: Path, heartbeat: Path) -> str:
    """A hostile cell for where the grader runs without namespaces: who am I, read the
    solutions, write into the results and the grader's source, leave a process that keeps
    trying to rewrite the results after grading ends (and beats `heartbeat` while it
    lives); it ends by raising its findings, which the feedback quotes."""
    targets = [("read", str(solution), "r"), ("results", str(results), "w"),
               ("source", str(source), "a")]
    lingering = ("import json, time\n"
                 "for _ in range(3000):\n"
                 f"    open({str(heartbeat)!r}, 'a').write('.')\n"
                 "    try:\n"
                 f"        open({str(results)!r}, 'w').write(json.dumps({{'score': 999}}))\n"
                 "    except OSError:\n"
                 "        pass\n"
                 "    time.sleep(0.2)\n")
    return ATTEMPTS.format(targets=targets) + (
        f"found['pid'] = subprocess.Popen([sys.executable, '-c', {lingering!r}], "
        "start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL).pid\n"
        "raise RuntimeError('PROBE ' + json.dumps(found))\n")

def checkout(dest: Path, closed: bool = True) -> Path:
    """A copy of the lab's checkout (code and solution notebooks) at `dest`, a folder every
    user may pass through; `closed`: its notebooks closed to other users (chmod -R o=), as
    the grader asks of an instructor whose student code runs as another user."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    for name in ("labkit", "grading", "notebooks"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    if closed:
        for path in [dest / "notebooks", *(dest / "notebooks").rglob("*")]:
            path.chmod(path.stat().st_mode & 0o770)
    return dest
