"""The offline teaching model (issue #2 acceptance): built in about a minute, tiny, both
styles before DPO, an accurate style judge, pair and held-out concepts disjoint, and the
same loading path as GPT-2."""
from __future__ import annotations

import os
from collections import Counter

import pytest

import labkit.teaching as tk
from labkit.config import GenerationSpec
from labkit.generation import generate

HELDOUT_SPEC = GenerationSpec(do_sample=True, num_samples=8, seed=0, max_new_tokens=40)


def test_build_is_recorded_and_complete(teaching_build, figure):
    """The build's time is a figure (speed claims live in `python -m bench`), never an
    assertion: on a busy machine the same build takes twice as long."""
    assert tk.is_built(teaching_build.path)
    if teaching_build.seconds is not None:
        figure("teaching model build", f"{teaching_build.seconds:.1f} s wall, "
               f"{teaching_build.cpu_seconds:.1f} s CPU on {os.cpu_count()} cores")


def test_under_five_million_parameters(teaching, figure):
    model, _, info = teaching
    n = sum(p.numel() for p in model.parameters())
    figure("teaching model parameters", f"{n:,}")
    assert n == info.n_parameters
    assert n < 5_000_000, f"{n:,} parameters"
    assert info.is_teaching and info.resolved == "teaching" and not info.fell_back
    assert info.device == "cpu" and info.dtype == "float32"


def test_judge_labels_the_corpus_styles(figure):
    docs = [d for d in tk.build_corpus() if d["style"] in ("plain", "jargon")]
    correct = sum(tk.judge_style(d["response"]) == d["style"] for d in docs)
    accuracy = correct / len(docs)
    figure("judge accuracy on the corpus", f"{accuracy:.1%} of {len(docs)}")
    assert accuracy >= 0.95, f"judge_style got {correct}/{len(docs)} = {accuracy:.1%}"
    assert {d["style"] for d in docs} == {"plain", "jargon"}


def test_judge_is_not_fooled_by_unrelated_text():
    assert tk.judge_style("") == "unclear"
    assert tk.judge_style("Formally, the construct denotes a morphism.") == "jargon"
    assert tk.judge_style("Think of it like a box for your stuff.") == "plain"
    assert tk.style_rate(["Just like a recipe.", "Formally rigorous."]) == 0.5
    with pytest.raises(ValueError):
        tk.style_rate([])


def test_corpus_is_half_plain_half_jargon():
    counts = Counter(d["style"] for d in tk.build_corpus())
    assert counts["plain"] == counts["jargon"] > 0


def test_before_dpo_heldout_samples_show_both_styles(teaching, figure):
    model, tokenizer, _ = teaching
    outputs = generate(model, tokenizer, tk.HELDOUT_PROMPTS, HELDOUT_SPEC)
    assert len(outputs) == len(tk.HELDOUT_PROMPTS)
    samples = [text for per_prompt in outputs for text in per_prompt]
    counts = Counter(tk.judge_style(text) for text in samples)
    plain, jargon = counts["plain"] / len(samples), counts["jargon"] / len(samples)
    split = (f"plain {plain:.1%}, jargon {jargon:.1%}, unclear "
             f"{counts['unclear'] / len(samples):.1%} of {len(samples)} samples")
    figure("held-out style split before DPO", split)
    assert 0.30 <= plain <= 0.70, split
    assert 0.30 <= jargon <= 0.70, split


def test_pair_and_heldout_concepts_are_disjoint():
    assert not set(tk.PAIR_CONCEPTS) & set(tk.HELDOUT_CONCEPTS)
    assert not set(tk.PAIR_PROMPTS) & set(tk.HELDOUT_PROMPTS)
    assert len(set(tk.HELDOUT_PROMPTS)) == len(tk.HELDOUT_CONCEPTS)
    # the pretraining corpus covers both, in both styles
    covered = {(d["prompt"], d["style"]) for d in tk.build_corpus()}
    for prompt in tk.PAIR_PROMPTS + tk.HELDOUT_PROMPTS:
        assert {(prompt, "plain"), (prompt, "jargon")} <= covered, prompt


@pytest.mark.parametrize("seed", range(10))
def test_preference_pairs_never_use_heldout_prompts(seed):
    heldout = set(tk.HELDOUT_PROMPTS)
    for n in (1, 8, len(tk.PAIR_CONCEPTS)):
        pairs = tk.make_preference_pairs(n, seed=seed)
        assert len(pairs) == n
        prompts = [p["prompt"] for p in pairs]
        assert len(set(prompts)) == n
        assert not set(prompts) & heldout
        assert set(prompts) <= set(tk.PAIR_PROMPTS)
        for pair in pairs:
            assert tk.judge_style(pair["chosen"]) == "plain"
            assert tk.judge_style(pair["rejected"]) == "jargon"


def test_too_many_pairs_is_an_error():
    with pytest.raises(ValueError, match="at most"):
        tk.make_preference_pairs(len(tk.PAIR_CONCEPTS) + 1)


def _responses():
    rng_pairs = tk.make_preference_pairs(len(tk.PAIR_CONCEPTS), seed=1)
    return [text for p in rng_pairs for text in (p["chosen"], p["rejected"])]


def test_prompt_tokens_are_a_prefix_of_prompt_plus_response(teaching):
    """TRL splits prompt and completion at the prompt's tokens: they must not merge."""
    _, tokenizer, _ = teaching
    prompts = tk.PAIR_PROMPTS + tk.HELDOUT_PROMPTS + tk.NEUTRAL_PROMPTS
    for prompt in prompts:
        prompt_ids = tokenizer(prompt)["input_ids"]
        for response in _responses()[:6] + [" " + _responses()[0]]:
            for tail in ("", tk.EOS):
                full = tokenizer(prompt + response + tail)["input_ids"]
                assert full[:len(prompt_ids)] == prompt_ids, (prompt, response)


def test_prefix_check_can_fail(teaching):
    """Companion: a prompt ending in a space merges with the response's first word."""
    _, tokenizer, _ = teaching
    prompt, response = "Explain recursion. ", "Think of recursion like a recipe."
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert tokenizer(prompt + response)["input_ids"][:len(prompt_ids)] != prompt_ids


def test_loads_through_the_auto_classes(teaching_dir):
    from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel,
                              PreTrainedTokenizerBase)

    model = AutoModelForCausalLM.from_pretrained(teaching_dir)
    tokenizer = AutoTokenizer.from_pretrained(teaching_dir)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.model_type == "gpt2"
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    assert len(tokenizer) == model.config.vocab_size == tk.VOCAB_SIZE
    assert tokenizer.eos_token == tk.EOS
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.labkit_teaching["recipe"] == tk.recipe_fingerprint()
    assert model.config.n_positions == tk.MODEL_SHAPE["n_positions"]


def test_ensure_reuses_the_cached_build(teaching_dir):
    weights = teaching_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert tk.ensure_teaching_model(progress=False) == teaching_dir
    assert tk.default_dir() == teaching_dir
    assert tk.recipe_fingerprint() in teaching_dir.name
    assert weights.stat().st_mtime_ns == stamp


def test_build_is_deterministic(teaching, teaching_tokenizer):
    """The corpus and the tokenizer come out identical every time (the model itself is
    built only once per run: too slow to build twice)."""
    first, second = tk.build_corpus(), tk.build_corpus()
    assert first == second
    assert tk.build_corpus(seed=1) != first
    fresh_a = tk.train_tokenizer(first)
    fresh_b = tk.train_tokenizer(second)
    assert fresh_a.get_vocab() == fresh_b.get_vocab()
    assert fresh_a.backend_tokenizer.to_str() == fresh_b.backend_tokenizer.to_str()
    # ... and the built model's saved tokenizer is that same tokenizer
    _, saved, _ = teaching
    assert saved.get_vocab() == fresh_a.get_vocab() == teaching_tokenizer.get_vocab()
    text = tk.HELDOUT_PROMPTS[0] + first[0]["response"]
    assert saved(text)["input_ids"] == fresh_a(text)["input_ids"]
    assert tk.recipe_fingerprint() == tk.recipe_fingerprint()
