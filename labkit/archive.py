"""Reproducible zip archives of the lab's files (the Gradescope zip, the student wheel and
bundle): members sorted, timestamps fixed, permission bits kept, caches left out, so the
same sources always give the same bytes."""
from __future__ import annotations

import zipfile
from pathlib import Path

SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
Members = dict[str, tuple[bytes, int]]  # archive name -> (content, permission bits)


def tree_members(folder: Path, prefix: str, leave_out: tuple[str, ...] = ()) -> Members:
    """Every file under `folder` as `prefix/<relative path>` (mode 0o644), without caches,
    .pyc files and the relative paths starting with one of `leave_out`."""
    members: Members = {}
    for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = file.relative_to(folder)
        if (SKIPPED_PARTS.intersection(rel.parts) or file.suffix == ".pyc"
                or rel.as_posix().startswith(leave_out)):
            continue
        members[f"{prefix}/{rel.as_posix()}".lstrip("/")] = (file.read_bytes(), 0o644)
    return members


def write_zip(out: Path, members: Members) -> list[str]:
    """Write `members` to the zip `out` (its folder made); returns the sorted names."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(members):
            data, mode = members[name]
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return sorted(members)
