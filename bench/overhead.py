"""Section 1: what labkit's plumbing costs on top of bare TRL (target: ratio <= 1.05).

Both variants run in this process, interleaved, after one untimed warm-up each: the first
DPOTrainer in a process pays one-off import and initialisation costs that belong to
neither. Each timing covers load + trainer construction + train (+ diagnosis for labkit).
"""
from __future__ import annotations

from . import recipes
from .stats import interleave, load_average, ratio, summary


def _reps_summary(runs) -> dict:
    out = summary(wall for wall, _, _ in runs)
    out["cpu_seconds"] = summary(cpu for _, cpu, _ in runs)
    out["final_loss"] = [r.final_loss for _, _, r in runs]
    verdicts = [r.verdict for _, _, r in runs if r.verdict]
    if verdicts:
        out["verdicts"] = verdicts
    return out


def measure(reps: int, quick: bool = False, log=print) -> dict:
    epochs = 2 if quick else None  # quick: a smoke run, not a figure to quote
    variants = {"labkit": lambda: recipes.labkit_run(epochs),
                "bare_trl": lambda: recipes.bare_run(epochs)}
    factory = recipes.sample_callback_factory()
    if factory is not None:
        variants["labkit_sample_callback"] = lambda: recipes.labkit_run(epochs, factory)
    log("  warm-up (untimed)")
    for fn in variants.values():
        fn()
    runs = interleave(variants, reps, log)
    result = {name: _reps_summary(r) for name, r in runs.items()}
    labkit, bare = result["labkit"]["median"], result["bare_trl"]["median"]
    result["ratio"] = ratio(labkit, bare)
    result["cpu_ratio"] = ratio(result["labkit"]["cpu_seconds"]["median"],
                                result["bare_trl"]["cpu_seconds"]["median"])
    result["load_average"] = load_average()
    result["same_losses"] = result["labkit"]["final_loss"] == result["bare_trl"]["final_loss"]
    result["epochs"] = epochs or "preset"
    if factory is None:
        result["sample_callback"] = "labkit.callbacks.SampleCallback not found: not measured"
        result["sample_callback_ratio"] = None
    else:
        result["sample_callback_ratio"] = ratio(result["labkit_sample_callback"]["median"],
                                                labkit)
    return result
