"""A class graded on a real Slurm cluster (`python -m grading slurm`: an `sbatch --array`
of `--shard K/N` parts, waited for and merged) gives the one-process gradebook, score for
score. The cluster is a single node started on this machine for the module
(tests/slurm_cluster.py: munged, slurmctld, slurmd); the test skips, saying why, only where
it cannot start (CI installs slurm-wlm and munge).

Executed, not --no-execute: notebooks 1 and 2 alone (the cheapest to run), so that each array
task also needs the reference's step 1 and takes it from the cache the tasks share (that the
cache grades like running step 1 in each sandbox: tests/test_reference_cache.py)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grading.run.reference_cache import SHARED_RUN
from grading.slurm import absolute_paths, tasks_environment
from tests.slurm_cluster import Cluster, SlurmUnavailable
from tests.students.corpus import sub
from tests.submissions import craft

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        started = Cluster.start(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as exc:
        pytest.skip(f"Slurm cannot start here: {exc}")
    yield started
    started.stop()


def submissions(folder: Path) -> list[Path]:
    """Two notebook-1 and two notebook-2 submissions, one of each with a mistake."""
    folder.mkdir()
    made = {}
    for step, name in ((1, "01_plain"), (1, "01_no_far"), (2, "02_plain"), (2, "02_seven")):
        made[name] = folder / f"{name}.ipynb"
        made[name].write_bytes((craft.NOTEBOOKS / craft.NAMES[step]).read_bytes())
    sub("far_prompts = list(theme.far_prompts)", "far_prompts = []")(made["01_no_far"])
    sub("### END SOLUTION", "pairs = pairs[:7]\n### END SOLUTION")(made["02_seven"])
    return list(made.values())


def scores(folder: Path) -> dict[str, tuple]:
    with open(folder / "gradebook.csv", newline="") as handle:
        return {r["submission"]: tuple(r[k] for k in ("score", "max_score", "step1", "step2",
                                                      "step3", "step4"))
                for r in csv.DictReader(handle)}


@pytest.mark.slow
def test_slurm_array_grades_the_class_like_one_process(cluster, tmp_path, teaching_dir, figure):
    subs = submissions(tmp_path / "subs")
    # as an instructor runs it: from the course's folder, with the class's own theme file
    # given relative to it (the tasks run in the repository: grading slurm resolves it)
    shutil.copyfile(ROOT / "labkit" / "themes" / "plain.toml", tmp_path / "classtheme.toml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **cluster.env}
    one = subprocess.run([sys.executable, "-m", "grading", *map(str, subs), "--out",
                          str(tmp_path / "one"), "--model", "teaching", "--theme",
                          str(tmp_path / "classtheme.toml")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert one.returncode == 0, one.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "grading", "slurm", *map(str, subs), "--out",
                           "class", "--tasks", "2", "--cpus-per-task", "1", "--mem", "4G",
                           "--time", "00:30:00", "--", "--model", "teaching", "--theme",
                           "classtheme.toml"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1200)
    logs = "\n".join(p.read_text()
                     for p in sorted((tmp_path / "class.slurm" / "logs").glob("*")))
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{logs[-3000:]}\n{cluster.log_tail()}"
    assert "merged 2 part(s), 4 submission(s)" in proc.stderr
    assert "submitted array job " in proc.stderr and "2/2 part(s) finished" in proc.stderr
    script = (tmp_path / "class.slurm" / "grade.sbatch").read_text()
    assert "--shard $SLURM_ARRAY_TASK_ID/2" in script
    assert f"--theme {tmp_path / 'classtheme.toml'}" in script

    merged, alone = scores(tmp_path / "class"), scores(tmp_path / "one")
    assert merged == alone
    assert sorted(merged) == ["01_no_far", "01_plain", "02_plain", "02_seven"]
    assert float(merged["01_plain"][0]) == float(merged["02_plain"][0]) == 25
    assert float(merged["01_no_far"][0]) < 25 and float(merged["02_seven"][0]) < 25
    parts = [json.loads((tmp_path / "class.slurm" / "parts" / k / "batch.json").read_text())
             for k in ("1", "2")]
    assert [p["graded"] for p in parts] == [["01_no_far", "02_plain"], ["01_plain", "02_seven"]]
    for name in ("02_plain", "02_seven"):  # one in each task: both took step 1 from the cache
        runs = json.loads((tmp_path / "class" / name / "record.json").read_text())["runs"]
        assert runs[0]["message"] == SHARED_RUN
    figure("slurm array (4 submissions, 2 tasks)", "merged gradebook equals one-process run")


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs Slurm's sbatch (slurm-wlm)")
def test_an_array_sbatch_refuses_is_said_and_nothing_is_merged(tmp_path):
    """sbatch itself refuses (here: a login node whose slurm.conf is empty): the command says
    that nothing was submitted, instead of waiting for tasks or merging parts that never ran.
    More tasks than submissions: one task each."""
    subs = submissions(tmp_path / "subs")[:2]
    conf = tmp_path / "slurm.conf"
    conf.write_text("")
    shutil.copyfile(ROOT / "labkit" / "themes" / "plain.toml", tmp_path / "classtheme.toml")
    proc = subprocess.run([sys.executable, "-m", "grading", "slurm", *map(str, subs), "--out",
                           "class", "--tasks", "5", "--", "--model", "teaching"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "SLURM_CONF": str(conf),
                               "LABKIT_THEME": "classtheme.toml"})
    assert proc.returncode == 2, proc.stderr
    assert "5 tasks for 2 submission(s): using 2, one each" in proc.stderr
    assert "sbatch did not submit the array (exit 1" in proc.stderr, proc.stderr
    assert "a task failed" not in proc.stderr and "grading merge" not in proc.stderr
    assert not (tmp_path / "class").exists()
    again = subprocess.run(proc.args, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                           env={**os.environ, "SLURM_CONF": str(conf),
                                "LABKIT_THEME": "classtheme.toml"})
    assert "sbatch did not submit the array" in again.stderr, again.stderr  # not "an earlier"
    script = (tmp_path / "class.slurm" / "grade.sbatch").read_text()
    assert "#SBATCH --array=1-2\n" in script
    # a task resubmitted by hand (sbatch --array=2 grade.sbatch, from anywhere) sees it too
    assert f"export LABKIT_THEME={tmp_path / 'classtheme.toml'}\n" in script


def test_a_class_graded_before_is_refused_before_anything_is_submitted(tmp_path):
    """Run again with a used --out (merge would refuse it only after every task ran), with
    a theme that does not load (every task would stop at its start), or with an earlier
    run's parts in the work folder (one no new task overwrote would pass for this run's):
    refused before sbatch, saying what to do."""
    subs = submissions(tmp_path / "subs")[:2]
    out, work = tmp_path / "class", tmp_path / "class.slurm"

    def slurm(*extra):
        return subprocess.run([sys.executable, "-m", "grading", "slurm", *map(str, subs),
                               "--out", str(out), "--tasks", "2", *extra], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)

    out.mkdir()
    (out / "gradebook.csv").write_text("an earlier class\n")
    proc = slurm()
    assert proc.returncode == 2
    assert f"--out {out} exists and is not empty" in proc.stderr, proc.stderr
    assert "nothing was submitted" in proc.stderr and not work.exists()
    (out / "gradebook.csv").unlink()
    for typo, said in ((("--", "--theme", "classthemes.toml"), "problem(s) in theme "
                        "classthemes.toml:\n  - top level: file not found"),
                       (("--", "--modle", "teaching"), "unrecognized arguments: --modle"),
                       (("--", "--jobs", "0"), "--jobs must be positive"),
                       (("--model", "teaching"), "unrecognized arguments: --model teaching "
                        "(options of `python -m grading`, such as --model or --theme, go "
                        "after --"),
                       (("--work", str(out / "w")), f"--work {out / 'w'} is inside --out")):
        proc = slurm(*typo)  # every task would stop on it
        assert proc.returncode == 2 and said in proc.stderr, (typo, proc.stderr)
        assert not work.exists() and not (out / "w").exists()
    (work / "parts" / "1").mkdir(parents=True)
    (work / "job").write_text("41\n")
    proc = slurm()
    assert proc.returncode == 2
    assert f"{work} belongs to an earlier array (job 41;" in proc.stderr, proc.stderr
    assert f"merge it: python -m grading merge {work / 'parts'}/* --out {out}" in proc.stderr
    assert "give another --work" in proc.stderr
    assert not (work / "grade.sbatch").exists()
    assert (work / "parts" / "1").is_dir()  # the earlier parts are left as they were


def test_relative_paths_reach_the_tasks_absolute_and_names_stay_names(tmp_path, monkeypatch):
    """The tasks run in the repository: a path relative to where the instructor typed the
    command (an option after --, or in the environment sbatch passes on) is made absolute;
    a theme or model name, or one that is no file here, is left to the grader's lookup."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text("")
    (tmp_path / "model").mkdir()
    flags = ["--model", "model", "--theme=mine.toml", "--keep-work", "kept", "--jobs", "2",
             "--theme", "plain", "--model=gpt2", "--theme", "nowhere.toml"]
    assert absolute_paths(flags) == [
        "--model", str(tmp_path / "model"), f"--theme={tmp_path / 'mine.toml'}",
        "--keep-work", str(tmp_path / "kept"), "--jobs", "2", "--theme", "plain",
        "--model=gpt2", "--theme", "nowhere.toml"]
    env = tasks_environment({"LABKIT_THEME": "mine.toml", "LABKIT_MODEL": "gpt2",
                             "LABKIT_CACHE": "cache", "HF_HOME": "/shared/hf", "PATH": "bin"})
    assert env == {"LABKIT_THEME": str(tmp_path / "mine.toml"), "LABKIT_MODEL": "gpt2",
                   "LABKIT_CACHE": str(tmp_path / "cache"), "HF_HOME": "/shared/hf",
                   "PATH": "bin"}
