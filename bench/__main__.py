"""`python -m bench`: run the measurements, write bench/results/<machine>.json, render docs.

    python -m bench                      # everything this machine can do (about 15 min on 2 cores)
    python -m bench --quick --skip-lab --skip-gpt2 --reps 1 --out /tmp/b.json   # smoke, seconds
    python -m bench --gpu-only           # CUDA part alone -> bench/results/gpu-<name>.json

OMP_WAIT_POLICY defaults to PASSIVE here (see below); it is recorded in the results.

A section that fails records its error and leaves its figures null: the other sections
still run and the file is still written, so one broken piece never hides the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads OpenMP. With the default (spin-waiting) policy, two torch threads on
# a shared 2-core machine spin against other jobs: the same 2 s training took 2 to 88 s.
# PASSIVE measures the code, not the neighbours; on an idle machine both policies agree.
# `OMP_WAIT_POLICY=ACTIVE python -m bench --tag omp-active` measures the default instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import DOCS_PATH, RESULTS_DIR, SCHEMA_VERSION, TARGETS, machine, report  # noqa: E402

GPU_NOTE = ("GPU: random-weight GPT2Config() 124M in bf16 (labkit.models.load_model picks "
            "bf16 on CUDA); each repetition reloads the model; one untimed warm-up run first.")
NOTES = [
    "Training overhead: both variants pass ref_model=copy.deepcopy(model), so the ratio is "
    "labkit's plumbing (load_model, validate_pairs, preset, use_bf16, diagnose) alone.",
    "GPT-2-shaped runs: random weights with GPT-2's real config and tokenizer; wall time "
    "excludes model load, includes DPOTrainer construction (where precompute does its "
    "reference pass). cpu_seconds (all threads) is given because the machine is shared.",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (figures "
                   "are not comparable: fewer epochs, no warm-up)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per variant (median)")
    p.add_argument("--skip-lab", action="store_true", help="skip `python -m labkit run`")
    p.add_argument("--skip-grading", action="store_true", help="skip grading throughput "
                   "(executes the solution notebooks 5 times)")
    p.add_argument("--skip-gpt2", action="store_true", help="skip the 124M GPT-2-shaped runs")
    p.add_argument("--gpu-only", action="store_true", help="only the CUDA section")
    p.add_argument("--gpu-peak-tflops", type=float, help="the card's dense bf16 peak, "
                   "when it is not in bench.gpu.PEAK_BF16")
    p.add_argument("--tag", help="suffix for the results name, e.g. omp-passive when run "
                   "with OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/<machine>.json)")
    p.add_argument("--docs", type=Path, help="markdown to (re)write from the results dir "
                   "(default docs/benchmarks.md, only when --out is in bench/results)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be >= 1")
    return args


def skeleton(args, argv) -> dict:
    keys = ("training_overhead_ratio", "sample_callback_overhead_ratio",
            "generation_batched_speedup", "generation_outputs_identical",
            "gpt2_generation_batched_speedup", "gpt2_generation_outputs_identical",
            "gpt2_cpu_train_seconds", "gpt2_cpu_peak_rss_mb", "gpt2_precompute_speedup",
            "gpt2_faster_mode", "lab_seconds", "grading", "gpu", "verify_teaching_speedup",
            "verify_smollm2_speedup")
    return {"schema_version": SCHEMA_VERSION, "machine": machine.describe(args.tag),
            "versions": machine.versions(), "started_at": machine.now(), "finished_at": None,
            "command": " ".join(["python -m bench", *argv]), "quick": args.quick,
            "reps": args.reps, "targets": {k: list(v) for k, v in TARGETS.items()},
            **{k: None for k in keys}, "sections": {}, "errors": {},
            "notes": [GPU_NOTE] if args.gpu_only else [*NOTES, GPU_NOTE]}


@contextlib.contextmanager
def section(result: dict, name: str):
    """Run one section; on failure keep the traceback and carry on with the next."""
    log(f"[bench] {name}")
    try:
        yield
    except Exception:  # noqa: BLE001 - recorded in the results, shown in the log
        result["errors"][name] = traceback.format_exc()[-4000:]
        log(f"[bench] {name} FAILED:\n{result['errors'][name]}")


def run_overhead(result, args):
    from . import overhead

    with contextlib.redirect_stdout(io.StringIO()):  # TRL prints every logged step
        ov = overhead.measure(args.reps, args.quick, log)
    result["sections"]["overhead"] = ov
    result["training_overhead_ratio"] = ov["ratio"]
    result["sample_callback_overhead_ratio"] = ov["sample_callback_ratio"]


def run_generation(result, args, name, model_name, prefix):
    from labkit import teaching
    from labkit.models import load_model

    from . import generation

    model, tokenizer, _ = load_model(model_name, quiet=True)
    gen = generation.measure(model, tokenizer, teaching.HELDOUT_PROMPTS, args.reps, log=log)
    result["sections"][name] = gen
    result[f"{prefix}generation_batched_speedup"] = gen["speedup"]
    result[f"{prefix}generation_outputs_identical"] = gen["outputs_identical"]


def run_verify(result, args, name, model_name):
    from labkit import teaching
    from labkit.models import load_model

    from . import verify

    model, tokenizer, _ = load_model(model_name, quiet=True)
    prompts = list(teaching.HELDOUT_PROMPTS[:6]) + [teaching.NEUTRAL_PROMPTS[0]]
    result["sections"][name] = verify.measure(model, tokenizer, prompts, args.reps, log=log)
    result[f"{name}_speedup"] = result["sections"][name]["speedup"]


def run_gpt2_cpu(result, args):
    from . import gpt2_cpu

    g2 = gpt2_cpu.measure(args.reps, args.quick, log)
    result["sections"]["gpt2_cpu"] = g2
    result.update(gpt2_cpu_train_seconds=g2["train_seconds"],
                  gpt2_cpu_peak_rss_mb=g2["peak_rss_mb"],
                  gpt2_precompute_speedup=g2["precompute_speedup"],
                  gpt2_faster_mode=g2["faster_mode"])


def run_lab(result, args):
    from . import lab

    measured = lab.measure(args.reps, log)
    result["sections"]["lab"] = measured
    result["lab_seconds"] = (None if measured["total"] is None else
                             {"total": measured["total"],
                              "steps": measured["steps"]})


def run_grading(result, args):
    from . import grading

    measured = grading.measure(2, log)
    result["sections"]["grading"] = measured
    result["grading"] = {k: measured[k] for k in ("submissions_per_minute",
                                                  "grader_over_bare")}


def run_all(args, argv) -> dict:
    result = skeleton(args, argv)
    if not args.gpu_only:
        with section(result, "overhead"):
            run_overhead(result, args)
        with section(result, "generation_teaching"):
            run_generation(result, args, "generation_teaching", "teaching", "")
        with section(result, "verify_teaching"):
            run_verify(result, args, "verify_teaching", "teaching")
        from labkit import real_model

        if real_model.is_built(real_model.default_dir()) and not args.quick:
            with section(result, "verify_smollm2"):  # only when `labkit real-model` ran
                run_verify(result, args, "verify_smollm2", str(real_model.default_dir()))
        if args.skip_gpt2:
            result["sections"]["gpt2_cpu"] = {"reason": "skipped (--skip-gpt2)"}
        else:
            with section(result, "gpt2_cpu"):
                run_gpt2_cpu(result, args)
            if not args.quick:
                with section(result, "generation_gpt2"):
                    from .gpt2_cpu import model_dir

                    run_generation(result, args, "generation_gpt2", str(model_dir()), "gpt2_")
        if args.skip_lab:
            result["sections"]["lab"] = {"total": None, "reason": "skipped (--skip-lab)"}
        else:
            with section(result, "lab"):
                run_lab(result, args)
        if args.skip_grading or args.quick:
            result["sections"]["grading"] = {"reason": "skipped (--skip-grading or --quick)"}
        else:
            with section(result, "grading"):
                run_grading(result, args)
    with section(result, "gpu"):
        from . import gpu

        with contextlib.redirect_stdout(io.StringIO()):  # TRL prints every logged step
            result["gpu"] = gpu.measure(args.reps, args.quick, args.gpu_peak_tflops, log)
        if result["gpu"] is None:
            result["sections"]["gpu"] = {"reason": "torch.cuda.is_available() is False"}
    result["finished_at"] = machine.now()
    return result


def write_json(data: dict, path: Path) -> None:
    """Atomic: a crash mid-write never leaves a half results file."""
    from labkit.artifacts import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, default=str) + "\n")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    result = run_all(args, argv)
    out = args.out or RESULTS_DIR / f"{result['machine']['slug']}.json"
    write_json(result, out)
    log(f"[bench] results -> {out}")
    docs = args.docs or (DOCS_PATH if out.resolve().parent == RESULTS_DIR else None)
    if docs:
        source = out.resolve().parent if args.docs else RESULTS_DIR
        log(f"[bench] docs -> {report.write_docs(source, docs)}")
    summary = {k: result[k] for k in ("training_overhead_ratio", "generation_batched_speedup",
                                      "generation_outputs_identical", "gpt2_cpu_train_seconds",
                                      "gpt2_cpu_peak_rss_mb", "gpt2_faster_mode")}
    summary["lab_seconds"] = (result["lab_seconds"] or {}).get("total")
    summary["gpu"] = None if result["gpu"] is None else result["gpu"]["train_seconds"]
    print(json.dumps(summary))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
