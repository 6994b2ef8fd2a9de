"""Calibrate a training preset on a real model: the lab's own step-2 pairs (the solution
notebook's), 6-step DPO runs at several settings, and what each does to the things step 4
measures (held-out preference accuracy, perplexity on neutral text) plus labkit's verdict.

    python -m bench.calibrate MODEL_DIR lr:epochs:beta [lr:epochs:beta ...]

Not part of `python -m bench` (minutes per setting on a CPU); figures go to docs/models.md.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def solution_pairs() -> list[dict]:
    """The pairs exercise 2.1's solution writes (so calibration sees what students train on)."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "02_preferences.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "pairs = [" in cell.source:
            scope: dict = {}
            exec(cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0], scope)
            return scope["pairs"]
    raise RuntimeError("no `pairs = [` cell in notebook 2")


def run(model_dir: str, lr: float, epochs: int, beta: float) -> dict:
    import torch
    from trl import DPOConfig, DPOTrainer

    from labkit import metrics, teaching
    from labkit.data import validate_pairs
    from labkit.health import diagnose
    from labkit.models import load_model

    torch.manual_seed(42)
    model, tokenizer, info = load_model(model_dir, quiet=True)
    reference = copy.deepcopy(model).eval()
    dataset = validate_pairs(solution_pairs())
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, learning_rate=lr, num_train_epochs=epochs, beta=beta,
                         per_device_train_batch_size=4, max_length=128, logging_steps=1,
                         precompute_ref_log_probs=True, bf16=False, seed=42, report_to=[],
                         save_strategy="no", activation_checkpointing=False, disable_tqdm=True)
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset,
                             processing_class=tokenizer)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    history = trainer.state.log_history
    heldout = teaching.make_preference_pairs(8, seed=1, concepts=teaching.HELDOUT_CONCEPTS)
    neutral = teaching.neutral_text()
    ppl0, ppl1 = (metrics.perplexity(m, tokenizer, neutral) for m in (reference, trainer.model))
    steps = [e for e in history if "loss" in e and "train_runtime" not in e]
    return {"model": info.kind, "lr": lr, "epochs": epochs, "beta": beta,
            "train_seconds": round(seconds, 1),
            "loss": [round(e["loss"], 4) for e in steps],
            "margins": [round(e.get("rewards/margins", float("nan")), 3) for e in steps],
            "chosen_logps": [round(e.get("logps/chosen", float("nan")), 1) for e in steps],
            "heldout_accuracy": metrics.heldout_preference_accuracy(
                trainer.model, reference, tokenizer, heldout, beta=beta),
            "perplexity": [round(ppl0, 3), round(ppl1, 3)],
            "verdict": diagnose(history, beta=beta, learning_rate=lr,
                                num_train_epochs=epochs).verdict,
            "log_history": history}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    model_dir, settings = argv[0], argv[1:]
    for setting in settings:
        lr, epochs, beta = setting.split(":")
        result = run(model_dir, float(lr), int(epochs), float(beta))
        brief = {k: v for k, v in result.items() if k != "log_history"}
        print(json.dumps(brief), flush=True)
        print("HISTORY " + json.dumps(result["log_history"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
