"""labkit.models: offline fallback and strict mode, device/dtype policy, and the GPT-2 code
path on a randomly initialised 124 M GPT-2 with the real tokenizer (slow), including one
real TRL DPOTrainer step."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from labkit import models
from labkit.models import (ModelUnavailableError, load_model, pick_device, pick_dtype,
                           prepare_tokenizer, use_bf16)

GPT2_PARAMETERS = 124_439_808
GPT2_EOS_ID = 50256


def _gpt2_in_local_cache() -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache("gpt2", "config.json"), str)
    except Exception:
        return False


needs_no_cached_gpt2 = pytest.mark.skipif(
    _gpt2_in_local_cache(), reason="GPT-2 is in this machine's Hugging Face cache, so the "
    "offline fallback cannot happen here")


# ------------------------------------------------------------------- fallback and strict
def test_hub_counts_as_unreachable_when_offline():
    assert models.hub_reachable() is False  # conftest sets HF_HUB_OFFLINE=1: no probe


@needs_no_cached_gpt2
def test_gpt2_offline_falls_back_to_teaching_with_a_notice(teaching_dir, capsys):
    model, tokenizer, info = load_model("gpt2")
    out = capsys.readouterr().out
    assert out.count("NOTICE:") == 1, out
    assert "teaching model" in out and "LABKIT_STRICT_MODEL=1" in out
    assert info.requested == "gpt2" and info.resolved == "teaching"
    assert info.fell_back is True and info.is_teaching is True
    assert "cache" in info.reason and "hub" in info.reason and "'gpt2'" in info.reason
    assert info.reason in out
    assert model.config.labkit_teaching["recipe"] in teaching_dir.name
    assert info.to_dict()["fell_back"] is True


@needs_no_cached_gpt2
def test_default_model_is_gpt2_and_quiet_suppresses_the_notice(teaching_dir, capsys):
    _, _, info = load_model(quiet=True)
    assert capsys.readouterr().out == ""
    assert (info.requested, info.resolved, info.fell_back) == ("gpt2", "teaching", True)


def test_labkit_model_env_selects_the_teaching_model(teaching_dir, monkeypatch):
    monkeypatch.setenv("LABKIT_MODEL", "teaching")
    _, _, info = load_model(quiet=True)
    assert (info.requested, info.resolved, info.fell_back, info.reason) == (
        "teaching", "teaching", False, None)


def _assert_explains_how_to_get_gpt2(message: str):
    assert "'gpt2'" in message
    assert "from_pretrained('gpt2')" in message  # the command to fetch it once
    assert "LABKIT_STRICT_MODEL" in message      # and how to get the fallback instead


@needs_no_cached_gpt2
def test_strict_argument_raises_instead_of_falling_back(capsys):
    with pytest.raises(ModelUnavailableError) as err:
        load_model("gpt2", strict=True)
    _assert_explains_how_to_get_gpt2(str(err.value))
    assert "NOTICE" not in capsys.readouterr().out


@needs_no_cached_gpt2
def test_strict_env_raises_and_explicit_false_overrides_it(monkeypatch, teaching_dir):
    monkeypatch.setenv("LABKIT_STRICT_MODEL", "1")
    with pytest.raises(ModelUnavailableError) as err:
        load_model("gpt2")
    _assert_explains_how_to_get_gpt2(str(err.value))
    _, _, info = load_model("gpt2", strict=False, quiet=True)
    assert info.fell_back is True


def test_missing_local_path_falls_back_or_errors_naming_it(tmp_path, teaching_dir, capsys):
    missing = tmp_path / "no" / "such_model"
    _, _, info = load_model(str(missing))
    assert info.fell_back is True and info.resolved == "teaching"
    assert str(missing) in info.reason and "NOTICE" in capsys.readouterr().out
    with pytest.raises(ModelUnavailableError) as err:
        load_model(str(missing), strict=True)
    assert str(missing) in str(err.value)
    assert "does not exist" in str(err.value)


def test_missing_hub_id_blames_the_cache_and_hub_not_a_path():
    with pytest.raises(ModelUnavailableError) as err:
        load_model("someone/no-such-model", strict=True)
    assert "not in the local Hugging Face cache" in str(err.value)
    assert "does not exist" not in str(err.value)


def test_broken_local_directory_errors_clearly(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError) as err:
        load_model(str(tmp_path), strict=True)
    assert f"could not load the local directory {str(tmp_path)!r}" in str(err.value)


# ----------------------------------------------------------------------- device & dtype
def test_cpu_means_fp32_and_no_bf16():
    assert use_bf16("cpu") is False
    assert pick_dtype("cpu") is torch.float32


def test_pick_device():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            pick_device("cuda")


def test_model_kind_reads_the_architecture_and_the_chat_template(teaching):
    from transformers import LlamaConfig, LlamaForCausalLM

    from labkit.models import model_kind

    model, tokenizer, info = teaching
    assert info.kind == "teaching" and model_kind(model, tokenizer, "teaching") == "teaching"
    assert model_kind(model, tokenizer, "/some/copy") == "gpt2"  # GPT-2 architecture
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    chat = copy.deepcopy(tokenizer)
    assert model_kind(llama, chat, "x") == "causal-lm"  # no chat template: unknown family
    chat.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert model_kind(llama, chat, "x") == "llama-instruct"


def test_teaching_model_loads_on_cpu_in_fp32_in_eval_mode(teaching):
    model, tokenizer, info = teaching
    assert model.device.type == "cpu" and model.dtype is torch.float32
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert not model.training
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.gpu
def test_cuda_policy(teaching_dir):
    model, _, info = load_model("teaching", device="cuda", quiet=True)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert model.device.type == "cuda" and model.dtype is expected
    assert use_bf16("cuda") is torch.cuda.is_bf16_supported()
    assert info.device == "cuda"


# ------------------------------------------------------------ GPT-2: tokenizer and model
def test_gpt2_tokenizer_is_the_real_one(gpt2_tokenizer):
    assert len(gpt2_tokenizer) == 50257
    assert gpt2_tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert gpt2_tokenizer.eos_token_id == GPT2_EOS_ID


def test_prepare_tokenizer_gives_gpt2_a_pad_token(labkit_cache, gpt2_tokenizer):
    from bench.gpt2_shaped import gpt2_tokenizer as build

    raw = build()
    assert raw.pad_token is None  # GPT-2 has none
    prepared = prepare_tokenizer(raw)
    assert prepared.pad_token == prepared.eos_token == "<|endoftext|>"
    assert prepared.pad_token_id == GPT2_EOS_ID and prepared.padding_side == "left"


@pytest.mark.slow
def test_random_gpt2_loads_like_gpt2(gpt2, gpt2_dir, figure):
    model, tokenizer, info = gpt2
    n = sum(p.numel() for p in model.parameters())
    figure("GPT-2-shaped model parameters", f"{n:,}")
    assert n == info.n_parameters == GPT2_PARAMETERS
    assert (info.requested, info.resolved) == (str(gpt2_dir), str(gpt2_dir))
    assert info.fell_back is False and info.is_teaching is False and info.reason is None
    assert info.kind == "gpt2" and tokenizer.chat_template is None  # a base model
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.pad_token_id == GPT2_EOS_ID and tokenizer.padding_side == "left"
    assert model.config.pad_token_id == GPT2_EOS_ID
    assert model.generation_config.pad_token_id == GPT2_EOS_ID
    assert model.dtype is torch.float32 and model.device.type == "cpu"
    assert (info.dtype, info.device) == ("float32", "cpu")
    assert not model.training


@pytest.mark.slow
def test_one_real_dpo_step_on_gpt2_shaped_model(gpt2_dir, tmp_path, figure):
    """TRL's DPOTrainer on the sandbox code path: with the reference equal to the policy,
    the first step's loss is exactly ln 2."""
    from trl import DPOConfig, DPOTrainer

    from labkit.data import validate_pairs
    from labkit.teaching import make_preference_pairs

    model, tokenizer, info = load_model(str(gpt2_dir), quiet=True)  # TRL mutates it: own copy
    torch.manual_seed(0)
    pairs = validate_pairs(make_preference_pairs(4), min_pairs=4, tokenizer=tokenizer,
                           max_length=64)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                     bf16=False, logging_steps=1, report_to=[],
                     save_strategy="no", max_length=64, activation_checkpointing=False)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses, trainer.state.log_history
    figure("GPT-2-shaped DPO step-1 loss", f"{losses[0]:.6f} (ln 2 = {math.log(2):.6f})")
    assert math.isfinite(losses[0])
    assert abs(losses[0] - math.log(2)) < 1e-4, losses[0]
    assert trainer.state.global_step == 1
