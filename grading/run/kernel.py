"""Execute one notebook in a fresh kernel: the one place notebooks are run, by the headless
lab (`python -m labkit run`, trusted, the ordinary python3 kernel) and by the auto-grader
(untrusted, a kernel inside a `Sandbox`, over Unix sockets). Stops at the first error, a
cell time-out or the deadline, and says which in a `NotebookRun`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from ..checks.report import NotebookRun
from .sandbox import Sandbox
from .untrusted import kill_group


def execute_notebook(path: Path, step: int, *, cell_timeout: float, deadline: float = math.inf,
                     box: Sandbox | None = None, save_to: Path | None = None,
                     env: dict | None = None) -> NotebookRun:
    """Execute `path` (cwd: its folder; with `box`, already inside box.work) and save the
    executed copy into `save_to`. `env`: the plain kernel's whole environment (the
    sandboxed kernel's comes from `box`)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    start = time.monotonic()
    real = os.path.realpath(path)  # earlier untrusted code may have left a link (to a solution)
    if box and (real != os.path.abspath(path) or not real.startswith(os.path.realpath(box.work) + "/")):
        return NotebookRun(step, path.name, "invalid", "not a file of your work folder (a "
                           "symbolic link?): not run")
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # malformed JSON, wrong format: the submission's
        return NotebookRun(step, path.name, "invalid", f"not a valid notebook: {exc}")
    if deadline - start < 1:
        return NotebookRun(step, path.name, "timeout", "the submission's total time limit "
                           "was used up before this notebook started")
    hit_deadline, kernel, running = [], [], []
    km = _sandboxed_kernel(box, step) if box else None

    def started(cell, cell_index, **_):  # the cell now running, whatever counts it holds
        running[:] = [cell_index]

    def timeout_for(cell) -> int:
        if km is not None and not kernel and getattr(km, "provisioner", None) is not None:
            kernel.append(km.provisioner.process)  # to be sure it is gone at the end
        left = deadline - time.monotonic()
        if left < cell_timeout:
            hit_deadline.append(True)
        return max(1, int(min(cell_timeout, left)))

    # ipykernel 7 warns about TCP transport on every start
    options = dict(km=km) if km else dict(kernel_name="python3", extra_arguments=[
        "--IPKernelApp.log_level=ERROR"])
    client = NotebookClient(nb, timeout_func=timeout_for, shutdown_kernel="immediate",
                            on_cell_execute=started,
                            startup_timeout=120, resources={"metadata": {"path": str(path.parent)}},
                            **options)
    log = open(box.root / f"kernel-{step}.log", "ab") if box else None
    try:
        client.execute(**(dict(env=box.env(), stdout=log, stderr=log) if box else
                          dict(env=env) if env is not None else {}))
        run = NotebookRun(step, path.name, "ok")
    except CellTimeoutError:
        limit = "total" if hit_deadline else f"{cell_timeout:g} s per-cell"
        run = NotebookRun(step, path.name, "timeout", f"a cell ({_where(nb, running)}) ran "
                          f"past the {limit} time limit and was stopped")
    except DeadKernelError:
        run = NotebookRun(step, path.name, "died", f"the kernel stopped while "
                          f"{_where(nb, running)} was running: {_death(kernel, box)}")
    except CellExecutionError as exc:
        line = _error_line(exc)
        limit = box and limit_reached(line, box.limits)
        run = NotebookRun(step, path.name, "error", f"stopped with an error "
                          f"({_where(nb, running)}): {line}"
                          + (f" - the grader allows {limit}" if limit else ""))
    except Exception as exc:  # kernel failed to start, etc.: report, never crash
        run = NotebookRun(step, path.name, "error", f"could not run: {type(exc).__name__}: "
                          f"{str(exc)[:300]}")
    finally:
        if log:
            log.close()
        for process in kernel:
            if process is not None and process.poll() is None:
                kill_group(process)
        if box:
            box.reap()  # and whatever the kernel left running
    run.seconds = time.monotonic() - start
    if save_to is not None:
        Path(save_to).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(Path(save_to) / path.name))
    return run


def _sandboxed_kernel(box: Sandbox, step: int):
    """A kernel manager whose kernel starts inside `box` and talks over Unix sockets."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    ipc = box.work / ".ipc"
    ipc.mkdir(exist_ok=True)
    kernel_json = box.root / "kernels" / "grader" / "kernel.json"
    argv = box.wrap([sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    kernel_json.write_text(json.dumps({"argv": argv, "language": "python",
                                       "display_name": "grader"}))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_json.parents[1])])
    km = AsyncKernelManager(kernel_name="grader", transport="ipc", ip=str(ipc / f"k{step}"),
                            kernel_spec_manager=specs)
    km.connection_file = str(box.root / f"kernel-{step}.json")
    if box.account is not None:  # the kernel, run as the account, must read it
        km.write_connection_file()
        os.chown(km.connection_file, box.account.uid, box.account.gid)
    return km


def _where(nb, running: list[int]) -> str:
    """'cell N' (counting every cell from 1) of the cell that was running."""
    if running:
        return f"cell {running[0] + 1}"
    return "the first cell"


def _death(kernel: list, box: Sandbox | None) -> str:
    """What is known of how the kernel process ended: signal, exit code, the limits."""
    import signal

    process = next((p for p in kernel if p is not None), None)
    code = None
    if process is not None:
        try:
            code = process.wait(timeout=5)
        except Exception:  # still there: it is killed in `finally`
            code = None
    memory = f"the {box.limits.memory_gb:g} GB memory limit" if box else "the memory limit"
    if code is None:
        return f"the kernel stopped answering (the cause is not known; {memory} is one)"
    if code < 0 or code > 128:
        number = -code if code < 0 else code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        cause = {"SIGKILL": f"killed: most often the machine's out-of-memory killer or {memory}",
                 "SIGSEGV": f"a crash, often an allocation refused by {memory}",
                 "SIGABRT": f"aborted, often an allocation refused by {memory}",
                 "SIGXFSZ": "a file grew past the file-size limit"}.get(name, "")
        return f"ended by {name} ({number})" + (f" - {cause}" if cause else "")
    return (f"the kernel process exited with code {code} (e.g. sys.exit() or os._exit() in "
            "the notebook, or a crash)")


# what an error line says when a sandbox limit was reached -> the Limits field it names
LIMIT_SIGNS = (("processes", ("BlockingIOError", "Resource temporarily unavailable",
                              "can't start new thread")),
               ("memory_gb", ("MemoryError", "Cannot allocate memory", "can't allocate memory",
                              "std::bad_alloc")),
               ("file_gb", ("File too large",)),
               ("disk_gb", ("No space left on device", "Disk quota exceeded")))


def limit_reached(error_line: str, limits) -> str | None:
    """The limit (named, with its value) that an error line shows was reached, or None:
    a student reads "at most 512 processes", not only an errno."""
    for name, signs in LIMIT_SIGNS:
        if any(sign in error_line for sign in signs):
            return limits.describe(name)
    return None


def _error_line(exc) -> str:
    ename, evalue = getattr(exc, "ename", ""), getattr(exc, "evalue", "")
    return f"{ename}: {evalue}"[:400] if ename else str(exc).strip().splitlines()[-1][:400]
