"""Section: grading throughput, and what grading costs beyond running the notebooks.

Timings on the solution notebooks (teaching model), each a subprocess so interpreter
start and imports count, as they do for an instructor:
- bare: the four notebooks executed in one fresh run directory with nbclient, no grader;
- `python -m grading` on N copies at --jobs 1, and on N copies at --jobs 2;
- the reference cache (`measure_cache`), all at --jobs 1, side by side in one run: N
  four-notebook submissions and N notebook-3-only submissions, with --no-reference-cache
  (steps 1-2 run in every notebook-3 submission's sandbox) and with the cache, cold (its
  entry built by the batch) and warm (built before: every later batch, every Slurm task).
Figures: executed submissions per minute, and grader ÷ bare execution per submission at
--jobs 1 (sandbox, sanitised copy, checks and recomputation included).

    python -m bench.grading [N] [--cache-only [--reps=R]]  # JSON on stdout, progress on stderr
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
    return _grade(subs, tmp / f"out{jobs}", jobs, timeout)


def _grade(subs: list, out: Path, jobs: int = 1, timeout: float = 3600, *extra: str) -> float:
    return _timed([sys.executable, "-m", "grading", *map(str, subs), "--out", str(out),
                   "--jobs", str(jobs), "--model", "teaching", *extra], {}, timeout)


def measure_cache(n: int = 2, log=print, reps: int = 1) -> dict:
    """Submissions per minute at --jobs 1: full (four notebooks) and notebook-3-only
    submissions, reference cache off, cold and warm; one run, side by side. With `reps`,
    the five rows run in turn `reps` times (A, B, ..., A, B, ...: the host's drift hits
    every row alike) and each figure is the median of its repetitions."""
    from grading.run.reference_cache import ReferenceCache, make_key

    from .stats import summary

    ref = {s: REPO / "notebooks" / name for s, name in
           ((1, "01_baseline.ipynb"), (2, "02_preferences.ipynb"))}
    key = make_key(ref, (1, 2), "teaching", None)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as name:
        tmp = Path(name)
        full, nb3 = [], []
        for i in range(n):
            full.append(tmp / "full" / f"student{i}")
            shutil.copytree(REPO / "notebooks", full[-1])
            nb3.append(tmp / "nb3" / f"03_student{i}.ipynb")
            nb3[-1].parent.mkdir(exist_ok=True)
            shutil.copyfile(REPO / "notebooks" / "03_train_dpo.ipynb", nb3[-1])
        batches, ones = {}, {}  # label: each repetition's seconds
        for rep in range(1, reps + 1):
            for row, (label, subs, extra, cold) in enumerate((
                    ("full, cache off", full, ("--no-reference-cache",), False),
                    ("full, cache on", full, (), False),
                    ("notebook 3 only, cache off", nb3, ("--no-reference-cache",), False),
                    ("notebook 3 only, cache on (cold)", nb3, (), True),
                    ("notebook 3 only, cache on (warm)", nb3, (), False))):
                if cold:
                    ReferenceCache().discard(key)
                out = tmp / f"out-{rep}-{row}"
                batch = _grade(subs, out, 1, 3600, *extra)
                one = per_submission_seconds(out)
                batches.setdefault(label, []).append(batch)
                ones.setdefault(label, []).append(one)
                log(f"  [{rep}/{reps}] {label}: {n} submissions in {batch:.1f} s "
                    f"({60 * n / batch:.2f}/min; {one:.1f} s each, start-up "
                    f"{batch - n * one:.1f} s; load {load_average()})")
    warm, off = "notebook 3 only, cache on (warm)", "notebook 3 only, cache off"
    runs = {"seconds": {label: summary(v) for label, v in batches.items()},
            "seconds_per_submission": {label: summary(v) for label, v in ones.items()},
            "nb3_speedup_warm": [o / w for o, w in zip(batches[off], batches[warm])]}
    seconds = {label: s["median"] for label, s in runs["seconds"].items()}
    each = {label: s["median"] for label, s in runs["seconds_per_submission"].items()}
    rate = {label: 60 * n / s for label, s in seconds.items()}
    return {"submissions": n, "jobs": 1, "reps": reps, "seconds": seconds,
            "submissions_per_minute": rate, "seconds_per_submission": each,
            "nb3_speedup_per_submission": each[off] / each[warm],
            "nb3_speedup_warm": rate[warm] / rate[off],
            "nb3_speedup_cold": rate["notebook 3 only, cache on (cold)"] / rate[off],
            "full_on_over_off": rate["full, cache on"] / rate["full, cache off"],
            "runs": runs, "load_average": load_average()}


def per_submission_seconds(out: Path) -> float:
    """The mean of each submission's own time in a graded batch (record.json, the grader's
    clock from its sandbox to its result; a cold cache entry is built off it): what a class
    of hundreds pays per student once the batch's start-up (interpreter, imports, the
    class's model, the namespace probe) is spread over all of them."""
    import json

    seconds = [json.loads(p.read_text())["seconds"] for p in out.glob("*/record.json")]
    if not seconds:
        raise RuntimeError(f"no record.json under {out}")
    return sum(seconds) / len(seconds)


def measure(n: int = 2, log=print, cache: bool = True) -> dict:
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
            "grader_over_bare": graded[1] / n / bare, "load_average": load_average(),
            **({"reference_cache": measure_cache(n, log)} if cache else {})}


if __name__ == "__main__":
    import json

    log = lambda line: print(line, file=sys.stderr)  # noqa: E731 - stdout is the JSON
    count = int(next((a for a in sys.argv[1:] if a.isdigit()), 2))
    reps = int(next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--reps=")), 1))
    if "--cache-only" in sys.argv:
        print(json.dumps(measure_cache(count, log, reps), indent=1))
    else:
        print(json.dumps(measure(count, log), indent=1))
