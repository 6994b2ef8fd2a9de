"""The first cell of every notebook: apply the lab's runtime policy (labkit.runtime), seed,
and print an environment report (versions, device, model and theme in use) so every
screenshot a student sends says what it ran on."""
from __future__ import annotations

import os
import platform

from .config import LabConfig

_POLICY = None  # the ExitStack of the policy in force; re-running start() replaces it
HUB_BARS = "HF_HUB_DISABLE_PROGRESS_BARS"  # the hub reads it at each download


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
    """Call at the top of notebook `step`: returns the LabConfig every later cell uses.
    This cell is the notebook's entry point: the runtime policy (known warnings hidden,
    library logging quiet, TF32 on CUDA, one thread for the teaching model on CPU) and the
    global seed are set here, for the whole kernel; `stop()` undoes the policy."""
    global _POLICY
    from . import runtime

    runtime.preload_stack()  # the kernel's heavy imports, ~0.6 s cheaper (see there)
    import torch

    from .models import pick_device

    cfg = LabConfig.from_env()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    stop()
    _POLICY = runtime.lab_policy(cfg.model, pick_device(cfg.device))
    if HUB_BARS not in os.environ:  # set here, so removed again by stop()
        os.environ[HUB_BARS] = "1"
        _POLICY.callback(os.environ.pop, HUB_BARS, None)
    torch.manual_seed(cfg.seed)
    report = environment_report(cfg)
    print(f"DPO Lab - step {step}")
    for key, value in {**report, "theme": _theme_line()}.items():
        print(f"  {key:<13}{value}")
    return cfg


def _theme_line() -> str:
    """Which preference this run teaches (LABKIT_THEME, else the package's default)."""
    from .themes import THEMES_DIR, load_theme

    theme = load_theme()
    own = theme.path.resolve().parent != THEMES_DIR.resolve()
    return f"{theme.name} - {theme.title}" + (f" ({theme.path})" if own else "")


def stop() -> None:
    """Undo the runtime policy `start` set (threads, TF32, warning filters, logging)."""
    global _POLICY
    if _POLICY is not None:
        _POLICY.close()
        _POLICY = None
