"""One untrusted process of a sandbox whose input is still to come (the exercise runner):
`Sandbox.start_untrusted` makes it, `finish` sends its stdin and waits for it.

Inside namespaces it starts at once, so that its start-up (Python, torch) runs while the
submission's kernels do: neither can see the other there (own PID, mount and network
namespaces), and the student's code in it waits for its input. As the account's user or
the grader's own it starts only at `finish`, after the kernels are gone: a process of the
kernel's own user could be read or stopped by it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path


class Untrusted:
    """argv in `box` (a Sandbox) with cwd `cwd`; started now when `early`, else at finish."""

    def __init__(self, box, argv, cwd: Path, early: bool):
        self.box, self.argv, self.cwd, self.proc = box, list(argv), cwd, None
        if early:
            self._start()

    def _start(self) -> None:
        """Outputs go to files (capped by the file-size limit), never unbounded pipes."""
        fd_out, out = tempfile.mkstemp(prefix="untrusted-", suffix=".out", dir=self.box.root)
        fd_err, err = tempfile.mkstemp(prefix="untrusted-", suffix=".err", dir=self.box.root)
        self.out, self.err = Path(out), Path(err)
        try:
            self.proc = subprocess.Popen(self.box.wrap(self.argv), stdin=subprocess.PIPE,
                                         stdout=fd_out, stderr=fd_err, cwd=self.cwd,
                                         env=self.box.env(), text=True, start_new_session=True)
        finally:
            os.close(fd_out)
            os.close(fd_err)

    def finish(self, stdin: str, timeout: float):
        """(returncode, stdout, stderr, timed_out): `stdin` sent, at most `timeout` s waited
        (then it is killed); whatever it left is killed too."""
        try:
            if self.proc is None:
                self._start()
            self.proc.communicate(stdin, timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            self.kill()
            timed_out = True
        except BaseException:  # e.g. the grading phase's time limit: leave nothing
            self.kill()
            raise
        finally:
            self.box.reap()
        return self.proc.returncode, tail(self.out), tail(self.err), timed_out

    def kill(self) -> None:
        """Stop it (and its process group) if it runs; never started: nothing to do."""
        if self.proc is not None and self.proc.returncode is None:
            kill_group(self.proc)


def tail(path: Path, limit: int = 1 << 20) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode("utf-8", "replace")


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
