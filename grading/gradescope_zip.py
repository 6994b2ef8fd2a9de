"""The Gradescope autograder zip: `setup.sh` and `run_autograder` (Gradescope's entry
points), autograder.json (the class's settings), the lab's source and, for an instructor's
own theme, theme.toml. The same zip is built from a checkout or from the installed wheel.
grading.gradescope documents what the scripts do and runs the grading side.
"""
from __future__ import annotations

import json
from pathlib import Path

TORCH_CPU = "torch==2.13.0"  # the Makefile's TORCH_CPU (a test keeps them equal)
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # PyPI's Linux torch is the CUDA build
CONFIG = "autograder.json"

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image. Its last step
# also creates the unprivileged user student code runs as (where namespaces are off) and
# closes source/ (the solutions), submission/ and results/ to it (chmod o=).
# AUTOGRADER_ROOT (default /autograder) moves the tree; AUTOGRADER_SKIP_INSTALL=1 reuses the
# Python in AUTOGRADER_PYTHON instead of making a venv (tests); TORCH_INDEX_URL= (empty)
# takes torch from PyPI instead of PyTorch's CPU index.
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
SRC="$ROOT/source"
export LABKIT_CACHE="${{LABKIT_CACHE:-$ROOT/cache}}"
TORCH_INDEX_URL="${{TORCH_INDEX_URL-{torch_index}}}"
supported() {{  # is "$1" a Python the lab runs on ({min_python} or newer)?
  local v major minor
  v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 1
  IFS=. read -r major minor <<< "$v"
  (( major > {min_major} || (major == {min_major} && minor >= {min_minor}) ))
}}
if [ "${{AUTOGRADER_SKIP_INSTALL:-0}}" = 1 ]; then
  PY="${{AUTOGRADER_PYTHON:?AUTOGRADER_SKIP_INSTALL=1 needs AUTOGRADER_PYTHON}}"
else
  # the image's python3 when it is new enough (Ubuntu 24.04: 3.12); else (Ubuntu 22.04,
  # Gradescope's default: 3.10) python{apt_python} from the image's own archive
  BASE=""
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null && supported "$candidate"; then
      BASE="$candidate"; break
    fi
  done
  if [ -z "$BASE" ]; then
    echo "setup.sh: python3 is older than {min_python}: installing python{apt_python} with apt-get"
    apt-get update -qq
    apt-get install -y -qq python{apt_python} python{apt_python}-venv
    BASE=python{apt_python}
  fi
  if ! "$BASE" -c "import ensurepip, venv" 2>/dev/null; then
    apt-get update -qq
    apt-get install -y -qq "$([ "$BASE" = python3 ] && echo python3-venv || echo "$BASE-venv")"
  fi
  echo "setup.sh: the lab's venv uses $BASE"
  "$BASE" -m venv "$ROOT/venv"
  PY="$ROOT/venv/bin/python"
  "$PY" -m pip install -q --upgrade pip
  # the CPU build of torch first: the lab's dependencies would otherwise pull CUDA's
  "$PY" -m pip install -q "{torch}" ${{TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}}
  "$PY" -m pip install -q -r "$SRC/{requirements}"
fi
cd "$SRC"
PYTHONPATH="$SRC" "$PY" -m grading.gradescope prepare
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission: grade $ROOT/submission and write
# $ROOT/results/results.json. AUTOGRADER_ROOT (default /autograder) moves the tree;
# AUTOGRADER_PYTHON overrides the venv's Python; LABKIT_GRADER_NO_NAMESPACES=1 forces the
# path without user namespaces.
set -uo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
SRC="$ROOT/source"
export LABKIT_CACHE="${LABKIT_CACHE:-$ROOT/cache}" HF_HUB_OFFLINE=1 PYTHONPATH="$SRC"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
PY="${AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
cd "$SRC"
exec "$PY" -m grading.gradescope run --root "$ROOT"
"""


THEME_FILE = "theme.toml"
REQUIREMENTS = "requirements.txt"


def lab_members() -> dict[str, tuple[bytes, int]]:
    """The lab as the zip ships it, from a checkout or an installed wheel alike: labkit/,
    grading/, notebooks/ (the reference solution) and requirements.txt (pyproject's
    dependencies: setup.sh installs them, the lab itself runs from source/)."""
    import grading
    import labkit
    from labkit.archive import tree_members
    from labkit.project import project
    from labkit.release import NOTEBOOKS_DIR

    notebooks = sorted(NOTEBOOKS_DIR.glob("[0-9]*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no solution notebooks in {NOTEBOOKS_DIR}: the autograder "
                                "ships them (run from a checkout, or install the lab's wheel)")
    members = {**tree_members(Path(labkit.__file__).parent, "labkit", ("notebooks",)),
               **tree_members(Path(grading.__file__).parent, "grading")}
    members.update({f"notebooks/{p.name}": (p.read_bytes(), 0o644) for p in notebooks})
    members[REQUIREMENTS] = ("\n".join(project().dependencies).encode() + b"\n", 0o644)
    return members


def min_python() -> tuple[int, int]:
    """The oldest Python the lab runs on: pyproject's requires-python (">=3.11")."""
    import re

    from labkit.project import project

    found = re.search(r">=\s*(\d+)\.(\d+)", project().requires_python)
    return (int(found[1]), int(found[2])) if found else (3, 11)


def build_zip(out: Path, config: dict) -> list[str]:
    """Write the autograder zip; returns its member names. Reproducible: sorted members,
    fixed timestamps, so the same source gives the same zip."""
    from labkit.archive import write_zip

    major, minor = min_python()
    setup = SETUP_SH.format(torch=TORCH_CPU, torch_index=config["torch_index"],
                            requirements=REQUIREMENTS, apt_python=f"{major}.{minor}",
                            min_python=f"{major}.{minor}", min_major=major, min_minor=minor)
    members: dict[str, tuple[bytes, int]] = {
        "setup.sh": (setup.encode(), 0o755),
        "run_autograder": (RUN_AUTOGRADER.encode(), 0o755),
        CONFIG: ((json.dumps(config, indent=2) + "\n").encode(), 0o644),
        **lab_members()}
    if config.get("theme_file"):  # an instructor's own theme, shipped beside the lab
        members[THEME_FILE] = (Path(config["theme_file"]).read_bytes(), 0o644)
    return write_zip(out, members)
