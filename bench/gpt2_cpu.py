"""Section 3: GPT-2-shaped (124M, random weights, real tokenizer) DPO training on CPU.

The notebook settings (gpt2 preset: 8 pairs x 3 epochs, batch 4, lr 5e-5, beta 0.1,
max_length 128) in both reference modes, each repetition in a fresh subprocess
(`bench.gpt2_train`), interleaved. Wall time excludes model load (a one-off a student pays
once per kernel) and includes trainer construction (where precompute does its reference
pass). Target: the faster mode <= 60 s on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from labkit.config import cache_dir

from .gpt2_train import MODES
from .stats import ab_order, load_average, median, ratio, summary

MARKER = "BENCH_RESULT "
REPO = Path(__file__).resolve().parent.parent


def model_dir() -> Path:
    """The random GPT-2 is built once (seconds) and cached beside labkit's other models."""
    from bench.gpt2_shaped import build_random_gpt2

    return build_random_gpt2(cache_dir() / "bench-gpt2-random-124m")


def run_worker(path: Path, mode: str, epochs: int | None = None, timeout: float = 900) -> dict:
    """One training in a fresh interpreter -> its BENCH_RESULT dict (raises on failure)."""
    cmd = [sys.executable, "-m", "bench.gpt2_train", "--model-dir", str(path), "--mode", mode]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise RuntimeError(f"bench.gpt2_train --mode {mode} failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")


def measure(reps: int, quick: bool = False, log=print) -> dict:
    path = model_dir()
    epochs = 1 if quick else None
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for rep, mode in ab_order(list(MODES), reps):  # each run times itself, in its own process
        result = run_worker(path, mode, epochs)
        result["load_average"] = load_average()
        runs[mode].append(result)
        log(f"  rep {rep + 1}/{reps} {mode}: {result['seconds']:.1f} s "
            f"(train {result['train_seconds']:.1f} s, CPU {result['cpu_seconds']:.1f} s), "
            f"peak RSS {result['peak_rss_mb']:.0f} MB, load {result['load_average']}")
    modes = {mode: {"seconds": summary(r["seconds"] for r in rs),
                    "construct_seconds": summary(r["construct_seconds"] for r in rs),
                    "train_seconds": summary(r["train_seconds"] for r in rs),
                    "cpu_seconds": summary(r["cpu_seconds"] for r in rs),
                    "peak_rss_mb": summary(r["peak_rss_mb"] for r in rs),
                    "load_seconds": median(r["load_seconds"] for r in rs),
                    "first_loss": rs[0]["first_loss"], "final_loss": rs[0]["final_loss"],
                    "steps": rs[0]["steps"], "num_tokens": rs[0]["num_tokens"],
                    "ref_model_kept": rs[0]["ref_model_kept"], "raw": rs}
             for mode, rs in runs.items()}
    fastest = min(MODES, key=lambda m: modes[m]["seconds"]["median"])
    return {"model_dir": str(path), "n_parameters": runs[MODES[0]][0]["n_parameters"],
            "epochs": epochs or 3, "pairs": 8, "modes": modes, "faster_mode": fastest,
            "train_seconds": modes[fastest]["seconds"]["median"],
            "peak_rss_mb": modes[fastest]["peak_rss_mb"]["median"],
            "precompute_speedup": ratio(modes["deepcopy"]["seconds"]["median"],
                                        modes["precompute"]["seconds"]["median"])}
