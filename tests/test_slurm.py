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
import subprocess
import sys
from pathlib import Path

import pytest

from grading.run.reference_cache import SHARED_RUN
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **cluster.env}
    one = subprocess.run([sys.executable, "-m", "grading", *map(str, subs), "--out",
                          str(tmp_path / "one"), "--model", "teaching"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert one.returncode == 0, one.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "grading", "slurm", *map(str, subs), "--out",
                           str(tmp_path / "class"), "--tasks", "2", "--cpus-per-task", "1",
                           "--mem", "4G", "--time", "00:30:00", "--", "--model", "teaching"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    logs = "\n".join(p.read_text()
                     for p in sorted((tmp_path / "class.slurm" / "logs").glob("*")))
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{logs[-3000:]}\n{cluster.log_tail()}"
    assert "merged 2 part(s), 4 submission(s)" in proc.stderr
    script = (tmp_path / "class.slurm" / "grade.sbatch").read_text()
    assert "--shard $SLURM_ARRAY_TASK_ID/2" in script

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
