"""Student code never runs as root. Where the grader is root and user namespaces are not
available (Gradescope's containers, `--no-namespaces`), kernels and the exercise runners
run as an unprivileged user, one per submission being graded at the same time:
`labkit-student1`, `labkit-student2`, ... (a slot, held with a lock; the grader creates
the user on first use, `setup.sh` creates the first on Gradescope).

One user per concurrent submission, not one for the whole batch: at the end of its
submission every process of that user is killed (`kill(-1)` as the user: atomic against
fork), and checked gone before its results are written; with a shared user that would
kill the other jobs' kernels. A user is reused only once its slot is free again, and the
sweep at the end of Gradescope's run (`kill_students`) passes over users whose slot is held.
"""
from __future__ import annotations

import fcntl
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from . import stage as staging
from .sandbox import namespaces_work

PREFIX = "labkit-student"   # slot k runs as labkit-student<k>
MAX_SLOTS = 64
LOCKS = Path("/run/labkit-grader")  # slot locks (root's); the system's tmp where /run is not
MODES = {"namespaces": "namespaces", "user": "unprivileged user", "none": "none"}


class LeftBehind(RuntimeError):
    """A process of the student's user outlived its submission and could not be killed."""


@dataclass(frozen=True)
class Account:
    """The unprivileged user a submission's code runs as, and what it may read."""

    name: str
    uid: int
    gid: int
    stage: staging.Stage

    def drop(self, argv: list[str], pdeathsig: bool = True) -> list[str]:
        """argv run as this user: no groups, no way back to privileges (no_new_privs);
        killed with its parent. The grader's Python becomes the staged one."""
        if argv and argv[0] == sys.executable:
            argv = [self.stage.python, *argv[1:]]
        death = ["--pdeathsig", "KILL"] if pdeathsig else []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--no-new-privs", *death, "--", *argv]

    def enter(self, root: Path) -> None:
        """A sandbox's folder: only this user (of all but root) may pass into it."""
        os.chown(root, 0, self.gid)
        root.chmod(0o710)

    def leave(self, root: Path) -> None:
        """A kept sandbox closed to this user, whom a later submission may run as."""
        if root.exists():
            os.chown(root, 0, 0)
            root.chmod(0o700)

    def confine(self, box, limits: str, argv: list[str], pdeathsig: bool):
        """(limits script, argv) of untrusted code run as this user, from the Sandbox
        `box`'s; called while no process of the user runs: its work folder is handed over."""
        self.hand_over(box.work)  # and the process limit binds, as the user is not root
        return f"ulimit -u {box.limits.processes}; {limits}", self.drop(argv, pdeathsig)

    def isolation(self, limits: str) -> str:
        return (f"unprivileged user: runs as {self.name} (uid {self.uid}), reads only what "
                "every user may and a staged copy of the code and model, writes only its "
                "work folder, all its processes killed after each run; scrubbed env, "
                f"limits: {limits}")

    def hand_over(self, folder: Path) -> None:
        """Make `folder` (the work folder) this user's, and only this user's. Called only
        while no process of the user runs; fwalk never follows a link."""
        for top, dirs, files, fd in os.fwalk(folder, follow_symlinks=False):
            for name in dirs + files:
                os.chown(name, self.uid, self.gid, dir_fd=fd, follow_symlinks=False)
        os.chown(folder, self.uid, self.gid)
        folder.chmod(0o700)

    def kill_all(self, wait: float = 10.0) -> None:
        """Kill every process of this user, and check that none is left; LeftBehind if
        one survives `wait` seconds (e.g. stuck in the kernel)."""
        deadline = time.monotonic() + wait
        while True:
            subprocess.run(["sh", "-c", "kill -9 -1 2>/dev/null; exit 0"], user=self.uid,
                           group=self.gid, extra_groups=[], cwd="/",
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
            alive = processes_of(self.uid)
            if not alive:
                return
            if time.monotonic() > deadline:
                raise LeftBehind(f"processes {alive} of {self.name} (uid {self.uid}) "
                                 f"survived SIGKILL for {wait:g} s")
            for pid in alive:  # e.g. one that changed user to this one meanwhile
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


def idle_students():
    """The pwd entry of each student user no grader runs as now (a held slot's user is being
    graded: its grader kills its processes), its slot locked while the caller has it."""
    folder = _lock_folder()
    for entry in pwd.getpwall():
        number = entry.pw_name.removeprefix(PREFIX)
        if (entry.pw_name.startswith(PREFIX) and number.isdigit() and entry.pw_uid != 0
                and (handle := _try_slot(folder, int(number))) is not None):
            with handle:
                yield entry


def kill_students(wait: float = 10.0) -> None:
    """Kill every process of each of `idle_students()`, and check (LeftBehind)."""
    for entry in idle_students():
        Account(entry.pw_name, entry.pw_uid, entry.pw_gid, None).kill_all(wait)


def needed(allow_namespaces: bool = True) -> bool:
    """Whether student code must run as another user: root, without namespaces."""
    return os.geteuid() == 0 and not (allow_namespaces and namespaces_work())


def mode(allow_namespaces: bool = True) -> str:
    """How student code is isolated: namespaces, unprivileged user, or none (a grader
    that is not root, without namespaces: the code runs as the grader's own user)."""
    if allow_namespaces and namespaces_work():
        return MODES["namespaces"]
    return MODES["user"] if os.geteuid() == 0 else MODES["none"]


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real, effective, saved or filesystem uid is `uid`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uids = {int(u) for u in fields.get("Uid", "").split()}
        if uid in uids and not fields.get("State", "").strip().startswith(("Z", "X")):
            found.append(int(entry.name))
    return found


def ensure_user(name: str) -> tuple[int, int]:
    """(uid, gid) of the system user `name`, created (no home, no login) if missing."""
    import shutil

    if shutil.which("setpriv") is None:
        raise RuntimeError("student code must run as an unprivileged user, started with "
                           "util-linux's `setpriv`, which is not here: install util-linux")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
               "/nonexistent", "--shell", "/usr/sbin/nologin", name]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            raise RuntimeError(f"student code must run as an unprivileged user, and "
                               f"`useradd` is not here to create {name!r}: create it "
                               "(a system user without login), or grade where user "
                               "namespaces work") from None
        if proc.returncode not in (0, 9):  # 9: made meanwhile by another grader
            raise RuntimeError(f"could not create the user {name!r} for student code: "
                               f"{proc.stderr.strip()}")
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise RuntimeError(f"the user {name!r} has uid or gid 0: student code must not run "
                           "as root")
    return entry.pw_uid, entry.pw_gid


def stage_for_batch(model: str, closed: list[Path], out: Path,
                    keep_work: Path | None = None, allow_namespaces: bool = True,
                    theme: str | None = None):
    """The Stage a batch's kernels use (None where no account is needed). RuntimeError,
    saying what to do, where what must stay closed to the student's user is open to every
    user: a file under `closed` (the solution notebooks, the submissions) readable, or the
    results folder `out` one they may pass into. The grader never changes the
    permissions of what it did not make."""
    if not needed(allow_namespaces):
        return None
    opened = [str(p) for p in closed if Path(p).exists() and staging.open_to_others(p)]
    opened += [str(out)] if staging.searchable(out) else []
    if opened:
        raise RuntimeError(
            "student code runs as an unprivileged user here (the grader is root, user "
            "namespaces are off), and every user of this machine may read "
            f"{', '.join(opened)}: close them to other users (chmod -R o= PATH, or keep them "
            "in a folder only root may enter), or grade where user namespaces work")
    ensure_user(f"{PREFIX}1")  # can students' users be made here? say so before grading
    parent = Path(keep_work or tempfile.gettempdir())
    if not staging.searchable(parent):
        raise RuntimeError(f"the sandboxes go to {parent}, which other users cannot pass "
                           "through: the student's user could not reach its work folder "
                           "(choose another --keep-work, or TMPDIR)")
    return staging.build(model, theme=theme)


@contextmanager
def account(stage: staging.Stage | None, model: str, allow_namespaces: bool = True,
            theme: str | None = None):
    """A free slot's Account for one submission (None where none is needed); at the end,
    every process of its user is killed, and checked gone (LeftBehind otherwise), before
    the slot is freed. Without a `stage`, one is built for this submission."""
    if not needed(allow_namespaces):
        yield None
        return
    own = stage is None
    stage = staging.build(model, theme=theme) if own else stage
    try:
        with _slot() as name:
            uid, gid = ensure_user(name)
            user = Account(name, uid, gid, stage)
            user.kill_all()  # none left from an earlier grader that crashed
            try:
                yield user
            finally:
                user.kill_all()
    finally:
        if own:
            stage.remove()


@contextmanager
def _slot():
    """The name of a user no other submission runs as now (an exclusive lock held)."""
    folder = _lock_folder()
    for number in range(1, MAX_SLOTS + 1):
        handle = _try_slot(folder, number)
        if handle is None:
            continue
        try:
            yield f"{PREFIX}{number}"
        finally:
            handle.close()  # releases the lock
        return
    raise RuntimeError(f"all {MAX_SLOTS} student users are busy: grade fewer at a time")


def _try_slot(folder: Path, number: int):
    """The open lock file of slot `number`, locked exclusively; None if another holds it.
    Closing the file releases the lock (so does the holder's death)."""
    handle = open(folder / f"slot-{number}.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _lock_folder() -> Path:
    for folder in (LOCKS, Path(tempfile.gettempdir()) / "labkit-grader-slots"):
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            info = folder.lstat()
        except OSError:
            continue
        if info.st_uid == os.geteuid() and not folder.is_symlink():
            return folder
    raise RuntimeError("no private folder for the grader's slot locks (/run or the "
                       "system's temporary folder)")


def set_up(root: Path) -> str:
    """setup.sh's part (as root): the first student user, and the folders closed to it."""
    uid, _ = ensure_user(f"{PREFIX}1")
    lock_down(root)
    return (f"student code runs as {PREFIX}1 (uid {uid}) where namespaces are off; "
            "source/, submission/ and results/ closed to it")


def lock_down(root: Path) -> None:
    """On Gradescope: close the autograder's source (solutions), submission and results
    folders to other users (o=), leaving the venv and model cache readable."""
    for name in ("source", "submission", "results"):
        folder = root / name
        if not folder.is_dir():
            continue
        for top, dirs, files in os.walk(folder):
            for entry in [top, *(os.path.join(top, n) for n in dirs + files)]:
                if not os.path.islink(entry):
                    mode = os.stat(entry).st_mode
                    os.chmod(entry, mode & 0o7770)
