"""Checks for the notebooks' from-scratch exercises, with hints that name the classic bug.

Exercise 3.1 asks for `compute_sequence_logps(logits, input_ids, attention_mask,
prompt_lengths)`: the summed completion log-probs that `labkit.dpo.sequence_logps` computes.
A wrong answer is compared with the known wrong variants (last token only, the mean, the
prompt or the padding left in, no shift) so the hint says which one it is. The grader uses
`logps_hint` too, on its own fresh inputs.
"""
from __future__ import annotations

import torch

from .dpo import _logits, completion_batch, completion_logps, sequence_logps


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
    return message
