"""The lab as a distribution: its name, version, Python and dependencies, read from the
checkout's pyproject.toml, or, installed from the wheel (no checkout), from the installed
package's metadata. What the Gradescope zip installs and the student wheel declares come
from here, so pyproject.toml stays the one list of dependencies."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DISTRIBUTION = "dpo-lab"
CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    requires_python: str
    dependencies: tuple[str, ...]   # PEP 508 strings, no extras
    summary: str = ""


def project() -> Project:
    """This lab's metadata: pyproject.toml when running from a checkout, else the
    installed distribution's."""
    pyproject = CHECKOUT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        data = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if data.get("name") == DISTRIBUTION:
            return Project(data["name"], data["version"], data.get("requires-python", ""),
                           tuple(data.get("dependencies", ())), data.get("description", ""))
    from importlib import metadata

    meta = metadata.metadata(DISTRIBUTION)
    deps = [r for r in (metadata.requires(DISTRIBUTION) or []) if "extra ==" not in r]
    return Project(meta["Name"], meta["Version"], meta.get("Requires-Python", ""),
                   tuple(deps), meta.get("Summary", ""))
