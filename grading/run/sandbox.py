"""The sandbox an untrusted notebook runs in: a fresh work directory, a scrubbed
environment, resource limits and, where Linux user namespaces work (`unshare`), no network,
its own PID namespace and a filesystem built by allow-list.

Each kernel starts with a scrubbed environment (PATH, LANG, LABKIT_*, offline flags; HOME and
TMPDIR inside the submission's fresh work directory, cwd its writable copy of the
submission), limits on address space, file size and process count. With namespaces
(sandbox.sh, next to this file) the kernel's root is a new, empty tmpfs holding only the
system directories, the project's code (labkit/, grading/; not the solution notebooks),
the venv and Python, the model caches, the class's own theme file (all read-only), a
private /tmp, and its own work directory (writable): nothing else of the host's filesystem
exists for it. Kernels talk to the grader over Unix sockets in the work directory (ipc
transport), which need no network.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from labkit.config import cache_dir
from labkit.runtime import kernel_wait_policy

from .. import REPO
from .limits import Limits
from .pids import make_pids_cgroup
from .sandbox_reads import class_theme_file, hidden
from .untrusted import Untrusted

SYSTEM_DIRS = {"/", "/usr", "/bin", "/lib", "/lib64", "/etc", "/sbin", "/proc", "/sys", "/dev"}

SCRIPT = Path(__file__).resolve().with_name("sandbox.sh")  # the namespace half
LIMITS_SCRIPT = 'ulimit -v {mem_kb}; ulimit -f {fsize_kb}; exec "$@"\n'
JOIN_CGROUP = 'echo $$ > "$0/cgroup.procs" && exec "$@"'  # then exec the rest of argv
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork",
           "--kill-child", "--mount-proc"]


@dataclass
class Sandbox:
    """A submission's private folder: `root` is the grader's (kernel spec, logs; readable
    to the kernel), `root/work` the only place the kernel may write."""

    root: Path
    model: str
    limits: Limits = field(default_factory=Limits)
    threads: int | None = None
    settings: dict = field(default_factory=dict)  # LABKIT_* for the kernels (theme, ...)
    allow_namespaces: bool = True  # False: the path a container that forbids them gets
    cgroup: Path | None = None  # a pids cgroup of this submission's kernels, when made
    account: object = None  # unprivileged.Account: who runs it (root grader, no namespaces)

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def run_dir(self) -> Path:
        return self.work / "run"

    @property
    def lab(self) -> Path:
        """The writable copy of the submission's folder: the kernels' working directory."""
        return self.work / "lab"

    def create(self) -> "Sandbox":
        for d in (self.work / ".tmp", self.run_dir, self.lab, self.root / "kernels" / "grader"):
            d.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            self.account.enter(self.root)
        return self

    def env(self) -> dict:
        """Only configuration passes (the grader's LABKIT_* and this box's `settings`);
        tokens and credentials never do."""
        keep = {k: v for k, v in os.environ.items() if k.startswith("LABKIT_")}
        keep.update(self.settings)
        keep.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME=str(self.work),
                    TMPDIR=str(self.work / ".tmp"), LANG=os.environ.get("LANG", "C.UTF-8"),
                    LABKIT_MODEL=self.model, LABKIT_RUN_DIR=str(self.run_dir),
                    LABKIT_CACHE=str(cache_dir()), PYTHONPATH=str(REPO),
                    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                    TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
                    OMP_WAIT_POLICY=kernel_wait_policy())  # as `labkit run`'s kernels
        if self.threads:
            keep.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        hub = _hf_hub_cache()
        if hub:
            keep["HF_HUB_CACHE"] = str(hub)  # the model cache only, never HF_HOME's token
        if self.account is not None:  # the staged code, caches and Python
            keep.update(self.account.stage.env)
        return keep

    def wrap(self, argv: list[str]) -> list[str]:
        """argv, run inside the namespaces when they work, always under the limits."""
        mem_kb, fsize_kb = (int(self.limits.memory_gb * (1 << 20)),
                            int(self.limits.file_gb * (1 << 20)))
        # if the grader dies, its kernels die with it (setpriv: util-linux, like unshare)
        orphan_guard = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        join = ["sh", "-c", JOIN_CGROUP, str(self.cgroup)] if self._pids_cgroup() else []
        if not self.namespaces:
            limits = LIMITS_SCRIPT.format(mem_kb=mem_kb, fsize_kb=fsize_kb)
            if self.account is not None:
                limits, argv = self.account.confine(self, limits, argv, bool(orphan_guard))
            elif os.geteuid() == 0:
                raise RuntimeError("never runs as root: give the Sandbox an unprivileged.account")
            return [*orphan_guard, *join, "bash", "-c", limits, "limits", *argv]
        config = self.root / "sandbox.conf"
        config.write_text(self.namespace_config(mem_kb, fsize_kb), encoding="utf-8")
        return [*orphan_guard, *join, *UNSHARE, "bash", str(SCRIPT), str(config),
                str(_real(self.work)), *argv]

    @property
    def namespaces(self) -> bool:
        """Whether this box's kernels run inside the namespace sandbox."""
        return self.allow_namespaces and namespaces_work()

    def allowed(self) -> list[Path]:
        """What the kernel may read besides the system directories (all read-only): its
        own sandbox folder (kernel connection file), the project's packages (not the
        solution notebooks), the venv and Python, the model caches, a local model, the
        class's own theme file (wherever it is)."""
        paths = [self.root, REPO / "labkit", REPO / "grading", Path(sys.prefix),
                 Path(sys.base_prefix), Path(sys.executable).resolve().parent, cache_dir(),
                 _hf_hub_cache(), Path(self.model),  # model: a local path?
                 class_theme_file(self.settings.get("LABKIT_THEME"))]
        return sorted({_real(p) for p in paths if p and Path(p).exists()
                       and str(_real(p)) not in SYSTEM_DIRS},
                      key=lambda p: (len(p.parts), str(p)))

    def namespace_config(self, mem_kb="unlimited", fsize_kb="unlimited") -> str:
        """The variables sandbox.sh sources: what the kernel may see, and the limits."""
        keeps = " ".join(shlex.quote(str(p)) for p in self.allowed())
        hides = " ".join(shlex.quote(str(p)) for p in hidden())
        return (f"tmp_mb={self.limits.tmp_mb}\nshm_mb=512\nmem_kb={mem_kb}\n"
                f"fsize_kb={fsize_kb}\nnproc={self.limits.processes}\nkeeps=({keeps})\n"
                f"hides=({hides})\n")

    def _pids_cgroup(self) -> bool:
        """A pids cgroup for this submission's kernels, where the grader may make one: the
        only process limit that binds a grader running as root (RLIMIT_NPROC spares root,
        even a namespace's root mapped to it)."""
        if self.cgroup is None:
            self.cgroup = make_pids_cgroup(self.root.name, self.limits.processes) or False
        return bool(self.cgroup)

    def release(self) -> None:
        """Remove the pids cgroup (its processes are gone by now); close a kept sandbox."""
        if self.account is not None:
            self.account.leave(self.root)
        if self.cgroup:
            try:
                self.cgroup.rmdir()
            except OSError:
                pass

    def isolation(self) -> str:
        procs = (f"{self.limits.processes} processes (pids cgroup)" if self.cgroup else
                 f"{self.limits.processes} processes (ulimit -u: binds a non-root grader)")
        if self.namespaces:
            return ("namespaces: no network, own PID space, a filesystem by allow-list (system, "
                    "project code, venv, model caches read-only; private /tmp; only its work "
                    f"folder writable), limits: {procs}")
        why = (f"namespaces turned off: {NO_NAMESPACES_ENV}=1" if namespaces_forced_off()
               else "namespaces turned off: --no-namespaces" if not self.allow_namespaces
               else "user namespaces are unavailable here")
        if self.account is not None:
            return self.account.isolation(f"{procs} ({why})")
        return f"none: the grader's own user, scrubbed env, own HOME/TMPDIR, limits ({why})"

    def reap(self) -> None:
        """After untrusted code ran: kill whatever of it is left (the account's processes)."""
        if self.account is not None:
            self.account.kill_all()

    def run_untrusted(self, argv, stdin: str, cwd: Path, timeout: float):
        """(returncode, stdout, stderr, timed_out) of argv in the sandbox; its outputs go
        through files (capped by the file-size limit), never unbounded pipes."""
        return Untrusted(self, argv, cwd, early=False).finish(stdin, timeout)

    def start_untrusted(self, argv, cwd: Path) -> Untrusted:
        """argv in the sandbox, its stdin to come (`finish`): started now inside namespaces,
        where it may wait beside a kernel, else at `finish` (grading.run.untrusted)."""
        return Untrusted(self, argv, cwd, early=self.namespaces)


def tree_size(folder: Path) -> int:
    """Bytes of the regular files under `folder` (lstat: links not followed)."""
    total = 0
    for top, dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def _real(path) -> Path:
    return Path(os.path.realpath(path))


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
    from labkit.config import env_flag

    return env_flag(NO_NAMESPACES_ENV)


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
        box.cgroup = False  # the probe needs none
        config = Path(tmp) / "probe.conf"
        config.write_text(box.namespace_config(), encoding="utf-8")
        probe = ("import pathlib, sys\ntry:\n    open('/probe-write', 'w')\n    sys.exit(3)\n"
                 "except OSError:\n    pass\npathlib.Path(sys.argv[1], 'ok').write_text('1')\n")
        try:
            subprocess.run([*UNSHARE, "bash", str(SCRIPT), str(config), str(_real(box.work)),
                            sys.executable, "-c",
                            probe, str(box.work)], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return (box.work / "ok").exists()
