"""The one runtime policy: torch threads, TF32, warning filters, logging and RNG (and two
start-up savings: `skip_iri_grammar` for the processes that read notebooks, `preload_stack`
for those that import torch and transformers).

Library functions (loading, generation, training helpers) never change these for the rest
of the process. Entry points do, explicitly: the notebook session (`labkit.session.start`),
the command lines (`python -m labkit`, `python -m grading`) and the grader's workers. Every
change here is a context manager or returns one, so it can be undone.

The one scoped use inside the library: `generate()` and the teaching-model build run under
`threads(threads_for(model))` and put the count back on return. The teaching model is so
small that intra-op threads only add OpenMP spin-waiting (on a busy machine, many times
slower), and decoding on a fixed thread count makes the grader's regenerated outputs match
the kernel's whatever either process was set to.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import ExitStack, contextmanager

# Known and harmless for this lab, by message; every other warning still shows, including
# the FutureWarning/DeprecationWarning that announce a TRL or transformers API change.
KNOWN_WARNINGS = (
    r".*gradient_checkpointing.*deprecated.*",
    r".*`loss_type=None` was set in the config.*",
    r".*The tokenized prompt is not a prefix.*",
    r".*past_key_values.*",
    r".*`torch_dtype` is deprecated.*",
    r".*Setting `pad_token_id` to `eos_token_id`.*",
    r".*generation flags are not valid.*",
    r".*resume_download.*",
    r".*IProgress not found.*",
    r".*`use_cache=True` is incompatible with gradient checkpointing.*",
    r".*'pin_memory' argument is set as true but no accelerator is found.*",
)
TINY_MODEL_PARAMETERS = 20_000_000  # below this, one CPU thread is fastest (the teaching model)


# ----------------------------------------------------------------------------- threads
@contextmanager
def threads(n: int | None):
    """`n` torch intra-op threads inside the block (None: leave as is); restored after."""
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def threads_for(model) -> int | None:
    """The thread count to run `model` with: 1 for a tiny model on CPU, else None (as set)."""
    if getattr(getattr(model, "device", None), "type", "cpu") != "cpu":
        return None
    return 1 if sum(p.numel() for p in model.parameters()) < TINY_MODEL_PARAMETERS else None


def kernel_wait_policy() -> str:
    """OMP_WAIT_POLICY for the notebook kernels a process starts (`labkit run`'s, the
    grader's sandboxed ones): its own, else PASSIVE. OpenMP's spin-waiting default made CPU
    training 2-25x slower whenever anything else ran on a 2-core machine
    (docs/benchmarks.md)."""
    return os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


# ----------------------------------------------------------------------------- imports
def skip_iri_grammar() -> None:
    """Import jsonschema (nbformat's validator) without its optional `iri` format checker.
    Where `rfc3987-syntax` is installed (jupyter-events asks for `jsonschema[format-nongpl]`),
    importing jsonschema compiles that package's lark grammar: 0.85-1.5 s measured, in every
    process that reads a notebook (each `python -m grading`, `labkit run` and Slurm task),
    for a format nbformat's schemas never use. Call it first thing in such a process; a
    no-op once jsonschema is imported. Later imports of rfc3987_syntax work as usual."""
    import sys

    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules:
        return
    sys.modules["rfc3987_syntax"] = None  # jsonschema suppresses this ImportError
    try:
        import jsonschema  # noqa: F401
    finally:
        del sys.modules["rfc3987_syntax"]


# What every kernel, grader and grading worker imports before its first model: torch,
# transformers (with the model-loading code every notebook reaches) and datasets.
STACK = ("torch", "transformers", "transformers.modeling_utils", "datasets")


def preload_stack() -> None:
    """Import STACK with Python's cyclic garbage collector paused, then freeze what it made.
    These imports create ~400 k objects that live as long as the process, and every full
    collection on the way rescans all made so far: 0.55-0.7 s of a ~3.5 s start measured
    (docs/benchmarks.md), paid by every kernel, grader and worker. `gc.freeze()` moves them to
    the collector's permanent generation, so later collections (TRL's import, training) skip
    them too. Nothing is collected less: module state is never garbage. Call it first thing
    in an entry point; later calls do nothing."""
    import gc
    import importlib
    import sys

    if all(name in sys.modules for name in STACK):
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in STACK:
            importlib.import_module(name)
    finally:
        if was_enabled:
            gc.enable()
    gc.freeze()


# ----------------------------------------------------------------------------- TF32
@contextmanager
def tf32(enabled: bool = True):
    """TF32 matmuls (CUDA fp32 parts of a bf16 run) inside the block; flags restored after."""
    import torch

    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


# ----------------------------------------------------------------------------- warnings, logs
@contextmanager
def known_warnings_ignored():
    """KNOWN_WARNINGS hidden inside the block (and only those); filters restored after."""
    with warnings.catch_warnings():
        for pattern in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


@contextmanager
def progress_bars_off():
    """No progress bars from transformers, datasets or the hub inside the block (each
    library's own switch restored after): the one place they are turned off."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as tf_log

    saved = (tf_log.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(),
             not hub.are_progress_bars_disabled())
    tf_log.disable_progress_bar()
    datasets.disable_progress_bars()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        for was_on, enable in zip(saved, (tf_log.enable_progress_bar,
                                          datasets.enable_progress_bars,
                                          hub.enable_progress_bars)):
            if was_on:
                enable()


@contextmanager
def quiet_libraries():
    """Progress bars and INFO/WARNING logging of transformers/datasets/TRL off inside the
    block (their own settings restored after); tokenizers' fork warning off."""
    import datasets
    import transformers

    tf_log, ds_log = transformers.utils.logging, datasets.utils.logging
    saved = (tf_log.get_verbosity(), ds_log.get_verbosity(),
             {n: logging.getLogger(n).level for n in ("trl", "transformers", "accelerate")},
             logging.getLogger("transformers.training_args").level,
             os.environ.get("TOKENIZERS_PARALLELISM"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tf_log.set_verbosity_error()
    ds_log.set_verbosity_error()
    for name in saved[2]:
        logging.getLogger(name).setLevel(logging.ERROR)
    # TrainingArguments' disable_tqdm=None means "off when transformers logs above WARNING":
    # keep training's own progress bar (notebooks show it; headless runs set disable_tqdm)
    logging.getLogger("transformers.training_args").setLevel(logging.WARNING)
    try:
        with progress_bars_off():
            yield
    finally:
        tf_log.set_verbosity(saved[0])
        ds_log.set_verbosity(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger("transformers.training_args").setLevel(saved[3])
        if saved[4] is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


# ----------------------------------------------------------------------------- RNG
@contextmanager
def seeded(seed: int, device=None):
    """torch's global RNG (CPU, and `device`'s if CUDA) seeded inside the block; the
    previous RNG state is put back after, so nothing outside sees the reseed."""
    import torch

    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- model mode
@contextmanager
def eval_mode(model, tokenizer=None):
    """The model in eval mode (and the tokenizer padding left) inside the block; both put
    back as found afterwards, even when the block raises."""
    was_training = model.training
    side = tokenizer.padding_side if tokenizer is not None else None
    model.eval()
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    try:
        yield model
    finally:
        if tokenizer is not None:
            tokenizer.padding_side = side
        model.train(was_training)


# ----------------------------------------------------------------------------- entry points
def lab_policy(model: str | None = None, device: str = "cpu") -> ExitStack:
    """Everything an entry point sets, entered; `.close()` the result to undo it all:
    known warnings ignored, library logging quiet, TF32 on CUDA, and one thread when the
    configured model is the teaching model on CPU."""
    stack = ExitStack()
    stack.enter_context(known_warnings_ignored())
    stack.enter_context(quiet_libraries())
    if device == "cuda":
        stack.enter_context(tf32(True))
    if model == "teaching" and device == "cpu":
        stack.enter_context(threads(1))
    return stack
