"""The notebooks: committed clean, run top to bottom (nbval), and the student release stops
at each exercise with a message naming it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0[1-4]_*.ipynb"))


def test_there_are_four_numbered_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_counts_or_widget_state(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts: strip them"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state is committed"


@pytest.mark.parametrize("step,path", enumerate(NOTEBOOKS, start=1), ids=lambda v: str(v)[-22:])
def test_each_notebook_reports_its_environment_and_ends_with_its_check(step, path):
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert f"session.start(step={step})" in code[0]
    assert f"grading.check({step})" in code[-1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solution_blocks_are_balanced_and_named(path):
    from labkit.release import strip_solutions

    for cell in nbformat.read(path, as_version=4).cells:
        if "### BEGIN SOLUTION" in cell.source:
            assert "# Exercise" in cell.source, "each solution block needs '# Exercise N.M: ...'"
            assert "NotImplementedError" in strip_solutions(cell.source)


@pytest.mark.slow
def test_solution_notebooks_run_under_nbval(tmp_path, teaching_dir):
    env = {**os.environ, "LABKIT_MODEL": "teaching", "LABKIT_RUN_DIR": str(tmp_path / "run"),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p",
                           "no:cacheprovider", "--rootdir", str(tmp_path), *map(str, NOTEBOOKS)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "failed" not in proc.stdout.splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_student_release_stops_at_first_exercise_naming_it(step, tmp_path, lab_run):
    """Run the student version up to its first exercise, with the earlier steps' artifacts
    present (as a student who finished them would have)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from labkit.release import release

    release(ROOT / "notebooks", tmp_path / "student")
    run_dir = tmp_path / "run"
    shutil.copytree(lab_run.run_dir, run_dir)
    os.environ["LABKIT_RUN_DIR"], os.environ["LABKIT_MODEL"] = str(run_dir), "teaching"
    path = sorted((tmp_path / "student").glob(f"0{step}_*.ipynb"))[0]
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError) as error:
        client.execute()
    assert "NotImplementedError" in str(error.value)
    assert f"Exercise {step}.1 is not done yet" in str(error.value)
