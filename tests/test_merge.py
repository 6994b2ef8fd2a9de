"""A class graded in parts (`python -m grading ... --shard K/N`) and joined again
(`python -m grading merge`): the parts are deterministic and cover the class exactly once,
the merged gradebook is the one-process gradebook, and merge refuses parts that do not
belong together, each time saying why. (On a real Slurm cluster: tests/test_slurm.py.)"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grading.__main__ import main as grading_main
from grading.batch import PartManifest, class_order, parse_shard, select
from grading.merge import MergeRefused, main as merge_main, merge
from tests.submissions import craft

NAMES = ["dan", "amy", "eve", "bob", "cat"]


def gradebook(folder: Path) -> dict[str, dict]:
    with open(folder / "gradebook.csv", newline="") as handle:
        return {r["submission"]: r for r in csv.DictReader(handle)}


def scores(folder: Path) -> dict[str, tuple]:
    return {n: (r["score"], r["max_score"], r["step1"], r["step2"], r["step3"], r["step4"])
            for n, r in gradebook(folder).items()}


def test_parts_are_deterministic_and_cover_the_class_once(tmp_path):
    paths = [tmp_path / n for n in NAMES] + [tmp_path / "x" / "amy", tmp_path / "03_b.ipynb"]
    parts = [select(paths, k, 3) for k in (1, 2, 3)]
    names = [n for part in parts for _, n in part]
    assert sorted(names) == sorted(n for _, n in class_order(paths)) and len(set(names)) == 7
    assert [select(list(reversed(paths)), k, 3) for k in (1, 2, 3)] == parts  # any order given
    assert [n for _, n in class_order(paths)] == ["03_b", "amy", "amy-2", "bob", "cat", "dan",
                                                  "eve"]
    assert [n for _, n in parts[0]] == ["03_b", "bob", "eve"]


@pytest.mark.parametrize("text", ["3", "0/2", "3/2", "a/b", "1/0", ""])
def test_a_bad_shard_is_refused_saying_what_is_expected(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


@pytest.fixture
def class_dir(tmp_path):
    """Five submissions with no work in them: graded fast (--no-execute), all 0."""
    for name in NAMES:
        (tmp_path / "subs" / name).mkdir(parents=True)
    return sorted((tmp_path / "subs").iterdir())


def part(subs, out: Path, shard: str | None, *extra) -> Path:
    argv = [*map(str, subs), "--out", str(out), "--no-execute", "--model", "teaching", *extra]
    assert grading_main(argv + (["--shard", shard] if shard else [])) == 0
    return out


def refusal(parts, out: Path, capsys) -> str:
    assert merge_main([*map(str, parts), "--out", str(out)]) == 2
    assert not out.exists(), "a refused merge writes nothing"
    return capsys.readouterr().err


def test_merge_refuses_parts_that_do_not_belong_together(tmp_path, class_dir, teaching_dir,
                                                         capsys, monkeypatch):
    p1 = part(class_dir, tmp_path / "p1", "1/3")
    p2 = part(class_dir, tmp_path / "p2", "2/3")
    p3 = part(class_dir, tmp_path / "p3", "3/3")
    whole = part(class_dir, tmp_path / "whole", None)
    assert merge([p1, p2, p3], tmp_path / "merged")  # the three parts do merge
    assert list(gradebook(tmp_path / "merged")) == sorted(NAMES)
    capsys.readouterr()

    said = refusal([p1, p3], tmp_path / "m-missing", capsys)
    assert "2 student(s) graded in no part given: bob, eve (parts not given: 2/3)" in said
    said = refusal([p1, p2, p3, whole], tmp_path / "m-overlap", capsys)
    assert "student 'amy' was graded in two parts" in said and str(whole) in said

    themed = part(class_dir, tmp_path / "p2-concise", "2/3", "--theme", "concise")
    said = refusal([p1, themed, p3], tmp_path / "m-theme", capsys)
    assert "was graded with theme 'concise' but" in said and "'default'" in said
    other_model = tmp_path / "p2-model"
    shutil.copytree(p2, other_model)
    manifest = PartManifest.read(other_model)
    PartManifest("gpt2", *[getattr(manifest, f) for f in ("theme", "rubric", "shard",
                                                          "submissions", "graded")]
                 ).write(other_model)
    said = refusal([p1, other_model, p3], tmp_path / "m-model", capsys)
    assert "was graded with model 'gpt2' but" in said and "'teaching'" in said

    from grading.checks import rubric

    changed = tuple(i if n else type(i)(i.step, i.name, i.points + 1, i.description, i.integrity)
                    for n, i in enumerate(rubric.RUBRIC))
    monkeypatch.setattr(rubric, "RUBRIC", changed)  # the class's rubric changed mid-way
    reweighted = part(class_dir, tmp_path / "p3-rubric", "3/3")
    monkeypatch.undo()
    said = refusal([p1, p2, reweighted], tmp_path / "m-rubric", capsys)
    assert "was graded with rubric" in said and "grading/checks/rubric.py" in said

    (p2 / "batch.json").unlink()  # a part that never finished
    said = refusal([p1, p2, p3], tmp_path / "m-unfinished", capsys)
    assert "no batch.json: not a finished run" in said


def test_merge_refuses_to_overwrite_or_to_merge_into_a_part(tmp_path, class_dir, teaching_dir):
    p1 = part(class_dir, tmp_path / "p1", "1/2")
    p2 = part(class_dir, tmp_path / "p2", "2/2")
    with pytest.raises(MergeRefused, match="is one of the parts"):
        merge([p1, p2], p2)
    with pytest.raises(MergeRefused, match=f"is inside the part {p2}: merge into a new folder"):
        merge([p1, p2], p2 / "merged")  # would copy the part into itself
    (tmp_path / "afile").write_text("kept\n")
    with pytest.raises(MergeRefused, match="exists and is not a folder"):
        merge([p1, p2], tmp_path / "afile")
    with pytest.raises(MergeRefused, match="p3: no such folder"):
        merge([p1, p2, tmp_path / "p3"], tmp_path / "m")
    assert not (p2 / "merged").exists() and not (tmp_path / "m").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "gradebook.csv").write_text("kept\n")
    with pytest.raises(MergeRefused, match="exists and is not empty"):
        merge([p1, p2], tmp_path / "full")
    assert (tmp_path / "full" / "gradebook.csv").read_text() == "kept\n"


def test_a_part_graded_again_and_killed_half_way_is_not_merged(tmp_path, class_dir,
                                                               teaching_dir):
    """A part graded again into its folder and killed half-way (a Slurm task at its time
    limit) does not pass for finished with the earlier run's batch.json: merge refuses it."""
    p1, p2 = part(class_dir, tmp_path / "p1", "1/2"), part(class_dir, tmp_path / "p2", "2/2")
    notebook = craft.single(1, tmp_path / "again")
    proc = subprocess.Popen([sys.executable, "-m", "grading", str(notebook), "--out", str(p1),
                             "--model", "teaching"], stderr=subprocess.PIPE, text=True,
                            cwd=craft.ROOT, env={**os.environ, "TMPDIR": str(tmp_path),
                                                             "HF_HUB_OFFLINE": "1"})
    said = []
    for line in proc.stderr:  # killed once it grades: its kernel is starting
        said.append(line)
        if " start " in line:
            break
    proc.kill()
    proc.wait(timeout=60)
    assert any(" start " in line for line in said), "".join(said)
    assert not (p1 / "batch.json").exists()
    with pytest.raises(MergeRefused, match="no batch.json: not a finished run"):
        merge([p1, p2], tmp_path / "merged")


@pytest.mark.slow
def test_merged_parts_equal_one_process_score_for_score(tmp_path, lab_run):
    """Real runs (the lab's run directory, intact, with its pairs cut to 7, and without
    step 4), graded in two parts and merged: the one-process gradebook, row for row."""
    subs = []
    for name, drop in (("full", None), ("seven", "pairs"), ("no4", "step4_report.json")):
        dst = tmp_path / "subs" / name
        shutil.copytree(lab_run.run_dir, dst / "run", ignore=shutil.ignore_patterns("executed"))
        if drop == "pairs":
            pairs = dst / "run" / "step2_preferences.jsonl"
            pairs.write_text("".join(pairs.read_text().splitlines(True)[:7]))
        elif drop:
            (dst / "run" / drop).unlink()
        subs.append(dst)
    one = part(subs, tmp_path / "one", None)
    parts = [part(subs, tmp_path / f"p{k}", f"{k}/2") for k in (1, 2)]
    merge(parts, tmp_path / "merged")
    assert scores(tmp_path / "merged") == scores(one)
    assert len({s[0] for s in scores(one).values()}) == 3  # three different grades
    for name in ("full", "seven", "no4"):
        for file in ("results.json", "feedback.md"):
            assert (tmp_path / "merged" / name / file).read_text() == \
                (tmp_path / f"p{1 if name in ('full', 'seven') else 2}" / name / file).read_text()


def test_a_part_records_the_model_it_was_graded_with(tmp_path, class_dir, teaching_dir):
    """A model the grader cannot load (offline, or a typo) falls back to the teaching model,
    said on stderr; the part's batch.json records the model used, so it never merges with
    parts graded on the model asked for."""
    proc = subprocess.run([sys.executable, "-m", "grading", *map(str, class_dir), "--out",
                           str(tmp_path / "p"), "--no-execute", "--model", "gtp2"],
                          capture_output=True, text=True, cwd=craft.ROOT, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "warning: the model 'gtp2' could not be loaded" in proc.stderr
    assert "grading with 'teaching' instead" in proc.stderr
    assert PartManifest.read(tmp_path / "p").model == "teaching"
