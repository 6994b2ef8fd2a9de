"""Before/after measures: did alignment work, and what did it cost?

All compare the same prompts under the same GenerationSpec, so differences come from the
weights. Beyond "some text changed": held-out preference accuracy (pairs never trained on),
KL from the reference on the held prompts' continuations, perplexity drift on neutral text
(the alignment tax), and, for the teaching model, the preferred-style rate.
"""
from __future__ import annotations

import difflib
import math

import torch

from . import runtime
from .dpo import pair_logps


def word_diff(before: str, after: str) -> list[tuple[str, str]]:
    """Word-level diff as (op, text) with op in {'same', 'removed', 'added'}."""
    a, b = before.split(), after.split()
    ops = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            ops.append(("same", " ".join(a[i1:i2])))
            continue
        if i2 > i1:
            ops.append(("removed", " ".join(a[i1:i2])))
        if j2 > j1:
            ops.append(("added", " ".join(b[j1:j2])))
    return ops


def compare_outputs(prompts, before, after) -> list[dict]:
    """One row per prompt: both outputs, whether it changed, and the word diff."""
    prompts, before, after = list(prompts), list(before), list(after)
    if not len(prompts) == len(before) == len(after):
        raise ValueError(f"need as many outputs as prompts: {len(prompts)} prompts, "
                         f"{len(before)} before, {len(after)} after")
    return [{"prompt": p, "before": b, "after": a, "changed": b != a, "diff": word_diff(b, a)}
            for p, b, a in zip(prompts, before, after)]


def heldout_logps(policy, ref, tokenizer, pairs) -> dict[tuple[str, str], torch.Tensor]:
    """{(who, side): (n,) summed log-probs} of each pair's chosen and rejected answer under the
    policy (who "policy") and the reference ("ref"), each answer starting where TRL starts it
    (`paired_with` the pair's other answer). Step 4's accuracy and its loss table both read
    these four: the forward passes run once."""
    pairs = list(pairs)
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    logps = {}
    for who, model in (("policy", policy), ("ref", ref)):
        logps[who, "chosen"], logps[who, "rejected"] = pair_logps(model, tokenizer, prompts,
                                                                  chosen, rejected)
    return logps


def preference_accuracy(logps: dict, beta: float = 0.1) -> float:
    """Fraction of pairs whose implicit reward margin
    β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] is > 0, from
    `heldout_logps`' four tensors."""
    chosen = logps["policy", "chosen"] - logps["ref", "chosen"]
    rejected = logps["policy", "rejected"] - logps["ref", "rejected"]
    if chosen.numel() == 0:
        raise ValueError("preference accuracy needs at least one pair")
    return float((beta * (chosen - rejected) > 0).float().mean())


def heldout_preference_accuracy(policy, ref, tokenizer, pairs, beta: float = 0.1) -> float:
    """Fraction of held-out pairs (never trained on) whose implicit reward margin is > 0
    (`preference_accuracy` of `heldout_logps`)."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("heldout_preference_accuracy needs at least one pair")
    return preference_accuracy(heldout_logps(policy, ref, tokenizer, pairs), beta)


@torch.no_grad()
def mean_kl(policy, ref, tokenizer, prompts, continuations) -> float:
    """Mean per-token KL(π ‖ π_ref) = Σ_v π(v) log(π(v)/π_ref(v)), averaged over the
    continuation tokens of each prompt. 0 means the policy has not moved there."""
    total, count = 0.0, 0
    for prompt, continuation in zip(prompts, continuations):
        prompt_len = len(tokenizer(prompt)["input_ids"])
        ids = tokenizer(prompt + continuation, return_tensors="pt")["input_ids"]
        if ids.shape[1] <= prompt_len:
            continue
        logp = _log_probs(policy, ids)[prompt_len - 1:]
        logq = _log_probs(ref, ids)[prompt_len - 1:]
        total += float((logp.exp() * (logp - logq)).sum())
        count += logp.shape[0]
    if count == 0:
        raise ValueError("mean_kl: every continuation was empty")
    return total / count


def _log_probs(model, ids):
    with runtime.eval_mode(model):
        logits = model(input_ids=ids.to(next(model.parameters()).device)).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).cpu()


@torch.no_grad()
def perplexity(model, tokenizer, text: str) -> float:
    """exp(mean token negative log-likelihood) of `text`: how surprised the model is.
    A text longer than the model's context is scored in overlapping windows (each token
    once, with up to half a window of context), instead of overflowing the positions."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if ids.shape[1] < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    length = ids.shape[1]
    window = getattr(model.config, "n_positions", None) or \
        getattr(model.config, "max_position_embeddings", None) or length
    nll, scored, begin = 0.0, 1, 0  # token 0 has no context: never scored
    while scored < length:
        chunk = ids[:, begin:begin + window]
        token_logps = _log_probs(model, chunk).gather(-1, chunk[0, 1:].unsqueeze(-1))
        nll -= float(token_logps[scored - begin - 1:].sum())  # only tokens not yet scored
        scored = begin + chunk.shape[1]
        begin = max(begin + 1, scored - window // 2)
    return math.exp(nll / (length - 1))
