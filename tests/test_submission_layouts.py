"""Collections as TAs make them: a folder holding one notebook is that single step, the
names downloads give copies are recognised, two notebooks for one step are refused."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grading.run.submission import notebook_step, plan
from tests.submissions import craft

ROOT = Path(__file__).resolve().parent.parent
RENAMED = ["Copy of 03_train_dpo.ipynb", "03_train_dpo (1).ipynb",
           "Copy of Copy of 03_train_dpo.ipynb"]


def folder_with(tmp: Path, *names: str, step: int = 3) -> Path:
    tmp.mkdir(parents=True)
    for name in names:
        shutil.copyfile(craft.NOTEBOOKS / craft.NAMES[step], tmp / name)
    return tmp


@pytest.mark.parametrize("name", RENAMED)
def test_download_names_are_their_step(tmp_path, name):
    path = tmp_path / name
    path.write_text("{}")  # by name alone: the contents say nothing
    assert notebook_step(path) == 3


@pytest.mark.parametrize("name", [craft.NAMES[3], *RENAMED])
def test_a_folder_with_one_notebook_is_that_step_alone(tmp_path, name):
    sub = folder_with(tmp_path / "sub", name)
    work = plan(sub, craft.NOTEBOOKS)
    notebooks, graded, notes = work.notebooks, work.graded, work.notes
    assert graded == [3]
    assert notebooks[3] == sub / name
    assert notebooks[1] == craft.NOTEBOOKS / craft.NAMES[1]  # earlier steps: the reference
    assert notebooks[2] == craft.NOTEBOOKS / craft.NAMES[2]
    assert any("reference solution" in n for n in notes)


def test_two_notebooks_for_one_step_are_refused(tmp_path):
    sub = folder_with(tmp_path / "sub", craft.NAMES[3], "Copy of 03_train_dpo.ipynb")
    work = plan(sub, craft.NOTEBOOKS)
    notebooks, graded, notes = work.notebooks, work.graded, work.notes
    assert notebooks == {} and graded == [3]
    assert notes[0].startswith("refused: more than one notebook for the same step")
    assert "03_train_dpo.ipynb, Copy of 03_train_dpo.ipynb" in notes[0]
    whole = craft.solution(tmp_path / "whole")
    shutil.copyfile(whole / craft.NAMES[2], whole / "02_preferences (1).ipynb")
    work = plan(whole, craft.NOTEBOOKS)
    notebooks, graded, notes = work.notebooks, work.graded, work.notes
    assert notebooks == {} and graded == [1, 2, 3, 4] and "step 2:" in notes[0]


def test_a_folder_with_the_four_is_the_whole_lab(tmp_path):
    sub = craft.solution(tmp_path / "sub")
    work = plan(sub, craft.NOTEBOOKS)
    notebooks, graded, notes = work.notebooks, work.graded, work.notes
    assert graded == [1, 2, 3, 4] and notebooks == {s: sub / n for s, n in craft.NAMES.items()}


@pytest.mark.slow
def test_one_notebook_folders_score_that_step(tmp_path, teaching_dir):
    """Through the grader's CLI: notebook 3 alone in a folder scores 25/25, so does a
    renamed copy; two step-3 notebooks get 0 with the refusal, and nothing runs."""
    subs = [folder_with(tmp_path / "alone", craft.NAMES[3]),
            folder_with(tmp_path / "renamed", "Copy of 03_train_dpo.ipynb"),
            folder_with(tmp_path / "twice", craft.NAMES[3], "03_train_dpo (1).ipynb")]
    proc = subprocess.run([sys.executable, "-m", "grading", *map(str, subs), "--out",
                           str(tmp_path / "out"), "--model", "teaching"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["submission"]: r for r in csv.DictReader(open(tmp_path / "out" / "gradebook.csv"))}
    for name in ("alone", "renamed"):
        assert (rows[name]["score"], rows[name]["max_score"]) == ("25", "25"), rows[name]
    assert float(rows["twice"]["score"]) == 0 and rows["twice"]["max_score"] == "25"
    assert "refused" in rows["twice"]["problems"]
    results = json.loads((tmp_path / "out" / "twice" / "results.json").read_text())
    assert "refused: more than one notebook for the same step (step 3: 03_train_dpo " \
           "(1).ipynb, 03_train_dpo.ipynb)" in results["output"]
