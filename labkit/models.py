"""Load (model, tokenizer) the same way on a GPU sandbox and on an offline CPU machine.

The device/dtype policy lives here and nowhere else: CUDA -> bf16 when the card supports it
(with tf32 matmuls), otherwise fp32; CPU -> fp32. `load_model("gpt2")` tries the local
Hugging Face cache, then the hub (only when it is reachable, so offline costs no retries),
then falls back to the teaching model with one clear notice.
"""
from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import LabConfig, env_flag

TEACHING = "teaching"
HUB_HOST = "huggingface.co"


class ModelUnavailableError(RuntimeError):
    """The requested model could not be loaded and fallback is off (strict mode)."""


@dataclass
class ModelInfo:
    """What was actually loaded, recorded in every artifact."""

    requested: str
    resolved: str
    device: str
    dtype: str
    fell_back: bool
    reason: str | None
    n_parameters: int
    is_teaching: bool
    kind: str = "causal-lm"  # one of KINDS: picks the training preset (config.preset_for)

    def to_dict(self) -> dict:
        return asdict(self)


KINDS = ("teaching", "gpt2", "llama-instruct", "causal-lm")


def model_kind(model, tokenizer, resolved: str) -> str:
    """The family that decides the preset and the pad token: the teaching model, GPT-2 (a
    base model: no chat template, EOS doubles as pad), a Llama-family instruct model such as
    SmolLM2 (has a chat template; its pad is already its end-of-turn EOS), or another LM."""
    if resolved == TEACHING:
        return "teaching"
    model_type = getattr(model.config, "model_type", "")
    if model_type == "gpt2":
        return "gpt2"
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if model_type in {"llama", "mistral", "qwen2", "qwen3"} and has_template:
        return "llama-instruct"
    return "causal-lm"


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA GPU")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def pick_dtype(device: str):
    """bf16 on GPUs that support it, fp32 everywhere else. (TF32 for the fp32 parts is the
    entry point's choice: labkit.runtime.tf32.)"""
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def use_bf16(device: str) -> bool:
    """The value to pass as `DPOConfig(bf16=...)`: TRL defaults to True and refuses it on CPU."""
    import torch

    return device == "cuda" and torch.cuda.is_bf16_supported()


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick TCP probe, so that an offline machine does not sit through ~25 s of retries."""
    if env_flag("HF_HUB_OFFLINE"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def prepare_tokenizer(tokenizer):
    """GPT-2 has no pad token: use EOS (an instruct model such as SmolLM2 ships one, its
    end-of-turn `<|im_end|>` = its EOS, and keeps it). Left padding, so batched generation
    continues each prompt from its real last token (TRL pads its own training batches)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _load_from(source: str, device: str, dtype, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def _looks_like_path(name: str) -> bool:
    """A hub id is 'name' or 'owner/name'; anything else with a path shape is a path."""
    return (Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
            or "\\" in name)


def _try_load(name: str, device: str, dtype):
    """Local files first (a directory or the HF cache), then the hub if it answers.
    Returns (model, tokenizer, None) or (None, None, reason)."""
    try:
        return (*_load_from(name, device, dtype, local_only=True), None)
    except (OSError, ValueError) as exc:
        local_error = exc
    if Path(name).exists():
        return None, None, f"could not load the local directory {name!r}: {local_error}"
    if _looks_like_path(name):  # not a hub id: say so, rather than blame the cache/hub
        return None, None, f"the local directory {name!r} does not exist"
    if not hub_reachable():
        return None, None, (f"{name!r} is not in the local Hugging Face cache and the hub "
                            f"({HUB_HOST}) cannot be reached")
    try:
        return (*_load_from(name, device, dtype, local_only=False), None)
    except (OSError, ValueError) as exc:
        return None, None, f"downloading {name!r} from the hub failed: {exc}"


def load_model(name: str | None = None, *, strict: bool | None = None,
               device: str | None = None, quiet: bool = False):
    """Load a causal LM and its tokenizer -> (model, tokenizer, ModelInfo).

    `name`: 'gpt2' (default, from `LABKIT_MODEL`), 'teaching', a hub id or a local path.
    If it cannot be loaded, fall back to the teaching model with a notice, or raise
    `ModelUnavailableError` when `strict` (or `LABKIT_STRICT_MODEL=1`).
    """
    from . import teaching

    cfg = LabConfig.from_env(model=name)
    strict = cfg.strict_model if strict is None else strict
    device = pick_device(device or cfg.device)
    dtype = pick_dtype(device)
    requested, reason = cfg.model, None
    if requested != TEACHING:
        model, tokenizer, reason = _try_load(requested, device, dtype)
        if model is not None:
            return model, tokenizer, _info(requested, requested, device, model, tokenizer,
                                           None, False)
        if strict:
            raise ModelUnavailableError(
                f"Could not load {requested!r}: {reason}.\n"
                f"To get GPT-2, run once on a machine with internet access:\n"
                f"    python -c \"from transformers import AutoModelForCausalLM, AutoTokenizer; "
                f"AutoModelForCausalLM.from_pretrained('{requested}'); "
                f"AutoTokenizer.from_pretrained('{requested}')\"\n"
                f"(or copy its Hugging Face cache here), or unset LABKIT_STRICT_MODEL to use "
                f"labkit's offline teaching model instead.")
        if not quiet:
            print(f"NOTICE: {reason}.\n        Using labkit's offline teaching model instead "
                  f"(a tiny GPT-2 trained to explain things plainly or in jargon). "
                  f"Set LABKIT_STRICT_MODEL=1 to make this an error.", flush=True)
    path = teaching.ensure_teaching_model(progress=not quiet)
    model, tokenizer = _load_from(str(path), device, dtype, local_only=True)
    return model, tokenizer, _info(requested, TEACHING, device, model, tokenizer, reason,
                                   requested != TEACHING)


def _info(requested, resolved, device, model, tokenizer, reason, fell_back) -> ModelInfo:
    return ModelInfo(requested=requested, resolved=resolved, device=device,
                     dtype=str(model.dtype).replace("torch.", ""), fell_back=fell_back,
                     reason=reason, n_parameters=sum(p.numel() for p in model.parameters()),
                     is_teaching=resolved == TEACHING,
                     kind=model_kind(model, tokenizer, resolved))
