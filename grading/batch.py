"""A batch of submissions as the command line gives it: each one's folder name, the part of
them one machine grades (`--shard K/N`), and the part's manifest (DIR/batch.json) that
`python -m grading merge` checks before joining parts.

The names are made from the whole class, sorted by name, before any part is taken, so every
part of a class agrees on them; part K of N is every N-th submission from the K-th on
(round robin: a class sorted by name spreads its big and small submissions over the parts).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST = "batch.json"


def names_for(paths: list[Path]) -> list[str]:
    """A unique, filesystem-safe folder name per submission."""
    names, seen = [], {}
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem if path.suffix == ".ipynb"
                      else path.name) or "submission"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def parse_shard(text: str) -> tuple[int, int]:
    """'2/5' -> (2, 5); a clear ValueError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 1/4 (the first of 4 parts)")
    k, n = int(match.group(1)), int(match.group(2))
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N (got K={k}, N={n})")
    return k, n


def class_order(paths: list[Path]) -> list[tuple[Path, str]]:
    """(path, name) of every submission, sorted by name: the order all parts agree on."""
    ordered = sorted(paths, key=_sort_key)
    return sorted(zip(ordered, names_for(ordered)), key=lambda pn: pn[1])


def select(paths: list[Path], k: int, n: int) -> list[tuple[Path, str]]:
    """Part K of N (1-based) of the class, as (path, name)."""
    return class_order(paths)[k - 1::n]


def _sort_key(path: Path) -> tuple[str, str]:
    return (path.stem if path.suffix == ".ipynb" else path.name, str(path))


def rubric_version() -> str:
    """A digest of the points table: parts graded on different rubrics do not merge."""
    from .checks.rubric import RUBRIC

    text = json.dumps([asdict(item) for item in RUBRIC], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def theme_id(theme: str | None) -> str:
    """A theme as parts compare it: a shipped name, or a file by its content."""
    if theme and Path(theme).is_file():
        digest = hashlib.sha256(Path(theme).read_bytes()).hexdigest()[:16]
        return f"{Path(theme).name} sha256:{digest}"
    return theme or "default"


@dataclass(frozen=True)
class PartManifest:
    """What `merge` needs to know about a part: how it was graded, which part of which
    class it is, and which submissions it graded."""

    model: str
    theme: str
    rubric: str
    shard: tuple[int, int]
    submissions: tuple[str, ...]  # the whole class, sorted by name
    graded: tuple[str, ...]       # this part's

    def write(self, folder: Path) -> None:
        """Write DIR/batch.json whole (temp file, then rename)."""
        tmp = folder / f".{MANIFEST}.tmp"
        data = {**asdict(self), "shard": list(self.shard), "submissions": list(self.submissions),
                "graded": list(self.graded)}
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)

    @staticmethod
    def withdraw(folder: Path) -> None:
        """A run starting in `folder` first takes back an earlier run's batch.json: should
        this one stop half-way (killed at a task's time limit), `merge` must refuse the
        folder, not join the earlier run's grades."""
        (folder / MANIFEST).unlink(missing_ok=True)

    @classmethod
    def read(cls, folder: Path) -> "PartManifest":
        """The part's manifest; ValueError saying what is wrong with it."""
        path = folder / MANIFEST
        if not path.is_file():
            raise ValueError(f"{folder}: no {MANIFEST}: not a finished run of `python -m "
                             "grading ... --out DIR` (a part still grading, or one that stopped)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["model"], data["theme"], data["rubric"], tuple(data["shard"]),
                       tuple(data["submissions"]), tuple(data["graded"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
