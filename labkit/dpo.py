"""DPO maths from scratch, small enough to read, and proven equal to TRL's.

Notation (TRL's names): for a pair, `policy_chosen_logps` is log π_θ(y_w | x) summed over
the completion's tokens, `ref_chosen_logps` the same under the frozen reference π_ref, and
likewise for the rejected completion y_l. The implicit reward of a completion is
r = β·(log π_θ − log π_ref): how much more likely the policy made it than the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import runtime
from .health import LN2  # noqa: F401 - ln 2, the loss at step 1 (its home: health)


def _completion_start(prompt_ids: list[int], full_ids: list[int]) -> int:
    """Index where the completion starts: the longest common token prefix, as TRL does
    (a prompt ending in a space can merge with the completion's first word)."""
    n = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        n += 1
    return n


@torch.no_grad()
def sequence_logps(model, tokenizer, prompts, completions, add_eos: bool = True,
                   batch_size: int = 8, *, paired_with=None) -> torch.Tensor:
    """Summed log-probability of each completion given its prompt: Σ_t log π(y_t | x, y_<t)
    over completion tokens only. Tokenized the way TRL 1.x does: EOS appended to a completion
    that lacks it, `prompt` and `prompt + completion` tokenized separately (plain string
    concatenation), the completion starting at their longest common token prefix.
    `paired_with`: the other completion of each pair (rejected when scoring chosen): TRL
    starts both at the shorter of the pair's two prefixes, which differs only when the prompt
    ends mid-token (e.g. in a space) and just one of them merges with it.
    Returns a float32 tensor of shape (n,)."""
    batch = completion_batch(tokenizer, prompts, completions, add_eos, paired_with=paired_with)
    out = []
    for start in range(0, len(batch["input_ids"]), batch_size):
        part = {k: v[start:start + batch_size] for k, v in batch.items()}
        width = int(part["attention_mask"].sum(dim=1).max())   # drop all-padding columns
        part = {k: v[:, :width] if v.dim() == 2 else v for k, v in part.items()}
        logits = _logits(model, part["input_ids"], part["attention_mask"])
        out.append(completion_logps(logits, part["input_ids"].to(logits.device),
                                    part["attention_mask"].to(logits.device),
                                    part["prompt_lengths"].to(logits.device)).cpu())
    return torch.cat(out)


def pair_logps(model, tokenizer, prompts, chosen, rejected) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of each pair, each answer starting where TRL starts
    the pair (`paired_with` the other answer)."""
    return (sequence_logps(model, tokenizer, prompts, chosen, paired_with=rejected),
            sequence_logps(model, tokenizer, prompts, rejected, paired_with=chosen))


def completion_batch(tokenizer, prompts, completions, add_eos: bool = True, *,
                     paired_with=None) -> dict:
    """The right-padded batch `sequence_logps` feeds the model: `input_ids` and
    `attention_mask` (n, width) and `prompt_lengths` (n,): where each completion starts."""
    prompts, completions = list(prompts), list(completions)
    others = [None] * len(completions) if paired_with is None else list(paired_with)
    if not len(prompts) == len(completions) == len(others):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions "
                         f"and {len(others)} paired completions")
    eos = tokenizer.eos_token
    rows = []
    for prompt, completion, other in zip(prompts, completions, others):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + _with_eos(completion, eos, add_eos))["input_ids"]
        start = _completion_start(prompt_ids, full_ids)
        if other is not None:
            other_ids = tokenizer(prompt + _with_eos(other, eos, add_eos))["input_ids"]
            start = min(start, _completion_start(prompt_ids, other_ids))
        rows.append((full_ids, start))
    width = max((len(ids) for ids, _ in rows), default=0)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, (ids, _) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention,
            "prompt_lengths": torch.tensor([start for _, start in rows], dtype=torch.long)}


def completion_logps(logits, input_ids, attention_mask, prompt_lengths) -> torch.Tensor:
    """The core of `sequence_logps` (exercise 3.1 rebuilds it): token t is predicted by
    position t−1, so shift, take each real token's log-prob, keep completion tokens only
    (position ≥ its prompt length, not padding) and sum. Shapes: logits (n, T, V); the
    others (n, T) and (n,). Returns (n,) float32."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    positions = torch.arange(1, input_ids.shape[1], device=input_ids.device)
    mask = (positions[None, :] >= prompt_lengths[:, None]) & attention_mask[:, 1:].bool()
    return (token_logps * mask).sum(dim=1)


def _with_eos(completion: str, eos: str, add_eos: bool) -> str:
    return completion + eos if add_eos and not completion.endswith(eos) else completion


@torch.no_grad()
def _logits(model, input_ids, attention_mask) -> torch.Tensor:
    """The model's logits in eval mode (dropout off), left in the mode it was in."""
    device = next(model.parameters()).device
    with runtime.eval_mode(model):
        return model(input_ids=input_ids.to(device),
                     attention_mask=attention_mask.to(device)).logits.float()


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps, beta: float = 0.1):
    """DPO (Rafailov et al. 2023):
        r_w = β·(log π_θ(y_w|x) − log π_ref(y_w|x)),  r_l = β·(log π_θ(y_l|x) − log π_ref(y_l|x))
        loss = −mean log σ(r_w − r_l)
    Returns (loss, chosen_rewards, rejected_rewards); rewards are detached, shape (batch,)."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps, beta: float = 0.1, chosen_lengths=None, rejected_lengths=None):
    """IPO (Azar et al. 2023): with the log-ratios ρ = log π_θ − log π_ref,
        h = ρ(y_w) / |y_w| − ρ(y_l) / |y_l|,   loss = mean (h − 1/(2β))²
    A squared loss: it stops pushing once the margin reaches 1/(2β) instead of driving it to
    infinity, which is why it behaves on small or noisy data. Its scale: at the start h = 0,
    so the loss is (1/(2β))² = 25 at β = 0.1, not ln 2 — a distance to a target, not a
    probability. With the completion lengths (tokens, EOS included) this is TRL's `ipo`
    exactly (TRL divides by the length, as the IPO authors did); without them it is the
    paper's summed form (h in whole-answer nats, so the loss grows with answer length).
    Returns (loss, chosen, rejected) rewards β·ρ (TRL's, never length-divided)."""
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_loss: give both chosen_lengths and rejected_lengths, or neither")
    h_chosen, h_rejected = chosen_ratio, rejected_ratio
    if chosen_lengths is not None:
        h_chosen = chosen_ratio / torch.as_tensor(chosen_lengths).clamp(min=1)
        h_rejected = rejected_ratio / torch.as_tensor(rejected_lengths).clamp(min=1)
    loss = ((h_chosen - h_rejected - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def kto_loss(policy_logps, ref_logps, labels, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             kl_policy_logps=None, kl_ref_logps=None):
    """KTO (Ethayarajh et al. 2024) for unpaired thumbs-up/down data. With r = log π_θ − log π_ref
    and a reference point z (detached: a baseline, not a target),
        desirable: λ_D·(1 − σ(β(r − z))),  undesirable: λ_U·(1 − σ(β(z − r))),  loss = mean.
    z = max(0, mean(log π_θ − log π_ref)) estimates KL(π_θ ‖ π_ref). TRL (`kto_kl`-style)
    takes it on MISMATCHED pairs (prompt i with the completion of row i−1 in the batch):
    pass their log-probs as `kl_policy_logps`/`kl_ref_logps` and this equals TRL's `kto`.
    Without them z uses the matched pairs themselves (simpler, not TRL's: it includes the
    very rewards being trained, so it moves with them). Its scale: each term is in (0, 1),
    0.5 at the start — a different unit from DPO's ln 2 ≈ 0.693.
    `labels` is a bool tensor (True = desirable). Returns (loss, rewards β·r)."""
    labels = torch.as_tensor(labels, dtype=torch.bool)
    ratio = policy_logps - ref_logps
    if (kl_policy_logps is None) != (kl_ref_logps is None):
        raise ValueError("kto_loss: give both kl_policy_logps and kl_ref_logps, or neither")
    kl_ratio = ratio if kl_policy_logps is None else kl_policy_logps - kl_ref_logps
    z = kl_ratio.mean().detach().clamp(min=0)
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio)))
    loss = torch.where(labels, desirable, undesirable).mean()
    return loss, (beta * ratio).detach()


def mismatched(completions):
    """TRL's KTO pairing for its KL estimate: row i gets the completion of row i−1."""
    completions = list(completions)
    return completions[-1:] + completions[:-1]


def orpo_odds_ratio_loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    """ORPO's preference term (Hong et al. 2024), no reference model. Using length-averaged
    log-probs p, odds(y) = p/(1−p), so log odds = log p − log(1 − exp(log p)):
        loss = −mean log σ(log odds(y_w) − log odds(y_l)) · β
    In ORPO it is added to the usual SFT loss on y_w (β is the weight λ; TRL's `beta`).
    Inputs must be average per-token log-probs (< 0). Returns (loss, log_odds_ratio)."""
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        torch.log1p(-torch.exp(policy_chosen_logps)) - torch.log1p(-torch.exp(policy_rejected_logps)))
    loss = -(beta * F.logsigmoid(log_odds)).mean()
    return loss, log_odds.detach()


def dpo_gradient_weight(chosen_rewards, rejected_rewards) -> torch.Tensor:
    """How strongly each pair pulls on the weights: |∂loss/∂margin| = σ(r_l − r_w).
    Near 1 for a wrongly ranked pair, near 0 once the pair is ranked right by a wide margin."""
    return torch.sigmoid(rejected_rewards - chosen_rewards)


def crosscheck_with_trl(trainer, n_pairs: int | None = None, loss_fn=dpo_loss,
                        ref_model=None) -> dict:
    """Recompute TRL's numbers with the functions above, from the raw text.

    `first_step`: the first logged training step. TRL's reference is the policy's starting
    point, so at step 1 policy == reference; recomputed by scoring with the reference model
    for both (loss ln 2, rewards 0 when the reference is a copy of the starting policy).
    `current`: the trained policy vs the reference on the first `n_pairs` training pairs,
    next to TRL's own `compute_loss` on the same pairs. `loss_fn` can be a student's.
    `ref_model`: the reference, when the trainer keeps none (precomputed reference log-probs).
    """
    policy, ref = trainer.model, ref_model if ref_model is not None else trainer.ref_model
    if ref is None:
        raise ValueError("crosscheck_with_trl needs the reference model: the trainer has none "
                         "(precompute_ref_log_probs=True), so pass ref_model= (the base model "
                         "loaded again)")
    beta, tok = trainer.beta, trainer.processing_class
    n = n_pairs or trainer.args.per_device_train_batch_size
    raw = trainer.train_dataset.select(range(min(n, len(trainer.train_dataset))))
    if {"prompt", "chosen", "rejected"} <= set(raw.column_names):  # the raw text, as given
        prompts, chosen, rejected = raw["prompt"], raw["chosen"], raw["rejected"]
    else:
        prompts, chosen, rejected = ([tok.decode(ids) for ids in raw[f"{k}_ids"]]
                                     for k in ("prompt", "chosen", "rejected"))
    ref_c, ref_r = pair_logps(ref, tok, prompts, chosen, rejected)
    pol_c, pol_r = pair_logps(policy, tok, prompts, chosen, rejected)
    first = next(e for e in trainer.state.log_history if "loss" in e)
    loss0, c0, r0 = loss_fn(ref_c, ref_r, ref_c, ref_r, beta=beta)
    loss1, c1, r1 = loss_fn(pol_c, pol_r, ref_c, ref_r, beta=beta)
    trl_loss, trl_c, trl_r = _trl_eval_loss(trainer, raw)
    return {
        "first_step": {"labkit_loss": float(loss0), "trl_loss": first["loss"],
                       "labkit_rewards_chosen": float(c0.mean()),
                       "trl_rewards_chosen": first["rewards/chosen"],
                       "labkit_rewards_rejected": float(r0.mean()),
                       "trl_rewards_rejected": first["rewards/rejected"]},
        "current": {"labkit_loss": float(loss1), "trl_loss": trl_loss,
                    "labkit_rewards_chosen": float(c1.mean()), "trl_rewards_chosen": trl_c,
                    "labkit_rewards_rejected": float(r1.mean()), "trl_rewards_rejected": trl_r,
                    "n_pairs": len(prompts)},
    }


@torch.no_grad()
def _trl_eval_loss(trainer, tokenized_rows):
    """TRL's own loss and reward means on some tokenized rows, in eval mode (dropout off)."""
    batch = trainer.data_collator([tokenized_rows[i] for i in range(len(tokenized_rows))])
    device = next(trainer.model.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    metrics = trainer._metrics["eval"]
    before = {key: len(values) for key, values in metrics.items()}
    with runtime.eval_mode(trainer.model):
        loss = trainer.compute_loss(trainer.model, batch)
    chosen, rejected = metrics["rewards/chosen"][-1], metrics["rewards/rejected"][-1]
    for key in list(metrics):  # leave TRL's eval metrics as they were
        if key not in before:
            del metrics[key]
        else:
            del metrics[key][before[key]:]
    return float(loss), chosen, rejected
