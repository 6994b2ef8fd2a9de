"""What a kernel run as another, unprivileged user may read, staged by the grader in a
folder it makes: a copy of the lab's code (labkit/, grading/; never notebooks/), the
class's model (teaching model, hub cache entry or local folder) and theme file, and, when
the grader's own Python is out of that user's reach (a venv made from a Python under
/root, whose home is 0700), a venv that runs the same interpreter and packages.

Files are hard-linked when they are already readable by every user (same inode, same
permissions: nothing of the instructor's is changed), copied otherwise. The grader never
changes a permission of anything it did not make.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import REPO

CODE = ("labkit", "grading")  # what kernels import; notebooks/ (the solutions) never
SKIPPED = {"__pycache__", ".ipynb_checkpoints"}


@dataclass(frozen=True)
class Stage:
    """`root`: the grader's folder (0755, root's); `python`: the interpreter kernels run;
    `env`: what replaces the kernels' environment (PYTHONPATH, LABKIT_CACHE, ...)."""

    root: Path
    python: str
    env: dict = field(default_factory=dict)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def open_to_others(path: Path) -> bool:
    """Whether any user may read `path` (a file) or a file under it (a folder): every
    folder on the way searchable by others, the file readable by others."""
    path = Path(os.path.realpath(path))
    if not searchable(path.parent):
        return False
    if path.is_file():
        return _mode(path) & stat.S_IROTH != 0
    seen = 0
    for top, dirs, files in os.walk(path):
        if _mode(Path(top)) & stat.S_IXOTH == 0:
            dirs[:] = []
            continue
        for name in files:
            seen += 1
            if _mode(Path(top, name)) & stat.S_IROTH or seen > 5000:
                return True
    return False


def reachable(path: Path) -> bool:
    """Whether others may reach `path` and read it (every folder on the way searchable)."""
    path = Path(os.path.realpath(path))
    want = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
    return path.exists() and searchable(path.parent) and _mode(path) & want == want


def build(model: str, repo: Path = REPO, parent: Path | None = None,
          theme: str | None = None) -> Stage:
    """Stage what kernels need for `model` (and an instructor's `theme` file) in a fresh
    folder under `parent` (default: the system's temporary folder)."""
    from labkit import teaching

    root = Path(tempfile.mkdtemp(prefix="labkit-stage-", dir=parent))
    try:
        root.chmod(0o755)
        env = {"PYTHONPATH": str(root / "code"), "LABKIT_CACHE": str(root / "cache"),
               "HF_HUB_CACHE": str(root / "hub")}
        for name in CODE:
            mirror(repo / name, root / "code" / name)
        (root / "cache").mkdir(mode=0o755)
        (root / "hub").mkdir(mode=0o755)
        if teaching.is_built(teaching.default_dir()):
            mirror(teaching.default_dir(), root / "cache" / teaching.default_dir().name)
        hub = _hub_entry(model)
        if hub is not None:
            mirror(hub, root / "hub" / hub.name)
        if Path(model).exists():  # a local model folder
            env["LABKIT_MODEL"] = str(mirror(Path(model), root / "model" / Path(model).name))
        if theme and theme.endswith(".toml") and Path(theme).is_file():  # an instructor's own file
            env["LABKIT_THEME"] = str(mirror(Path(theme), root / "theme" / Path(theme).name))
        python = sys.executable
        if not _python_reachable():
            python, env["LD_LIBRARY_PATH"] = _stage_python(root)
        return Stage(root, python, env)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def mirror(src: Path, dst: Path) -> Path:
    """`src` (file or folder) at `dst`, readable by every user and writable by none but
    root: hard links where the file already is, copies otherwise; symbolic links inside
    are kept as links (a hub snapshot's links into its blobs)."""
    src = Path(src)
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if src.is_file():
        _place(src, dst)
        return dst
    for top, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        here = dst / Path(top).relative_to(src)
        here.mkdir(exist_ok=True)
        here.chmod(0o755)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            source = Path(top, name)
            if source.is_symlink():
                os.symlink(os.readlink(source), here / name)
            elif source.is_file() and not name.endswith(".pyc"):
                _place(source, here / name)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    return dst


def _place(src: Path, dst: Path) -> None:
    info = src.stat()
    shareable = info.st_mode & stat.S_IROTH and not info.st_mode & stat.S_IWOTH
    if shareable:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem
            pass
    shutil.copyfile(src, dst)
    dst.chmod(0o755 if info.st_mode & stat.S_IXUSR else 0o644)


def _python_reachable() -> bool:
    """Whether others may run this Python with its standard library and packages."""
    paths = [Path(sys.executable), Path(sysconfig.get_paths()["stdlib"]),
             Path(sysconfig.get_paths()["purelib"])]
    library = sysconfig.get_config_var("LDLIBRARY")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and library:
        paths.append(Path(sysconfig.get_config_var("LIBDIR"), library))
    return all(reachable(p) for p in paths)


def _stage_python(root: Path) -> tuple[str, str]:
    """A venv in root/venv over a staged copy of the base interpreter (root/python):
    (its python, its LD_LIBRARY_PATH). The packages are the grader's own: its
    site-packages linked where others may read it, staged otherwise."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base, venv = root / "python", root / "venv"
    exe = Path(os.path.realpath(sys.executable))
    mirror(exe, base / "bin" / exe.name)
    libdir = Path(sysconfig.get_config_var("LIBDIR") or Path(sys.base_prefix, "lib"))
    for lib in libdir.glob("libpython*.so*"):
        mirror(lib, base / "lib" / lib.name)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for entry in stdlib.iterdir():
        if entry.name not in {"site-packages", "test"} | SKIPPED:
            mirror(entry, base / "lib" / version / entry.name)
    (venv / "bin").mkdir(parents=True, mode=0o755)
    (venv / "bin" / "python").symlink_to(base / "bin" / exe.name)
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\ninclude-system-site-packages = "
                                     f"false\nversion = {sys.version.split()[0]}\n")
    packages = Path(sysconfig.get_paths()["purelib"])
    target = venv / "lib" / version / "site-packages"
    target.parent.mkdir(parents=True, mode=0o755)
    if reachable(packages):
        target.symlink_to(packages)
    else:
        mirror(packages, target)
    for folder in (venv, venv / "lib", base, base / "bin", base / "lib"):
        folder.chmod(0o755)
    return str(venv / "bin" / "python"), str(base / "lib")


def _hub_entry(model: str) -> Path | None:
    """The Hugging Face cache folder of a hub model id, when it is cached."""
    if Path(model).exists() or model == "teaching":
        return None
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    entry = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}"
    return entry if entry.is_dir() else None


def searchable(folder: Path) -> bool:
    """Whether others may pass through `folder` and every folder above it."""
    folder = Path(os.path.realpath(folder))
    return all(_mode(p) & stat.S_IXOTH for p in [folder, *folder.parents])


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode
    except OSError:
        return 0
