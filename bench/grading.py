"""Section: grading throughput, and what grading costs beyond running the notebooks.

Three timings on the solution notebooks (teaching model), each a subprocess so interpreter
start and imports count, as they do for an instructor:
- bare: the four notebooks executed in one fresh run directory with nbclient, no grader;
- `python -m grading` on N copies at --jobs 1, and on N copies at --jobs 2.
Figures: executed submissions per minute at each --jobs, and grader ÷ bare execution per
submission at --jobs 1 (sandbox, sanitised copy, checks and recomputation included).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .stats import load_average

REPO = Path(__file__).resolve().parent.parent
# the grader skips the optional experiments (LABKIT_SKIP_OPTIONAL); the bare run must too
ENV = {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "LABKIT_MODEL": "teaching",
       "LABKIT_SKIP_OPTIONAL": "1"}
BARE = r"""
import sys, pathlib, nbformat
from nbclient import NotebookClient
work = pathlib.Path(sys.argv[1])
for path in sorted(pathlib.Path(sys.argv[2]).glob("0[1-4]_*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()
"""


def _timed(cmd: list[str], env: dict, timeout: float) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV, **env}, timeout=timeout,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(map(str, cmd[1:4]))} ...` exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def bare_seconds(tmp: Path, timeout: float = 1800) -> float:
    work = tmp / "bare"
    work.mkdir()
    return _timed([sys.executable, "-c", BARE, str(work), str(REPO / "notebooks")],
                  {"LABKIT_RUN_DIR": str(work / "run")}, timeout)


def graded_seconds(tmp: Path, n: int, jobs: int, timeout: float = 3600) -> float:
    subs = []
    for i in range(n):
        sub = tmp / f"jobs{jobs}" / f"student{i}"
        shutil.copytree(REPO / "notebooks", sub)
        subs.append(str(sub))
    out = tmp / f"out{jobs}"
    return _timed([sys.executable, "-m", "grading", *subs, "--out", str(out), "--jobs",
                   str(jobs), "--model", "teaching"], {}, timeout)


def measure(n: int = 2, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as name:
        tmp = Path(name)
        bare = bare_seconds(tmp)
        log(f"  bare execution of the 4 notebooks: {bare:.1f} s")
        graded = {}
        for jobs in (1, 2):
            graded[jobs] = graded_seconds(tmp, n, jobs)
            log(f"  grading {n} submissions at --jobs {jobs}: {graded[jobs]:.1f} s")
    return {"submissions": n, "bare_seconds": bare,
            "graded_seconds": {str(j): s for j, s in graded.items()},
            "submissions_per_minute": {str(j): 60 * n / s for j, s in graded.items()},
            "grader_over_bare": graded[1] / n / bare, "load_average": load_average()}


if __name__ == "__main__":
    import json

    log = lambda line: print(line, file=sys.stderr)  # noqa: E731 - stdout is the JSON
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2, log), indent=1))
