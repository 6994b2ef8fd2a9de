"""Write a wheel from files in memory (PEP 427): the student package is the lab's packages
with some files left out or replaced, so it is assembled here rather than built from a
source tree. pip installs it like any wheel."""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from .archive import Members, write_zip
from .project import Project


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(out_dir: Path, project: Project, members: Members, summary: str = "") -> Path:
    """`out_dir/<name>-<version>-py3-none-any.whl` holding `members` (package files) and
    the dist-info pip needs (METADATA with the project's Python and dependencies, WHEEL,
    top_level.txt, RECORD with every file's hash)."""
    dist = project.name.replace("-", "_")
    info = f"{dist}-{project.version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {project.name}", f"Version: {project.version}",
                f"Summary: {summary or project.summary}"]
    metadata += [f"Requires-Python: {project.requires_python}"] if project.requires_python else []
    metadata += [f"Requires-Dist: {dep}" for dep in project.dependencies]
    top_level = sorted({name.split("/", 1)[0] for name in members})
    files = dict(members)
    files[f"{info}/METADATA"] = (("\n".join(metadata) + "\n").encode(), 0o644)
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: labkit.wheel\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n", 0o644)
    files[f"{info}/top_level.txt"] = (("\n".join(top_level) + "\n").encode(), 0o644)
    record = [_record_line(name, data) for name, (data, _) in sorted(files.items())]
    files[f"{info}/RECORD"] = (("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode(),
                               0o644)
    out = Path(out_dir) / f"{dist}-{project.version}-py3-none-any.whl"
    write_zip(out, files)
    return out
