"""Run untrusted notebooks in a sandbox: fresh directory, own kernel, limits, no secrets;
then grade one submission in the grader's own process.

Each kernel starts with a scrubbed environment (PATH, LANG, LABKIT_*, offline flags; HOME,
cwd and TMPDIR inside the submission's fresh work directory), an address-space and a
file-size limit, and per-cell and total time limits. Where Linux user namespaces work
(`unshare`), it also gets no network, its own PID namespace (it cannot see the grader's
processes or their environment), the grader's home, output, other submissions and the
repository (solution notebooks; only labkit/ and grading/ stay) hidden behind empty tmpfs,
and every mount read-only except its work directory. Kernels talk to the grader over Unix
sockets (ipc transport), which need no network. Grading happens afterwards, in the grader's
process, on a sanitised copy of the artifacts (grading.extract).
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEM_DIRS = {"/", "/usr", "/bin", "/lib", "/lib64", "/etc", "/sbin", "/proc", "/sys", "/dev"}

# Runs as the (mapped) root of fresh user+mount+net+pid namespaces; $1 is the work dir.
# Kept paths are bound aside, the hidden ones covered with empty tmpfs, the kept ones bound
# back; then every mount but the work dir (and /proc, /sys, /dev) is made read-only.
NAMESPACE_SCRIPT = r"""set -eu
work=$1; shift
stage=/dev/shm/.grader-keep
hide() {{ for h in "$@"; do
  if [ -d "$h" ]; then mount -t tmpfs -o size=1m,mode=755 grader-hidden "$h"; fi; done; }}
mount -t tmpfs -o size={shm_mb}m,mode=1777 grader-shm /dev/shm
i=0; for p in {keeps}; do
  mkdir -p "$stage/$i"; mount --rbind "$p" "$stage/$i"; i=$((i+1)); done
hide {hides}
i=0; for p in {keeps}; do
  mkdir -p "$p"; mount --rbind "$stage/$i" "$p"; umount -R -l "$stage/$i"; i=$((i+1)); done
hide {inner_hides}
while read -r _ _ _ _ mnt _; do
  printf -v mnt '%b' "$mnt"
  case "$mnt" in
    "$work"|"$work"/*|/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|/dev/pts/*|/dev/shm|/dev/mqueue)
      continue ;;
  esac
  mount -o remount,bind,ro "$mnt" 2>/dev/null || true
done < /proc/self/mountinfo
mount -o remount,bind,ro /
"""
LIMITS_SCRIPT = 'ulimit -v {mem_kb}; ulimit -f {fsize_kb}; exec "$@"\n'
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork",
           "--kill-child", "--mount-proc"]


@dataclass
class Limits:
    cell_timeout: float = 300.0
    total_timeout: float = 1800.0
    memory_gb: float = 16.0
    file_gb: float = 4.0


@dataclass
class Sandbox:
    """A submission's private folder: `root` is the grader's (kernel spec, logs; readable
    to the kernel), `root/work` the only place the kernel may write."""

    root: Path
    model: str
    limits: Limits = field(default_factory=Limits)
    hide: tuple[Path, ...] = ()
    threads: int | None = None

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def run_dir(self) -> Path:
        return self.work / "run"

    def create(self) -> "Sandbox":
        for d in (self.work / ".tmp", self.run_dir, self.root / "kernels" / "grader"):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def env(self) -> dict:
        """Only configuration passes; tokens and credentials never do."""
        keep = {k: v for k, v in os.environ.items() if k.startswith("LABKIT_")}
        keep.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME=str(self.work),
                    TMPDIR=str(self.work / ".tmp"), LANG=os.environ.get("LANG", "C.UTF-8"),
                    LABKIT_MODEL=self.model, LABKIT_RUN_DIR=str(self.run_dir),
                    LABKIT_CACHE=str(_labkit_cache()), PYTHONPATH=str(REPO),
                    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                    TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        if self.threads:
            keep.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        hub = _hf_hub_cache()
        if hub:
            keep["HF_HUB_CACHE"] = str(hub)  # the model cache only, never HF_HOME's token
        return keep

    def wrap(self, argv: list[str]) -> list[str]:
        """argv, run inside the namespaces when they work, always under the limits."""
        limits = LIMITS_SCRIPT.format(mem_kb=int(self.limits.memory_gb * (1 << 20)),
                                      fsize_kb=int(self.limits.file_gb * (1 << 20)))
        # if the grader dies, its kernels die with it (setpriv: util-linux, like unshare)
        orphan_guard = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        if not namespaces_work():
            return [*orphan_guard, "bash", "-c", limits, "limits", *argv]
        script = self.root / "sandbox.sh"
        script.write_text(self.namespace_script() + limits, encoding="utf-8")
        return [*orphan_guard, *UNSHARE, "bash", str(script), str(self.work), *argv]

    def namespace_script(self) -> str:
        # of the repository only the packages: not the solution notebooks
        keeps = sorted({_real(p) for p in [self.root, self.work, REPO / "labkit",
                        REPO / "grading", Path(sys.prefix),
                        Path(sys.base_prefix), Path(sys.executable).resolve().parent,
                        _labkit_cache(), _hf_hub_cache(), Path(self.model)]  # model: a path?
                        if p and Path(p).exists()},
                       key=lambda p: (len(p.parts), str(p)))
        hides = [h for h in {_real(h) for h in (Path.home(), REPO, *self.hide)}
                 if str(h) not in SYSTEM_DIRS]
        inner = [h for h in hides if any(k in h.parents for k in keeps)]
        quote = lambda paths: " ".join(shlex.quote(str(p)) for p in paths)  # noqa: E731
        return NAMESPACE_SCRIPT.format(shm_mb=512, keeps=quote(keeps), hides=quote(hides),
                                       inner_hides=quote(inner))

    def isolation(self) -> str:
        if namespaces_work():
            return ("namespaces: no network, own PID space, read-only filesystem except the "
                    "work directory, grader home/output/other submissions hidden")
        why = (f"namespaces turned off: {NO_NAMESPACES_ENV}=1" if namespaces_forced_off()
               else "user namespaces are unavailable here")
        return f"environment only: scrubbed env, own HOME/TMPDIR, resource limits ({why})"

    def run_untrusted(self, argv, stdin: str, cwd: Path, timeout: float):
        """(returncode, stdout, stderr, timed_out) of argv in the sandbox; outputs go through
        files (capped by the file-size limit), never unbounded pipes."""
        out, err = self.root / "untrusted.out", self.root / "untrusted.err"
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen(self.wrap(list(argv)), stdin=subprocess.PIPE, stdout=o,
                                    stderr=e, cwd=cwd, env=self.env(), text=True,
                                    start_new_session=True)
            try:
                proc.communicate(stdin, timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                timed_out = True
        return proc.returncode, _tail(out), _tail(err), timed_out


def _real(path) -> Path:
    return Path(os.path.realpath(path))


def _tail(path: Path, limit: int = 1 << 20) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode("utf-8", "replace")


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _labkit_cache() -> Path:
    from labkit import teaching

    return teaching.default_dir().parent


def _hf_hub_cache() -> Path | None:
    try:
        from huggingface_hub import constants

        path = Path(constants.HF_HUB_CACHE)
    except ImportError:
        return None
    return path if path.is_dir() else None


NO_NAMESPACES_ENV = "LABKIT_GRADER_NO_NAMESPACES"  # =1: the path without `unshare`


def namespaces_forced_off() -> bool:
    """LABKIT_GRADER_NO_NAMESPACES=1 (or `--no-namespaces`): run kernels without user
    namespaces even where they work, as in a container that forbids them (Gradescope)."""
    return os.environ.get(NO_NAMESPACES_ENV, "").strip().lower() in {"1", "true", "yes"}


def namespaces_work() -> bool:
    """Whether kernels run inside the namespace sandbox: not forced off, and it works here."""
    return not namespaces_forced_off() and _namespaces_probe()


@functools.lru_cache(maxsize=1)
def _namespaces_probe() -> bool:
    """Whether this machine lets an unprivileged process build the sandbox (probed once)."""
    if shutil.which("unshare") is None:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        box = Sandbox(Path(tmp), "teaching").create()
        script = Path(tmp) / "probe.sh"
        script.write_text(box.namespace_script() + 'exec "$@"\n', encoding="utf-8")
        probe = ("import pathlib, sys\ntry:\n    open('/probe-write', 'w')\n    sys.exit(3)\n"
                 "except OSError:\n    pass\npathlib.Path(sys.argv[1], 'ok').write_text('1')\n")
        try:
            subprocess.run([*UNSHARE, "bash", str(script), str(box.work), sys.executable, "-c",
                            probe, str(box.work)], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return (box.work / "ok").exists()


# ----------------------------------------------------------------------------- kernels
@dataclass
class NotebookRun:
    """What happened when one notebook ran: status is ok, error, timeout, died, invalid,
    missing or skipped."""

    step: int
    notebook: str
    status: str
    message: str = ""
    seconds: float = 0.0


def execute_notebook(box: Sandbox, path: Path, step: int, deadline: float,
                     save_to: Path | None = None) -> NotebookRun:
    """Execute `path` (already inside box.work) in a fresh sandboxed kernel, stopping at
    the first error, a cell time-out or the submission's deadline."""
    import nbformat
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    start = time.monotonic()
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # malformed JSON, wrong format: the submission's
        return NotebookRun(step, path.name, "invalid", f"not a valid notebook: {exc}")
    if deadline - start < 1:
        return NotebookRun(step, path.name, "timeout", "the submission's total time limit "
                           "was used up before this notebook started")
    ipc = box.work / ".ipc"
    ipc.mkdir(exist_ok=True)
    kernel_json = box.root / "kernels" / "grader" / "kernel.json"
    argv = box.wrap([sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    kernel_json.write_text(__import__("json").dumps({"argv": argv, "language": "python",
                                                     "display_name": "grader"}))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_json.parents[1])])
    km = AsyncKernelManager(kernel_name="grader", transport="ipc", ip=str(ipc / f"k{step}"),
                            kernel_spec_manager=specs)
    km.connection_file = str(box.root / f"kernel-{step}.json")
    hit_deadline, kernel = [], []

    def cell_timeout(cell) -> int:
        if not kernel and getattr(km, "provisioner", None) is not None:
            kernel.append(km.provisioner.process)  # to be sure it is gone at the end
        left = deadline - time.monotonic()
        if left < box.limits.cell_timeout:
            hit_deadline.append(True)
        return max(1, int(min(box.limits.cell_timeout, left)))

    client = NotebookClient(nb, km=km, timeout_func=cell_timeout, shutdown_kernel="immediate",
                            startup_timeout=120, resources={"metadata": {"path": str(path.parent)}})
    with open(box.root / f"kernel-{step}.log", "ab") as log:
        try:
            client.execute(env=box.env(), stdout=log, stderr=log)
            run = NotebookRun(step, path.name, "ok")
        except CellTimeoutError:
            limit = "total" if hit_deadline else f"{box.limits.cell_timeout:g} s per-cell"
            run = NotebookRun(step, path.name, "timeout", f"a cell ({_where(nb)}) ran past "
                              f"the {limit} time limit and was stopped")
        except DeadKernelError:
            run = NotebookRun(step, path.name, "died", f"the kernel died ({_where(nb)}): "
                              f"out of memory (limit {box.limits.memory_gb:g} GB) or it exited")
        except CellExecutionError as exc:
            run = NotebookRun(step, path.name, "error", f"stopped with an error "
                              f"({_where(nb)}): {_error_line(exc)}")
        except Exception as exc:  # kernel failed to start, etc.: report, never crash
            run = NotebookRun(step, path.name, "error", f"could not run: {type(exc).__name__}: "
                              f"{str(exc)[:300]}")
        finally:
            for process in kernel:
                if process is not None and process.poll() is None:
                    _kill_group(process)
    run.seconds = time.monotonic() - start
    if save_to is not None:
        save_to.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(save_to / path.name))
    return run


def _where(nb) -> str:
    """'cell N' of the last code cell that started running."""
    ran = [i for i, c in enumerate(nb.cells, 1) if c.cell_type == "code"
           and c.get("execution_count") is not None]
    return f"cell {ran[-1]}" if ran else "the first cell"


def _error_line(exc) -> str:
    ename, evalue = getattr(exc, "ename", ""), getattr(exc, "evalue", "")
    return f"{ename}: {evalue}"[:400] if ename else str(exc).strip().splitlines()[-1][:400]




# ----------------------------------------------------------------------------- one submission
@dataclass
class Options:
    model: str = "gpt2"
    execute: bool = True
    limits: Limits = field(default_factory=Limits)
    reference: Path = REPO / "notebooks"
    hide: tuple[Path, ...] = ()
    keep_work: bool = False
    threads: int | None = None  # per job: kernels and grader use the same, so that
    # regenerated outputs are computed the way the kernel computed them


_BASE: dict[str, tuple] = {}


def base_model(name: str):
    """The grader's own (model, tokenizer, info): trusted, loaded once per process."""
    from labkit.models import load_model

    if name not in _BASE:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # progress lines stay readable
        transformers.utils.logging.set_verbosity_error()
        _BASE[name] = load_model(name, quiet=True)
    return _BASE[name]


def plan(path: Path, reference: Path):
    """(notebooks to run {step: path}, graded steps, notes). A folder is the whole lab; a
    single notebook is graded alone, its earlier steps made by the reference solution."""
    from .extract import find_notebooks, notebook_step

    if path.is_dir():
        found, notes = find_notebooks(path)
        return found, [1, 2, 3, 4], notes
    step, problem = notebook_step(path), _unreadable(path)
    if step is None:
        problem = problem or "not recognised as one of the lab notebooks"
        return {}, [1, 2, 3, 4], [f"{path.name}: {problem}"]
    ref, _ = find_notebooks(reference) if reference.is_dir() else ({}, [])
    earlier = {s: ref[s] for s in range(1, step) if s in ref}
    notes = [f"steps {', '.join(map(str, earlier))} were run from the reference solution "
             "(not graded)"] if earlier else []
    return {**earlier, step: path}, [step], notes


def _unreadable(path: Path) -> str | None:
    import nbformat

    try:
        nbformat.read(str(path), as_version=4)
        return None
    except Exception as exc:  # any parse/validation failure is the submission's
        return f"not a valid notebook ({type(exc).__name__}: {str(exc)[:200]})"


def grade_submission(path, name: str, opts: Options, batch_root, out_dir, label="") -> dict:
    """Grade one submission end to end; returns a JSON-able record of everything found.
    Never raises on the submission's account: what goes wrong becomes a note. `label`
    ("[3/8]") prefixes the progress line printed on stderr when grading starts."""
    print(f"{label} start {name}".strip(), file=sys.stderr, flush=True)
    from .extract import check_student_loss, copy_artifacts, find_notebooks, grade_run
    from .rubric import NOTEBOOKS

    start, path, out = time.monotonic(), Path(path), Path(out_dir) / name
    box = Sandbox(Path(batch_root) / name, opts.model, opts.limits,
                  (Path(batch_root), Path(out_dir), *opts.hide), opts.threads).create()
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    runs: list[NotebookRun] = []
    try:
        if opts.execute:
            notebooks, graded, notes = plan(path, opts.reference)
            deadline = start + opts.limits.total_timeout
            for step in range(1, 5):
                src = notebooks.get(step)
                if src is None:
                    if step in graded:
                        runs.append(NotebookRun(step, NOTEBOOKS[step], "missing",
                                                "not in the submission"))
                    continue
                dst = box.work / "notebooks" / NOTEBOOKS[step]
                dst.parent.mkdir(exist_ok=True)
                shutil.copyfile(src, dst)
                run = execute_notebook(box, dst, step, deadline, out / "executed")
                run.message = run.message.replace(str(box.work), "<work>")
                runs.append(run)
            run_dir = box.run_dir
        else:
            run_dir = path / "run" if (path / "run").is_dir() else path
            notebooks, notes = find_notebooks(path) if path.is_dir() else ({}, [])
            graded = [1, 2, 3, 4]
        graded_run = box.root / "graded"
        notes += [f"ignored {s}" for s in copy_artifacts(run_dir, graded_run)]
        base = base_model(opts.model)
        loss = (check_student_loss(notebooks[3], box.run_untrusted, box.root / "extract")
                if 3 in notebooks else (False, "notebook 3 is not in the submission"))
        results = [r for r in grade_run(graded_run, base, loss) if r.step in graded]
        for run in runs:  # a notebook that stopped explains its step's missing points
            for result in results:
                if result.step == run.step and run.status != "ok":
                    result.hints.insert(0, f"{run.notebook}: {run.status}: {run.message}")
    finally:
        if not opts.keep_work:
            shutil.rmtree(box.root, ignore_errors=True)
    return {"name": name, "source": str(path), "steps": [r.to_dict() for r in results],
            "runs": [r.__dict__ for r in runs], "notes": notes, "isolation": box.isolation(),
            "seconds": time.monotonic() - start}
