"""The first cell of every notebook: quiet known-harmless library noise, seed, and print
an environment report (versions, device, model in use) so every screenshot a student
sends says what it ran on."""
from __future__ import annotations

import logging
import os
import platform
import warnings

from .config import LabConfig

# Known and harmless for this lab; everything else still shows.
HARMLESS_WARNINGS = (
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


def quiet_libraries() -> None:
    """Hide known-harmless warnings and progress bars from transformers/datasets/TRL."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    for name in ("trl", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # TrainingArguments' disable_tqdm=None means "off when transformers logs above WARNING":
    # keep training's progress bar in the notebooks
    logging.getLogger("transformers.training_args").setLevel(logging.WARNING)


def environment_report(cfg: LabConfig) -> dict:
    import torch

    from .artifacts import library_versions
    from .models import pick_device

    device = pick_device(cfg.device)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {"python": platform.python_version(), **library_versions(),
            "device": device + (f" ({gpu})" if gpu else ""), "model": cfg.model,
            "run_dir": str(cfg.run_dir), "seed": cfg.seed}


def start(step: int) -> LabConfig:
    """Call at the top of notebook `step`: returns the LabConfig every later cell uses."""
    import torch

    quiet_libraries()
    cfg = LabConfig.from_env()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    report = environment_report(cfg)
    print(f"DPO Lab - step {step}")
    for key, value in report.items():
        print(f"  {key:<13}{value}")
    return cfg
