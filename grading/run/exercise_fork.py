"""The sandboxed half of the exercise runner (grading.run.student_code), run as
`python -c <this file's text> DEFINITIONS TIMEOUT FUNCTION...` with stdin
"<key>\\n<JSON {function: {"call": source of call(fn, case), "cases": [...]}}>". Standard
library and torch only: it never imports the project.

torch is imported once; then one fork per function, each before anything is read. A fork
(stdin on /dev/null, stdout and stderr on a pipe of its own, no capabilities, the reference
modules unimportable) waits for its cases, and only then loads the definitions, runs its
function on them and hands the answers back over another pipe: so the process may be
started early (grading.run.untrusted) and wait for its input. Only this process, which
never runs the student's code, reads the per-run key (after the forks: it is never in
their memory) and prints key + every fork's reply, its stderr's tail and whether it ran
past TIMEOUT (then it was killed): one function that hangs, crashes or fails costs the
others nothing.
"""
import ast
import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback

BLOCKED = ("labkit.dpo", "labkit.exercises", "trl")
REPLY_CAP, ERR_TAIL = 64 << 20, 4096


class Fork:
    """This process's view of one function's fork: its pid and pipe ends, what it sent."""

    def __init__(self, name, pid, cases_w, answers_r, err_r):
        self.name, self.pid, self.timed_out, self.exited = name, pid, False, False
        self.cases_w, self.answers_r, self.err_r = cases_w, answers_r, err_r
        self.send, self.reply, self.err = b"", bytearray(), bytearray()

    def fds(self):
        return [fd for fd in (self.cases_w, self.answers_r, self.err_r) if fd is not None]

    def report(self):
        return {"reply": self.reply.decode("utf-8", "replace"), "timed_out": self.timed_out,
                "stderr": self.err[-ERR_TAIL:].decode("utf-8", "replace")}


def main():
    libc = _libc()
    if libc is not None:
        libc.prctl(4, 0, 0, 0, 0)      # PR_SET_DUMPABLE 0: /proc/<pid>/fd, mem, ptrace closed
    import torch  # noqa: F401 - once, here: every fork starts with it loaded

    forks = []
    for name in sys.argv[3:]:
        cases_r, cases_w = os.pipe()
        answers_r, answers_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in (cases_w, answers_r, err_r, *(fd for f in forks for fd in f.fds())):
                os.close(fd)
            run_function(name, cases_r, answers_w, err_w, libc)   # never returns
        for fd in (cases_r, answers_w, err_w):
            os.close(fd)
        forks.append(Fork(name, pid, cases_w, answers_r, err_r))
    key, _, payload = sys.stdin.read().partition("\n")
    specs = json.loads(payload)
    for fork in forks:
        fork.send = json.dumps(specs[fork.name]).encode()
    serve(forks, time.monotonic() + float(sys.argv[2]))
    print(key + json.dumps({f.name: f.report() for f in forks}), flush=True)
    os._exit(0)


def run_function(name, cases_r, answers_w, err_w, libc):
    """In the fork: read the cases, load the definitions, answer, write the reply, exit."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(err_w, 1)
    os.dup2(err_w, 2)
    if libc is not None:
        libc.prctl(38, 1, 0, 0, 0)    # PR_SET_NO_NEW_PRIVS
        libc.prctl(28, 0x2f, 0, 0, 0)  # PR_SET_SECUREBITS: no root magic (inside namespaces)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        libc.capset(header, (ctypes.c_uint32 * 6)())   # drop every capability
    sys.meta_path.insert(0, Blocked())
    for module in list(sys.modules):
        if Blocked.covers(module):
            del sys.modules[module]
    try:
        with os.fdopen(cases_r, encoding="utf-8") as handle:   # nothing runs before it comes
            spec = json.load(handle)
        namespace = {"__name__": "student_definitions"}
        for node in ast.parse(open(sys.argv[1], encoding="utf-8").read()).body:
            code = compile(ast.Module([node], []), "notebook-3-definitions", "exec")
            try:
                exec(code, namespace)
            except Exception:   # an import the function does not need may fail
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    raise
        fn = namespace[name]
        helpers = {"torch": sys.modules["torch"]}
        exec(spec["call"], helpers)
        reply = {"answers": [helpers["call"](fn, case) for case in spec["cases"]]}
    except BaseException as exc:
        traceback.print_exc()
        reply = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        with os.fdopen(answers_w, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(reply))
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)


class Blocked:
    """An import hook: the reference modules cannot be imported in a fork."""

    @staticmethod
    def covers(name):
        return any(name == m or name.startswith(m + ".") for m in BLOCKED)

    def find_spec(self, name, path=None, target=None):
        if self.covers(name):
            raise ImportError(f"{name} is the reference: write this function yourself")


def serve(forks, deadline):
    """Send each fork its cases and collect its reply and stderr until it is done (its reply
    pipe closed, or it exited); kill the ones still running at `deadline`, and any left."""
    for fork in forks:
        os.set_blocking(fork.cases_w, False)
    live = list(forks)
    while live and time.monotonic() < deadline:
        readers = [fd for f in live for fd in (f.answers_r, f.err_r) if fd is not None]
        writers = [f.cases_w for f in live if f.cases_w is not None]
        ready_r, ready_w, _ = select.select(readers, writers, [],
                                            max(0.0, min(0.2, deadline - time.monotonic())))
        for fork in list(live):
            if fork.cases_w is not None and fork.cases_w in ready_w:
                _send(fork)
            for fd in (fork.answers_r, fork.err_r):
                if fd is not None and fd in ready_r:
                    _receive(fork, fd)
            if fork.answers_r is None or _exited(fork):
                _drain(fork)   # all it wrote is in its pipes, whoever else holds them open
                live.remove(fork)
    for fork in forks:
        fork.timed_out = fork in live
        if not fork.exited:
            os.kill(fork.pid, signal.SIGKILL)
            os.waitpid(fork.pid, 0)


def _exited(fork):
    fork.exited = os.waitpid(fork.pid, os.WNOHANG)[0] != 0
    return fork.exited


def _send(fork):
    try:
        sent = os.write(fork.cases_w, fork.send[:1 << 16])
    except BlockingIOError:
        return
    except BrokenPipeError:   # the fork stopped before reading its cases
        sent = len(fork.send)
    fork.send = fork.send[sent:]
    if not fork.send:
        os.close(fork.cases_w)
        fork.cases_w = None


def _receive(fork, fd):
    """Read once from one of the fork's pipes: whether data came (at its end, it is closed)."""
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return False
    if data and fd == fork.answers_r:
        fork.reply += data[:max(0, REPLY_CAP - len(fork.reply))]
    elif data:
        fork.err = fork.err[-ERR_TAIL:] + data
    else:
        os.close(fd)
        fork.answers_r, fork.err_r = (None if fd == fork.answers_r else fork.answers_r,
                                      None if fd == fork.err_r else fork.err_r)
    return bool(data)


def _drain(fork):
    """What an exited fork left in its pipes (bounded: a process it left may still write)."""
    for fd in (fork.answers_r, fork.err_r):
        if fd is not None:
            os.set_blocking(fd, False)
            for _ in range(1024):
                if not _receive(fork, fd):
                    break
    for fd in (fork.answers_r, fork.err_r):
        if fd is not None:
            os.close(fd)
    fork.answers_r = fork.err_r = None


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


if __name__ == "__main__":
    main()
