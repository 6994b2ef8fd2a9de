"""The wheel is the whole lab: installed (not editable) into a fresh venv outside the
checkout, it runs the lab, writes the student release and builds the Gradescope zip, from
an empty folder."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests._venv import fresh_venv, offline_env

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("labkit", "grading", "notebooks", "pyproject.toml", "README.md")


def build_wheel(dest: Path) -> Path:
    """`pip wheel` of a copy of the checkout's sources (the checkout stays untouched)."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dest / "dist"), str(src)], check=True, timeout=300,
                   env=offline_env())
    (wheel,) = (dest / "dist").glob("dpo_lab-*.whl")
    return wheel


def test_the_wheel_ships_the_notebooks_and_the_zips_files(tmp_path):
    names = zipfile.ZipFile(build_wheel(tmp_path)).namelist()
    for name in ("labkit/notebooks/01_baseline.ipynb", "labkit/notebooks/04_before_after.ipynb",
                 "labkit/themes/plain.toml", "grading/run/sandbox.sh", "grading/gradescope_zip.py"):
        assert name in names, name


@pytest.mark.slow
def test_installed_wheel_runs_the_lab_the_release_and_the_zip(tmp_path, teaching_dir):
    (tmp_path / "dist").mkdir()
    wheel = build_wheel(tmp_path / "dist")
    python = fresh_venv(tmp_path / "venv")
    env = offline_env()
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True,
                   env=env, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()

    def run(*args, timeout=900):
        proc = subprocess.run([str(python), *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=timeout)
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    where = run("-c", "import labkit, grading; print(labkit.__file__, grading.__file__)")
    assert where.count(str(tmp_path / "venv")) == 2  # the installed copy, not the checkout
    out = run("-m", "labkit", "run", "--model", "teaching", "--run-dir", str(empty / "run"))
    assert "all four checks pass" in out
    out = run("-m", "labkit", "release", "--out", str(empty / "student"))
    assert len(list((empty / "student").glob("0[1-4]_*.ipynb"))) == 4
    assert (empty / "student" / "dpo-lab-student.zip").is_file()
    run("-m", "grading", "gradescope", "--out", str(empty / "autograder.zip"), "--model",
        "teaching")
    names = zipfile.ZipFile(empty / "autograder.zip").namelist()
    assert {"setup.sh", "run_autograder", "requirements.txt", "notebooks/03_train_dpo.ipynb",
            "labkit/themes/plain.toml", "grading/run/sandbox.sh"} <= set(names)
    assert not [n for n in names if n.startswith("labkit/notebooks/")]
