"""Section 4: the whole lab, headless, as CI and a student's `make run` do it (target 120 s).

`python -m labkit run --model teaching --run-dir DIR` runs every step and writes
DIR/report.json with steps [{step, passed, score, max_score, seconds}]; this times the
subprocess end to end (interpreter start and imports included: that is what a user waits
for) and keeps the report's per-step seconds.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .stats import load_average, median, summary

REPO = Path(__file__).resolve().parent.parent
ENV = {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def lab_cli_available() -> str | None:
    """None if `python -m labkit run` exists, else the reason it can't be benchmarked."""
    proc = subprocess.run([sys.executable, "-m", "labkit", "run", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return ("`python -m labkit run` is not available yet: "
                + (proc.stderr.strip().splitlines() or ["no error output"])[-1][:300])
    return None


def run_once(timeout: float = 900) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "labkit", "run", "--model", "teaching",
               "--run-dir", str(run_dir)]
        start, cpu_start = time.perf_counter(), _children_cpu()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **ENV})
        seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
        report_path = run_dir / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else None
    if report is None:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` wrote no report.json (exit "
                           f"{proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": cpu, "exit_code": proc.returncode,
            "load_average": load_average(), "report_total_seconds": report.get("total_seconds"),
            "steps": report.get("steps", [])}


def _children_cpu() -> float:
    """CPU seconds of finished child processes (the lab and the kernels it started)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _per_step(runs: list[dict]) -> dict:
    """{step: median seconds} plus whether that step passed in every repetition."""
    out: dict[str, dict] = {}
    for run in runs:
        for entry in run["steps"]:
            slot = out.setdefault(str(entry.get("step")), {"seconds": [], "passed": []})
            slot["seconds"].append(entry.get("seconds"))
            slot["passed"].append(entry.get("passed"))
    return {step: {"median": median(v["seconds"]), "reps": v["seconds"],
                   "all_passed": all(v["passed"])} for step, v in out.items()}


def measure(reps: int, log=print) -> dict:
    """-> {"total": median s, "steps": {...}, ...} or {"total": None, "reason": ...}."""
    reason = lab_cli_available()
    if reason:
        return {"total": None, "reason": reason}
    runs = []
    for rep in range(reps):
        runs.append(run_once())
        log(f"  rep {rep + 1}/{reps}: {runs[-1]['seconds']:.1f} s (CPU "
            f"{runs[-1]['cpu_seconds']:.1f} s, load {runs[-1]['load_average']}), "
            f"exit {runs[-1]['exit_code']}")
    total = summary(r["seconds"] for r in runs)
    return {"total": total["median"], "total_seconds": total,
            "cpu_seconds": summary(r["cpu_seconds"] for r in runs), "steps": _per_step(runs),
            "load_average": [r["load_average"] for r in runs],
            "exit_codes": [r["exit_code"] for r in runs],
            "all_passed": all(s["all_passed"] for s in _per_step(runs).values())}
