"""labkit.dpo: the from-scratch DPO maths, checked by hand on small tensors, and against TRL
itself on a real DPOTrainer run of the teaching model (CPU)."""
from __future__ import annotations

import copy
import math
import tempfile

import pytest
import torch

from labkit import teaching
from labkit.dpo import (LN2, _completion_start, crosscheck_with_trl, dpo_gradient_weight,
                        dpo_loss, ipo_loss, kto_loss, orpo_odds_ratio_loss, sequence_logps)
from tests._runs import dpo_args, fresh_teaching_model, preset_run  # noqa: F401 (fixture)
from tests.conftest import record_figure

TOL = 1e-4


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# ------------------------------------------------------------------ crosscheck against TRL
def test_crosscheck_matches_trl_at_first_step_and_after_training(preset_run):
    check = crosscheck_with_trl(preset_run.trainer, n_pairs=8)
    diffs = {}
    for section in ("first_step", "current"):
        row = check[section]
        for key in ("loss", "rewards_chosen", "rewards_rejected"):
            diffs[f"{section}/{key}"] = abs(row[f"labkit_{key}"] - row[f"trl_{key}"])
    record_figure("crosscheck |labkit - TRL| (max)", f"{max(diffs.values()):.2e}")
    assert max(diffs.values()) < TOL, f"labkit and TRL disagree: {diffs}\n{check}"
    first, current = check["first_step"], check["current"]
    assert first["trl_loss"] == pytest.approx(LN2, abs=1e-6), first
    assert current["n_pairs"] == 8
    # not a vacuous agreement: the trained policy really is away from the reference
    assert current["trl_loss"] < LN2 - 0.3, current
    assert current["trl_rewards_chosen"] > current["trl_rewards_rejected"] + 1.0, current


def test_crosscheck_exposes_a_wrong_loss(preset_run):
    """A student loss with chosen and rejected swapped must not pass the crosscheck."""
    def swapped(pc, pr, rc, rr, beta):
        return dpo_loss(pr, pc, rr, rc, beta=beta)

    current = crosscheck_with_trl(preset_run.trainer, loss_fn=swapped)["current"]
    assert abs(current["labkit_loss"] - current["trl_loss"]) > 1.0, current


def test_crosscheck_leaves_trl_state_as_it_was(preset_run):
    """TRL's pending eval metrics (here from a user's own eval-mode compute_loss call) and
    the policy's train/eval mode are left untouched."""
    trainer = preset_run.trainer
    rows = trainer.train_dataset.select(range(2))
    batch = trainer.data_collator([rows[i] for i in range(len(rows))])
    metrics = trainer._metrics["eval"]
    was_training = trainer.model.training
    try:
        trainer.model.eval()
        with torch.no_grad():
            trainer.compute_loss(trainer.model, batch)
        trainer.model.train(was_training)
        snapshot = {key: list(values) for key, values in metrics.items()}
        assert snapshot["rewards/chosen"], "TRL recorded no eval metric to preserve"
        crosscheck_with_trl(trainer)
        assert {key: list(values) for key, values in metrics.items()} == snapshot
        assert trainer.model.training == was_training
    finally:
        metrics.clear()
        trainer.model.train(was_training)


def test_crosscheck_needs_a_separate_reference(preset_run):
    trainer = copy.copy(preset_run.trainer)  # shallow: only ref_model is replaced
    trainer.ref_model = None
    with pytest.raises(ValueError, match="ref_model"):
        crosscheck_with_trl(trainer)


# ------------------------------------------------------------------ sequence log-probs
def _hand_logps(model, tokenizer, prompt, completion_with_eos, start):
    ids = tokenizer(prompt + completion_with_eos)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logps = torch.log_softmax(logits, dim=-1)
    return sum(float(logps[i - 1, ids[i]]) for i in range(start, len(ids))), ids


def test_sequence_logps_equals_a_hand_computation(teaching):
    model, tokenizer, _ = teaching
    pair = teaching_pairs()[0]
    eos = tokenizer.eos_token
    prompt_ids = tokenizer(pair["prompt"])["input_ids"]
    expected, ids = _hand_logps(model, tokenizer, pair["prompt"], pair["chosen"] + eos,
                                start=len(prompt_ids))
    assert ids[:len(prompt_ids)] == prompt_ids  # the prompt ends on "\n": a token boundary
    assert ids[-1] == tokenizer.eos_token_id  # EOS is part of the scored completion
    got = sequence_logps(model, tokenizer, [pair["prompt"]], [pair["chosen"]])
    assert got.shape == (1,) and got.dtype == torch.float32
    assert float(got[0]) == pytest.approx(expected, abs=1e-4)
    assert expected < -1.0  # a real sum over many tokens, not a single one


def test_sequence_logps_batched_equals_one_at_a_time(teaching):
    """Right padding in a batch must not change any sequence's log-prob."""
    model, tokenizer, _ = teaching
    pairs = teaching_pairs()[:4]
    prompts = [p["prompt"] for p in pairs]
    texts = [pairs[0]["chosen"], pairs[1]["rejected"], "Simply put.", pairs[3]["chosen"]]
    batched = sequence_logps(model, tokenizer, prompts, texts, batch_size=8)
    single = sequence_logps(model, tokenizer, prompts, texts, batch_size=1)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)
    assert len(set(len(tokenizer(p + c)["input_ids"]) for p, c in zip(prompts, texts))) > 1


def test_sequence_logps_adds_eos_once(teaching):
    model, tokenizer, _ = teaching
    pair = teaching_pairs()[1]
    prompt, completion, eos = pair["prompt"], pair["chosen"], tokenizer.eos_token
    with_eos = sequence_logps(model, tokenizer, [prompt] * 2, [completion, completion + eos])
    without = sequence_logps(model, tokenizer, [prompt], [completion], add_eos=False)
    assert float(with_eos[0]) == pytest.approx(float(with_eos[1]), abs=1e-5)
    # the difference is exactly log p(EOS | prompt + completion)
    ids = tokenizer(prompt + completion)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    log_p_eos = float(torch.log_softmax(logits, -1)[tokenizer.eos_token_id])
    assert float(with_eos[0] - without[0]) == pytest.approx(log_p_eos, abs=1e-4)
    assert log_p_eos < 0


def test_sequence_logps_rejects_mismatched_lengths(teaching):
    model, tokenizer, _ = teaching
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        sequence_logps(model, tokenizer, ["a\n", "b\n"], ["c"])
    with pytest.raises(ValueError, match="paired"):
        sequence_logps(model, tokenizer, ["a\n"], ["c"], paired_with=["d", "e"])


# Prompts that end in a space: the space merges with the completion's first word (" put",
# " like"), except in the last pair's rejected, which starts with a newline.
SPACE_PAIRS = [
    {"prompt": "Explain recursion. Simply ",
     "chosen": "put, recursion is like a recipe you follow step by step.",
     "rejected": "put, recursion constitutes an abstraction."},
    {"prompt": "Explain caching. Think of caching ",
     "chosen": "like a box you put your stuff in.", "rejected": "as a parametric mechanism."},
    {"prompt": "Explain a stack. Simply ", "chosen": "put, it is easy.",
     "rejected": "\nFormally, a stack is a construct."},
]


@pytest.fixture(scope="module")
def space_trainer(teaching_dir):
    """A DPOTrainer (not trained) that tokenized SPACE_PAIRS its own way."""
    from datasets import Dataset
    from trl import DPOTrainer

    model, tokenizer = fresh_teaching_model()
    with tempfile.TemporaryDirectory() as out:
        return DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=dpo_args(out),
                          train_dataset=Dataset.from_list(SPACE_PAIRS),
                          processing_class=tokenizer)


def test_prompt_ending_in_a_space_starts_where_trl_starts(space_trainer):
    """Completion start = longest common token prefix: same token counts as TRL's own
    tokenization, and the prompt's trailing space token is left out."""
    tokenizer, eos = space_trainer.processing_class, space_trainer.processing_class.eos_token
    tokenized = space_trainer.train_dataset
    for pair, row in zip(SPACE_PAIRS[:2], tokenized):
        prompt_ids = tokenizer(pair["prompt"])["input_ids"]
        for key in ("chosen", "rejected"):
            full = tokenizer(pair["prompt"] + pair[key] + eos)["input_ids"]
            start = _completion_start(prompt_ids, full)
            assert start == len(prompt_ids) - 1, (pair, key)  # the space merged
            assert tokenizer.decode(full[start]).startswith(" "), tokenizer.decode(full[start])
            assert len(full) - start == len(row[f"{key}_ids"]), (pair, key)
            assert start == len(row["prompt_ids"])


def test_sequence_logps_equal_trl_per_sequence_on_space_prompts(space_trainer):
    """Per-sequence log-probs from TRL's own forward (compute_ref_log_probs) on its own
    tokenization. When only one completion merges with the space (last pair), TRL starts
    both at the shorter prefix: `paired_with` reproduces that."""
    trainer, tokenizer = space_trainer, space_trainer.processing_class
    rows = trainer.train_dataset
    batch = trainer.data_collator([rows[i] for i in range(len(rows))])
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    prompts = [p["prompt"] for p in SPACE_PAIRS]
    chosen = [p["chosen"] for p in SPACE_PAIRS]
    rejected = [p["rejected"] for p in SPACE_PAIRS]
    ours_chosen = sequence_logps(trainer.ref_model, tokenizer, prompts, chosen,
                                 paired_with=rejected)
    ours_rejected = sequence_logps(trainer.ref_model, tokenizer, prompts, rejected,
                                   paired_with=chosen)
    torch.testing.assert_close(ours_chosen, trl_chosen.float().cpu(), atol=TOL, rtol=0)
    torch.testing.assert_close(ours_rejected, trl_rejected.float().cpu(), atol=TOL, rtol=0)
    # unpaired scoring agrees where both completions merge alike (the first two pairs) ...
    unpaired = sequence_logps(trainer.ref_model, tokenizer, prompts, rejected)
    torch.testing.assert_close(unpaired[:2], trl_rejected[:2].float().cpu(), atol=TOL, rtol=0)
    # ... and the last pair's rejected then gains the prompt's space token from TRL
    assert float(trl_rejected[2]) < float(unpaired[2]) - 0.1


def teaching_pairs():
    return teaching.make_preference_pairs(8, seed=0)


# ------------------------------------------------------------------ losses, by hand
def test_dpo_loss_is_ln2_when_policy_equals_reference():
    torch.manual_seed(0)
    chosen, rejected = -20 * torch.rand(5), -20 * torch.rand(5)
    loss, rc, rr = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-7)
    assert torch.equal(rc, torch.zeros(5)) and torch.equal(rr, torch.zeros(5))


def test_dpo_loss_below_ln2_when_policy_prefers_chosen_and_above_otherwise():
    ref_c, ref_r = t(-10.0), t(-12.0)
    better, _, _ = dpo_loss(t(-8.0), t(-14.0), ref_c, ref_r, beta=0.1)   # margin +0.4
    worse, _, _ = dpo_loss(t(-12.0), t(-10.0), ref_c, ref_r, beta=0.1)   # margin -0.4
    assert float(better) < LN2 < float(worse)
    assert float(better) == pytest.approx(-math.log(1 / (1 + math.exp(-0.4))), abs=1e-6)


def test_dpo_rewards_are_beta_times_log_ratio_and_detached():
    pc = t(-8.0, -3.0).requires_grad_()
    pr = t(-14.0, -2.0).requires_grad_()
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, t(-10.0, -4.0), t(-12.0, -1.0),
                                                      beta=0.5)
    torch.testing.assert_close(chosen_rewards, t(1.0, 0.5))
    torch.testing.assert_close(rejected_rewards, t(-1.0, -0.5))
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    assert loss.requires_grad  # the loss itself still carries the gradient


def test_dpo_gradient_weights_wrongly_ranked_pairs_more():
    beta = 0.1
    pc = t(0.0, -20.0).requires_grad_()    # pair 0 ranked right, pair 1 ranked wrong
    pr = t(-20.0, 0.0).requires_grad_()     # (reward margins +2 and -2)
    ref_c, ref_r = t(-10.0, -10.0), t(-10.0, -10.0)
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, ref_c, ref_r, beta=beta)
    loss.backward()
    grad = pc.grad.abs()
    assert grad[1] > 5 * grad[0], grad
    weights = dpo_gradient_weight(chosen_rewards, rejected_rewards)
    assert weights[1] > 0.5 > weights[0]
    # |d loss / d policy_chosen_logps| = beta * weight / batch size, exactly
    torch.testing.assert_close(grad, beta * weights / 2)
    torch.testing.assert_close(pr.grad, -pc.grad)  # chosen pushed up, rejected down alike


def test_ipo_loss_is_minimised_at_margin_one_over_two_beta():
    beta = 0.1
    target = 1 / (2 * beta)
    margins = torch.linspace(0.0, 10.0, 101)
    zeros = torch.zeros_like(margins)
    losses = torch.stack([ipo_loss(m.view(1), zeros[:1], zeros[:1], zeros[:1], beta=beta)[0]
                          for m in margins])
    assert float(margins[int(losses.argmin())]) == pytest.approx(target, abs=1e-5)
    assert float(losses.min()) == pytest.approx(0.0, abs=1e-9)
    for at, expect_zero in ((target, True), (target + 1.0, False), (1.0, False)):
        pc = t(-10.0 + at).requires_grad_()
        loss, _, _ = ipo_loss(pc, t(-10.0), t(-10.0), t(-10.0), beta=beta)
        loss.backward()
        assert (abs(float(pc.grad)) < 1e-6) == expect_zero, (at, float(pc.grad))


def test_kto_loss_rewards_desirable_up_and_undesirable_down():
    beta = 0.1
    labels = torch.tensor([True, False])
    # same reference point z = mean(+1, -1) = 0 in both batches
    good, _ = kto_loss(t(1.0, -1.0), t(0.0, 0.0), labels, beta=beta)
    bad, _ = kto_loss(t(-1.0, 1.0), t(0.0, 0.0), labels, beta=beta)
    assert float(good) < float(bad)
    assert float(good) == pytest.approx(1 - 1 / (1 + math.exp(-beta)), abs=1e-6)
    desirable_up, _ = kto_loss(t(1.0, -1.0), t(0.0, 0.0), torch.tensor([True, True]), beta=beta)
    desirable_down, _ = kto_loss(t(-1.0, 1.0), t(0.0, 0.0), torch.tensor([True, True]),
                                 beta=beta)
    assert float(desirable_up) == pytest.approx(float(desirable_down))  # symmetric batch
    single_up, rewards = kto_loss(t(-1.0), t(-3.0), [True], beta=beta)  # ratio +2, z = 2
    single_down, _ = kto_loss(t(-3.0), t(-1.0), [True], beta=beta)      # ratio -2, z = 0
    assert float(single_up) < float(single_down)
    torch.testing.assert_close(rewards, t(0.2))


def test_kto_reference_point_is_detached_and_clamped_at_zero():
    beta = 0.5
    # z = mean ratio = 2 > 0: the gradient is that of a constant z
    policy = t(3.0, 1.0).requires_grad_()
    loss, _ = kto_loss(policy, t(0.0, 0.0), torch.tensor([True, True]), beta=beta)
    loss.backward()
    s = torch.sigmoid(beta * (t(3.0, 1.0) - 2.0))
    torch.testing.assert_close(policy.grad, -beta * s * (1 - s) / 2)
    assert float(policy.grad.sum()) != pytest.approx(0.0, abs=1e-6)  # with z live it is 0
    # mean ratio -2 < 0: z is clamped to 0, not -2
    loss, _ = kto_loss(t(-1.0, -3.0), t(0.0, 0.0), torch.tensor([True, False]), beta=beta)
    expected = ((1 - torch.sigmoid(t(beta * -1.0))) + (1 - torch.sigmoid(t(beta * 3.0)))) / 2
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


def test_orpo_loss_falls_as_the_chosen_probability_rises():
    rejected = t(-1.0)
    chosen = [-3.0, -2.0, -1.0, -0.5, -0.1]
    losses = [float(orpo_odds_ratio_loss(t(c), rejected, beta=0.1)[0]) for c in chosen]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    loss, log_odds = orpo_odds_ratio_loss(t(-0.5), rejected, beta=0.1)
    p_w, p_l = math.exp(-0.5), math.exp(-1.0)
    hand = math.log(p_w / (1 - p_w)) - math.log(p_l / (1 - p_l))
    assert float(log_odds) == pytest.approx(hand, abs=1e-5)
    assert float(loss) == pytest.approx(-0.1 * math.log(1 / (1 + math.exp(-hand))), abs=1e-6)
