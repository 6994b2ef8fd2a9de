"""The student bundle: one zip with the student notebooks and a wheel of the student
package. No solution in it; the notebooks, filled in, run from it in a fresh venv and
`grading.check(N)` works there."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import nbformat
import pytest

from labkit.bundle import BUNDLE_FOLDER, INSTALL_CELL
from labkit.themes import THEMES_DIR, find_theme_problems, load_theme
from tests._venv import fresh_venv, offline_env

ROOT = Path(__file__).resolve().parent.parent


def release(out: Path, *extra) -> Path:
    proc = subprocess.run([sys.executable, "-m", "labkit", "release", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out / f"{BUNDLE_FOLDER}.zip"


def bundle_files(bundle: Path) -> dict[str, str]:
    """Every file of the bundle as text, the wheel's files included (`wheel!name`)."""
    files = {}
    with zipfile.ZipFile(bundle) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            if name.endswith(".whl"):
                inner = zipfile.ZipFile(io.BytesIO(data))
                files.update({f"{name}!{n}": inner.read(n).decode("utf-8", "replace")
                              for n in inner.namelist()})
            else:
                files[name] = data.decode("utf-8")
    return files


def test_bundle_has_no_solutions_and_keeps_what_the_notebooks_evaluate_with(tmp_path):
    files = bundle_files(release(tmp_path / "student"))
    notebooks = sorted(n for n in files if n.endswith(".ipynb"))
    assert [Path(n).name for n in notebooks] == sorted(
        p.name for p in (ROOT / "notebooks").glob("0[1-4]_*.ipynb"))
    assert not [n for n, text in files.items() if "BEGIN SOLUTION" in text]
    assert not [n for n in files if "labkit/notebooks/" in n]
    for theme_file in THEMES_DIR.glob("*.toml"):
        full = tomllib.loads(theme_file.read_text(encoding="utf-8"))
        for pair in full["example_pairs"]:
            for key in ("chosen", "rejected"):
                leaks = [n for n, text in files.items() if pair[key].strip() in text
                         or json.dumps(pair[key].strip())[1:-1] in text]
                assert not leaks, (theme_file.name, key, leaks)
        (student_name,) = [n for n in files if n.endswith(f"labkit/themes/{theme_file.name}")]
        student = tomllib.loads(files[student_name])
        assert "example_pairs" not in student and student["student_version"] is True
        for key in ("held_prompts", "heldout_pairs", "judge", "title", "preference"):
            assert student.get(key) == full.get(key), key
        assert find_theme_problems(student) == []  # the loader accepts it as it is
    for name in notebooks:
        first = nbformat.reads(files[name], as_version=4).cells[0]
        assert first.cell_type == "code" and first.source == INSTALL_CELL


def test_own_theme_is_the_bundle_default(tmp_path):
    own = tmp_path / "classtheme.toml"
    own.write_text((THEMES_DIR / "concise.toml").read_text(encoding="utf-8"), encoding="utf-8")
    files = bundle_files(release(tmp_path / "student", "--theme", str(own)))
    assert [t for n, t in files.items() if n.endswith("labkit/themes/DEFAULT")] == [
        "classtheme\n"]
    assert any(n.endswith("labkit/themes/classtheme.toml") for n in files)


def filled_in(student: Path, solution: Path, pairs: list[dict]) -> None:
    """A student's correct work: each stubbed cell replaced by the solution's (one cell
    later: the install cell comes first); exercise 2.1's pairs written out, as a student
    writes their own (the student package has no example pairs)."""
    nb, ref = nbformat.read(student, as_version=4), nbformat.read(solution, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "# YOUR CODE HERE" in cell.source:
            cell.source = ref.cells[i - 1].source.replace("theme.example_pairs", repr(pairs))
    nbformat.write(nb, student)


RUN_NOTEBOOKS = """
import sys, pathlib, nbformat
from nbclient import NotebookClient
folder = pathlib.Path(sys.argv[1])
for path in sorted(folder.glob("0[1-4]_*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    nbformat.write(nb, path)
    print("ran", path.name, flush=True)
"""
CHECKS = """
import json, labkit, labkit.themes, grading
results = [grading.checks.CHECKS[n]() for n in (1, 2, 3, 4)]
print(json.dumps({"labkit": labkit.__file__, "theme": labkit.themes.load_theme().name,
                  "steps": [[r.passed, r.score, r.max_score] for r in results]}))
"""


@pytest.mark.slow
def test_filled_in_student_notebooks_pass_from_the_unpacked_bundle(tmp_path, teaching_dir):
    bundle = release(tmp_path / "student")
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(tmp_path / "unpacked")
    folder = tmp_path / "unpacked" / BUNDLE_FOLDER
    pairs = [dict(p) for p in load_theme("plain").example_pairs]
    for path in folder.glob("0[1-4]_*.ipynb"):
        filled_in(path, ROOT / "notebooks" / path.name, pairs)
    python = fresh_venv(tmp_path / "venv")
    env = offline_env(LABKIT_MODEL="teaching", LABKIT_RUN_DIR=str(tmp_path / "run"),
                      LABKIT_SKIP_OPTIONAL="1", LABKIT_STATIC_WIDGETS="1")
    missing = subprocess.run([str(python), "-c", "import labkit"], env=env, cwd=folder,
                             capture_output=True)
    assert missing.returncode != 0  # until the first notebook's first cell installs it
    proc = subprocess.run([str(python), "-c", RUN_NOTEBOOKS, str(folder)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([str(python), "-c", CHECKS], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["labkit"].startswith(str(tmp_path / "venv")), found  # from the bundle's wheel
    assert found["theme"] == "plain"
    assert all(passed for passed, _, _ in found["steps"]), found["steps"]
