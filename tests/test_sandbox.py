"""The grader's sandbox, tried as a student (careless or hostile) would: what a kernel can see
of the filesystem (an allow-list, enumerated), its writable copy of the submission (relative
output_dir, TRL's default trainer_output), the limits (processes, disk quota, copy sizes
checked from lstat, the grading phase's own time limit) and the messages when a kernel dies.

The fast tests use the sandboxed process runner (`Sandbox.run_untrusted`, what the student-
loss check uses); the `slow` batch runs real kernels through the CLI.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from grading.run.sandbox import Limits, Sandbox, namespaces_work
from tests.submissions import craft

ROOT = Path(__file__).resolve().parent.parent
needs_namespaces = pytest.mark.skipif(not namespaces_work(),
                                      reason="user namespaces are unavailable here")

ENUMERATE = '''
import json, os, sys
seen = {}
for path in sys.argv[1:]:
    try:
        seen[path] = sorted(os.listdir(path))
    except OSError as exc:
        seen[path] = type(exc).__name__
print("SEEN " + json.dumps(seen))
'''


def listable_in_checkout() -> set[str]:
    """What a kernel may list in the checkout: the code, and the venv where it lives inside
    the checkout (as in CI's fresh clone) - never the solution notebooks."""
    names = {"labkit", "grading"}
    for prefix in (sys.prefix, sys.base_prefix, Path(sys.executable).resolve().parent):
        path = Path(prefix).resolve()
        if ROOT in path.parents:
            names.add(path.relative_to(ROOT).parts[0])
    return names


def seen_by(box: Sandbox, paths) -> dict:
    rc, out, err, _ = box.run_untrusted([sys.executable, "-c", ENUMERATE, *map(str, paths)],
                                        "", box.lab, 60)
    assert rc == 0, err
    return json.loads(out.split("SEEN ", 1)[1])


@pytest.fixture
def decoys(tmp_path):
    """Folders a kernel must not see: another submission, an earlier batch's --out."""
    other = tmp_path / "submissions" / "other-student"
    other.mkdir(parents=True)
    (other / "03_train_dpo.ipynb").write_text("{}")
    out = tmp_path / "earlier-out" / "alice"
    out.mkdir(parents=True)
    (out / "results.json").write_text('{"score": 100}')
    return other, out.parent


@needs_namespaces
def test_the_sandboxed_runner_sees_only_its_allow_list(tmp_path, decoys):
    other, earlier_out = decoys
    box = Sandbox(tmp_path / "batch" / "me", "teaching").create()
    paths = ["/", "/tmp", "/home", "/root", "/work", ROOT.parent, ROOT, ROOT / "notebooks",
             other, earlier_out, tmp_path, box.lab]
    seen = seen_by(box, paths)
    box.release()
    assert set(seen["/"]) <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc",
                              "dev", "proc", "sys", "tmp", *[p.parts[1] for p in box.allowed()]}
    for hidden in ("/home", str(ROOT / "notebooks"), str(other), str(earlier_out)):
        assert seen[hidden] == "FileNotFoundError", (hidden, seen[hidden])
    assert set(seen[str(ROOT)]) == listable_in_checkout()  # the code, not the solutions
    # the private /tmp holds only the way to this sandbox (and allowed caches), never the
    # host's temporary files or the batch's other folders
    host_tmp = set(os.listdir("/tmp"))
    allowed_tmp = {p.parts[2] for p in box.allowed() if p.parts[1] == "tmp"}
    assert set(seen["/tmp"]) <= allowed_tmp and len(host_tmp - allowed_tmp) > 0
    assert seen[str(tmp_path)] == sorted({"batch"} | {p.relative_to(tmp_path).parts[0]
                                                      for p in box.allowed()
                                                      if tmp_path in p.parents})
    allowed_home = {p.parts[2] for p in box.allowed() if p.parts[1] == "root"}
    assert set(seen["/root"]) <= allowed_home


@needs_namespaces
def test_only_the_work_folder_and_a_private_tmp_are_writable(tmp_path):
    box = Sandbox(tmp_path / "me", "teaching").create()
    code = ("import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'w').write('x')\n"
            "        print(p, 'written')\n    except OSError as e:\n        print(p, 'refused')\n")
    targets = [box.lab / "ok.txt", "/tmp/private.txt", ROOT / "labkit" / "pwned.py",
               box.root / "kernel-1.json", "/etc/pwned", "/pwned"]
    rc, out, err, _ = box.run_untrusted([sys.executable, "-c", code, *map(str, targets)], "",
                                        box.lab, 60)
    box.release()
    assert rc == 0, err
    assert out.split("\n")[:6] == [f"{box.lab / 'ok.txt'} written", "/tmp/private.txt written",
                                   *[f"{t} refused" for t in targets[2:]]]
    assert not Path("/tmp/private.txt").exists() and not (ROOT / "labkit" / "pwned.py").exists()


@pytest.mark.parametrize("grader_sets", [None, "ACTIVE"])
def test_sandboxed_code_waits_passively_unless_the_grader_says_otherwise(tmp_path, monkeypatch,
                                                                         grader_sets):
    """OpenMP spin-waiting slows CPU training several-fold beside other work (two jobs,
    another Slurm job): the student's code gets `labkit run`'s PASSIVE, or the grader's own
    OMP_WAIT_POLICY, which is configuration and passes the scrubbed environment."""
    if grader_sets:
        monkeypatch.setenv("OMP_WAIT_POLICY", grader_sets)
    else:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    box = Sandbox(tmp_path / "me", "teaching").create()
    rc, out, err, _ = box.run_untrusted(
        [sys.executable, "-c", "import os; print(os.environ.get('OMP_WAIT_POLICY'))"], "",
        box.lab, 60)
    box.release()
    assert rc == 0, err
    assert out.strip() == (grader_sets or "PASSIVE")


def test_a_process_swarm_stops_at_the_limit(tmp_path):
    box = Sandbox(tmp_path / "me", "teaching", Limits(processes=40)).create()
    swarm = ("import subprocess\nstarted = 0\nfor _ in range(120):\n    try:\n"
             "        subprocess.Popen(['sleep', '20']); started += 1\n"
             "    except OSError:\n        pass\nprint('STARTED', started)\n")
    rc, out, err, _ = box.run_untrusted([sys.executable, "-c", swarm], "", box.lab, 60)
    isolation = box.isolation()
    box.release()
    if box.cgroup is False and os.geteuid() == 0:
        pytest.skip("root without a writable pids cgroup: RLIMIT_NPROC does not bind root")
    started = int(out.split("STARTED", 1)[1])
    assert started < 40, (started, isolation)


def test_the_no_namespace_path_still_runs_under_its_limits(tmp_path, monkeypatch):
    from grading.run import unprivileged

    monkeypatch.setenv("LABKIT_GRADER_NO_NAMESPACES", "1")
    # under /tmp: a root grader's student user must pass through to its folder
    base = Path(tempfile.mkdtemp(prefix="labkit-test-", dir="/tmp"))
    base.chmod(0o711)
    with unprivileged.account(None, "teaching") as user:  # None unless the grader is root
        box = Sandbox(base / "me", "teaching", Limits(file_gb=0.001), account=user).create()
        code = "import os\nopen('big', 'wb').write(b'x' * 3_000_000)\n"
        rc, _, err, _ = box.run_untrusted([sys.executable, "-c", code], "", box.lab, 60)
        isolation = box.isolation()
        box.release()
    size = (box.lab / "big").stat().st_size
    shutil.rmtree(base)
    assert rc != 0 and isolation.startswith(unprivileged.mode())
    assert size < 1_100_000  # the file-size limit held


def test_a_notebook_left_as_a_link_to_a_solution_is_not_run(tmp_path):
    """Code run earlier (notebook 1) may replace notebook 2 by a link to the solution,
    which only the grader may read: the grader never follows it."""
    from grading.run.kernel import execute_notebook

    box = Sandbox(tmp_path / "me", "teaching").create()
    (box.lab / craft.NAMES[2]).symlink_to(craft.NOTEBOOKS / craft.NAMES[2])
    run = execute_notebook(box.lab / craft.NAMES[2], 2, cell_timeout=10, box=box)
    assert run.status == "invalid" and "symbolic link" in run.message


def test_a_submission_folder_is_copied_by_sizes_seen_before_reading(tmp_path):
    from grading.run.submission import copy_submission

    src = tmp_path / "sub"
    (src / "data").mkdir(parents=True)
    (src / "03_train_dpo.ipynb").write_text("{}")
    (src / "data" / "notes.txt").write_text("mine")
    with open(src / "huge.bin", "wb") as f:  # sparse: its size is only in lstat
        f.truncate(5 << 30)
    (src / "passwd").symlink_to("/etc/passwd")
    (src / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    left_out = copy_submission(src, tmp_path / "copy", max_bytes=1 << 20)
    copied = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*"))
    assert copied == ["03_train_dpo.ipynb", "data", "data/notes.txt"]
    assert any(s.startswith("huge.bin (over the 1 MB") for s in left_out)
    assert any(s.startswith("passwd (not a regular file") for s in left_out)


def test_an_oversized_policy_folder_is_refused_from_lstat(tmp_path):
    from grading.run.submission import copy_artifacts

    policy = tmp_path / "run" / "step3_policy"
    policy.mkdir(parents=True)
    with open(policy / "model.safetensors", "wb") as f:
        f.truncate(8 << 30)  # sparse: reading it would take minutes and 8 GB
    left_out = copy_artifacts(tmp_path / "run", tmp_path / "graded", max_policy_bytes=1 << 20)
    assert not (tmp_path / "graded" / "step3_policy").exists()
    assert left_out and "far larger than the base model" in left_out[0]


def test_the_grading_phase_has_its_own_time_limit(run):
    """A submission whose checks run past the limit gets every item failed, saying why.
    The limit counts the checks on the submission (about 0.1 s for the teaching model's
    run, a hundred times this limit), not the grader loading its own base model."""
    from grading import autograde
    from grading.checks.rubric import items_for

    opts = autograde.Options(model="teaching", execute=False, out=run.parent / "out",
                             limits=Limits(grading_timeout=0.001))
    record = autograde.grade_submission(run, "slow", opts, run.parent / "batch")
    items = [i for s in record.steps for i in s.items]
    assert len(record.steps) == 4
    assert len(items) == sum(len(items_for(step)) for step in (1, 2, 3, 4))
    assert all(not i.passed and "the grader's limit of 0.001 s for the grader's checks"
               in i.message for i in items)
    # the same run, given time, is graded in full: the limit was what stopped it
    opts = autograde.Options(model="teaching", execute=False, out=run.parent / "out")
    record = autograde.grade_submission(run, "given-time", opts, run.parent / "batch")
    assert all(i.passed for s in record.steps for i in s.items
               if i.name not in ("student_loss", "student_logps"))  # no notebook 3 here


def test_the_time_limit_passes_through_exception_guards():
    """An `except Exception` on the way (an item's guard, one inside a library) must not
    swallow the limit and let the checks run on without one."""
    import time

    from grading.run.time_limit import GradingTimeout, time_limit

    with pytest.raises(GradingTimeout):
        with time_limit(0.01):
            try:
                time.sleep(3)
            except Exception:  # noqa: BLE001 - the guard under test
                pass


SLOW_MODULE = """
import signal, time
signal.setitimer(signal.ITIMER_REAL, 0.001)  # the limit falls due now, inside this import
until = time.monotonic() + 0.3
while time.monotonic() < until:
    pass
done = True
"""

LIMIT_DURING_IMPORT = """
import sys, time, traceback
from grading.run.time_limit import GradingTimeout, time_limit
try:
    with time_limit(60):
        import slow_module
        time.sleep(5)
except GradingTimeout as exc:
    struck = traceback.extract_tb(exc.__traceback__)[-2]  # [-1]: the alarm handler itself
    print("timed-out in", struck.filename)
print("whole", sys.modules["slow_module"].done)
"""


def test_the_time_limit_waits_for_an_import_to_finish(tmp_path):
    """A module half imported when the limit strikes would fail (or crash) every later
    submission the same grader process grades; so the limit strikes after the import. The
    module being imported sets the alarm itself, so it surely falls due inside it."""
    (tmp_path / "slow_module.py").write_text(SLOW_MODULE)
    proc = subprocess.run([sys.executable, "-c", LIMIT_DURING_IMPORT], capture_output=True,
                          text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # struck in the caller (after the import returned: in its code or its sleep), never
    # inside slow_module or importlib; a print there could itself be cut mid-line
    assert proc.stdout.split() == ["timed-out", "in", "<string>", "whole", "True"]


# ----------------------------------------------------------------------------- real kernels
def _cell_number(path: Path, text: str) -> int:
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return next(i for i, c in enumerate(nb.cells, 1) if text in c.source)


@pytest.fixture(scope="module")
def batch(tmp_path_factory, teaching_dir):
    """One CLI batch: notebook 3 with a relative output_dir and with none, a kernel that
    enumerates the filesystem, kernels killed by a signal and by os._exit, a folder that
    fills its work quota."""
    root = tmp_path_factory.mktemp("sandbox")
    subs, out = root / "subs", root / "out"
    relative = craft.single(3, subs / "relative")
    craft.replace(relative, 'output_dir=str(cfg.run_dir / "trainer")', 'output_dir="dpo_out"')
    nodir = craft.single(3, subs / "nodir")
    craft.replace(nodir, 'output_dir=str(cfg.run_dir / "trainer"),\n', "")
    probe = craft.single(1, subs / "probe")
    paths = ["/", "/tmp", "/home", str(ROOT), str(ROOT / "notebooks"), str(subs / "relative"),
             str(out), str(root)]
    craft.inject(probe, "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', "
                 f"{ENUMERATE!r}, *{paths!r}], capture_output=True, text=True).stdout)",
                 after="session.start")
    killed = craft.single(1, subs / "killed")
    craft.inject(killed, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
                 after="session.start")
    exits = craft.single(1, subs / "exits")
    craft.inject(exits, "import os\nos._exit(3)", after="session.start")
    full = subs / "full"
    full.mkdir()
    for step in (1, 2):
        (full / craft.NAMES[step]).write_bytes((craft.NOTEBOOKS / craft.NAMES[step]).read_bytes())
    craft.inject(full / craft.NAMES[1], "open('filler.bin', 'wb').write(b'x' * (80 << 20))",
                 after="session.start")
    proc = subprocess.run([sys.executable, "-m", "grading", *map(str, [relative, nodir, probe,
                           killed, exits, full]), "--out", str(out), "--model", "teaching",
                           "--jobs", "2", "--disk-gb", "0.05"], capture_output=True, text=True,
                          cwd=ROOT, timeout=1500, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return subs, out, paths


def _results(out: Path, name: str) -> dict:
    return json.loads((out / name / "results.json").read_text())


def _run(res: dict, notebook: str) -> dict:
    return next(t for t in res["tests"] if t["name"] == f"Run {notebook}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["relative", "nodir"])
def test_relative_or_missing_output_dir_gets_full_marks(batch, name):
    _, out, _ = batch
    res = _results(out, "03_train_dpo" if name == "relative" else "03_train_dpo-2")
    assert res["score"] == res["extra_data"]["max_score"] == 25, [t for t in res["tests"]
                                                    if t["score"] < t["max_score"]]


@pytest.mark.slow
@needs_namespaces
def test_a_kernel_sees_only_its_allow_list(batch):
    subs, out, paths = batch
    executed = (out / "01_baseline" / "executed" / craft.NAMES[1]).read_text()
    seen = json.loads(json.loads(executed.split("SEEN ", 1)[1].split("\\n", 1)[0].join('""')))
    assert seen["/home"] == "FileNotFoundError"
    assert set(seen[str(ROOT)]) == listable_in_checkout()
    for hidden in (str(ROOT / "notebooks"), str(subs / "relative"), str(out)):
        assert seen[hidden] == "FileNotFoundError", hidden
    assert "subs" not in seen[paths[-1]] and "out" not in seen[paths[-1]]


@pytest.mark.slow
def test_a_dead_kernel_names_the_cell_and_what_is_known(batch):
    subs, out, _ = batch
    for name, said in (("01_baseline-2", "SIGKILL (9)"), ("01_baseline-3", "exited with code 3")):
        run = _run(_results(out, name), craft.NAMES[1])
        folder = "killed" if name.endswith("2") else "exits"
        cell = _cell_number(subs / folder / craft.NAMES[1],
                            "os.kill" if folder == "killed" else "os._exit")
        assert f"while cell {cell} was running" in run["output"] and said in run["output"], run


@pytest.mark.slow
def test_a_full_work_folder_stops_the_next_notebooks_and_hides_the_path(batch):
    _, out, _ = batch
    res = _results(out, "full")
    assert "skipped: not run: your work folder held" in _run(res, craft.NAMES[2])["output"]
    text = json.dumps([_results(out, n) for n in ("full", "01_baseline-2", "03_train_dpo")])
    text += "".join((out / n / "feedback.md").read_text() for n in ("full", "01_baseline-2"))
    assert not re.search(r"/tmp/grading-|<work>", text)
