"""setup.sh picks a Python the lab runs on, on Gradescope's base images: the image's
python3 when it is new enough (Ubuntu 24.04: 3.12), else python3.11 from the image's own
apt archive (Ubuntu 22.04, Gradescope's default, whose python3 is 3.10).

The images themselves are not here: setup.sh runs with PATH holding only stand-ins that
log every call and answer as the image's would (python3 reports its version; apt-get
"installs" python3.11; a venv's python accepts pip and the model step).
"""
from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.test_gradescope import build

FAKE_PYTHON = """#!/bin/bash
echo "${{0##*/}} $*" >> "$FAKE_LOG"
case "$1" in
  -c) case "$2" in *version_info*) echo "{version}" ;; esac ;;
  -m) if [ "$2" = venv ]; then /bin/mkdir -p "$3/bin"; /bin/cp "$FAKE_BIN/.venv-python" "$3/bin/python"; fi ;;
esac
exit 0
"""
VENV_PYTHON = """#!/bin/bash
echo "venv-python $*" >> "$FAKE_LOG"
exit 0
"""
FAKE_APT = """#!/bin/bash
echo "apt-get $*" >> "$FAKE_LOG"
if [ "$1" = install ]; then
  for pkg in "$@"; do
    case "$pkg" in python3.1[1-9]) /bin/sed "s/{version}/${pkg#python}/" "$FAKE_BIN/.python-template" > "$FAKE_BIN/$pkg"; /bin/chmod +x "$FAKE_BIN/$pkg" ;; esac
  done
fi
exit 0
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def setup_sh(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("zip")
    proc = build(tmp / "autograder.zip", "--model", "teaching")
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(tmp / "autograder.zip") as zf:
        (tmp / "setup.sh").write_bytes(zf.read("setup.sh"))
    return tmp / "setup.sh"


def run_setup(setup_sh: Path, tmp: Path, python3_version: str) -> list[str]:
    """setup.sh on an image whose python3 reports `python3_version`; the calls it made."""
    fake_bin, root, log = tmp / "bin", tmp / "autograder", tmp / "calls.log"
    fake_bin.mkdir()
    (root / "source").mkdir(parents=True)
    _script(fake_bin / "python3", FAKE_PYTHON.format(version=python3_version))
    (fake_bin / ".python-template").write_text(FAKE_PYTHON.format(version="{version}"))
    _script(fake_bin / ".venv-python", VENV_PYTHON)
    _script(fake_bin / "apt-get", FAKE_APT)
    proc = subprocess.run(["/bin/bash", str(setup_sh)], capture_output=True, text=True,
                          timeout=60, env={"PATH": str(fake_bin), "AUTOGRADER_ROOT": str(root),
                                           "FAKE_LOG": str(log), "FAKE_BIN": str(fake_bin)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines()


def test_ubuntu_22_04_python_3_10_gets_python_3_11_from_apt(setup_sh, tmp_path):
    calls = run_setup(setup_sh, tmp_path, "3.10")
    root = tmp_path / "autograder"
    assert "apt-get install -y -qq python3.11 python3.11-venv" in calls
    assert f"python3.11 -m venv {root}/venv" in calls
    assert not [c for c in calls if c.startswith("python3 -m venv")]  # 3.10 never used
    pip = [c for c in calls if c.startswith("venv-python -m pip install")]
    assert "torch==" in pip[1] and f"-r {root}/source/requirements.txt" in pip[2]
    assert calls[-1] == "venv-python -m grading.gradescope prepare"


def test_ubuntu_24_04_python_3_12_is_used_as_it_is(setup_sh, tmp_path):
    calls = run_setup(setup_sh, tmp_path, "3.12")
    assert not [c for c in calls if c.startswith("apt-get")]
    assert f"python3 -m venv {tmp_path}/autograder/venv" in calls
    assert calls[-1] == "venv-python -m grading.gradescope prepare"
