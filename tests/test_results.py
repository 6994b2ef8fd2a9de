"""What a graded submission shows, and to whom (grading.checks.results): the integrity items'
Gradescope visibility is the instructor's choice, the written (reflection) answers reach the
instructor as 0-point items and feedback.md, and no internal placeholder reaches anyone."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grading import gradescope as gs
from grading.checks import gradescope_format, report, results
from labkit.reflections import collect_all

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def record() -> report.SubmissionResult:
    """A graded record as grading.autograde returns it (one step, one run, answers)."""
    items = [results.scored(3, "trained", True, "12 steps logged"),
             results.scored(3, "log_consistent", False, "the log ends at step 3 in <work>/run"),
             results.scored(3, "student_loss", True, "matches")]
    run = report.NotebookRun(3, "03_train_dpo.ipynb", "error",
                             "cell 7: FileNotFoundError: <work>/run/step2_meta.json", 1.0)
    return report.SubmissionResult("s", "/x", [results.CheckResult(3, items)], [run],
                                   ["copied <work>/run"], "", collect_all(NOTEBOOKS), 2.0)


def test_integrity_items_take_the_chosen_visibility_and_the_summary_keeps_them_back():
    shown = record().gradescope()
    assert {t["visibility"] for t in shown["tests"] if t["name"].startswith("Step")} == {
        "visible"}
    later = record().gradescope(integrity_visibility="after_published")
    by_name = {t["name"].split(": ", 1)[-1]: t for t in later["tests"]}
    assert by_name["log_consistent"]["visibility"] == "after_published"
    assert by_name["student_loss"]["visibility"] == "after_published"
    assert by_name["trained"]["visibility"] == "visible"
    assert "(5/10)" not in later["output"] and "5/5 on the checks shown now" in later["output"]
    assert not gradescope_format.validate(later)
    assert later["extra_data"] == {"max_score": 25}  # the format has no top-level max
    with pytest.raises(ValueError, match="integrity_visibility must be one of"):
        record().gradescope(integrity_visibility="students")


def test_written_answers_are_zero_point_items_for_the_instructor_and_in_the_feedback():
    rec = record()
    assert rec.reflections and all(r["answered"] for r in rec.reflections)
    res = rec.gradescope()
    written = [t for t in res["tests"] if t["name"].startswith("Written answer")]
    assert len(written) == len(rec.reflections)
    assert all(t["score"] == t["max_score"] == 0 and t["visibility"] == "hidden"
               for t in written)
    assert sum(t["score"] for t in res["tests"]) == res["score"]
    text = rec.feedback()
    assert "## Written answers" in text
    for row in rec.reflections:
        assert row["answer"].splitlines()[0] in text


def test_no_internal_placeholder_in_any_output():
    rec = record()
    res = rec.gradescope(integrity_visibility="after_published")
    everything = json.dumps(res) + rec.feedback() + rec.summary()
    assert "<work>" not in everything and "the submission's work folder" in everything
    assert res["output_format"] == "text" and all(t["output_format"] == "text"
                                                  for t in res["tests"])


def test_a_result_reads_back_whole_from_its_record():
    rec = record()
    again = report.SubmissionResult.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert again.gradescope() == rec.gradescope() and again.feedback() == rec.feedback()
    assert again.gradebook_row() == rec.gradebook_row()


def test_gradescope_zip_carries_the_integrity_visibility(tmp_path):
    assert gs.main(["--out", str(tmp_path / "a.zip"), "--model", "teaching",
                    "--integrity-visibility", "after_published"]) == 0
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert json.loads(zf.read(gs.CONFIG))["integrity_visibility"] == "after_published"


@pytest.mark.slow
def test_a_graded_solution_shows_its_written_answers(lab_run, tmp_path):
    """The real CLI on the solution (its run, not re-executed): feedback.md holds the
    answers; results.json has them hidden at 0 points, the integrity items after_published."""
    sub = tmp_path / "solution"
    shutil.copytree(lab_run.run_dir, sub / "run", ignore=shutil.ignore_patterns("executed"))
    for nb in NOTEBOOKS:
        shutil.copyfile(nb, sub / nb.name)
    proc = subprocess.run([sys.executable, "-m", "grading", str(sub), "--out",
                           str(tmp_path / "out"), "--model", "teaching", "--no-execute",
                           "--integrity-visibility", "after_published"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "solution" / "results.json").read_text())
    assert res["score"] == 100, [t for t in res["tests"] if t["score"] < t["max_score"]]
    feedback = (tmp_path / "out" / "solution" / "feedback.md").read_text()
    rows = collect_all(NOTEBOOKS)
    assert rows and all(r["answer"].splitlines()[0] in feedback for r in rows)
    written = [t for t in res["tests"] if t["name"].startswith("Written answer")]
    assert len(written) == len(rows) and {t["visibility"] for t in written} == {"hidden"}
    integrity = [t for t in res["tests"] if t["name"].endswith(
        ("student_loss", "student_logps", "log_consistent", "outputs_reproduce"))]
    assert len(integrity) == 4 and {t["visibility"] for t in integrity} == {"after_published"}
