"""labkit.generation: batching does not change greedy outputs (left padding), seeded
sampling is reproducible, and the output shape follows the GenerationSpec."""
from __future__ import annotations

import pytest

from labkit.config import GenerationSpec
from labkit.generation import generate

# Different token lengths, so a batch really pads
PROMPTS = [
    "Explain recursion.\n",
    "Explain a database index.\n",
    "Tell me about the moon.\n",
    "Explain memory allocation.\n",
    "Explain garbage collection in a small program.\n",
]
GREEDY = GenerationSpec(max_new_tokens=20, batch_size=8)


def _lengths(tokenizer, prompts):
    return [len(tokenizer(p)["input_ids"]) for p in prompts]


def _right_padded_by_hand(model, tokenizer, prompts, max_new_tokens):
    """What a naive batch does: right padding (the tokenizer's side is restored after)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id,
                                 temperature=None, top_p=None, top_k=None)
    finally:
        tokenizer.padding_side = side
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_batched_greedy_equals_one_prompt_at_a_time(teaching):
    model, tokenizer, _ = teaching
    assert len(set(_lengths(tokenizer, PROMPTS))) > 1, "prompts must differ in length"
    batched = generate(model, tokenizer, PROMPTS, GREEDY)
    one_by_one = [generate(model, tokenizer, [p], GREEDY)[0] for p in PROMPTS]
    assert batched == one_by_one
    assert all(isinstance(text, str) and text.strip() for text in batched)
    # the batch size only changes speed
    assert generate(model, tokenizer, PROMPTS, GenerationSpec(max_new_tokens=20,
                                                              batch_size=2)) == batched


def test_right_padding_would_change_outputs(teaching):
    """Companion showing the test above can fail: right-padding the same batch by hand
    changes the output of at least one (shorter, padded) prompt."""
    model, tokenizer, _ = teaching
    one_by_one = [generate(model, tokenizer, [p], GREEDY)[0] for p in PROMPTS]
    right = _right_padded_by_hand(model, tokenizer, PROMPTS, GREEDY.max_new_tokens)
    assert tokenizer.padding_side == "left"
    differ = [p for p, a, b in zip(PROMPTS, right, one_by_one) if a != b]
    assert differ, "right padding gave the same outputs: the batching test proves nothing"
    longest = max(PROMPTS, key=lambda p: len(tokenizer(p)["input_ids"]))
    assert longest not in differ  # the unpadded prompt is unaffected


def test_generation_restores_model_and_tokenizer_state(teaching):
    model, tokenizer, _ = teaching
    tokenizer.padding_side = "right"
    model.train()
    try:
        generate(model, tokenizer, PROMPTS[:2], GenerationSpec(max_new_tokens=3))
        assert tokenizer.padding_side == "right"
        assert model.training
    finally:
        tokenizer.padding_side = "left"
        model.eval()


def test_seeded_sampling_is_reproducible(teaching):
    model, tokenizer, _ = teaching
    spec = GenerationSpec(do_sample=True, num_samples=4, seed=123, max_new_tokens=20)
    first = generate(model, tokenizer, PROMPTS[:3], spec)
    second = generate(model, tokenizer, PROMPTS[:3], spec)
    assert first == second
    other_seed = generate(model, tokenizer, PROMPTS[:3],
                          GenerationSpec(do_sample=True, num_samples=4, seed=124,
                                         max_new_tokens=20))
    assert other_seed != first
    # it really samples: the samples for one prompt are not all the same
    assert any(len(set(samples)) > 1 for samples in first)


@pytest.mark.parametrize("n", [2, 5])
def test_num_samples_returns_a_list_of_n_per_prompt(teaching, n):
    model, tokenizer, _ = teaching
    spec = GenerationSpec(do_sample=True, num_samples=n, seed=0, max_new_tokens=5,
                          batch_size=2)
    out = generate(model, tokenizer, PROMPTS[:3], spec)
    assert len(out) == 3
    assert all(isinstance(samples, list) and len(samples) == n for samples in out)
    assert all(isinstance(text, str) for samples in out for text in samples)


def test_single_sample_returns_flat_strings(teaching):
    model, tokenizer, _ = teaching
    out = generate(model, tokenizer, PROMPTS[:2], GenerationSpec(max_new_tokens=5))
    assert len(out) == 2 and all(isinstance(text, str) for text in out)
    # only new tokens come back, never the prompt
    assert not any(text.startswith(p.strip()) for p, text in zip(PROMPTS, out))


@pytest.mark.parametrize("prompts", [[], [""], ["Explain recursion.\n", ""], [None]])
def test_generate_rejects_empty_prompts(teaching, prompts):
    model, tokenizer, _ = teaching
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, tokenizer, prompts, GREEDY)


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_samples=3), "do_sample"),                 # several greedy samples are equal
    (dict(do_sample=True, temperature=0), "temperature"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(batch_size=0), "batch_size"),
    (dict(do_sample=True, num_samples=0), "num_samples"),
])
def test_generation_spec_validation(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GenerationSpec(**kwargs)


# --------------------------------------------------- the GPT-2 code path (random weights)
@pytest.mark.slow
def test_gpt2_shaped_batched_greedy_equals_one_by_one(gpt2):
    model, tokenizer, _ = gpt2
    prompts = PROMPTS[:3]
    assert len(set(_lengths(tokenizer, prompts))) > 1
    spec = GenerationSpec(max_new_tokens=6, batch_size=4)
    batched = generate(model, tokenizer, prompts, spec)
    one_by_one = [generate(model, tokenizer, [p], spec)[0] for p in prompts]
    assert batched == one_by_one
    assert tokenizer.padding_side == "left"
