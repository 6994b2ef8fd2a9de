"""Peak memory of grading one submission: what a Gradescope container must hold.

`python -m bench.grading_memory [--model teaching|gpt2-shaped|PATH]` copies the solution
notebooks into a fresh submission folder, grades it with `python -m grading` (namespaces
off, as on Gradescope) and samples the resident memory of the grader's whole process tree
(grader, kernels, the fork that runs the student's code) every 0.2 s. Printed: the peak of
the tree's sum (what the container's memory limit sees), the largest single process, the
score and the wall time. `gpt2-shaped` is bench.gpt2_shaped's 124 M GPT-2 (GPT-2's real
config and tokenizer, random weights: the same memory as GPT-2 itself).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_SECONDS = 0.2


def tree_rss(root_pid: int) -> tuple[int, int]:
    """(sum, max) resident bytes over `root_pid` and all its descendants, now."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = []
    for proc in procs:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


def measure(cmd: list[str], env: dict, timeout: float) -> dict:
    """Run `cmd`, sampling its process tree's memory; peak figures in MB."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak_sum = peak_one = 0
    log: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        if time.monotonic() - start > timeout:
            proc.kill()
            break
        total, largest = tree_rss(proc.pid)
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, largest)
        time.sleep(SAMPLE_SECONDS)
    proc.wait()
    reader.join(timeout=5)
    return {"returncode": proc.returncode, "seconds": round(time.monotonic() - start, 1),
            "peak_tree_rss_mb": round(peak_sum / 2**20), "peak_process_rss_mb":
            round(peak_one / 2**20), "log_tail": "".join(log[-5:])}


def model_path(name: str) -> str:
    if name != "gpt2-shaped":
        return name
    from bench.gpt2_shaped import build_random_gpt2
    from labkit.config import cache_dir

    return str(build_random_gpt2(cache_dir() / "gpt2-shaped-random"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grading_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="teaching",
                        help="teaching (default), gpt2-shaped, or a model name/path")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds for the submission's notebooks (the grader's --timeout)")
    parser.add_argument("--cell-timeout", type=float, default=300, help="seconds per cell")
    args = parser.parse_args(argv)
    model = model_path(args.model)
    with tempfile.TemporaryDirectory(prefix="grading-memory-") as tmp:
        sub = Path(tmp) / "solution"
        sub.mkdir()
        for nb in sorted((REPO / "notebooks").glob("0[1-4]_*.ipynb")):
            shutil.copyfile(nb, sub / nb.name)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LABKIT_GRADER_NO_NAMESPACES": "1",
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        result = measure([sys.executable, "-m", "grading", str(sub), "--out",
                          str(Path(tmp) / "out"), "--model", model, "--timeout",
                          str(args.timeout), "--cell-timeout", str(args.cell_timeout)],
                         env, args.timeout + 900)
        rows = (Path(tmp) / "out" / "gradebook.csv").read_text().splitlines()
    result.update(model=args.model, gradebook=rows[-1] if len(rows) > 1 else None)
    print(json.dumps(result, indent=1))
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
