"""Which DPO recipe moves what a real model writes toward the theme's preference?

    python -m bench.real_recipes [--model DIR] [--out FILE] RECIPE [RECIPE ...]
    python -m bench.real_recipes --table [--out FILE]     # the docs/models.md table
    RECIPE = PAIRS:LR:EPOCHS:BETA, e.g. example:1e-5:3:0.1 or all:2e-5:2:0.1
    PAIRS  = example (the theme's 8), written (the theme's 42 [[real_model_pairs]]),
             all (both: what notebook 2 trains on for a real model); `-N` keeps the first N
             (all-24: the 8 examples + 16 written), `xR` repeats them R times (allx2)

Measured as the issue-21 judge spec says (plain theme: Flesch reading ease, textstat 0.7.8):
k sampled answers per judge prompt (seeded), before and after; the difference of per-prompt
means with a seeded paired bootstrap 95 % interval over prompts. Also the loss curve, neutral
perplexity before/after, held-out preference accuracy (Wilson interval) and memorisation:
greedy answers to training prompts that open with the chosen text, sampled answers that
contain a 6-word run of a training chosen text, and the chosen texts' per-token NLL.
Results are appended to FILE (the "before" samples are kept there and reused). Minutes per
recipe on a CPU; figures go to docs/models.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "smollm2-recipes.json"
# step 4's outcome sampling (labkit.outcome.sampling_spec): k=8, 40 tokens, seed 0, batch 8
SAMPLING = dict(max_new_tokens=40, do_sample=True, num_samples=8, seed=0, batch_size=8)
BOOTSTRAP, NGRAM = 2000, 6


def reading_ease(text: str) -> float:
    import textstat

    return float(textstat.flesch_reading_ease(text)) if re.search(r"[A-Za-z]", text) else 0.0


def bootstrap_diff(before: list[float], after: list[float], seed: int = 0) -> dict:
    """Mean over prompts of (after - before) and its seeded paired percentile 95 % interval."""
    import numpy as np

    diffs = np.asarray(after) - np.asarray(before)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), (BOOTSTRAP, len(diffs)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    verdict = ("moved toward the preference" if low > 0 else
               "moved the wrong way" if high < 0 else "no detectable change")
    return {"diff": float(diffs.mean()), "ci": [float(low), float(high)], "verdict": verdict}


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 3), round(centre + half, 3)]


def written_pairs(theme) -> list[dict]:
    return [dict(p) for p in theme.real_model_pairs]


def sample(model, tokenizer, prompts) -> list[list[str]]:
    from labkit.config import GenerationSpec
    from labkit.generation import generate

    return generate(model, tokenizer, prompts, GenerationSpec(**SAMPLING))


def training_pairs(kind: str, theme) -> list[dict]:
    match = re.fullmatch(r"([a-z]+)(?:-(\d+))?(?:x(\d+))?", kind)
    kind, first, repeat = match.groups() if match else (kind, None, None)
    if kind == "example":
        pairs = [dict(p) for p in theme.example_pairs]
    elif kind == "written":
        pairs = written_pairs(theme)
    elif kind == "all":
        pairs = [dict(p) for p in theme.example_pairs] + written_pairs(theme)
    else:
        raise ValueError(f"unknown pairs {kind!r}: example, written or all")
    return pairs[:int(first or len(pairs))] * int(repeat or 1)


def ngrams(text: str, n: int = NGRAM) -> set:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def memorisation(model, tokenizer, pairs, theme, samples) -> dict:
    """How much of the training text comes back: verbatim greedy openings, 6-word runs of
    chosen texts in the sampled judge answers, per-token NLL of chosen (train vs held-out)."""
    from labkit.config import GenerationSpec
    from labkit.dpo import sequence_logps
    from labkit.generation import generate

    unique = list({p["prompt"]: p for p in pairs}.values())[:16]
    greedy = generate(model, tokenizer, [p["prompt"] for p in unique],
                      GenerationSpec(max_new_tokens=24))
    opens = sum(g.split()[:8] == p["chosen"].split()[:8] for g, p in zip(greedy, unique))
    runs = set().union(*(ngrams(p["chosen"]) for p in pairs))
    texts = [t for per_prompt in samples for t in per_prompt]
    leaked = sum(bool(ngrams(t) & runs) for t in texts)

    def nll(rows):
        logps = sequence_logps(model, tokenizer, [r["prompt"] for r in rows],
                               [r["chosen"] for r in rows])
        tokens = sum(len(tokenizer(r["chosen"])["input_ids"]) + 1 for r in rows)
        return round(-float(logps.sum()) / tokens, 3)

    return {"greedy_opens_with_chosen": [opens, len(unique)], "greedy_examples": greedy[:3],
            "samples_with_chosen_6gram": [leaked, len(texts)],
            "chosen_nll_train": nll(unique), "chosen_nll_heldout": nll(theme.heldout_pairs)}


def measure(model, reference, tokenizer, theme, samples, pairs, beta) -> dict:
    from labkit import metrics, teaching

    heldout = metrics.heldout_preference_accuracy(model, reference, tokenizer,
                                                  theme.heldout_pairs, beta=beta)
    n = len(theme.heldout_pairs)
    return {"scores": [[round(reading_ease(t), 2) for t in per] for per in samples],
            "perplexity": round(metrics.perplexity(model, tokenizer, teaching.neutral_text()), 3),
            "heldout_accuracy": [heldout, n, wilson(round(heldout * n), n)],
            "memorisation": memorisation(model, tokenizer, pairs, theme, samples),
            "samples": samples}


def before(model_dir: str, out: Path) -> dict:
    """The base model's measures, computed once per output file."""
    results = json.loads(out.read_text()) if out.exists() else {}
    if "before" not in results:
        from labkit.models import load_model
        from labkit.themes import load_theme

        model, tokenizer, _ = load_model(model_dir, quiet=True)
        theme = load_theme("plain")
        samples = sample(model, tokenizer, list(theme.judge.prompts))
        results["before"] = {"sampling": SAMPLING, "prompts": list(theme.judge.prompts),
                             **measure(model, model, tokenizer, theme, samples,
                                       [dict(p) for p in theme.example_pairs], 0.1)}
        out.write_text(json.dumps(results, indent=1))
    return results["before"]


def run_recipe(model_dir: str, recipe: str, base: dict) -> dict:
    import torch
    from datasets import Dataset
    from trl import DPOTrainer

    from bench.recipes import dpo_config
    from labkit.config import TrainingPreset
    from labkit.data import validate_pairs
    from labkit.health import diagnose
    from labkit.models import load_model
    from labkit.themes import load_theme

    kind, lr, epochs, beta = recipe.split(":")
    lr, epochs, beta = float(lr), int(epochs), float(beta)
    torch.manual_seed(42)
    model, tokenizer, _ = load_model(model_dir, quiet=True)
    reference = copy.deepcopy(model).eval()
    theme = load_theme("plain")
    pairs = training_pairs(kind, theme)
    validate_pairs({p["prompt"]: p for p in pairs}.values())  # a repeat is not a problem here
    dataset = Dataset.from_list(pairs)
    preset = TrainingPreset("bench", learning_rate=lr, num_train_epochs=epochs, beta=beta,
                            precompute_ref_log_probs=True)
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = DPOTrainer(model=model, ref_model=None, args=dpo_config(preset, tmp, False),
                             train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    history = trainer.state.log_history
    steps = [e for e in history if "loss" in e and "train_runtime" not in e]
    model = trainer.model.eval()
    samples = sample(model, tokenizer, base["prompts"])
    after = measure(model, reference, tokenizer, theme, samples, pairs, beta)
    after["memorisation_before"] = memorisation(reference, tokenizer, pairs, theme,
                                                base["samples"])
    per_before = [sum(s) / len(s) for s in base["scores"]]
    per_after = [sum(s) / len(s) for s in after["scores"]]
    return {"recipe": recipe, "pairs": len(pairs), "steps": len(steps),
            "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
            "loss": [round(e["loss"], 4) for e in steps],
            "margins": [round(e.get("rewards/margins", float("nan")), 3) for e in steps],
            "verdict": diagnose(history, beta=beta, learning_rate=lr,
                                num_train_epochs=epochs).verdict,
            "reading_ease": [round(sum(per_before) / len(per_before), 2),
                             round(sum(per_after) / len(per_after), 2)],
            "change": bootstrap_diff(per_before, per_after),
            **after, "perplexity": [base["perplexity"], after["perplexity"]]}


def table(results: dict) -> str:
    """The docs/models.md table, one row per recipe in FILE."""
    rows = ["| Recipe (pairs: lr × epochs, β) | Steps | Loss first → last | Reading ease "
            "before → after | Change [95 % CI] | Perplexity (neutral) | Held-out acc. | "
            "Greedy opens with chosen | Samples with a chosen 6-gram | Chosen NLL/token "
            "train (held-out) | Train CPU s |", "|" + " --- |" * 11]
    clips = ["", "| Recipe | Verdict | Change, reading ease clipped to [0, 100] [95 % CI] | "
             "Verdict (clipped) |", "|" + " --- |" * 4]
    for name, r in results.items():
        if name == "before":
            continue
        pairs, lr, epochs, beta = name.split(":")
        m0, m1 = r["memorisation_before"], r["memorisation"]
        (lo, hi), ppl = r["change"]["ci"], r["perplexity"]
        if not isinstance(ppl, list):  # the first runs stored the after value alone
            ppl = [results["before"]["perplexity"], ppl]
        acc, n, (alo, ahi) = r["heldout_accuracy"]
        rows.append(
            f"| {pairs} ({r['pairs']}): {lr} × {epochs}, {beta} | {r['steps']} | "
            f"{r['loss'][0]:.3f} → {r['loss'][-1]:.4f} | {r['reading_ease'][0]:.1f} → "
            f"{r['reading_ease'][1]:.1f} | {r['change']['diff']:+.1f} [{lo:.1f}, {hi:.1f}] | "
            f"{ppl[0]:.2f} → {ppl[1]:.2f} ({100 * (ppl[1] / ppl[0] - 1):+.1f} %) | "
            f"{acc:.2f} of {n} [{alo:.2f}, {ahi:.2f}] | "
            f"{m0['greedy_opens_with_chosen'][0]} → {m1['greedy_opens_with_chosen'][0]} of "
            f"{m1['greedy_opens_with_chosen'][1]} | {m0['samples_with_chosen_6gram'][0]} → "
            f"{m1['samples_with_chosen_6gram'][0]} of {m1['samples_with_chosen_6gram'][1]} | "
            f"{m0['chosen_nll_train']:.2f} → {m1['chosen_nll_train']:.2f} "
            f"({m0['chosen_nll_heldout']:.2f} → {m1['chosen_nll_heldout']:.2f}) | "
            f"{r['train_cpu_s']:.0f} |")
        clipped = bootstrap_diff(*(clipped_means(x["scores"]) for x in (results["before"], r)))
        clips.append(f"| {name} | {r['change']['verdict']} | {clipped['diff']:+.1f} "
                     f"[{clipped['ci'][0]:.1f}, {clipped['ci'][1]:.1f}] | {clipped['verdict']} |")
    return "\n".join(rows + clips)


def clipped_means(scores) -> list[float]:
    """Per-prompt means of reading ease clipped to [0, 100]: one unpunctuated sample can
    score -300 and swing a prompt's mean by 40 points; clipping bounds that."""
    return [sum(min(100.0, max(0.0, x)) for x in per) / len(per) for per in scores]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*")
    parser.add_argument("--model", default=None, help="model dir (default: the SmolLM2 fixture)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--table", action="store_true", help="print FILE as a markdown table")
    parser.add_argument("--sample-seed", type=int, default=SAMPLING["seed"],
                        help="seed of the judged samples (a replicate; use its own --out)")
    args = parser.parse_args(argv)
    SAMPLING["seed"] = args.sample_seed
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0
    import torch

    from labkit.real_model import build_real_model

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model_dir = args.model or str(build_real_model(progress=False))
    base = before(model_dir, args.out)
    scores = [s for per in base["scores"] for s in per]
    print(f"before: reading ease {sum(scores) / len(scores):.2f}, "
          f"perplexity {base['perplexity']}", flush=True)
    for recipe in args.recipes:
        result = run_recipe(model_dir, recipe, base)
        results = json.loads(args.out.read_text())
        results[recipe] = result
        args.out.write_text(json.dumps(results, indent=1))
        brief = {k: result[k] for k in ("recipe", "pairs", "steps", "train_cpu_s",
                                        "reading_ease", "change", "perplexity",
                                        "heldout_accuracy", "verdict")}
        brief["loss"] = result["loss"][:1] + result["loss"][-3:]
        brief["memo"] = {when: {k: v for k, v in result[key].items() if k != "greedy_examples"}
                         for when, key in (("before", "memorisation_before"),
                                           ("after", "memorisation"))}
        print(json.dumps(brief), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
