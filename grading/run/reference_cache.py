"""The reference run of the steps a submission lacks, computed once and shared by a batch.

A submission graded on step 3 alone needs steps 1-2's artifacts: the reference notebooks
1..k are executed once (in a sandbox, like any notebook), their step records kept under
the labkit cache (`cache_dir()/reference-runs/<key>`; on shared storage, every Slurm
array task reuses them), and copied into each submission's run directory.

An entry is keyed by the steps, the reference notebooks' bytes, the model, the theme and
the lab's code (labkit and the checks the notebooks call), so a change to any of them
computes a new one. It is written whole or not at all (built in a temporary folder, its
manifest of file hashes written last, then renamed into place) and verified against that
manifest on every use: a corrupt or partial entry is rebuilt, never graded against.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.config import cache_dir

from .. import REPO
from .sandbox_reads import REFERENCE_RUNS

FOLDER = REFERENCE_RUNS  # under the labkit cache (sandbox_reads hides it from kernels)
MANIFEST = "manifest.json"
FILES = "run"  # the entry's copy of the reference run's step records
CODE = (REPO / "labkit", REPO / "grading" / "checks")  # what a reference notebook runs
CODE_SUFFIXES = {".py", ".toml", ".json", ".txt"}
SHARED_RUN = "the reference solution's run, computed once for the batch (not graded)"


class ReferenceRunFailed(RuntimeError):
    """A reference notebook did not run to the end: nothing was cached."""


@dataclass(frozen=True)
class ReferenceKey:
    """What a reference run depends on; `digest` names its cache entry."""

    steps: tuple[int, ...]
    notebooks: str  # sha256 of the reference notebooks of `steps`, in order
    model: str
    theme: str
    lab: str  # labkit's version and a digest of the code the notebooks run

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"steps{''.join(map(str, self.steps))}-{_sha(text.encode())[:24]}"


def reference_steps(notebooks: dict[int, Path], graded: list[int]) -> tuple[int, ...]:
    """The steps that come from the reference (run, not graded) when they are the steps
    1..k before every graded one, the only runs a cache entry can stand for; () else."""
    ref = tuple(sorted(s for s in notebooks if s not in graded))
    if not ref or ref != tuple(range(1, len(ref) + 1)) or min(graded, default=0) <= ref[-1]:
        return ()
    return ref


def make_key(notebooks: dict[int, Path], steps: tuple[int, ...], model: str,
             theme: str | None) -> ReferenceKey:
    """The key of the reference run of `steps`, from the notebooks' bytes (not their
    paths), the model, the theme (a theme file by its content) and the lab's code."""
    nb = hashlib.sha256()
    for step in steps:
        nb.update(Path(notebooks[step]).read_bytes())
    if theme and Path(theme).is_file():
        theme = f"file:{_sha(Path(theme).read_bytes())}"
    return ReferenceKey(tuple(steps), nb.hexdigest(), model, theme or "default", lab_version())


def lab_version() -> str:
    """labkit's version and a digest of the code a reference notebook runs."""
    import labkit

    code = hashlib.sha256()
    for root in CODE:
        for path in sorted(p for p in root.rglob("*") if p.suffix in CODE_SUFFIXES
                           and "__pycache__" not in p.parts):
            code.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return f"{labkit.__version__}+{code.hexdigest()[:16]}"


class ReferenceCache:
    """Entries under `root` (default: the labkit cache's reference-runs/)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_dir() / FOLDER
        self._verified: dict[Path, tuple] = {}  # entry -> file stats when last verified

    def entry(self, key: ReferenceKey) -> Path:
        return self.root / key.digest

    def problem(self, key: ReferenceKey) -> str | None:
        """Why the entry of `key` cannot be used (missing, partial, corrupt), or None."""
        folder = self.entry(key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"no readable manifest ({type(exc).__name__})"
        if manifest.get("key") != asdict(key) | {"steps": list(key.steps)}:
            return "its manifest is for another key"
        stats = _stats(folder / FILES)
        if set(stats) != set(files):
            return (f"its files differ from the manifest's (missing: "
                    f"{sorted(set(files) - set(stats))}, extra: {sorted(set(stats) - set(files))})")
        if self._verified.get(folder) == stats:
            return None
        for rel, digest in files.items():
            if _sha((folder / FILES / rel).read_bytes()) != digest:
                return f"{rel} does not match its hash in the manifest"
        self._verified[folder] = stats
        return None

    def ensure(self, key: ReferenceKey, build) -> Path:
        """The verified entry of `key`, built first when missing or broken: `build(run)`
        executes the reference notebooks with `run` as the run directory (raising
        ReferenceRunFailed when one fails). Concurrent graders build it once (a lock where
        the filesystem has one; a rename either way)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.problem(key) is None:
            return self.entry(key)
        with _lock(self.root / f"{key.digest}.lock"):
            if self.problem(key) is None:  # built by another grader meanwhile
                return self.entry(key)
            tmp = self.root / f".build-{key.digest}-{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir()
                build(tmp / FILES)
                files = {rel: _sha((tmp / FILES / rel).read_bytes()) for rel in _stats(tmp / FILES)}
                (tmp / MANIFEST).write_text(json.dumps(
                    {"key": asdict(key) | {"steps": list(key.steps)}, "files": files},
                    indent=1, sort_keys=True), encoding="utf-8")
                self.discard(key)
                try:
                    os.rename(tmp, self.entry(key))
                except OSError:  # another grader's rename won (no lock on this filesystem)
                    if self.problem(key) is not None:
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return self.entry(key)

    def discard(self, key: ReferenceKey) -> None:
        """Remove the entry of `key` (moved aside first, so that no reader sees half)."""
        folder = self.entry(key)
        self._verified.pop(folder, None)
        if folder.exists():
            aside = self.root / f".discard-{uuid.uuid4().hex[:8]}"
            os.rename(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)


def copy_reference(entry: Path, run_dir: Path) -> None:
    """Copy a verified entry's files into a submission's run directory, read-only (0444;
    copies, so that nothing a kernel does reaches the cache)."""
    files = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))["files"]
    for rel in files:
        dst = run_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry / FILES / rel, dst)
        os.chmod(dst, 0o444)


def restore(run_dir: Path, files: dict[str, str], source: Path) -> list[str]:
    """Put back every reference file a notebook changed or removed in `run_dir` (from the
    entry `source`), so the grade reads the reference's steps; returns what was changed."""
    changed = []
    for rel, digest in files.items():
        path = run_dir / rel
        try:
            same = stat.S_ISREG(path.lstat().st_mode) and _sha(path.read_bytes()) == digest
        except OSError:
            same = False
        if not same:
            changed.append(rel)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / FILES / rel, path)
    return changed


def _stats(folder: Path) -> dict[str, tuple]:
    """{relative path: (size, mtime_ns)} of the regular files under `folder`."""
    found = {}
    for top, _, names in os.walk(folder):
        for name in names:
            info = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(info.st_mode):
                found[os.path.relpath(os.path.join(top, name), folder)] = (info.st_size,
                                                                           info.st_mtime_ns)
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _lock(path: Path):
    """An exclusive lock on `path` where the filesystem offers one (some network
    filesystems do not: then concurrent builders each build, and one rename wins)."""
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def shared_steps(work, opts, batch_root: Path, log) -> tuple[tuple[int, ...], dict, Path]:
    """For a planned submission (`work`: notebooks {step: path}, graded steps): the steps
    its reference run shares with the batch, their files {relative path: sha256} and the
    entry holding them, built on first use; ((), {}, None) when nothing is shared (the
    steps then run in the submission's sandbox, as without a cache). `opts`: the batch's
    autograde.Options. A reference that cannot run is said through `log`, never raised."""
    steps = reference_steps(work.notebooks, work.graded) if opts.reference_cache else ()
    if not steps:
        return (), {}, None
    key = make_key(work.notebooks, steps, opts.model, opts.theme)
    cache = _cache(str(cache_dir() / FOLDER))
    try:
        entry = cache.ensure(key, lambda run: _run_reference(work.notebooks, steps, run, opts,
                                                             Path(batch_root)))
    except Exception as exc:  # noqa: BLE001 - grade without the cache, as before
        log(f"reference cache unavailable ({type(exc).__name__}: {exc}); steps "
            f"{list(steps)} run in the submission's sandbox")
        return (), {}, None
    return steps, json.loads((entry / MANIFEST).read_text(encoding="utf-8"))["files"], entry


def _run_reference(notebooks: dict, steps: tuple[int, ...], run: Path, opts, batch_root: Path):
    """Execute the reference notebooks of `steps` in a fresh sandbox (a short folder in
    the batch's: kernel sockets live in it); copy their step records to `run`."""
    import tempfile

    from ..checks.rubric import NOTEBOOKS
    from .kernel import execute_notebook
    from .sandbox import Sandbox
    from .submission import copy_artifacts

    batch_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ref", dir=batch_root))
    box = Sandbox(root, opts.model, opts.limits, opts.threads, opts.kernel_settings(),
                  opts.namespaces).create()
    try:
        for step in steps:
            copy = box.lab / NOTEBOOKS[step]
            shutil.copyfile(notebooks[step], copy)
            done = execute_notebook(copy, step, cell_timeout=opts.limits.cell_timeout, box=box)
            if done.status != "ok":
                raise ReferenceRunFailed(f"{done.notebook}: {done.status}: {done.message}")
        left_out = copy_artifacts(box.run_dir, run)
        if left_out:
            raise ReferenceRunFailed(f"the reference run's artifacts left out: {left_out}")
    finally:
        box.release()
        shutil.rmtree(root, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _cache(root: str) -> ReferenceCache:
    """One ReferenceCache per folder and process, so an entry is hashed once per change."""
    return ReferenceCache(Path(root))
