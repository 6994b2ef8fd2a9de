"""The class's theme travels: named once (a file anywhere), it reaches the batch grader and
its sandboxed kernels, the Gradescope run and the notebooks; a broken one stops a batch or
a lab run before anything runs, in the loader's words; every pair is checked against the
model it is used with."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from grading import gradescope
from grading.checks import gradescope_format
from grading.run import sandbox
from labkit.themes import THEMES_DIR, ThemeError
from labkit.themes.fit import fit_theme
from tests.submissions import craft

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def own_theme(tmp_path_factory) -> Path:
    """A copy of a shipped theme, outside the repository, under a name of its own."""
    path = tmp_path_factory.mktemp("instructor") / "classtheme.toml"
    shutil.copyfile(THEMES_DIR / "plain.toml", path)
    return path


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_pairs_are_checked_against_the_model(tmp_path, teaching_tokenizer):
    info = SimpleNamespace(kind="teaching", device="cpu", is_teaching=True)  # what fit_theme reads
    long = tmp_path / "long.toml"
    text = (THEMES_DIR / "plain.toml").read_text(encoding="utf-8")
    first_chosen = text.index("chosen = ", text.index("[[example_pairs]]"))
    long.write_text(text[:first_chosen] + 'chosen = "' + "very plain words " * 400 + '"\n'
                    + text[text.index("\n", first_chosen) + 1:], encoding="utf-8")
    with pytest.raises(ThemeError) as caught:
        fit_theme(long, teaching_tokenizer, info)
    message = str(caught.value)
    assert "[example_pairs], row 1, field 'chosen'" in message and "tokens" in message
    assert fit_theme(THEMES_DIR / "plain.toml", teaching_tokenizer, info).name == "plain"


def test_a_broken_theme_stops_the_batch_before_the_first_submission(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text('title = "x"\npreference = 3\n', encoding="utf-8")
    sub = craft.solution(tmp_path / "sub")
    proc = cli("-m", "grading", str(sub), "--out", str(tmp_path / "out"), "--theme", str(broken))
    assert proc.returncode == 2
    assert "problem(s) in theme" in proc.stderr and "broken.toml" in proc.stderr
    assert "field 'preference': must be a non-empty string" in proc.stderr
    assert "Traceback" not in proc.stderr and "[1/1] start" not in proc.stderr
    missing = cli("-m", "grading", str(sub), "--out", str(tmp_path / "out"), "--theme",
                  str(tmp_path / "nowhere.toml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_labkit_run_with_a_broken_theme_says_why_without_a_traceback(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("not toml at all = = \n", encoding="utf-8")
    proc = cli("-m", "labkit", "run", "--model", "teaching", "--run-dir", str(tmp_path / "run"),
               "--theme", str(broken))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not valid TOML" in proc.stderr and "Traceback" not in proc.stderr
    assert "[1/4]" not in proc.stdout  # no notebook ran


def test_the_sandbox_lets_kernels_read_the_class_theme(tmp_path, own_theme):
    """The class's theme reaches the sandbox as a setting (never through this process's
    environment), and the kernels may read that one file."""
    box = sandbox.Sandbox(tmp_path / "box", "teaching", settings={"LABKIT_THEME": str(own_theme)})
    assert own_theme in box.allowed()
    assert sandbox.class_theme_file("concise") is None  # shipped: inside labkit/ already
    assert sandbox.class_theme_file(None) is None


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_own_theme_gives_the_solution_100_in_the_sandboxed_batch_grader(tmp_path, own_theme,
                                                                        teaching_dir):
    sub = craft.solution(tmp_path / "sub")
    proc = cli("-m", "grading", str(sub), "--out", str(tmp_path / "out"), "--model", "teaching",
               "--theme", str(own_theme), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if sandbox.namespaces_work():
        assert "isolation: namespaces" in proc.stderr
    assert "theme 'classtheme'" in proc.stderr
    (row,) = csv.DictReader(open(tmp_path / "out" / "gradebook.csv"))
    assert (row["score"], row["max_score"]) == ("100", "100"), row
    executed = (tmp_path / "out" / "sub" / "executed" / "01_baseline.ipynb").read_text()
    assert "classtheme" in executed  # the notebooks print the theme they use


@pytest.mark.slow
def test_own_theme_gives_the_solution_100_in_the_gradescope_run(tmp_path, own_theme,
                                                                teaching_dir):
    from tests.test_gradescope import build, run_autograder, script_env, simulated_root

    archive = tmp_path / "autograder.zip"
    proc = build(archive, "--model", "teaching", "--theme", str(own_theme), "--timeout", "1200")
    assert proc.returncode == 0, proc.stderr
    root = simulated_root(tmp_path, archive)
    setup = subprocess.run(["bash", str(root / "source" / "setup.sh")], cwd=root / "source",
                           capture_output=True, text=True, env=script_env(root), timeout=600)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    assert "autograder theme ready: theme" in setup.stdout  # theme.toml, checked in setup
    craft.solution(root / "submission" / "lab")
    proc, res, _ = run_autograder(root)  # namespaces as this machine gives them
    assert gradescope_format.validate(res) == []
    failed = [t for t in res["tests"] if t["score"] < t["max_score"]]
    assert res["score"] == 100 and not failed, [(t["name"], t.get("output")) for t in failed]
    if sandbox.namespaces_work():
        assert "isolation: namespaces" in proc.stderr
