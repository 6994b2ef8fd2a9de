"""One GPT-2-shaped DPO training run, timed: the unit that sections 3 (CPU) and 5 (GPU) repeat.

Run as `python -m bench.gpt2_train --model-dir D --mode M` it prints one JSON line, so the
CPU section can start a fresh process per repetition: peak RSS (`ru_maxrss`) is then this
run's alone, and no allocator or cache state leaks from one repetition into the next.

Reference modes (`--mode`):
- `deepcopy`: `ref_model=copy.deepcopy(model)`, a second 124M model run forward every step;
- `precompute`: `precompute_ref_log_probs=True, ref_model=None`: TRL runs the untouched
  policy once over the data in `__init__` and keeps only the log-probs. With precompute on,
  TRL 1.16 does not reload the reference from `model.config._name_or_path` at all
  (`dpo_trainer.py`, "if ref_model is None: ... precompute_ref_log_probs ... ref_model =
  None"), so a model loaded from a local path works; `first_loss` ~ ln 2 in the output is
  the check that the reference really was the initial policy.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace

MODES = ("deepcopy", "precompute")


def make_pairs(n: int) -> list[dict]:
    """`n` teaching pairs; past the 20 pair concepts, more seeds give new wordings."""
    from labkit import teaching

    pairs, seed = [], 0
    while len(pairs) < n:
        pairs += teaching.make_preference_pairs(min(8, n - len(pairs)), seed=seed)
        seed += 1
    return pairs


def train_once(model, tokenizer, device: str, mode: str, pairs: int = 8, epochs: int | None = None,
               batch_size: int | None = None, max_length: int | None = None) -> dict:
    """Trainer construction + train on an already loaded model (which it trains in place)."""
    import torch
    from datasets import Dataset
    from trl import DPOTrainer

    from labkit.config import preset_for
    from labkit.models import use_bf16

    from .recipes import dpo_config

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    preset = replace(preset_for(False), precompute_ref_log_probs=(mode == "precompute"))
    changes = {k: v for k, v in (("num_train_epochs", epochs), ("max_length", max_length),
                                 ("per_device_train_batch_size", batch_size)) if v}
    dataset = Dataset.from_list(make_pairs(pairs))
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer = DPOTrainer(model=model, args=dpo_config(preset, out, use_bf16(device), **changes),
                             ref_model=copy.deepcopy(model) if mode == "deepcopy" else None,
                             train_dataset=dataset, processing_class=tokenizer)
        built = time.perf_counter()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        end, cpu_end = time.perf_counter(), time.process_time()
    steps = [e for e in trainer.state.log_history if "loss" in e]
    result = {"mode": mode, "pairs": pairs, "steps": len(steps),
              "epochs": changes.get("num_train_epochs", preset.num_train_epochs),
              "batch_size": changes.get("per_device_train_batch_size",
                                        preset.per_device_train_batch_size),
              "max_length": changes.get("max_length", preset.max_length),
              "seconds": end - start, "construct_seconds": built - start,
              "train_seconds": end - built,
              # CPU seconds of all this process's threads: on a shared machine, the figure
              # that does not depend on what else is running
              "cpu_seconds": cpu_end - cpu_start,
              "num_tokens": int(steps[-1]["num_tokens"]) if steps else 0,
              "first_loss": steps[0]["loss"] if steps else None,
              "final_loss": steps[-1]["loss"] if steps else None,
              "ref_model_kept": trainer.ref_model is not None}
    if cuda:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    del trainer
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from labkit.models import load_model

    load_start = time.perf_counter()
    model, tokenizer, info = load_model(args.model_dir, quiet=True)
    load_seconds = time.perf_counter() - load_start
    result = train_once(model, tokenizer, info.device, args.mode, args.pairs, args.epochs)
    import torch

    result.update(load_seconds=load_seconds, n_parameters=info.n_parameters,
                  torch_threads=torch.get_num_threads(),
                  peak_rss_mb=peak_rss_mb())
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
