"""Gradescope autograder: `python -m grading gradescope --out autograder.zip [--model NAME]`.

The zip holds Gradescope's two entry points at its root, and the lab's source (labkit/,
grading/, notebooks/ - the reference solution a single-notebook submission's earlier steps
are run from - pyproject.toml, README.md):

- `setup.sh`, run once when Gradescope builds the image: a venv, the CPU build of torch
  first, the lab installed editable from /autograder/source, the class's model cached
  (submissions are then graded offline).
- `run_autograder`, run for every submission: `python -m grading.gradescope run`, which
  grades /autograder/submission with the same grader as `python -m grading` and writes
  /autograder/results/results.json in Gradescope's documented format (checked by
  `check.gradescope_format.validate` before it is written).

`AUTOGRADER_ROOT` (default /autograder) moves the whole tree, so that a test runs the zip
end to end in a temporary folder; `AUTOGRADER_SKIP_INSTALL=1` makes setup.sh reuse the
Python named by `AUTOGRADER_PYTHON` instead of creating a venv and installing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from . import REPO
from .checks.gradescope_format import VISIBILITIES, write_results
from .run.limits import Limits

TORCH_CPU = "torch==2.13.0"  # the Makefile's TORCH_CPU (a test keeps them equal)
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # PyPI's Linux torch is the CUDA build
SHIPPED = ("labkit", "grading", "notebooks", "pyproject.toml", "README.md")
SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
CONFIG = "autograder.json"
MAX_POINTS = 100

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
if [ "${{AUTOGRADER_SKIP_INSTALL:-0}}" = 1 ]; then
  PY="${{AUTOGRADER_PYTHON:?AUTOGRADER_SKIP_INSTALL=1 needs AUTOGRADER_PYTHON}}"
else
  if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip
  fi
  python3 -m venv "$ROOT/venv"
  PY="$ROOT/venv/bin/python"
  "$PY" -m pip install -q --upgrade pip
  # the CPU build of torch first: the lab's dependencies would otherwise pull CUDA's
  "$PY" -m pip install -q "{torch}" ${{TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}}
  "$PY" -m pip install -q -e "$SRC"
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


# ----------------------------------------------------------------------------- the zip
THEME_FILE = "theme.toml"


def build_zip(out: Path, config: dict, repo: Path = REPO) -> list[str]:
    """Write the autograder zip; returns its member names. Reproducible: sorted members,
    fixed timestamps, so the same source gives the same zip."""
    members: dict[str, tuple[bytes, int]] = {
        "setup.sh": (SETUP_SH.format(torch=TORCH_CPU, torch_index=config["torch_index"])
                     .encode(), 0o755),
        "run_autograder": (RUN_AUTOGRADER.encode(), 0o755),
        CONFIG: ((json.dumps(config, indent=2) + "\n").encode(), 0o644)}
    if config.get("theme_file"):  # an instructor's own theme, shipped beside the lab
        members[THEME_FILE] = (Path(config["theme_file"]).read_bytes(), 0o644)
    for name in SHIPPED:
        path = repo / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the autograder ships it "
                                    "(run from a checkout of the lab)")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            rel = file.relative_to(repo)
            if SKIPPED_PARTS.intersection(rel.parts) or file.suffix == ".pyc":
                continue
            members[rel.as_posix()] = (file.read_bytes(), 0o644)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(members):
            data, mode = members[name]
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return sorted(members)


def prepare(source: Path) -> int:
    """setup.sh's last step: load the class's model once, strictly, so that it is cached
    (a hub model is downloaded now; the teaching model is built) and a wrong name fails the
    image build instead of every submission."""
    from labkit.models import load_model

    model = json.loads((source / CONFIG).read_text(encoding="utf-8"))["model"]
    _, _, info = load_model(model, strict=True)
    print(f"autograder model ready: {info.resolved}")
    if os.geteuid() == 0:  # student code will run as another user, not root
        from .run.unprivileged import set_up

        print(set_up(source.parent))
    return 0


# ----------------------------------------------------------------------------- grading
def find_target(submission: Path) -> Path | None:
    """What to grade in an upload: the folder holding the most notebooks (directly or in
    its notebooks/; the shallowest on a tie: an uploaded zip of a folder arrives one level
    down), or, when that is a single notebook, that notebook, graded alone."""
    found = []
    for folder, dirs, files in os.walk(submission):  # never follows symlinks
        depth = len(Path(folder).relative_to(submission).parts)
        dirs[:] = [d for d in dirs if depth < 3 and d not in SKIPPED_PARTS | {"__MACOSX"}]
        found += [Path(folder) / f for f in files if f.endswith(".ipynb")
                  and not (Path(folder) / f).is_symlink()]
    if not found:
        return None
    folders = {p.parent for p in found} | {p.parent.parent for p in found
                                           if p.parent.name == "notebooks"}
    holds = {f: [p for p in found if p.parent in (f, f / "notebooks")] for f in folders}
    best = min(folders, key=lambda f: (-len(holds[f]), len(f.parts), str(f)))
    return holds[best][0] if len(holds[best]) == 1 else best


def unpack_zips(submission: Path, dest: Path, limit_mb: int = 512) -> Path:
    """The upload's zips, unpacked into dest, for when Gradescope left them packed.
    zipfile drops absolute paths and '..'; an oversized or broken zip is skipped."""
    for archive in sorted(submission.glob("*.zip")):
        if archive.is_symlink() or not archive.is_file():
            continue
        try:
            with zipfile.ZipFile(archive) as zf:
                if sum(i.file_size for i in zf.infolist()) > limit_mb << 20:
                    print(f"{archive.name}: over {limit_mb} MB unpacked, skipped", flush=True)
                    continue
                zf.extractall(dest / archive.stem)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            print(f"{archive.name}: not unpacked ({exc})", flush=True)
    return dest


def run(root: Path, python: str = sys.executable) -> int:
    """Grade root/submission into root/results/results.json (what run_autograder does)."""
    config = json.loads((root / "source" / CONFIG).read_text(encoding="utf-8"))
    results_file = root / "results" / "results.json"
    results_file.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # submission/ and results/ arrive with each run
        from .run.unprivileged import lock_down

        lock_down(root)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gradescope-") as tmp:
        target = (find_target(root / "submission")
                  or find_target(unpack_zips(root / "submission", Path(tmp) / "unzipped")))
        if target is None:
            write_results(results_file, failure(
                "No notebook (.ipynb) was found in your submission. Upload the lab's "
                "notebooks (01_baseline.ipynb ... 04_before_after.ipynb), or one of them, as "
                "files or in a zip.", time.monotonic() - start))
            return 0
        print(f"grading {target} with model {config['model']!r}", flush=True)
        theme = str(root / "source" / THEME_FILE) if config.get("theme_file") else config.get(
            "theme", "")
        out = Path(tmp) / "out"
        cmd = [python, "-m", "grading", str(target), "--out", str(out),
               "--model", config["model"], "--timeout", str(config["timeout"]),
               "--cell-timeout", str(config["cell_timeout"]),
               "--memory-gb", str(config["memory_gb"]),
               "--integrity-visibility", config.get("integrity_visibility", "visible")]
        cmd += ["--theme", theme] if theme else []
        try:
            proc = subprocess.run(cmd, cwd=root / "source", timeout=config["timeout"] + 900)
            produced = sorted(out.glob("*/results.json"))
            problem = (f"the grader exited with status {proc.returncode}" if proc.returncode
                       else None if len(produced) == 1 else "the grader wrote no results")
        except subprocess.TimeoutExpired:
            problem = "the grader did not finish in time"
        if problem:
            write_results(results_file, failure(
                f"The autograder could not grade this submission ({problem}). This is a "
                "problem on the grading side, not necessarily in your notebooks: resubmit, "
                "or tell your instructor.", time.monotonic() - start))
            return 1
        results = json.loads(produced[0].read_text(encoding="utf-8"))
    if os.geteuid() == 0:  # nothing of the student's may outlive the grading
        from .run.unprivileged import kill_students

        kill_students()
    write_results(results_file, results)
    print(f"score {results['score']:g}/{results['extra_data']['max_score']:g} -> "
          f"{results_file}", flush=True)
    return 0


def failure(message: str, seconds: float) -> dict:
    """A results.json that gives 0 and says why, to the student and the instructor."""
    return {"score": 0, "execution_time": int(round(seconds)), "output": message,
            "output_format": "text", "visibility": "visible", "stdout_visibility": "hidden",
            "extra_data": {"max_score": MAX_POINTS},
            "tests": [{"name": "Submission graded", "score": 0, "max_score": MAX_POINTS,
                       "status": "failed", "output": message, "visibility": "visible"}]}


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        parser = argparse.ArgumentParser(prog="python -m grading.gradescope run")
        parser.add_argument("--root", type=Path,
                            default=Path(os.environ.get("AUTOGRADER_ROOT") or "/autograder"))
        return run(parser.parse_args(argv[1:]).root.resolve())
    if argv[:1] == ["prepare"]:
        return prepare(Path.cwd())
    parser = argparse.ArgumentParser(
        prog="python -m grading gradescope",
        description="Write Gradescope's autograder zip (setup.sh, run_autograder, the lab).")
    parser.add_argument("--out", required=True, type=Path, help="the zip to write")
    parser.add_argument("--model", default=os.environ.get("LABKIT_MODEL") or "gpt2",
                        help="the model the class uses (LABKIT_MODEL; default gpt2)")
    parser.add_argument("--theme", default=os.environ.get("LABKIT_THEME") or None,
                        help="the class's preference theme: a shipped name or a .toml file "
                             "(LABKIT_THEME; default: labkit's default theme)")
    Limits.add_arguments(parser, "total_timeout", "cell_timeout", "memory_gb")
    parser.add_argument("--torch-index", default=TORCH_INDEX,
                        help="pip index for torch in setup.sh ('' for PyPI)")
    parser.add_argument("--integrity-visibility", default="visible",
                        choices=VISIBILITIES,
                        help="when students see the auto-grader-only (integrity) items: "
                             "visible (default) or e.g. after_published")
    args = parser.parse_args(argv)
    try:
        limits = Limits.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    config = {"model": args.model, "timeout": limits.total_timeout,
              "cell_timeout": limits.cell_timeout, "memory_gb": limits.memory_gb,
              "torch": TORCH_CPU, "torch_index": args.torch_index,
              "integrity_visibility": args.integrity_visibility}
    if args.theme:
        from labkit.themes import ThemeError, load_theme, theme_path

        try:  # a broken theme file fails here, at the instructor's desk, not per submission
            theme = load_theme(args.theme)
        except ThemeError as exc:
            parser.error(str(exc))
        shipped = theme_path(args.theme).resolve().parent == REPO / "labkit" / "themes"
        config.update(theme=theme.name, theme_file=None if shipped else
                      str(theme_path(args.theme).resolve()))
    try:
        members = build_zip(args.out, config)
    except OSError as exc:
        print(f"grading gradescope: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(members)} files (setup.sh, run_autograder, {CONFIG}, "
          f"{', '.join(SHIPPED)}); model {args.model!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
