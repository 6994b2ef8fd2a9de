"""Checks for the notebooks' from-scratch exercises, with hints that name the classic bug.

Exercise 3.1 asks for `compute_sequence_logps(logits, input_ids, attention_mask,
prompt_lengths)`: the summed completion log-probs that `labkit.dpo.sequence_logps` computes.
A wrong answer is compared with the known wrong variants (last token only, the mean, the
prompt or the padding left in, no shift) so the hint says which one it is. The grader uses
`logps_hint` too, on its own fresh inputs.

Exercise 3.1's `compute_dpo_loss` is checked the same way (`check_dpo_loss`): on a batch of
unequal pairs, so that .sum() for .mean(), a missing reference, a flipped sign or beta on one
side each give a different number, and the hint names which (`dpo_loss_hint`; the grader uses
it too).
"""
from __future__ import annotations

import torch

from .dpo import _logits, completion_batch, completion_logps, dpo_loss, sequence_logps


def _variants(logits, input_ids, attention_mask, prompt_lengths) -> dict:
    """The classic wrong answers, each with the hint a student needs."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    positions = torch.arange(1, input_ids.shape[1])
    real = attention_mask[:, 1:].bool()
    completion = (positions[None, :] >= prompt_lengths[:, None]) & real
    last = attention_mask.long().sum(dim=1) - 2          # last real token, in shifted indexing
    unshifted = torch.log_softmax(logits.float(), dim=-1).gather(
        -1, input_ids.unsqueeze(-1)).squeeze(-1)
    full_positions = torch.arange(input_ids.shape[1])
    unshifted_mask = (full_positions[None, :] >= prompt_lengths[:, None]) & attention_mask.bool()
    return {
        "last token only": ((token.gather(1, last[:, None]).squeeze(1)),
                            "you returned the log-prob of the last token only: DPO needs the "
                            "SUM over every completion token (mask, then .sum(dim=1))"),
        "mean": ((token * completion).sum(1) / completion.sum(1).clamp(min=1),
                 "you averaged over the completion tokens: DPO uses the SUM (a longer answer "
                 "is less likely, and the loss should see that)"),
        "prompt included": ((token * real).sum(1),
                            "the prompt's tokens are in your sum: keep only positions >= "
                            "prompt_lengths (the completion)"),
        "padding included": ((token * (positions[None, :] >= prompt_lengths[:, None])).sum(1),
                             "padding tokens are in your sum: multiply by attention_mask too"),
        "no shift": ((unshifted * unshifted_mask).sum(1),
                     "no shift: the logits at position t predict token t+1, so use "
                     "logits[:, :-1] with input_ids[:, 1:]"),
    }


def logps_hint(got, logits, input_ids, attention_mask, prompt_lengths,
               atol: float = 1e-3) -> str:
    """Which known bug `got` matches (its hint), or a generic hint."""
    got = torch.as_tensor(got, dtype=torch.float32).reshape(-1)
    for name, (value, hint) in _variants(logits, input_ids, attention_mask,
                                         prompt_lengths).items():
        if got.shape == value.shape and torch.allclose(got, value.float(), atol=atol, rtol=1e-4):
            return hint
    return ("shift (logits[:, :-1] predict input_ids[:, 1:]), log_softmax, gather the real "
            "tokens, mask out prompt and padding, then sum per row")


def compare_logps(got, logits, input_ids, attention_mask, prompt_lengths) -> tuple[bool, str]:
    """(passed, message) for a student's answer on one batch."""
    want = completion_logps(logits, input_ids, attention_mask, prompt_lengths)
    try:
        got = torch.as_tensor(got).detach().float().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        return False, f"compute_sequence_logps must return a tensor of shape (batch,): {exc}"
    if got.shape != want.shape:
        return False, (f"compute_sequence_logps returned shape {tuple(got.shape)}, expected "
                       f"{tuple(want.shape)}: one summed log-prob per row. Hint: "
                       + logps_hint(got, logits, input_ids, attention_mask, prompt_lengths)
                       if got.numel() == want.numel() else
                       f"compute_sequence_logps returned shape {tuple(got.shape)}, expected "
                       f"{tuple(want.shape)}: one summed log-prob per row")
    if torch.allclose(got, want, rtol=1e-4, atol=1e-3):
        return True, f"matches labkit's summed completion log-probs on {len(want)} rows"
    row = int((got - want).abs().argmax())
    return False, (f"row {row}: got {got[row].item():.4f}, expected {want[row].item():.4f}. "
                   "Hint: " + logps_hint(got, logits, input_ids, attention_mask, prompt_lengths))


@torch.no_grad()
def check_sequence_logps(fn, model, tokenizer, prompts, completions, *,
                         raise_error: bool = True) -> str:
    """Run a student's `fn` on a real batch and compare it with `labkit.dpo.sequence_logps`
    (the same numbers TRL trains on). Raises AssertionError with a hint when it differs."""
    batch = completion_batch(tokenizer, prompts, completions)
    logits = _logits(model, batch["input_ids"], batch["attention_mask"]).cpu()
    got = fn(logits, batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
    ok, message = compare_logps(got, logits, batch["input_ids"], batch["attention_mask"],
                                batch["prompt_lengths"])
    want = sequence_logps(model, tokenizer, prompts, completions)
    if ok:
        rows = [f"  row {i}: yours {float(g):9.3f}   sequence_logps {float(w):9.3f}"
                for i, (g, w) in enumerate(zip(torch.as_tensor(got).reshape(-1), want))]
        message = "\n".join([message] + rows)
    if not ok and raise_error:
        raise AssertionError(message)
    return message if ok else f"NOT YET: {message}"


# ----------------------------------------------------------------------------- Exercise 3.1
# In the notebook a failed self-check is shown, not raised: the rest of the notebook (the
# TRL run, steps 3-4) does not depend on it, and a mistake should cost its own points only
CONTINUES = ("Fix it and rerun this cell; the rest of the notebook still runs, and the "
             "auto-grader scores this exercise on its own.")
# (policy chosen, policy rejected, ref chosen, ref rejected) summed log-probs of 4 unequal
# pairs: every classic mistake below gives a different loss on them (a batch of one hides
# .sum() vs .mean())
LOSS_BATCH = ((-12.0, -31.5, -8.25, -20.0), (-15.0, -29.0, -9.5, -18.75),
              (-11.0, -30.25, -7.0, -22.5), (-14.5, -27.0, -10.5, -19.0))


def _loss_variants(pc, pr, rc, rr, beta) -> dict:
    """The classic wrong (loss, chosen_rewards, rejected_rewards), each with its hint."""
    F = torch.nn.functional
    cr, rj = beta * (pc - rc), beta * (pr - rr)
    margin = cr - rj
    return {
        "sum": ((-F.logsigmoid(margin).sum(), cr, rj),
                "you summed the per-pair losses: DPO takes the MEAN over the batch (.mean()), "
                "so the loss does not grow with the batch size"),
        "no reference": ((-F.logsigmoid(beta * (pc - pr)).mean(), beta * pc, beta * pr),
                         "the reference log-probs are missing: each reward is "
                         "beta * (policy_logps - ref_logps)"),
        "sign flipped": ((F.logsigmoid(margin).mean(), cr, rj),
                         "the sign is flipped: loss = -logsigmoid(chosen_rewards - "
                         "rejected_rewards).mean(), which is positive"),
        "margin reversed": ((-F.logsigmoid(-margin).mean(), cr, rj),
                            "the margin is reversed: it is chosen_rewards - rejected_rewards "
                            "(the loss falls as the chosen answer gains)"),
        "beta on chosen only": ((-F.logsigmoid(cr - (pr - rr)).mean(), cr, pr - rr),
                                "beta multiplies only the chosen side: both rewards are "
                                "beta * (policy_logps - ref_logps)"),
        "beta on rejected only": ((-F.logsigmoid((pc - rc) - rj).mean(), pc - rc, rj),
                                  "beta multiplies only the rejected side: both rewards are "
                                  "beta * (policy_logps - ref_logps)"),
        "no beta": ((-F.logsigmoid((pc - rc) - (pr - rr)).mean(), pc - rc, pr - rr),
                    "beta is missing: each reward is beta * (policy_logps - ref_logps)"),
        "beta outside": ((-beta * F.logsigmoid(margin / beta).mean(), cr, rj),
                         "beta belongs inside the logsigmoid (it scales the rewards), not in "
                         "front of the loss"),
    }


def dpo_loss_hint(got, pc, pr, rc, rr, beta: float = 0.1, atol: float = 1e-4) -> str:
    """Which classic mistake `got` (loss, chosen_rewards, rejected_rewards) matches."""
    loss = torch.as_tensor(got[0]).detach().double().reshape(-1)
    for value, hint in _loss_variants(pc.double(), pr.double(), rc.double(), rr.double(),
                                      beta).values():
        if loss.numel() == 1 and torch.allclose(loss, value[0].reshape(-1), atol=atol):
            return hint
    if loss.numel() == len(pc):
        return "the loss must be one number: the mean of the per-pair losses (.mean())"
    for side, reward, policy, ref in (("chosen", got[1], pc, rc), ("rejected", got[2], pr, rr)):
        reward = torch.as_tensor(reward).detach().double().reshape(-1)
        if reward.shape == policy.shape:
            if torch.allclose(reward, beta * policy.double(), atol=atol):
                return (f"the reference log-probs are missing from {side}_rewards: each reward "
                        "is beta * (policy_logps - ref_logps)")
            if torch.allclose(reward, (policy - ref).double(), atol=atol):
                return (f"beta is missing from {side}_rewards: each reward is "
                        "beta * (policy_logps - ref_logps)")
    return ("chosen_rewards = beta * (policy_chosen - ref_chosen), rejected_rewards likewise, "
            "loss = -logsigmoid(chosen_rewards - rejected_rewards).mean()")


def compare_dpo_loss(got, pc, pr, rc, rr, beta: float = 0.1) -> tuple[bool, str]:
    """(passed, message) for a student's (loss, chosen_rewards, rejected_rewards)."""
    want = dpo_loss(pc, pr, rc, rr, beta=beta)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return False, ("compute_dpo_loss must return (loss, chosen_rewards, rejected_rewards)"
                       f"; it returned {len(got) if isinstance(got, (tuple, list)) else 1} "
                       "value(s)")
    for name, g, w in zip(("loss", "chosen_rewards", "rejected_rewards"), got, want):
        try:
            g = torch.as_tensor(g).detach().double().reshape(-1)
        except (TypeError, ValueError, RuntimeError) as exc:
            return False, f"{name} is not a tensor of numbers: {exc}"
        w = w.detach().double().reshape(-1)
        if g.shape != w.shape or not torch.allclose(g, w, rtol=1e-4, atol=1e-5):
            shown = (f"got {g.tolist()[:4]}, expected {[round(x, 6) for x in w.tolist()[:4]]}"
                     if g.numel() <= 16 else f"got shape {tuple(g.shape)}")
            return False, (f"{name} differs from the reference ({len(pc)} pairs, beta={beta}): "
                           f"{shown}. Hint: " + dpo_loss_hint(got, pc, pr, rc, rr, beta))
    return True, f"matches labkit.dpo.dpo_loss on {len(pc)} unequal pairs (beta={beta})"


def check_dpo_loss(fn, beta: float = 0.1, *, raise_error: bool = True) -> str:
    """Run a student's compute_dpo_loss on LOSS_BATCH and compare it with labkit.dpo.dpo_loss.
    Raises AssertionError with the hint when it differs; else a table of both."""
    pc, pr, rc, rr = torch.tensor(LOSS_BATCH).T
    got = fn(pc, pr, rc, rr, beta=beta)
    ok, message = compare_dpo_loss(got, pc, pr, rc, rr, beta)
    if not ok:
        if raise_error:
            raise AssertionError(message)
        return f"NOT YET: {message}\n{CONTINUES}"
    want = dpo_loss(pc, pr, rc, rr, beta=beta)
    rows = [f"  {name:<17} yours {[round(float(x), 4) for x in torch.as_tensor(g).reshape(-1)]}"
            f"\n  {'':<17} labkit {[round(float(x), 4) for x in w.reshape(-1)]}"
            for name, g, w in zip(("loss", "chosen_rewards", "rejected_rewards"), got, want)]
    return "\n".join([message] + rows)
