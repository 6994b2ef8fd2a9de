"""The exceptions to the sandbox's allow-list (grading.run.sandbox), each a path the grader
computes before a kernel starts: the class's own theme file, which kernels must read
wherever it lives; and what they must not read although the folder around it is readable:
the solution notebooks an installed wheel keeps inside the package, and the shared
reference runs in the labkit cache.
"""
from __future__ import annotations

import os
from pathlib import Path


REFERENCE_RUNS = "reference-runs"  # the shared reference runs' folder in the labkit cache


def _real(path) -> Path:
    return Path(os.path.realpath(path))


def hidden() -> list[Path]:
    """Folders inside what the kernel may read that it must not: the solution notebooks
    that an installed wheel keeps inside the package (labkit/notebooks/, in the venv), and
    the shared reference runs in the labkit cache (a later step's reference artifacts are
    another submission's answer)."""
    from labkit.config import cache_dir
    from labkit.release import NOTEBOOKS_DIR

    inside = _real(NOTEBOOKS_DIR)
    return ([inside] if inside.is_dir() and inside.parent.name == "labkit" else []) + [
        _real(cache_dir() / REFERENCE_RUNS)]


def class_theme_file(theme: str | None) -> Path | None:
    """The class's theme as a file the kernels must read: `theme` when it names a .toml
    outside labkit/themes (the grader makes it absolute before any kernel starts)."""
    from labkit.themes import THEMES_DIR, ThemeError, theme_path

    if not theme:
        return None
    try:
        path = theme_path(theme)
    except ThemeError:
        return None
    shipped = _real(path).parent == _real(THEMES_DIR)  # inside labkit/: readable already
    return path if path.is_absolute() and path.is_file() and not shipped else None
