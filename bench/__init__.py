"""bench: side-by-side timings of the DPO lab, written to `bench/results/<machine>.json`.

`python -m bench` measures what a student pays for labkit's plumbing (vs bare TRL), batched
vs one-by-one generation, GPT-2-shaped DPO training on CPU (time, peak memory, reference
mode), the whole headless lab, and (on CUDA) bf16 throughput; `docs/benchmarks.md` is
rendered from the results files. One module per measurement, so each can be read (and run)
on its own; see `python -m bench --help`.
"""
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SCHEMA_VERSION = 1

# The targets the lab is held to; `met` in the results is computed against these.
TARGETS = {
    "training_overhead_ratio": ("<=", 1.05),
    "generation_batched_speedup": (">=", 3.0),
    "gpt2_cpu_train_seconds": ("<=", 60.0),
    "lab_seconds": ("<=", 120.0),
    "grader_over_bare": ("<=", 1.3),
    "nb3_cache_speedup": (">=", 2.0),        # notebook-3-only, warm cache ÷ no cache
    "full_cache_ratio": (">=", 0.95),        # full submissions: the cache costs nothing
}
