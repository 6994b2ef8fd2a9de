"""labkit.metrics, and the lab's acceptance test: DPO on the teaching model's preference
pairs measurably moves HELD-OUT concepts towards the preferred (plain) style."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from labkit import teaching
from labkit.config import GenerationSpec
from labkit.generation import generate
from labkit.dpo import completion_batch, sequence_logps
from labkit.metrics import (compare_outputs, heldout_logps, heldout_preference_accuracy, mean_kl,
                            perplexity, preference_accuracy, word_diff)
from tests._runs import fresh_teaching_model, preset_run  # noqa: F401 (fixture)
from tests.conftest import record_figure

SPEC = GenerationSpec(do_sample=True, num_samples=8, seed=0, max_new_tokens=40)


@pytest.fixture
def base(teaching):
    """The conftest's shared (model, tokenizer, info): named so as not to hide the module."""
    return teaching


def flat(samples):
    return [text for per_prompt in samples for text in per_prompt]


@pytest.fixture(scope="module")
def heldout_samples(preset_run):
    """Seeded samples on the held-out prompts, before (the model as the lab loads it) and
    after DPO with the teaching preset. Same GenerationSpec for both."""
    base, base_tokenizer = fresh_teaching_model()
    before = generate(base, base_tokenizer, teaching.HELDOUT_PROMPTS, SPEC)
    after = generate(preset_run.policy, preset_run.tokenizer, teaching.HELDOUT_PROMPTS, SPEC)
    return before, after


# ------------------------------------------------------------------ acceptance
def test_dpo_raises_heldout_plain_style_and_preference_accuracy(preset_run, heldout_samples):
    before, after = (flat(s) for s in heldout_samples)
    assert len(before) == len(after) == len(teaching.HELDOUT_PROMPTS) * SPEC.num_samples
    rate_before, rate_after = teaching.style_rate(before), teaching.style_rate(after)
    heldout_pairs = teaching.make_preference_pairs(8, seed=1, concepts=teaching.HELDOUT_CONCEPTS)
    assert not {p["prompt"] for p in heldout_pairs} & set(teaching.PAIR_PROMPTS)
    accuracy = heldout_preference_accuracy(preset_run.policy, preset_run.ref,
                                           preset_run.tokenizer, heldout_pairs, preset_run.beta)
    figures = (f"style rate {rate_before:.2f} -> {rate_after:.2f} "
               f"({len(before)} samples each), held-out accuracy {accuracy:.2f}")
    print(figures)
    record_figure("acceptance (teaching preset, held-out concepts)", figures)
    assert rate_after - rate_before >= 0.25, figures
    assert accuracy > 0.5, figures


def test_heldout_accuracy_is_zero_without_training(preset_run):
    """Ties are not wins: the untrained reference scores 0, so > 0.5 above is earned."""
    pairs = teaching.make_preference_pairs(8, seed=1, concepts=teaching.HELDOUT_CONCEPTS)
    ref, tokenizer = preset_run.ref, preset_run.tokenizer
    assert heldout_preference_accuracy(ref, copy.deepcopy(ref), tokenizer, pairs) == 0.0
    with pytest.raises(ValueError, match="at least one pair"):
        heldout_preference_accuracy(ref, ref, tokenizer, [])


def test_heldout_logps_are_the_loss_tables_and_give_the_accuracy(preset_run):
    """Notebook 4 computes the four held-out log-prob tensors once: they must be exactly what
    its loss table used to compute (each answer `paired_with` the other, as TRL starts it),
    and the accuracy read from them must be the metric's, margin sign by margin sign."""
    pairs = teaching.make_preference_pairs(6, seed=2, concepts=teaching.HELDOUT_CONCEPTS)
    pairs[0] = {**pairs[0], "prompt": pairs[0]["prompt"].rstrip("\n") + " "}  # ends mid-token
    policy, ref, tokenizer = preset_run.policy, preset_run.ref, preset_run.tokenizer
    logps = heldout_logps(policy, ref, tokenizer, pairs)
    starts = [completion_batch(tokenizer, [p["prompt"]], [p["chosen"]], **paired)["prompt_lengths"]
              for p in pairs[:1] for paired in ({}, {"paired_with": [p["rejected"]]})]
    assert not torch.equal(*starts), "the mid-token prompt must start chosen at another token"
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    for who, model in (("policy", policy), ("ref", ref)):
        for side, texts, others in (("chosen", chosen, rejected), ("rejected", rejected, chosen)):
            assert torch.equal(logps[who, side],
                               sequence_logps(model, tokenizer, prompts, texts, paired_with=others))
    margins = (logps["policy", "chosen"] - logps["ref", "chosen"]) - \
        (logps["policy", "rejected"] - logps["ref", "rejected"])
    expected = float((margins > 0).float().mean())
    assert preference_accuracy(logps, beta=0.1) == expected
    assert heldout_preference_accuracy(policy, ref, tokenizer, pairs, beta=0.1) == expected
    flipped = {(w, s): logps[w, {"chosen": "rejected", "rejected": "chosen"}[s]] for w, s in logps}
    assert preference_accuracy(flipped, beta=0.1) == float((margins < 0).float().mean())
    with pytest.raises(ValueError, match="at least one pair"):
        preference_accuracy({k: v[:0] for k, v in logps.items()})


# ------------------------------------------------------------------ KL from the reference
def test_mean_kl_zero_for_identical_models_positive_after_training(preset_run, heldout_samples):
    prompts = list(teaching.HELDOUT_PROMPTS)
    continuations = [samples[0] for samples in heldout_samples[1]]
    ref, tokenizer = preset_run.ref, preset_run.tokenizer
    same = mean_kl(ref, copy.deepcopy(ref), tokenizer, prompts, continuations)
    trained = mean_kl(preset_run.policy, ref, tokenizer, prompts, continuations)
    record_figure("mean KL(policy || ref) on held-out continuations", f"{trained:.3f}")
    assert abs(same) < 1e-6, same
    assert trained > 0.01, trained


def test_mean_kl_equals_a_hand_computation(preset_run):
    prompt, continuation = teaching.HELDOUT_PROMPTS[0], "Think of a binary tree like a map."
    tokenizer = preset_run.tokenizer
    n_prompt = len(tokenizer(prompt)["input_ids"])
    ids = torch.tensor([tokenizer(prompt + continuation)["input_ids"]])
    with torch.no_grad():
        logp, logq = (torch.log_softmax(m(input_ids=ids).logits[0].float(), -1)
                      for m in (preset_run.policy.eval(), preset_run.ref.eval()))
    preset_run.policy.train()  # as TRL left it
    rows = range(n_prompt - 1, ids.shape[1] - 1)  # distributions over continuation tokens
    hand = sum(float((logp[i].exp() * (logp[i] - logq[i])).sum()) for i in rows) / len(rows)
    got = mean_kl(preset_run.policy, preset_run.ref, tokenizer, [prompt], [continuation])
    assert got == pytest.approx(hand, rel=1e-4, abs=1e-6)
    assert hand > 0


def test_mean_kl_needs_a_continuation(base):
    model, tokenizer, _ = base
    with pytest.raises(ValueError, match="empty"):
        mean_kl(model, model, tokenizer, ["Explain a graph.\n"], [""])


# ------------------------------------------------------------------ perplexity
def test_perplexity_is_finite_above_one_and_equal_for_identical_models(base):
    model, tokenizer, _ = base
    text = "Tell me about cats.\nMany people write stories and songs about it."
    ppl = perplexity(model, tokenizer, text)
    assert math.isfinite(ppl) and ppl > 1.0, ppl
    assert perplexity(copy.deepcopy(model), tokenizer, text) == pytest.approx(ppl, rel=1e-9)
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    hand = math.exp(-float(logps.gather(-1, ids[0, 1:, None]).mean()))
    assert ppl == pytest.approx(hand, rel=1e-5)
    with pytest.raises(ValueError, match="two tokens"):
        perplexity(model, tokenizer, "a")


def test_perplexity_of_a_text_longer_than_the_context(base):
    """teaching.neutral_text() (the lab's alignment-tax text) is ~190 tokens; the teaching
    model has 96 positions. Scored in windows of 96 moved by 48, each token once."""
    model, tokenizer, _ = base
    text = teaching.neutral_text()
    ids = tokenizer(text)["input_ids"]
    window = model.config.n_positions
    assert window == 96 and 144 < len(ids) <= 192, len(ids)
    nll = 0.0
    for begin, first, end in ((0, 1, 96), (48, 96, 144), (96, 144, len(ids))):
        chunk = torch.tensor([ids[begin:min(begin + window, len(ids))]])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=chunk).logits[0].float(), -1)
        nll -= sum(float(logps[j - begin - 1, ids[j]]) for j in range(first, end))
    hand = math.exp(nll / (len(ids) - 1))
    ppl = perplexity(model, tokenizer, text)
    assert math.isfinite(ppl) and ppl > 1.0
    assert ppl == pytest.approx(hand, rel=1e-5)


def test_perplexity_drift_after_training_is_finite(preset_run):
    text = teaching.neutral_text()
    before = perplexity(preset_run.ref, preset_run.tokenizer, text)
    after = perplexity(preset_run.policy, preset_run.tokenizer, text)
    record_figure("neutral-text perplexity (alignment tax)", f"{before:.2f} -> {after:.2f}")
    assert math.isfinite(after) and after > 1.0
    assert after != before  # the weights moved; the text is never trained on


# ------------------------------------------------------------------ before/after diffs
def test_word_diff_marks_added_removed_and_same():
    assert word_diff("the cat sat", "the dog sat") == [
        ("same", "the"), ("removed", "cat"), ("added", "dog"), ("same", "sat")]
    assert word_diff("a b", "a b c d") == [("same", "a b"), ("added", "c d")]
    assert word_diff("x a b", "a b") == [("removed", "x"), ("same", "a b")]
    assert word_diff("same  words\n", "same words") == [("same", "same words")]
    assert word_diff("", "") == []


def test_compare_outputs_rows():
    rows = compare_outputs(["p1", "p2"], ["Formally, a tree denotes X.", "Think of it."],
                           ["Picture a tree like a box.", "Think of it."])
    assert [r["prompt"] for r in rows] == ["p1", "p2"]
    assert [r["changed"] for r in rows] == [True, False]
    assert rows[0]["diff"] == [("removed", "Formally,"), ("added", "Picture"), ("same", "a tree"),
                               ("removed", "denotes X."), ("added", "like a box.")]
    assert rows[1]["diff"] == [("same", "Think of it.")]
    assert rows[0]["before"] == "Formally, a tree denotes X." and rows[0]["after"].endswith("box.")


def test_compare_outputs_on_real_samples(heldout_samples):
    before, after = ([s[0] for s in samples] for samples in heldout_samples)
    rows = compare_outputs(teaching.HELDOUT_PROMPTS, before, after)
    assert len(rows) == len(teaching.HELDOUT_PROMPTS)
    assert any(r["changed"] for r in rows)
    for row in rows:
        assert row["changed"] == (row["before"] != row["after"])
        ops = {op for op, _ in row["diff"]}
        assert ops <= {"same", "added", "removed"}
        assert row["changed"] or ops <= {"same"}


@pytest.mark.parametrize("before, after", [(["a"], ["a", "b"]), (["a", "b"], ["a"]),
                                           (["a", "b", "c"], ["a", "b", "c"])])
def test_compare_outputs_rejects_mismatched_lengths(before, after):
    with pytest.raises(ValueError, match="as many outputs as prompts"):
        compare_outputs(["p1", "p2"], before, after)
