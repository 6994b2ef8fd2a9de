"""labkit's IPO and KTO against TRL's own trainers (TRL 1.x) on a tiny random GPT-2 whose
policy differs from its reference: `ipo_loss` with completion lengths and `kto_loss` with
mismatched-pair log-probs equal TRL's `compute_loss`; labkit's simpler forms (summed IPO,
matched-pair KTO reference point) differ from TRL's, which the notebook's method map says."""
from __future__ import annotations

import copy
import tempfile

import pytest
import torch

from labkit import teaching
from labkit.dpo import completion_batch, ipo_loss, kto_loss, mismatched, sequence_logps

COMMON = dict(bf16=False, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
              log_level="error", max_length=96, activation_checkpointing=False)


@pytest.fixture(scope="module")
def models(teaching_tokenizer):
    """(policy, reference, tokenizer): a tiny GPT-2 without dropout; the policy is the
    reference after a few steps of plain LM training on the pairs' answers, so it rates
    these answers higher after any prompt (a positive KL estimate for KTO)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(teaching_tokenizer), n_positions=128, n_embd=32,
                        n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                        eos_token_id=teaching_tokenizer.eos_token_id,
                        bos_token_id=teaching_tokenizer.eos_token_id)
    reference = GPT2LMHeadModel(config).eval()
    policy = copy.deepcopy(reference)
    texts = [p["prompt"] + p[side] + tok_eos(teaching_tokenizer)
             for p in teaching.make_preference_pairs(8, seed=5) for side in ("chosen", "rejected")]
    ids = teaching_tokenizer(texts, padding=True, return_tensors="pt")
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    policy.train()
    for _ in range(15):
        optimizer.zero_grad()
        policy(**ids, labels=labels).loss.backward()
        optimizer.step()
    policy.eval()
    return policy, reference, teaching_tokenizer


def tok_eos(tokenizer) -> str:
    return tokenizer.eos_token


@torch.no_grad()
def trl_loss(trainer) -> float:
    rows = trainer.train_dataset
    batch = trainer.data_collator([rows[i] for i in range(len(rows))])
    trainer.model.eval()
    return float(trainer.compute_loss(trainer.model, batch))


def test_ipo_with_lengths_is_trls_ipo_and_the_summed_form_differs(models):
    from trl import DPOConfig, DPOTrainer

    from labkit.data import validate_pairs

    policy, reference, tok = models
    pairs = teaching.make_preference_pairs(6, seed=3)
    beta = 0.1
    with tempfile.TemporaryDirectory() as out:
        trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference),
                             args=DPOConfig(out, loss_type=["ipo"], beta=beta,
                                            per_device_train_batch_size=6, **COMMON),
                             train_dataset=validate_pairs(pairs, min_pairs=1), processing_class=tok)
        want = trl_loss(trainer)
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    logps, lengths = [], []
    for side, other in ((chosen, rejected), (rejected, chosen)):
        batch = completion_batch(tok, prompts, side, paired_with=other)
        lengths.append(batch["attention_mask"].sum(1) - batch["prompt_lengths"])
        logps += [sequence_logps(m, tok, prompts, side, paired_with=other)
                  for m in (policy, reference)]
    args = (logps[0], logps[2], logps[1], logps[3])
    per_token, _, _ = ipo_loss(*args, beta=beta, chosen_lengths=lengths[0],
                               rejected_lengths=lengths[1])
    summed, _, _ = ipo_loss(*args, beta=beta)
    assert float(per_token) == pytest.approx(want, rel=1e-4)
    assert abs(float(summed) - want) > 1e-3 * want     # the documented difference is real


def test_kto_with_mismatched_kl_pairs_is_trls_kto_and_matched_pairs_differ(models):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    policy, reference, tok = models
    pairs = teaching.make_preference_pairs(3, seed=4)
    rows = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in pairs for side in ("chosen", "rejected")]
    beta = 0.1
    with tempfile.TemporaryDirectory() as out:
        trainer = KTOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference),
                             args=KTOConfig(out, beta=beta, per_device_train_batch_size=len(rows),
                                            **COMMON),
                             train_dataset=Dataset.from_list(rows), processing_class=tok)
        want = trl_loss(trainer)
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    labels = torch.tensor([r["label"] for r in rows])
    pol, ref = (sequence_logps(m, tok, prompts, completions) for m in (policy, reference))
    kl_pol, kl_ref = (sequence_logps(m, tok, prompts, mismatched(completions))
                      for m in (policy, reference))
    trl_form, _ = kto_loss(pol, ref, labels, beta=beta, kl_policy_logps=kl_pol,
                           kl_ref_logps=kl_ref)
    matched, _ = kto_loss(pol, ref, labels, beta=beta)
    assert float(trl_form) == pytest.approx(want, rel=1e-4)
    z_trl = float((kl_pol - kl_ref).mean().clamp(min=0))
    z_matched = float((pol - ref).mean().clamp(min=0))
    assert z_trl > 0.1 and abs(z_trl - z_matched) > 0.1, (z_trl, z_matched)
    assert float(matched) != pytest.approx(want, rel=1e-4)   # matched pairs: not TRL's


def test_half_given_lengths_or_kl_log_probs_are_refused():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="both chosen_lengths and rejected_lengths"):
        ipo_loss(x, x, x, x, chosen_lengths=torch.ones(2))
    with pytest.raises(ValueError, match="both kl_policy_logps and kl_ref_logps"):
        kto_loss(x, x, [True, False], kl_policy_logps=x)
    assert mismatched(["a", "b", "c"]) == ["c", "a", "b"]
