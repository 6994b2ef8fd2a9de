"""A fresh virtual environment outside the checkout, offline: its own site-packages (empty:
the lab is installed into it by the test) on top of this test environment's third-party
packages (torch, transformers, ... reached through a folder of links, the lab's own
editable install left out), so that nothing is downloaded."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

LEFT_OUT = ("dpo_lab", "__editable__", "labkit", "grading")


def fresh_venv(where: Path) -> Path:
    """Make the venv at `where`; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    python = where / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                   "get_paths()['purelib'])"], capture_output=True, text=True,
                                  check=True).stdout.strip())
    deps = where / "test-env-packages"
    deps.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not entry.name.startswith(LEFT_OUT) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    (purelib / "test-env-packages.pth").write_text(f"{deps}\n")
    return python


def offline_env(**extra) -> dict:
    """This process's environment without the checkout on PYTHONPATH, pip kept offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LABKIT_THEME")}
    return {**env, "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}
