"""The auto-grader through its real command line, `python -m grading ...`.

Golden submissions (otter's way): the solution notebooks must get full marks, the untouched
student release zero with "not done yet" everywhere, and each crafted mistake or cheat must
lose exactly the points it should, with the reason in the feedback. Execution tests share
two batches (module scope); tests where execution is not the point grade copies of the
real lab's run directory with --no-execute.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import record_figure
from tests.submissions import craft

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-" + os.urandom(6).hex()


def grade(subs, out: Path, *extra, env=None, timeout=900):
    """Run the grader CLI; returns (CompletedProcess, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "grading", *map(str, subs), "--out", str(out),
                           "--model", "teaching", *map(str, extra)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    return proc, time.perf_counter() - start


def results(out: Path, name: str) -> dict:
    return json.loads((out / name / "results.json").read_text())


def items_of(res: dict, step: int) -> dict:
    return {t["name"].split(": ", 1)[1]: t for t in res["tests"]
            if t["name"].startswith(f"Step {step} ")}


def step_score(res: dict, step: int) -> float:
    return sum(t["score"] for t in items_of(res, step).values())


def run_entry(res: dict, notebook: str) -> dict:
    return next(t for t in res["tests"] if t["name"] == f"Run {notebook}")


# ----------------------------------------------------------------------------- no execution
@pytest.fixture
def run_submission(lab_run, tmp_path):
    """make(name) -> a --no-execute submission: the real lab's run dir + notebook 3."""
    def make(name: str) -> Path:
        dst = tmp_path / "subs" / name
        shutil.copytree(lab_run.run_dir, dst / "run", ignore=shutil.ignore_patterns("executed"))
        shutil.copyfile(craft.NOTEBOOKS / craft.NAMES[3], dst / craft.NAMES[3])
        return dst
    return make


@pytest.mark.slow
def test_no_execute_grades_a_real_run_in_full(run_submission, tmp_path):
    proc, _ = grade([run_submission("good")], tmp_path / "out", "--no-execute")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path / "out", "good")
    assert res["score"] == res["extra_data"]["max_score"] == 100, json.dumps(res, indent=1)[-3000:]
    assert {"score", "execution_time", "tests"} <= set(res)
    assert all({"name", "score", "max_score", "output", "visibility"} <= set(t)
               for t in res["tests"])
    rows = list(csv.DictReader(open(tmp_path / "out" / "gradebook.csv")))
    assert rows[0]["submission"] == "good" and float(rows[0]["score"]) == 100
    assert "[1/1] start good" in proc.stderr and "[1/1] done  good: 100/100" in proc.stderr
    assert (tmp_path / "out" / "good" / "feedback.md").read_text().startswith("# Feedback")


@pytest.mark.slow
def test_identical_pair_written_by_hand_fails_step2_with_that_reason(run_submission, tmp_path):
    sub = run_submission("same")
    pairs = sub / "run" / "step2_preferences.jsonl"
    rows = [json.loads(l) for l in pairs.read_text().splitlines()]
    rows[3]["rejected"] = rows[3]["chosen"]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = json.loads((sub / "run" / "step2_meta.json").read_text())
    meta["pairs_sha256"] = __import__("hashlib").sha256(pairs.read_bytes()).hexdigest()
    (sub / "run" / "step2_meta.json").write_text(json.dumps(meta))
    grade([sub], tmp_path / "out", "--no-execute")
    step2 = items_of(results(tmp_path / "out", "same"), 2)
    assert step2["pairs_valid"]["score"] == 0
    assert "row 4 (line 4), field 'rejected': is identical to 'chosen'" in step2["pairs_valid"]["output"]


@pytest.mark.slow
def test_aligned_outputs_edited_into_the_artifact_fail_step4_integrity(run_submission, tmp_path):
    sub = run_submission("forged")
    report_path = sub / "run" / "step4_report.json"
    report = json.loads(report_path.read_text())
    report["outputs_after"] = [o + " Think of it like a recipe." for o in report["outputs_before"]]
    report["changed"] = [True] * len(report["outputs_after"])
    report_path.write_text(json.dumps(report))
    grade([sub], tmp_path / "out", "--no-execute")
    step4 = items_of(results(tmp_path / "out", "forged"), 4)
    assert step4["outputs_changed"]["score"] == step4["outputs_changed"]["max_score"]
    assert step4["outputs_reproduce"]["score"] == 0
    assert "not produced by the saved model" in step4["outputs_reproduce"]["output"]


@pytest.mark.slow
def test_symlinked_artifacts_are_not_followed(run_submission, tmp_path):
    sub = run_submission("links")
    (sub / "run" / "step1_baseline.json").unlink()
    (sub / "run" / "step1_baseline.json").symlink_to("/etc/hostname")
    proc, _ = grade([sub], tmp_path / "out", "--no-execute")
    res = results(tmp_path / "out", "links")
    assert step_score(res, 1) == 0 and "not a regular file" in res["output"]
    other = run_submission("other")  # a run/ that points at another submission's run/
    shutil.rmtree(other / "run")
    (other / "run").symlink_to(run_submission("victim") / "run")
    grade([other], tmp_path / "out2", "--no-execute")
    res = results(tmp_path / "out2", "other")
    assert all(step_score(res, step) == 0 for step in (1, 2, 4))
    assert "a symbolic link: nothing in it was graded" in res["output"]


@pytest.mark.slow
def test_student_loss_is_tested_from_the_notebook_alone(tmp_path):
    """student_code.check_student_loss: solution passes; a wrong loss, the release's stub, a
    notebook without the function and one that hangs at definition time all fail."""
    from grading.run.sandbox import Sandbox
    from grading.run.student_code import check_student_loss, definitions_source

    box = Sandbox(tmp_path / "box", "teaching").create()
    nb3 = craft.NOTEBOOKS / craft.NAMES[3]
    source = definitions_source(nb3)
    assert "def compute_dpo_loss" in source and "trainer.train()" not in source
    assert check_student_loss(nb3, box.run_untrusted, box.root / "x", timeout=120) == (
        True, "matches labkit.dpo.dpo_loss on 4 random batches")
    wrong = craft.single(3, tmp_path / "wrong")
    craft.replace(wrong, "-F.logsigmoid(chosen_rewards - rejected_rewards).mean()",
                  "-F.logsigmoid(chosen_rewards - rejected_rewards).sum()")
    ok, message = check_student_loss(wrong, box.run_untrusted, box.root / "x", timeout=120)
    assert not ok and message.startswith("loss differs from the reference")
    hang = craft.single(3, tmp_path / "hang")
    craft.inject(hang, "def spin(f):\n    while True:\n        pass\n\n@spin\ndef g():\n    pass",
                 after="def compute_dpo_loss")
    assert check_student_loss(hang, box.run_untrusted, box.root / "x", timeout=10) == (
        False, "compute_dpo_loss did not finish within 10 s")


@pytest.mark.slow
def test_jobs_2_grades_two_submissions_at_once(run_submission, tmp_path):
    """Behaviour only: with --jobs 2 a second submission starts before the first is done,
    and every one is graded in full. How much faster that is depends on the machine: the
    figure is `python -m bench` (grading throughput), never an assertion here."""
    subs = [run_submission(f"s{i}") for i in range(4)]
    proc, _ = grade(subs, tmp_path / "out", "--no-execute", "--jobs", 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(results(tmp_path / "out", f"s{i}")["score"] == 100 for i in range(4))
    lines = proc.stderr.splitlines()
    first_done = next(i for i, l in enumerate(lines) if " done " in l)
    assert sum(" start " in l for l in lines[:first_done]) >= 2  # two graded at once


def test_grader_that_cannot_run_exits_non_zero(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc, _ = grade([tmp_path], blocker / "out", "--no-execute")
    assert proc.returncode == 2 and "cannot start" in proc.stderr
    proc, _ = grade([tmp_path], tmp_path / "out", "--jobs", 0)
    assert proc.returncode == 2


# ----------------------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def executed(tmp_path_factory, teaching_dir):
    """One batch, two at a time: the solution, a hostile copy of it, the student release,
    learning_rate=0 (notebook 3 alone), chosen == rejected (notebook 2 alone)."""
    root = tmp_path_factory.mktemp("executed")
    out, outside, home = root / "out", root / "outside", root / "grader-home"
    outside.mkdir()
    home.mkdir()
    (home / "secret.txt").write_text(SECRET)
    subs = root / "subs"
    solution = craft.solution(subs / "solution")
    hostile = craft.solution(subs / "hostile")
    code = craft.HOSTILE.format(out=str(out), outside=str(outside), repo=str(ROOT),
                                secret_file=str(home / "secret.txt"), marker="s3cr3t-")
    craft.inject(hostile / craft.NAMES[1], code, after="session.start")
    craft.inject(hostile / craft.NAMES[4], code, before="grading.check(4)")
    subprocess.run([sys.executable, "-m", "labkit", "release", "--out", str(subs / "release")],
                   check=True, cwd=ROOT, capture_output=True)
    lr0 = craft.single(3, subs / "lr0")
    craft.replace(lr0, "learning_rate=preset.learning_rate", "learning_rate=0.0")
    same = craft.single(2, subs / "same")
    craft.inject(same, 'pairs[0]["rejected"] = pairs[0]["chosen"]', after="### BEGIN SOLUTION")
    proc, seconds = grade([solution, hostile, subs / "release", lr0, same], out, "--jobs", 2,
                          env={"GRADER_TEST_SECRET": SECRET, "HF_TOKEN": SECRET,
                               "HOME": str(home)}, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record_figure("grader batch (solution, hostile, release, lr0, same; --jobs 2)",
                  f"{seconds:.0f} s wall")
    return out, outside, proc


@pytest.mark.slow
def test_solution_notebooks_get_full_marks(executed):
    out, _, proc = executed
    res = results(out, "solution")
    # written answers (0 points, graded by a person) carry no status
    failed = [t for t in res["tests"]
              if t["score"] < t["max_score"] or t.get("status") == "failed"]
    assert res["score"] == 100 and not failed, [(t["name"], t.get("output")) for t in failed]
    assert all(run_entry(res, n)["output"].startswith("ok") for n in craft.NAMES.values())
    assert (out / "solution" / "executed" / craft.NAMES[3]).exists()
    assert re.search(r"isolation: (namespaces|unprivileged user|none)\n", proc.stderr)


@pytest.mark.slow
def test_untouched_student_release_gets_zero_and_not_done_everywhere(executed):
    out, _, _ = executed
    res = results(out, "release")
    assert res["score"] == 0 and res["extra_data"]["max_score"] == 100
    feedback = (out / "release" / "feedback.md").read_text()
    for step in (1, 2, 3, 4):
        assert f"## Step {step} - " in feedback
    assert feedback.count(": not done yet (0/25)") == 4
    assert "Exercise 1.1 is not done yet" in feedback  # the notebook's own message, as a hint
    assert "Open 03_train_dpo.ipynb" in feedback  # the submitted file, not a repo path
    assert "NotImplementedError" in items_of(res, 3)["student_loss"]["output"]


@pytest.mark.slow
def test_learning_rate_zero_fails_step3_as_no_learning(executed):
    out, _, _ = executed
    res = results(out, "03_train_dpo")
    assert res["extra_data"]["max_score"] == 25 and not items_of(res, 1)  # graded alone
    step3 = items_of(res, 3)
    assert step3["health"]["score"] == 0 and step3["health"]["output"].startswith("no_learning")
    assert step3["policy_changed"]["score"] == 0
    assert "learning_rate is 0.0" in step3["log_consistent"]["output"]
    assert step3["trained"]["score"] == step3["trained"]["max_score"]
    assert step3["student_loss"]["score"] == step3["student_loss"]["max_score"]


@pytest.mark.slow
def test_identical_pair_stops_notebook_2_and_says_why(executed):
    out, _, _ = executed
    res = results(out, "02_preferences")
    assert res["score"] == 0 and res["extra_data"]["max_score"] == 25
    assert "is identical to 'chosen'" in run_entry(res, craft.NAMES[2])["output"]
    assert "is identical to 'chosen'" in (out / "02_preferences" / "feedback.md").read_text()


@pytest.mark.slow
def test_hostile_notebook_changes_nothing_and_finds_nothing(executed):
    out, outside, _ = executed
    res = results(out, "hostile")
    assert res["score"] == results(out, "solution")["score"] == 100
    assert not list(outside.iterdir()) and not (ROOT / "pwned.txt").exists()
    rows = list(csv.DictReader(open(out / "gradebook.csv")))
    assert {r["submission"]: float(r["score"]) for r in rows}["hostile"] == 100
    for name in (craft.NAMES[1], craft.NAMES[4]):
        text = (out / "hostile" / "executed" / name).read_text()
        assert SECRET not in text
        assert "LEAKED: NOTHING" in text
        # refused, or written into the kernel's private /tmp (or the empty root the sandbox
        # builds), which vanishes with it: the host's folders stay as they were (checked
        # above, whatever folder the checkout is in)
        for target in (out / "hostile" / "results.json", out / "gradebook.csv",
                       outside / "pwned.txt", ROOT / "pwned.txt"):
            assert f"'{target}': 'refused" in text or f"'{target}': 'written" in text, target


@pytest.fixture(scope="module")
def looping(tmp_path_factory, teaching_dir):
    """A batch where the first submission loops forever in notebook 2, then a malformed one."""
    root = tmp_path_factory.mktemp("looping")
    loop = craft.solution(root / "loop")
    craft.inject(loop / craft.NAMES[2], "while True:\n    pass", after="session.start")
    broken = root / "broken.ipynb"
    broken.write_text('{"cells": [ this is not json')
    proc, seconds = grade([loop, broken], root / "out", "--cell-timeout", 25, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "out", proc, seconds


@pytest.mark.slow
def test_endless_cell_is_a_timeout_earlier_steps_keep_credit(looping):
    out, proc, _ = looping
    res = results(out, "loop")
    assert step_score(res, 1) == 25 and step_score(res, 2) == 0
    entry = run_entry(res, craft.NAMES[2])
    assert entry["status"] == "failed" and "25 s per-cell time limit" in entry["output"]
    assert "[2/2] done  broken" in proc.stderr  # the batch went on


@pytest.mark.slow
def test_malformed_notebook_gets_a_results_file_that_says_so(looping):
    out, _, _ = looping
    res = results(out, "broken")
    assert res["score"] == 0
    assert "broken.ipynb: not a valid notebook" in res["output"]
