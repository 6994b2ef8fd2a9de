"""The student release: one source, two versions."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit.release import ReleaseError, strip_solutions

ROOT = Path(__file__).resolve().parent.parent


def test_solution_block_becomes_named_not_implemented():
    src = ("x = 1\n# Exercise 3.1: implement the loss\ndef f(a):\n    ### BEGIN SOLUTION\n"
           "    return a * 2\n    ### END SOLUTION\nprint(x)")
    out = strip_solutions(src)
    assert "return a * 2" not in out
    assert "    # YOUR CODE HERE\n    raise NotImplementedError(" in out
    assert "Exercise 3.1 is not done yet: implement the loss" in out
    assert out.startswith("x = 1") and out.endswith("print(x)")
    compile(out, "cell", "exec")


@pytest.mark.parametrize("src", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_malformed_markers_are_errors(src):
    with pytest.raises(ReleaseError):
        strip_solutions(src)


def test_cli_writes_student_notebooks_without_solutions(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "labkit", "release", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == sorted(p.name for p in (ROOT / "notebooks").glob("0[1-4]_*.ipynb"))
    for path in tmp_path.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        assert "raise NotImplementedError(" in text
        for cell in nb.cells:
            if cell.cell_type == "code":
                compile("\n".join(l for l in cell.source.splitlines()
                                  if not l.lstrip().startswith(("%", "!"))), path.name, "exec")
    solution = (ROOT / "notebooks" / "03_train_dpo.ipynb").read_text()
    student = (tmp_path / "03_train_dpo.ipynb").read_text()
    assert "DPOTrainer(model=model" in solution and "DPOTrainer(model=model" not in student


def _make(tmp_path, *args) -> str:
    """`make ARGS` on the real Makefile with this Python standing in for the venv's."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    (venv / ".installed").touch()  # newer than pyproject.toml: no install step
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args,
                           f"VENV={venv}", f"PY={sys.executable}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_make_release_writes_the_student_notebooks(tmp_path):
    student = tmp_path / "student"
    _make(tmp_path, "release", f"STUDENT={student}")
    assert sorted(p.name for p in student.glob("*.ipynb")) == sorted(
        p.name for p in (ROOT / "notebooks").glob("0[1-4]_*.ipynb"))
    assert "BEGIN SOLUTION" not in (student / "03_train_dpo.ipynb").read_text()


def test_make_lab_opens_the_student_notebooks_and_keeps_work_in_progress(tmp_path):
    student = tmp_path / "student"
    plan = _make(tmp_path, "-n", "lab", f"STUDENT={student}").splitlines()
    release = next(i for i, l in enumerate(plan) if "labkit release --out" in l)
    opens = next(i for i, l in enumerate(plan) if "jupyter lab" in l)
    assert release < opens and plan[opens].rstrip().endswith(f"jupyter lab {student}/")
    student.mkdir()  # already released, maybe half done: never overwritten by `make lab`
    plan = _make(tmp_path, "-n", "lab", f"STUDENT={student}")
    assert "labkit release" not in plan and f"jupyter lab {student}/" in plan
    assert "jupyter lab notebooks/" in _make(tmp_path, "-n", "lab-solutions")
