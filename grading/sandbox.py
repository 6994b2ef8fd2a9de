"""The sandbox an untrusted notebook runs in: a fresh work directory, a scrubbed
environment, resource limits and, where Linux user namespaces work (`unshare`), no network,
its own PID namespace and a read-only filesystem except its work directory.

Each kernel starts with a scrubbed environment (PATH, LANG, LABKIT_*, offline flags; HOME,
cwd and TMPDIR inside the submission's fresh work directory), an address-space and a
file-size limit. With namespaces (sandbox.sh, next to this file), the grader's home, output,
other submissions and the repository (solution notebooks; only labkit/ and grading/ stay)
are hidden behind empty tmpfs, and every mount is read-only except the work directory.
Kernels talk to the grader over Unix sockets (ipc transport), which need no network.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from labkit.config import cache_dir

REPO = Path(__file__).resolve().parents[1]
SYSTEM_DIRS = {"/", "/usr", "/bin", "/lib", "/lib64", "/etc", "/sbin", "/proc", "/sys", "/dev"}

SCRIPT = Path(__file__).resolve().with_name("sandbox.sh")  # the namespace half
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
                    LABKIT_CACHE=str(cache_dir()), PYTHONPATH=str(REPO),
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
        mem_kb, fsize_kb = (int(self.limits.memory_gb * (1 << 20)),
                            int(self.limits.file_gb * (1 << 20)))
        # if the grader dies, its kernels die with it (setpriv: util-linux, like unshare)
        orphan_guard = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        if not namespaces_work():
            limits = LIMITS_SCRIPT.format(mem_kb=mem_kb, fsize_kb=fsize_kb)
            return [*orphan_guard, "bash", "-c", limits, "limits", *argv]
        config = self.root / "sandbox.conf"
        config.write_text(self.namespace_config(mem_kb, fsize_kb), encoding="utf-8")
        return [*orphan_guard, *UNSHARE, "bash", str(SCRIPT), str(config), str(self.work), *argv]

    def namespace_config(self, mem_kb="unlimited", fsize_kb="unlimited") -> str:
        """The variables sandbox.sh sources: what to keep, what to hide, the limits."""
        # of the repository only the packages: not the solution notebooks
        keeps = sorted({_real(p) for p in [self.root, self.work, REPO / "labkit",
                        REPO / "grading", Path(sys.prefix),
                        Path(sys.base_prefix), Path(sys.executable).resolve().parent,
                        cache_dir(), _hf_hub_cache(), Path(self.model)]  # model: a path?
                        if p and Path(p).exists()},
                       key=lambda p: (len(p.parts), str(p)))
        hides = [h for h in {_real(h) for h in (Path.home(), REPO, *self.hide)}
                 if str(h) not in SYSTEM_DIRS]
        inner = [h for h in hides if any(k in h.parents for k in keeps)]
        quote = lambda paths: " ".join(shlex.quote(str(p)) for p in paths)  # noqa: E731
        return (f"shm_mb=512\nmem_kb={mem_kb}\nfsize_kb={fsize_kb}\nkeeps=({quote(keeps)})\n"
                f"hides=({quote(hides)})\ninner_hides=({quote(inner)})\n")

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
        config = Path(tmp) / "probe.conf"
        config.write_text(box.namespace_config(), encoding="utf-8")
        probe = ("import pathlib, sys\ntry:\n    open('/probe-write', 'w')\n    sys.exit(3)\n"
                 "except OSError:\n    pass\npathlib.Path(sys.argv[1], 'ok').write_text('1')\n")
        try:
            subprocess.run([*UNSHARE, "bash", str(SCRIPT), str(config), str(box.work),
                            sys.executable, "-c",
                            probe, str(box.work)], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return (box.work / "ok").exists()
