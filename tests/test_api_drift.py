"""API-drift guard: every TRL/transformers argument the notebooks and labkit pass must exist
in the installed versions, so an upgrade that would break a notebook fails here, with the
name of the argument, instead of in front of a student."""
from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _calls_in_notebooks(name: str) -> list[tuple[str, set[str]]]:
    """(notebook, keyword names) of every call to `name` in the notebooks' code cells."""
    found = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            tree = ast.parse("\n".join(l for l in cell.source.splitlines()
                                       if not l.lstrip().startswith(("%", "!"))))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name:
                    found.append((path.name, {k.arg for k in node.keywords if k.arg}))
    return found


def _dpo_config_fields() -> set[str]:
    from trl import DPOConfig

    return {f.name for f in dataclasses.fields(DPOConfig)}


def test_notebooks_call_dpoconfig_with_existing_fields():
    calls = _calls_in_notebooks("DPOConfig")
    assert calls, "notebook 3 should build a DPOConfig"
    fields = _dpo_config_fields()
    for notebook, keywords in calls:
        missing = keywords - fields
        assert not missing, f"{notebook}: DPOConfig has no field(s) {sorted(missing)} in this TRL"


def test_notebooks_call_dpotrainer_with_existing_parameters():
    from trl import DPOTrainer

    params = set(inspect.signature(DPOTrainer.__init__).parameters)
    calls = _calls_in_notebooks("DPOTrainer")
    assert calls
    for notebook, keywords in calls:
        missing = keywords - params
        assert not missing, f"{notebook}: DPOTrainer() has no parameter(s) {sorted(missing)}"
    assert "tokenizer" not in params, "TRL renamed tokenizer= to processing_class="


def test_labkit_presets_map_onto_dpoconfig():
    from labkit.config import PRESETS

    fields = _dpo_config_fields()
    for preset in PRESETS.values():
        missing = set(preset.dpo_kwargs()) - fields
        assert not missing, f"preset {preset.name}: DPOConfig lacks {sorted(missing)}"


@pytest.mark.parametrize("name", ["learning_rate", "logging_steps", "bf16", "beta", "max_length"])
def test_defaults_the_lab_overrides_still_exist(name):
    assert name in _dpo_config_fields()


def test_trainer_internals_labkit_reads():
    """labkit.dpo.crosscheck_with_trl uses these DPOTrainer attributes and the tokenized
    dataset columns; health/runner read these log_history keys."""
    src = inspect.getsource(__import__("trl").DPOTrainer)
    for needle in ("self.beta", "self._metrics", '"prompt_ids"', '"chosen_ids"',
                   '"rewards/chosen"', '"rewards/margins"', '"rewards/accuracies"'):
        assert needle in src, f"DPOTrainer no longer has {needle}: update labkit.dpo/health"


def test_transformers_apis_labkit_uses():
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast, TrainerCallback

    assert "vocab" in inspect.signature(GPT2TokenizerFast.__init__).parameters
    assert "merges" in inspect.signature(GPT2TokenizerFast.__init__).parameters
    for hook in ("on_train_begin", "on_epoch_end", "on_step_end"):
        assert hasattr(TrainerCallback, hook)
    assert hasattr(AutoModelForCausalLM, "from_pretrained")
