"""The student bundle: one zip a student opens on JupyterHub or Colab, with no checkout, no
make and no solutions in it.

It holds the student notebooks (`labkit.release`) and a wheel of the *student package*:
labkit and grading as they are (the checks, held prompts, held-out pairs and judge the
notebooks evaluate with), without the solution notebooks, and with every theme's example
pairs (exercise 2.1's solution) left out. The class's theme is in it and is the package's
default. Each notebook's first cell (`INSTALL_CELL`) installs that wheel when labkit is not
importable, and does nothing where it is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .archive import Members, tree_members, write_zip

BUNDLE_FOLDER = "dpo-lab-student"   # the one folder inside the zip
INSTALL_CELL = """\
# Installs the lab from the bundle's wheel (next to this notebook) when it is not
# installed yet, e.g. on JupyterHub or Colab; where it is installed, this does nothing.
import glob, importlib, importlib.util
if importlib.util.find_spec("labkit") is None:
    wheels = sorted(glob.glob("dpo_lab-*.whl") + glob.glob("*/dpo_lab-*.whl"))
    if not wheels:
        raise FileNotFoundError("the lab is not installed, and no dpo_lab-*.whl is next to "
                                "this notebook: unpack the whole bundle into one folder")
    %pip install -q "{wheels[-1]}"
    importlib.invalidate_caches()"""


class BundleError(ValueError):
    """The student bundle cannot be made as asked (e.g. a theme it cannot represent)."""


# ----------------------------------------------------------------------------- themes
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # JSON's string escapes are valid TOML basic strings
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + "".join(f"    {_toml_value(v)},\n" for v in value) + "]"
    raise BundleError(f"cannot write {value!r} in a student theme")


def toml_text(data: dict, header: str = "") -> str:
    """A theme's parsed TOML written back: top-level values, [tables], [[arrays of tables]]
    of plain values. Checked: it parses back to `data`."""
    import tomllib

    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items() if isinstance(v, list) and v
              and all(isinstance(r, dict) for r in v)}
    lines = [header] if header else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items()
              if k not in tables and k not in arrays]
    for name, table in tables.items():
        lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    for name, rows in arrays.items():
        for row in rows:
            lines += ["", f"[[{name}]]", *(f"{k} = {_toml_value(v)}" for k, v in row.items())]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != data:
        raise BundleError("a student theme did not survive writing (unsupported TOML)")
    return text


def student_theme(path: Path) -> str:
    """The student version of a theme file: everything but its example pairs."""
    import tomllib

    from .themes import STUDENT_KEY, load_theme

    load_theme(path)  # the full theme must be valid first
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    data = {STUDENT_KEY: True, **{k: v for k, v in data.items() if k != "example_pairs"}}
    text = toml_text(data, f"# Student version of the theme {Path(path).stem!r}: its example "
                           "pairs (exercise 2.1) are left out.")
    return text


# ----------------------------------------------------------------------------- package
def student_members(theme=None) -> Members:
    """The student package's files: labkit (no notebooks, no release tool, student themes;
    the class's theme, `theme` or the run's, named as the default) and grading."""
    from .themes import DEFAULT_FILE, THEMES_DIR, load_theme

    # release.py makes student notebooks from solutions: instructors' tooling, not theirs
    members = {name: file for name, file in tree_members(Path(__file__).resolve().parent,
                                                         "labkit", ("notebooks",
                                                                    "release.py")).items()
               if not (name.startswith("labkit/themes/") and (name.endswith(".toml")
                                                             or name.endswith(DEFAULT_FILE)))}
    class_theme = load_theme(theme)
    themes = {p.stem: p for p in THEMES_DIR.glob("*.toml")}
    themes[class_theme.name] = class_theme.path
    for name, path in themes.items():
        members[f"labkit/themes/{name}.toml"] = (student_theme(path).encode(), 0o644)
    members[f"labkit/themes/{DEFAULT_FILE}"] = (f"{class_theme.name}\n".encode(), 0o644)
    members.update(tree_members(_package_dir("grading"), "grading"))
    return members


def _package_dir(name: str) -> Path:
    """Where an installed package's files are, found without importing it (labkit never
    imports grading: the student package only ships its files, for grading.check)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise BundleError(f"the student package ships {name}/, which is not installed here")
    return Path(spec.origin).parent


def write_bundle(student_dir: Path, out: Path, theme=None) -> Path:
    """Zip the student notebooks in `student_dir` and the student wheel into `out`, all in
    one folder, BUNDLE_FOLDER/."""
    import tempfile

    from .project import project
    from .wheel import write_wheel

    notebooks = sorted(Path(student_dir).glob("[0-9]*.ipynb"))
    if not notebooks:
        raise BundleError(f"no student notebooks in {student_dir}")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = write_wheel(Path(tmp), project(), student_members(theme),
                            summary="DPO Lab, student package (no solutions)")
        members = {f"{BUNDLE_FOLDER}/{wheel.name}": (wheel.read_bytes(), 0o644)}
    members.update({f"{BUNDLE_FOLDER}/{p.name}": (p.read_bytes(), 0o644) for p in notebooks})
    write_zip(out, members)
    return Path(out)


def default_bundle_path(student_dir: os.PathLike) -> Path:
    """Where `python -m labkit release --out DIR` puts the bundle: DIR/dpo-lab-student.zip."""
    return Path(student_dir) / f"{BUNDLE_FOLDER}.zip"
