"""grading.checks.verify: recorded greedy outputs checked by one teacher-forced forward pass, so that
outputs made on another device or dtype (bf16 on a GPU) grade the same on a CPU in fp32."""
from __future__ import annotations

import pytest
import torch

from labkit import teaching
from labkit.config import GenerationSpec
from labkit.generation import generate
from grading.checks.verify import verify_outputs
from tests.conftest import record_figure

PROMPTS = list(teaching.HELDOUT_PROMPTS[:6]) + [teaching.NEUTRAL_PROMPTS[0]]
SPEC = GenerationSpec(max_new_tokens=40)


@pytest.fixture(scope="module")
def recorded(teaching):
    model, tokenizer, _ = teaching
    texts, ids = generate(model, tokenizer, PROMPTS, SPEC, return_ids=True)
    return texts, ids


def test_ids_come_with_unchanged_texts(teaching, recorded):
    model, tokenizer, _ = teaching
    texts, ids = recorded
    assert texts == generate(model, tokenizer, PROMPTS, SPEC)
    eos = tokenizer.eos_token_id
    for text, row in zip(texts, ids):
        assert tokenizer.decode(row, skip_special_tokens=True) == text
        assert row[-1] == eos or len(row) == SPEC.max_new_tokens
        assert eos not in row[:-1]  # cut after the first EOS: no padding kept
    sampled, sampled_ids = generate(model, tokenizer, PROMPTS[:2], GenerationSpec(
        do_sample=True, num_samples=3, max_new_tokens=8), return_ids=True)
    assert [len(s) for s in sampled] == [len(s) for s in sampled_ids] == [3, 3]


def test_recorded_outputs_verify(teaching, recorded):
    model, tokenizer, _ = teaching
    texts, ids = recorded
    result = verify_outputs(model, tokenizer, PROMPTS, texts, SPEC, token_ids=ids)
    assert result.ok, result
    assert result.max_gap == 0.0 and result.n_tokens == sum(len(r) for r in ids)


def test_outputs_made_in_bf16_verify_in_fp32(teaching, recorded):
    model, tokenizer, _ = teaching
    with torch.autocast("cpu", dtype=torch.bfloat16):
        texts, ids = generate(model, tokenizer, PROMPTS, SPEC, return_ids=True)
    differ = sum(a != b for a, b in zip(texts, recorded[0]))
    result = verify_outputs(model, tokenizer, PROMPTS, texts, SPEC, token_ids=ids)
    record_figure("bf16-made outputs verified in fp32", f"{result.ok}; {differ}/{len(PROMPTS)} "
                  f"texts differ from fp32 regeneration; largest gap {result.max_gap:.3f}")
    assert result.ok, result
    assert model.dtype == torch.float32


def test_a_hand_edited_output_fails_naming_the_prompt_and_token(teaching, recorded):
    model, tokenizer, _ = teaching
    texts, ids = recorded
    edited = [list(row) for row in ids]
    edited[2][4] = tokenizer(" banana", add_special_tokens=False)["input_ids"][0]
    result = verify_outputs(model, tokenizer, PROMPTS, token_ids=edited, spec=SPEC)
    assert not result.ok and len(result.mismatches) == 1
    message = str(result.mismatches[0])
    assert message.startswith("prompt 3 ('Explain dynamic programming.'), output token 5:")
    assert "top choice" in message and "logits higher" in message


def test_text_only_fallback_re_tokenizes(teaching, recorded):
    model, tokenizer, _ = teaching
    texts, _ = recorded
    result = verify_outputs(model, tokenizer, PROMPTS, texts, SPEC)
    assert result.ok and result.from_text, result
    edited = list(texts)
    edited[0] = edited[0] + " and more words the model never wrote"
    bad = verify_outputs(model, tokenizer, PROMPTS, edited, SPEC)
    assert not bad.ok and bad.mismatches[0].prompt_index == 0, bad


def test_the_stop_must_match_the_spec(teaching, recorded):
    model, tokenizer, _ = teaching
    texts, ids = recorded
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    cut = [list(row) for row in ids]
    cut[longest] = [t for t in cut[longest] if t != tokenizer.eos_token_id][:10]
    result = verify_outputs(model, tokenizer, PROMPTS, token_ids=cut, spec=SPEC)
    assert [str(m) for m in result.mismatches] == [
        f"prompt {longest + 1} ({PROMPTS[longest].strip()!r}), stop: 10 tokens without EOS: "
        "greedy decoding stops at EOS or after exactly max_new_tokens=40"]
    with pytest.raises(ValueError, match="only greedy"):
        verify_outputs(model, tokenizer, PROMPTS, texts,
                       GenerationSpec(do_sample=True, num_samples=2))
    with pytest.raises(ValueError, match="7 prompts but 6"):
        verify_outputs(model, tokenizer, PROMPTS, token_ids=ids[:6], spec=SPEC)
