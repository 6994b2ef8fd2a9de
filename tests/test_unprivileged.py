"""Student code never runs as root. Where the grader is root and user namespaces are off
(Gradescope's containers; forced here with LABKIT_GRADER_NO_NAMESPACES=1), kernels and
the exercise runners run as an unprivileged user, one per submission graded at the same
time; they can read neither the solutions nor the results, write nowhere but their work
folder, and leave no process behind.

The folders a probe attacks live under a folder every user may pass through (as
/autograder does), not under pytest's own 0700 one: what stops the probe is the grader's
doing. Needs root (and useradd, setpriv): skipped otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from grading.run import sandbox, stage, unprivileged
from grading.run.sandbox import Sandbox
from tests.submissions import craft

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("useradd") and shutil.which("setpriv")),
    reason="needs root, useradd and setpriv (the grader's unprivileged-user mode)")


@pytest.fixture
def no_namespaces(monkeypatch):
    monkeypatch.setenv(sandbox.NO_NAMESPACES_ENV, "1")


@pytest.fixture
def open_dir():
    """A folder every user may pass through (0755 under /tmp), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="labkit-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def closed(path: Path) -> Path:
    """`path` (made here if missing) closed to other users, as setup.sh's chmod o= leaves
    it."""
    path.mkdir(exist_ok=True)
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & 0o770)
    return path


def attempts(solution: Path, results: Path, source: Path, own: Path) -> str:
    """Code that tries to read the solution and write into results, source and its own
    folder, leaves a detached process and prints what it found."""
    targets = [("read", str(solution), "r"), ("results", str(results), "w"),
               ("source", str(source), "a"), ("own", str(own), "w")]
    return craft.ATTEMPTS.format(targets=targets) + (
        "found['pid'] = subprocess.Popen(['sleep', '60'], start_new_session=True).pid\n"
        "print('FOUND ' + json.dumps(found))\n")


# ----------------------------------------------------------------------------- fast
def test_isolation_names_the_mode(no_namespaces, monkeypatch):
    assert unprivileged.mode() == "unprivileged user" and unprivileged.needed()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert unprivileged.mode() == "none" and not unprivileged.needed()


def test_a_root_sandbox_without_an_account_refuses_to_run(no_namespaces, tmp_path):
    box = Sandbox(tmp_path / "me", "teaching").create()
    with pytest.raises(RuntimeError, match="never runs as root"):
        box.wrap(["true"])


def test_untrusted_code_runs_as_a_student_and_leaves_nothing(no_namespaces, open_dir):
    solution = open_dir / "source" / "notebooks" / craft.NAMES[3]
    solution.parent.mkdir(parents=True)
    shutil.copyfile(craft.NOTEBOOKS / craft.NAMES[3], solution)
    closed(open_dir / "source" / "notebooks")
    results = closed(open_dir / "results")
    batch = open_dir / "batch"
    batch.mkdir(mode=0o711)
    with unprivileged.account(None, "teaching") as user:
        box = Sandbox(batch / "me", "teaching", account=user).create()
        code = attempts(solution, results / "results.json", open_dir / "source" / "pwned",
                        box.lab / "mine.txt")
        rc, out, err, _ = box.run_untrusted([sys.executable, "-c", code], "", box.lab, 120)
        left = unprivileged.processes_of(user.uid)  # right after the run: reaped
        isolation = box.isolation()
        box.release()
    assert rc == 0, err
    found = json.loads(out.split("FOUND ", 1)[1])
    assert found["uid"] == user.uid != 0 and user.name.startswith("labkit-student")
    assert {k: found[k] for k in ("read", "results", "source", "own")} == {
        "read": "PermissionError", "results": "PermissionError",
        "source": "PermissionError", "own": "done"}
    assert found["pid"] and left == []  # the detached sleeper too
    assert isolation.startswith(f"unprivileged user: runs as {user.name} (uid {user.uid})")


def test_concurrent_submissions_get_their_own_users(no_namespaces):
    """Killing one submission's processes never touches another's."""
    with unprivileged.account(None, "teaching") as a, \
            unprivileged.account(a.stage, "teaching") as b:
        assert a.name != b.name and a.uid != b.uid
        sleeper = subprocess.Popen(b.drop(["sleep", "60"]))
        time.sleep(0.2)
        a.kill_all()
        assert sleeper.poll() is None and unprivileged.processes_of(b.uid) == [sleeper.pid]
        b.kill_all()
        assert sleeper.wait(timeout=10) == -9
    a.stage.remove()


def test_gradescopes_sweep_spares_a_submission_being_graded(no_namespaces):
    """run_autograder's last sweep (kill_students) kills what a finished grader left, and
    never the kernels of a submission another grader on this machine is grading now."""
    with unprivileged.account(None, "teaching") as busy:
        sleeper = subprocess.Popen(busy.drop(["sleep", "60"]))
        time.sleep(0.2)
        unprivileged.kill_students()
        assert sleeper.poll() is None and unprivileged.processes_of(busy.uid) == [sleeper.pid]
    assert sleeper.wait(timeout=10) == -9  # its own grader's kill, as the slot ends
    busy.stage.remove()
    # left by a grader that crashed: its slot is free. The last slot, which no test running
    # beside this one takes (each takes the lowest free one)
    name = f"{unprivileged.PREFIX}{unprivileged.MAX_SLOTS}"
    uid, gid = unprivileged.ensure_user(name)
    left = subprocess.Popen(unprivileged.Account(name, uid, gid, None).drop(["sleep", "60"]))
    time.sleep(0.2)
    unprivileged.kill_students()
    assert left.wait(timeout=10) == -9 and unprivileged.processes_of(uid) == []


def test_the_batch_refuses_what_every_user_may_read(no_namespaces, open_dir, tmp_path):
    """The grader never changes the instructor's permissions: it says what to close."""
    notebooks = open_dir / "notebooks"
    notebooks.mkdir()
    (notebooks / craft.NAMES[3]).write_text("{}")
    (notebooks / craft.NAMES[3]).chmod(0o644)
    with pytest.raises(RuntimeError, match=f"may read {notebooks}: close them .*chmod -R o="):
        unprivileged.stage_for_batch("teaching", [notebooks], tmp_path / "out")
    out = open_dir / "out"
    out.mkdir(mode=0o755)
    with pytest.raises(RuntimeError, match=f"may read {out}"):
        unprivileged.stage_for_batch("teaching", [tmp_path], out)
    closed(notebooks)
    staged = unprivileged.stage_for_batch("teaching", [notebooks], tmp_path / "out")
    staged.remove()
    assert oct(notebooks.stat().st_mode & 0o777) == "0o750"  # as the instructor left it


def test_the_stage_holds_the_code_not_the_solutions(tmp_path):
    staged = stage.build("teaching")
    try:
        names = sorted(p.name for p in (staged.root / "code").iterdir())
        files = [p for p in staged.root.rglob("*") if p.is_file() and not p.is_symlink()]
        assert names == ["grading", "labkit"] and not list(staged.root.rglob("*.ipynb"))
        assert all(p.stat().st_mode & 0o004 and not p.stat().st_mode & 0o002 for p in files)
        assert stage.searchable(staged.root / "code" / "labkit")
    finally:
        staged.remove()
    assert not staged.root.exists()


def test_lock_down_closes_the_gradescope_folders(open_dir):
    for name in ("source/notebooks", "results", "submission", "venv/bin"):
        (open_dir / name).mkdir(parents=True)
        (open_dir / name / "file").write_text("x")
    unprivileged.lock_down(open_dir)
    for name in ("source", "source/notebooks/file", "results", "submission/file"):
        assert (open_dir / name).stat().st_mode & 0o007 == 0, name
    assert (open_dir / "venv" / "bin" / "file").stat().st_mode & 0o004


# ----------------------------------------------------------------------------- end to end
def probe_notebook(sub: Path, solution: Path, results: Path, source: Path) -> Path:
    """Notebook 1 with the probe injected; returns the heartbeat file its leftover
    process beats while it lives."""
    heartbeat = Path(f"/tmp/labkit-probe-{os.urandom(6).hex()}")
    notebook = craft.single(1, sub)
    craft.inject(notebook, craft.probe(solution, results, source, heartbeat),
                 after="session.start")
    return heartbeat


def probe_found(res: dict) -> dict:
    run = next(t for t in res["tests"] if t["name"] == f"Run {craft.NAMES[1]}")
    return json.loads(run["output"].split("PROBE ", 1)[1].rsplit("}", 1)[0] + "}")


def nothing_left_behind(results: Path, heartbeat: Path) -> None:
    """Well past the grader's end: no student process, no beat, the results unchanged."""
    before = results.read_bytes()
    beats = heartbeat.stat().st_size if heartbeat.exists() else 0
    time.sleep(3)  # the leftover process beats and rewrites every 0.2 s while it lives
    assert results.read_bytes() == before and json.loads(before)["score"] != 999
    assert (heartbeat.stat().st_size if heartbeat.exists() else 0) == beats
    heartbeat.unlink(missing_ok=True)
    for entry in unprivileged.idle_students():  # a user another test's grader runs as now
        assert unprivileged.processes_of(entry.pw_uid) == [], entry.pw_name  # is its own


@pytest.mark.slow
def test_probe_on_gradescope_as_root_without_namespaces(open_dir, teaching_dir):
    from tests.test_gradescope import build, run_autograder, script_env, simulated_root

    archive = open_dir / "autograder.zip"
    assert build(archive, "--model", "teaching").returncode == 0
    root = simulated_root(open_dir, archive)  # open_dir/autograder, like /autograder
    setup = subprocess.run(["bash", str(root / "source" / "setup.sh")], cwd=root / "source",
                           capture_output=True, text=True, env=script_env(root), timeout=600)
    assert setup.returncode == 0, setup.stderr[-2000:]
    assert "student code runs as labkit-student1" in setup.stdout
    checks = root / "source" / "grading" / "checks" / "__init__.py"
    original = checks.read_bytes()
    heartbeat = probe_notebook(root / "submission" / "probe",
                               root / "source" / "notebooks" / craft.NAMES[3],
                               root / "results" / "results.json", checks)
    proc, res, _ = run_autograder(root, **{sandbox.NO_NAMESPACES_ENV: "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "isolation: unprivileged user" in proc.stderr
    found = probe_found(res)
    assert found["uid"] != 0 and (found["read"], found["results"], found["source"]) == (
        "PermissionError",) * 3, found
    assert checks.read_bytes() == original and res["score"] < 100
    nothing_left_behind(root / "results" / "results.json", heartbeat)


@pytest.mark.slow
def test_probe_and_solution_through_the_batch_grader(open_dir, teaching_dir):
    """`python -m grading --no-namespaces` as root, two at a time: the probe is refused
    everything and leaves nothing; the solution, graded beside it, gets 100. From a
    checkout whose notebooks are open to every user, the grader refuses to start."""
    checkout = craft.checkout(open_dir / "lab")
    subs, out = closed(open_dir / "subs"), open_dir / "out"
    solution = craft.solution(subs / "solution")
    heartbeat = probe_notebook(subs / "probe", checkout / "notebooks" / craft.NAMES[3],
                               out / "01_baseline" / "results.json",
                               checkout / "grading" / "checks" / "__init__.py")
    closed(subs)
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "grading", "--out", str(out), "--model", "teaching",
            "--no-namespaces"]
    proc = subprocess.run([*argv, str(solution), str(subs / "probe" / craft.NAMES[1]),
                           "--jobs", "2"], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "isolation: unprivileged user" in proc.stderr
    res = json.loads((out / "solution" / "results.json").read_text())
    failed = [t for t in res["tests"] if t["score"] < t["max_score"]]
    assert res["score"] == 100 and not failed, [(t["name"], t.get("output")) for t in failed]
    probe = json.loads((out / "01_baseline" / "results.json").read_text())
    found = probe_found(probe)
    assert found["uid"] != 0 and (found["read"], found["results"], found["source"]) == (
        "PermissionError",) * 3, found
    assert "unprivileged user: runs as labkit-student" in (
        out / "01_baseline" / "feedback.md").read_text()
    nothing_left_behind(out / "01_baseline" / "results.json", heartbeat)
    for path in [checkout / "notebooks", *(checkout / "notebooks").iterdir()]:
        path.chmod(path.stat().st_mode | 0o005)  # an instructor's checkout open to all
    proc = subprocess.run([*argv, str(solution), "--no-execute"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and f"may read {checkout / 'notebooks'}" in proc.stderr
