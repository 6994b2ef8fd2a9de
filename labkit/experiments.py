"""Optional experiments the notebooks run on top of the graded path.

`beta_sweep`: retrain from the same base model on the same pairs with several β, everything
else as in step 3, and measure what β controls: the log-ratio margin, how far the policy
moved (KL) and how many held outputs changed. Each run trains in a temporary folder, so the
step artifacts in the run directory are never touched.
"""
from __future__ import annotations

import copy
import tempfile
import time

from . import runtime

DEFAULT_BETAS = (0.01, 0.1, 1.0)
CONFIG_FIELDS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                 "max_length", "seed")


def beta_sweep(model_name: str, train_dataset, dpo_config: dict, prompts, before, spec,
               betas=DEFAULT_BETAS, budget_s: float | None = None) -> list[dict]:
    """One real DPOTrainer run per β from a fresh copy of `model_name` on `train_dataset`
    (the step-2 pairs), with step 3's `dpo_config` (a dict, as saved in step3_training.json)
    except β. Returns one row per β: loss, margins (reward β·Δ and log-ratio Δ), chosen and
    rejected log-prob change, mean KL on the held prompts' new outputs, changed outputs and
    the log history. Stops early (fewer rows) when the next run would end past `budget_s` seconds."""
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from .generation import generate
    from .metrics import mean_kl
    from .models import load_model, use_bf16

    rows, start = [], time.perf_counter()
    for beta in betas:
        spent = time.perf_counter() - start
        if budget_s is not None and rows and spent + spent / len(rows) > budget_s:
            break                                       # the next run would not fit
        model, tokenizer, info = load_model(model_name, quiet=True)
        reference = copy.deepcopy(model).eval()
        # seeded like step 3; TRL reseeds too: the caller's RNG stream is put back after
        with runtime.seeded(int(dpo_config.get("seed", 42))), \
                tempfile.TemporaryDirectory(prefix="labkit-beta-") as out:
            args = DPOConfig(output_dir=out, beta=beta, logging_steps=1, report_to=[],
                             save_strategy="no", disable_tqdm=True, log_level="error",
                             bf16=use_bf16(info.device), activation_checkpointing=False,
                             **{k: dpo_config[k] for k in CONFIG_FIELDS if k in dpo_config})
            trainer = DPOTrainer(model=model, ref_model=reference, args=args,
                                 train_dataset=train_dataset, processing_class=tokenizer)
            trainer.remove_callback(PrinterCallback)   # one table at the end, not 60 dicts
            trainer.train()
        log = [e for e in trainer.state.log_history if "loss" in e]
        policy = trainer.model.eval()
        after = generate(policy, tokenizer, prompts, spec)
        rows.append({
            "beta": beta, "final_loss": log[-1]["loss"],
            "reward_margin": log[-1]["rewards/margins"],
            "logratio_margin": log[-1]["rewards/margins"] / beta,
            "chosen_change": log[-1]["logps/chosen"] - log[0]["logps/chosen"],
            "rejected_change": log[-1]["logps/rejected"] - log[0]["logps/rejected"],
            "kl": mean_kl(policy, reference, tokenizer, prompts, after),
            "changed": sum(a != b for a, b in zip(after, before)), "n_prompts": len(prompts),
            "seconds": round(time.perf_counter() - start, 1), "log_history": log,
        })
    return rows


def format_sweep(rows) -> str:
    """The sweep as a plain-text table, one line per β."""
    head = (f"{'beta':>6} {'loss':>7} {'reward margin':>13} {'log-ratio margin':>16} "
            f"{'Δ chosen':>9} {'Δ rejected':>10} {'KL (nats/token)':>15} {'changed':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['beta']:>6g} {r['final_loss']:>7.4f} {r['reward_margin']:>13.3f} "
                     f"{r['logratio_margin']:>16.2f} {r['chosen_change']:>9.2f} "
                     f"{r['rejected_change']:>10.2f} {r['kl']:>15.4f} "
                     f"{r['changed']:>5}/{r['n_prompts']}")
    return "\n".join(lines)
