"""Which machine and software produced a result: the results file is named after it.

Timings only compare within one machine, so the file name says what it was
(`cpu-2core-amd-epyc`, `gpu-nvidia-h200`) and the file records library versions too.
"""
from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from importlib import metadata

PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "tokenizers", "numpy")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_short(name: str) -> str:
    """'AMD EPYC 7B13 64-Core Processor' -> 'amd-epyc-7b13'; marketing words dropped."""
    drop = r"\(r\)|\(tm\)|cpu|processor|\d+-core|@.*$"
    words = re.sub(drop, " ", name, flags=re.IGNORECASE).split()
    return _slug(" ".join(words[:3])) or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install should not stop a CPU benchmark
        return None


def machine_slug(gpu: str | None = None) -> str:
    gpu = gpu if gpu is not None else gpu_name()
    if gpu:
        return "gpu-" + _slug(gpu)
    return f"cpu-{usable_cores()}core-{cpu_short(cpu_model())}"


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")


def describe(tag: str | None = None) -> dict:
    """The machine, plus the threading environment: on a shared CPU, OpenMP's spin-waiting
    (OMP_WAIT_POLICY) changes timings several-fold, so it is part of the result's identity."""
    import torch

    gpu = gpu_name()
    slug = machine_slug(gpu) + (f"-{_slug(tag)}" if tag else "")
    return {"slug": slug, "cpu": cpu_model(), "cores": usable_cores(), "gpu": gpu,
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
            "thread_env": {k: os.environ.get(k) for k in THREAD_ENV}}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
