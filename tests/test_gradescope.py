"""The Gradescope autograder zip, run end to end in a simulated /autograder, and the
grader's path without user namespaces (what Gradescope's containers may give it).

The zip is built by the real command, unzipped the way Gradescope does (modes kept),
set up with `setup.sh` (reusing this Python instead of installing: AUTOGRADER_SKIP_INSTALL)
and run with `run_autograder` under AUTOGRADER_ROOT, with the zip's own code on PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from grading import gradescope
from grading.checks import gradescope_format
from grading.run import sandbox
from tests.conftest import record_figure
from tests.submissions import craft

ROOT = Path(__file__).resolve().parent.parent
# what isolation the path without namespaces gives: another user when the grader is root
NO_NAMESPACES_MODE = "unprivileged user" if os.geteuid() == 0 else "none"


def build(out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grading", "gradescope", "--out", str(out),
                           *extra], capture_output=True, text=True, cwd=ROOT, timeout=120)


def zf_text(archive: Path, name: str) -> str:
    with zipfile.ZipFile(archive) as zf:
        return zf.read(name).decode()


def unzip(archive: Path, dest: Path) -> None:
    """Extract like `unzip` does on Gradescope: with the members' permission bits."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)


def simulated_root(tmp: Path, archive: Path) -> Path:
    """An /autograder tree as Gradescope lays it out: source/ = the zip, run_autograder
    copied to the root, an empty submission/ and results/."""
    root = tmp / "autograder"
    unzip(archive, root / "source")
    shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")
    (root / "submission").mkdir()
    (root / "results").mkdir()
    return root


def script_env(root: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LABKIT_MODEL")}
    return {**env, "AUTOGRADER_ROOT": str(root), "AUTOGRADER_PYTHON": sys.executable,
            "AUTOGRADER_SKIP_INSTALL": "1", "HF_HUB_OFFLINE": "1", **extra}


def run_autograder(root: Path, **env) -> tuple[subprocess.CompletedProcess, dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([str(root / "run_autograder")], cwd=root, capture_output=True,
                          text=True, env=script_env(root, **env), timeout=1200)
    seconds = time.perf_counter() - start
    results = root / "results" / "results.json"
    assert results.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(results.read_text()), seconds


# ----------------------------------------------------------------------------- fast
def test_zip_has_the_entry_points_at_its_root_executable_and_the_lab(tmp_path):
    archive = tmp_path / "autograder.zip"
    proc = build(archive, "--model", "teaching", "--timeout", "900")
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(archive) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        config = json.loads(zf.read("autograder.json"))
        setup = zf.read("setup.sh").decode()
    for script in ("setup.sh", "run_autograder"):
        assert (infos[script].external_attr >> 16) & 0o777 == 0o755, script
    for name in ("requirements.txt", "labkit/__init__.py", "labkit/themes/plain.toml",
                 "grading/gradescope.py", "grading/run/sandbox.sh",
                 *(f"notebooks/{n}" for n in craft.NAMES.values())):
        assert name in infos, name
    assert not [n for n in infos if "__pycache__" in n or n.endswith(".pyc")]
    assert config["model"] == "teaching" and config["timeout"] == 900
    # pyproject's dependencies, one per line (the lab itself runs from the zip's source)
    requirements = zf_text(archive, "requirements.txt").split()
    assert "torch>=2.6" in requirements and any(r.startswith("trl") for r in requirements)
    # CPU torch first, then the lab's dependencies, then the model cached
    order = [setup.index(s) for s in ('install -q "torch==', 'install -q -r "$SRC/requirements',
                                      "grading.gradescope prepare")]
    assert order == sorted(order)
    again = tmp_path / "again.zip"
    assert build(again, "--model", "teaching", "--timeout", "900").returncode == 0
    assert archive.read_bytes() == again.read_bytes()  # reproducible


def test_class_theme_travels_in_the_zip_shipped_or_own_file(tmp_path):
    """A shipped theme goes by name; an instructor's own .toml is shipped as theme.toml; a
    broken one is refused when the zip is built, not once per submission."""
    proc = build(tmp_path / "a.zip", "--model", "teaching", "--theme", "concise")
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        config = json.loads(zf.read("autograder.json"))
        assert config["theme"] == "concise" and not config["theme_file"]
        assert gradescope.THEME_FILE not in zf.namelist()
    own = tmp_path / "mine.toml"
    own.write_text((ROOT / "labkit" / "themes" / "concise.toml").read_text(), encoding="utf-8")
    proc = build(tmp_path / "b.zip", "--model", "teaching", "--theme", str(own))
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        assert zf.read(gradescope.THEME_FILE) == own.read_bytes()
    own.write_text("preference = 3\n", encoding="utf-8")
    proc = build(tmp_path / "c.zip", "--model", "teaching", "--theme", str(own))
    assert proc.returncode == 2 and "mine.toml" in proc.stderr
    assert not (tmp_path / "c.zip").exists()


def test_torch_pin_is_the_makefiles():
    pin = re.search(r"^TORCH_CPU := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert gradescope.TORCH_CPU == pin


def test_bad_options_are_refused(tmp_path):
    proc = build(tmp_path / "a.zip", "--timeout", "0")
    assert proc.returncode == 2 and "must be positive" in proc.stderr
    assert not (tmp_path / "a.zip").exists()


GOOD = {"score": 44.0, "execution_time": 136, "output": "all", "output_format": "text",
        "visibility": "visible", "stdout_visibility": "hidden", "extra_data": {},
        "tests": [{"name": "t", "number": "1.1", "score": 2, "max_score": 2.0,
                   "status": "passed", "output": "ok", "visibility": "after_due_date",
                   "tags": ["a"]}]}


def test_schema_check_accepts_the_documented_format():
    assert gradescope_format.validate(GOOD) == []


@pytest.mark.parametrize("edit, problem", [
    (lambda r: r.pop("score"), "no top-level 'score'"),
    (lambda r: r.update(max_score=100), "unknown key 'max_score'"),
    (lambda r: r.update(visibility="public"), "visibility: 'public' is not one of"),
    (lambda r: r.update(score=True), "score: True is not a number"),
    (lambda r: r.update(score=float("nan")), "score: nan is not a number"),
    (lambda r: r["tests"][0].update(status="ok"), "tests[0].status: 'ok' is not one of"),
    (lambda r: r["tests"][0].update(number=1.1), "tests[0].number: 1.1 is not a str"),
    (lambda r: r["tests"][0].pop("max_score"), "tests[0]: no 'max_score'"),
    (lambda r: r["tests"][0].update(output_format="markdown"), "tests[0].output_format"),
    (lambda r: r.update(tests={}), "results.tests: {} is not a list"),
])
def test_schema_check_names_what_is_wrong(edit, problem):
    results = json.loads(json.dumps(GOOD))
    edit(results)
    problems = gradescope_format.validate(results)
    assert any(problem in p for p in problems), problems


def test_what_is_graded_in_an_upload(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    assert gradescope.find_target(sub) is None
    craft.solution(sub / "my-lab")  # a zip of a folder arrives one level down
    (sub / "my-lab" / ".ipynb_checkpoints").mkdir()
    (sub / "my-lab" / ".ipynb_checkpoints" / "01_baseline-checkpoint.ipynb").write_text("{}")
    assert gradescope.find_target(sub) == sub / "my-lab"
    (sub / "scratch.ipynb").write_text("{}")  # a stray notebook does not win over the lab
    assert gradescope.find_target(sub) == sub / "my-lab"
    single = tmp_path / "single"
    craft.single(3, single)
    assert gradescope.find_target(single) == single / craft.NAMES[3]
    nested = tmp_path / "nested"
    craft.solution(nested / "notebooks")
    assert gradescope.find_target(nested) == nested  # the grader looks in notebooks/
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "01_baseline.ipynb").symlink_to(craft.NOTEBOOKS / craft.NAMES[1])
    assert gradescope.find_target(linked) is None


def test_a_zip_left_packed_is_unpacked_and_cannot_escape(tmp_path):
    sub = tmp_path / "submission"
    sub.mkdir()
    with zipfile.ZipFile(sub / "lab.zip", "w") as zf:
        for name in craft.NAMES.values():
            zf.write(craft.NOTEBOOKS / name, f"my-lab/{name}")
        zf.writestr("../../escaped.ipynb", "{}")
    (sub / "broken.zip").write_text("not a zip")
    assert gradescope.find_target(sub) is None
    dest = gradescope.unpack_zips(sub, tmp_path / "unzipped")
    assert gradescope.find_target(dest) == dest / "lab" / "my-lab"
    assert (dest / "lab" / "escaped.ipynb").exists()  # '..' dropped: stays inside
    assert not list(tmp_path.glob("*.ipynb")) and not list(dest.glob("*.ipynb"))


def test_empty_upload_gets_zero_and_says_what_to_upload(tmp_path):
    archive = tmp_path / "autograder.zip"
    assert build(archive, "--model", "teaching").returncode == 0
    root = simulated_root(tmp_path, archive)
    (root / "submission" / "notes.txt").write_text("forgot the notebooks")
    proc, res, _ = run_autograder(root)
    assert proc.returncode == 0, proc.stderr
    assert gradescope_format.validate(res) == [] and res["score"] == 0
    assert "No notebook (.ipynb) was found" in res["output"]


def test_a_grader_that_cannot_run_says_so_and_exits_non_zero(tmp_path):
    archive = tmp_path / "autograder.zip"
    assert build(archive, "--model", "teaching").returncode == 0
    root = simulated_root(tmp_path, archive)
    config = root / "source" / "autograder.json"
    config.write_text(config.read_text().replace('"timeout": 1800', '"timeout": -1'))
    _solution(root / "submission")
    proc, res, _ = run_autograder(root)
    assert proc.returncode == 1
    assert gradescope_format.validate(res) == [] and res["score"] == 0
    assert "could not grade this submission (the grader exited with status 2)" in res["output"]


def test_forcing_the_path_without_namespaces(monkeypatch, tmp_path):
    from grading.run import unprivileged

    monkeypatch.setenv(sandbox.NO_NAMESPACES_ENV, "1")
    assert not sandbox.namespaces_work()
    with unprivileged.account(None, "teaching") as user:  # None unless the grader is root
        box = sandbox.Sandbox(tmp_path, "teaching", account=user).create()
        argv = box.wrap(["python", "-c", "pass"])
        isolation = box.isolation()
    assert "unshare" not in argv and argv[-3:] == ["python", "-c", "pass"]
    assert "ulimit -v" in " ".join(argv)  # the limits still apply
    assert f"{sandbox.NO_NAMESPACES_ENV}=1" in isolation
    assert isolation.startswith("unprivileged user" if os.geteuid() == 0 else "none")
    assert ("setpriv" in argv and f"--reuid={user.uid}" in argv) if user else True


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def autograder_zip(tmp_path_factory, teaching_dir):
    """The zip, built by the CLI, and a setup.sh run (model step: the session's build)."""
    tmp = tmp_path_factory.mktemp("gradescope")
    archive = tmp / "autograder.zip"
    proc = build(archive, "--model", "teaching", "--timeout", "1200")
    assert proc.returncode == 0, proc.stderr
    root = simulated_root(tmp / "setup", archive)
    setup = subprocess.run(["bash", str(root / "source" / "setup.sh")], cwd=root / "source",
                           capture_output=True, text=True, env=script_env(root), timeout=600)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    assert "autograder model ready: teaching" in setup.stdout
    return archive, tmp


def graded(autograder_zip, name: str, make, **env):
    archive, tmp = autograder_zip
    root = simulated_root(tmp / name, archive)
    make(root / "submission")
    proc, res, seconds = run_autograder(root, **env)
    record_figure(f"gradescope run_autograder ({name})", f"{seconds:.0f} s wall")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, res


def _solution(sub: Path) -> None:
    for name in craft.NAMES.values():
        shutil.copyfile(craft.NOTEBOOKS / name, sub / name)


def _release(sub: Path) -> None:
    subprocess.run([sys.executable, "-m", "labkit", "release", "--out", str(sub)],
                   check=True, cwd=ROOT, capture_output=True)


@pytest.mark.slow
def test_solution_gets_100_without_namespaces(autograder_zip):
    """Gradescope's containers may forbid user namespaces: forced off, the solution still
    gets every point, and the grader says which isolation it used."""
    proc, res = graded(autograder_zip, "solution", _solution,
                       **{sandbox.NO_NAMESPACES_ENV: "1"})
    assert gradescope_format.validate(res) == []
    failed = [t for t in res["tests"] if t["score"] < t["max_score"]]
    assert res["score"] == 100 and res["extra_data"]["max_score"] == 100 and not failed, [
        (t["name"], t.get("output")) for t in failed]
    assert all(t.get("status", "passed") == "passed" for t in res["tests"])  # answers: none
    assert f"isolation: {NO_NAMESPACES_MODE}" in proc.stderr


@pytest.mark.slow
def test_untouched_release_gets_0(autograder_zip):
    proc, res = graded(autograder_zip, "release", _release)
    assert gradescope_format.validate(res) == []
    assert res["score"] == 0 and res["extra_data"]["max_score"] == 100
    assert sum(t["max_score"] for t in res["tests"]) == 100
    assert "not done yet" in res["output"]
    if sandbox.namespaces_work():
        assert "isolation: namespaces" in proc.stderr


@pytest.mark.slow
def test_grader_cli_no_namespaces_flag(tmp_path, teaching_dir):
    """`python -m grading --no-namespaces` takes the same path, and says so (as root, from
    a checkout whose solutions are closed to the student's user)."""
    (tmp_path / "sub").mkdir()
    checkout = craft.checkout(tmp_path / "lab")
    proc = subprocess.run([sys.executable, "-m", "grading", str(tmp_path / "sub"), "--out",
                           str(tmp_path / "out"), "--model", "teaching", "--no-execute",
                           "--no-namespaces"], capture_output=True, text=True, cwd=checkout,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                            "PYTHONPATH": str(checkout)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"isolation: {NO_NAMESPACES_MODE}" in proc.stderr
    feedback = (tmp_path / "out" / "sub" / "feedback.md").read_text()
    assert "namespaces turned off: --no-namespaces" in feedback
