"""labkit.config: environment overrides, GenerationSpec round-trips and validation, presets."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from labkit.config import (DEFAULT_MODEL, DEFAULT_RUN_DIR, PRESETS, GenerationSpec, LabConfig,
                           TrainingPreset, preset_for)


# ----------------------------------------------------------------------------- LabConfig
def test_from_env_defaults_without_labkit_variables():
    cfg = LabConfig.from_env()
    assert cfg.model == DEFAULT_MODEL == "gpt2"
    assert cfg.run_dir == DEFAULT_RUN_DIR == Path("runs/default")
    assert cfg.strict_model is False
    assert cfg.device == "auto"


def test_from_env_reads_model_run_dir_and_strictness(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_MODEL", "teaching")
    monkeypatch.setenv("LABKIT_RUN_DIR", str(tmp_path / "run7"))
    monkeypatch.setenv("LABKIT_STRICT_MODEL", "1")
    cfg = LabConfig.from_env()
    assert cfg.model == "teaching"
    assert cfg.run_dir == tmp_path / "run7"
    assert isinstance(cfg.run_dir, Path)
    assert cfg.strict_model is True


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), (" on ", True),
    ("0", False), ("false", False), ("no", False), ("", False), ("strict", False),
])
def test_strict_flag_parsing(monkeypatch, value, expected):
    monkeypatch.setenv("LABKIT_STRICT_MODEL", value)
    assert LabConfig.from_env().strict_model is expected


def test_empty_env_values_mean_default(monkeypatch):
    monkeypatch.setenv("LABKIT_MODEL", "")
    monkeypatch.setenv("LABKIT_RUN_DIR", "")
    cfg = LabConfig.from_env()
    assert cfg.model == DEFAULT_MODEL
    assert cfg.run_dir == DEFAULT_RUN_DIR


def test_explicit_overrides_beat_env_and_none_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_MODEL", "teaching")
    monkeypatch.setenv("LABKIT_STRICT_MODEL", "1")
    cfg = LabConfig.from_env(model="some/hub-id", strict_model=False, run_dir=tmp_path)
    assert (cfg.model, cfg.strict_model, cfg.run_dir) == ("some/hub-id", False, tmp_path)
    # None means "not given": the environment still applies
    assert LabConfig.from_env(model=None).model == "teaching"


def test_labconfig_rejects_unknown_device():
    with pytest.raises(ValueError, match="device"):
        LabConfig(device="tpu")
    assert LabConfig(run_dir="x/y").run_dir == Path("x/y")


# ------------------------------------------------------------------------ GenerationSpec
def test_generation_spec_defaults_are_greedy_single_sample():
    spec = GenerationSpec()
    assert spec.do_sample is False and spec.num_samples == 1
    assert spec.max_new_tokens >= 1 and spec.batch_size >= 1


def test_generation_spec_round_trips_through_dict_and_json():
    spec = GenerationSpec(max_new_tokens=17, do_sample=True, num_samples=3, temperature=0.7,
                          top_p=0.9, seed=5, batch_size=2)
    data = spec.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(GenerationSpec)}
    assert GenerationSpec.from_dict(data) == spec
    assert GenerationSpec.from_dict(json.loads(json.dumps(data))) == spec
    assert GenerationSpec.from_dict({}) == GenerationSpec()


def test_generation_spec_from_dict_rejects_unknown_fields():
    data = GenerationSpec().to_dict() | {"max_tokens": 20, "beam": 2}
    with pytest.raises(ValueError) as err:
        GenerationSpec.from_dict(data)
    assert "max_tokens" in str(err.value) and "beam" in str(err.value)


def test_generation_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GenerationSpec().max_new_tokens = 3


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_samples=2), "do_sample"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_samples=0, do_sample=True), "num_samples"),
    (dict(batch_size=0), "batch_size"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
])
def test_generation_spec_validation(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GenerationSpec(**kwargs)


def test_generation_spec_from_dict_validates_values_too():
    with pytest.raises(ValueError, match="do_sample"):
        GenerationSpec.from_dict({"num_samples": 4})


# ------------------------------------------------------------------------------- presets
def test_preset_for_reads_the_model_kind_and_device_from_model_info():
    from labkit.models import KINDS, ModelInfo

    def info(kind, device):
        return ModelInfo("m", "m", device, "float32", False, None, 1, kind == "teaching", kind)

    assert set(KINDS) == set(PRESETS)
    assert preset_for(info("teaching", "cpu")) is PRESETS["teaching"]
    assert preset_for(info("llama-instruct", "cuda")) is PRESETS["llama-instruct"]
    smol_cpu = preset_for(info("llama-instruct", "cpu"))
    assert smol_cpu.precompute_ref_log_probs and smol_cpu.name == "llama-instruct"
    # calibrated on SmolLM2 (docs/models.md): gentler than GPT-2's, which memorised the pairs
    assert smol_cpu.learning_rate * smol_cpu.num_train_epochs < (
        PRESETS["gpt2"].learning_rate * PRESETS["gpt2"].num_train_epochs)
    assert preset_for(info("causal-lm", "cuda")) is PRESETS["gpt2"]
    with pytest.raises(ValueError, match="no preset for model kind 'bert'"):
        preset_for(info("bert", "cpu"))


def test_presets_exist_for_both_model_families():
    assert preset_for(True) is PRESETS["teaching"]
    assert preset_for(False, "cuda") is PRESETS["gpt2"]
    on_cpu = preset_for(False, "cpu")  # bench: precomputed reference log-probs are faster there
    assert on_cpu.precompute_ref_log_probs and not PRESETS["gpt2"].precompute_ref_log_probs
    assert on_cpu.learning_rate == PRESETS["gpt2"].learning_rate
    for preset in PRESETS.values():
        # TRL's defaults are wrong for a small lab: these must be set explicitly
        assert preset.logging_steps == 1
        assert preset.learning_rate > 1e-6
        assert "name" not in preset.dpo_kwargs()


def test_preset_kwargs_are_real_dpoconfig_fields(tmp_path):
    from trl import DPOConfig

    for preset in PRESETS.values():
        cfg = DPOConfig(output_dir=str(tmp_path), bf16=False, report_to=[],
                        **preset.dpo_kwargs())
        for key, value in preset.dpo_kwargs().items():
            assert getattr(cfg, key) == value, (preset.name, key)


@pytest.mark.parametrize("kwargs", [dict(learning_rate=-1.0, num_train_epochs=1),
                                    dict(learning_rate=1e-4, num_train_epochs=0),
                                    dict(learning_rate=1e-4, num_train_epochs=1, beta=0.0)])
def test_invalid_presets_are_rejected(kwargs):
    with pytest.raises(ValueError, match="invalid preset"):
        TrainingPreset("bad", **kwargs)
