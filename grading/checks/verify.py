"""Teacher-forced verification of recorded greedy outputs: device-independent grading.

Regenerating greedy text and comparing it exactly fails across devices: bf16 on a GPU and
fp32 on a CPU can break a near-tie differently, and from there the texts part ways. Instead,
one batched forward pass over prompt + recorded output asks, at every recorded token, "was
this the model's top choice, or within `tolerance` logits of it?" (ties count either way),
and checks the stop: the output ends at EOS, or has exactly `max_new_tokens` tokens.
A hand-edited output fails at the edited token (a gap of many logits); a near-tie does not.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from labkit.config import GenerationSpec
from labkit.generation import cut_at_eos

# Outputs made in bf16 were within 0.10 logits of the fp32 top choice on SmolLM2-135M and
# 0.03 on the teaching model (docs/models.md); an
# edited token is typically 5-20 logits below the top one.
DEFAULT_TOLERANCE = 1.0


@dataclass(frozen=True)
class Mismatch:
    prompt_index: int   # 0-based
    prompt: str
    position: int       # 0-based index in the recorded output tokens; -1: the stop
    message: str

    def __str__(self) -> str:
        where = "stop" if self.position < 0 else f"output token {self.position + 1}"
        return f"prompt {self.prompt_index + 1} ({self.prompt.strip()[:50]!r}), {where}: " \
               f"{self.message}"


@dataclass
class Verification:
    ok: bool
    n_tokens: int
    seconds: float
    tolerance: float
    mismatches: list[Mismatch] = field(default_factory=list)
    max_gap: float = 0.0          # the largest (top logit - recorded logit) that was accepted
    from_text: bool = False       # ids were absent: the recorded text was re-tokenized

    def __str__(self) -> str:
        head = (f"{'verified' if self.ok else 'NOT verified'}: {self.n_tokens} recorded tokens, "
                f"largest accepted gap {self.max_gap:.3f} logits (tolerance {self.tolerance})")
        return "\n".join([head, *(f"  - {m}" for m in self.mismatches)])


def _recorded_ids(tokenizer, outputs, token_ids, spec: GenerationSpec) -> list[list[int]]:
    if token_ids is not None:
        return [cut_at_eos(list(map(int, ids)), tokenizer.eos_token_id) for ids in token_ids]
    # Text only: re-tokenize. An output shorter than max_new_tokens must have stopped at EOS,
    # so the EOS is checked too; the ids may differ from the generated ones (merges), which
    # the tolerance usually absorbs - record the ids to avoid relying on that.
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in outputs]
    return [x + [tokenizer.eos_token_id] if len(x) < spec.max_new_tokens else x for x in ids]


@torch.no_grad()
def verify_outputs(model, tokenizer, prompts, outputs=None, spec: GenerationSpec | None = None,
                   token_ids=None, tolerance: float = DEFAULT_TOLERANCE,
                   batch_size: int = 8) -> Verification:
    """Check that `model` could have produced the recorded greedy outputs of `prompts`.
    Give `token_ids` (from `generate(..., return_ids=True)`) when recorded, else `outputs`
    (texts). Returns a Verification; `.mismatches` name the prompt and token position."""
    spec = spec or GenerationSpec()
    prompts = list(prompts)
    if spec.do_sample:
        raise ValueError("only greedy outputs can be verified (spec.do_sample is True)")
    if token_ids is None and outputs is None:
        raise ValueError("verify_outputs needs the recorded token_ids or the output texts")
    records = _recorded_ids(tokenizer, outputs, token_ids, spec)
    if len(records) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(records)} recorded outputs")
    start, was_training = time.perf_counter(), model.training
    model.eval()
    mismatches, gaps, n_tokens = [], [0.0], 0
    try:
        for first in range(0, len(prompts), batch_size):
            batch = range(first, min(first + batch_size, len(prompts)))
            found, batch_gaps = _verify_batch(model, tokenizer, [prompts[i] for i in batch],
                                              [records[i] for i in batch], tolerance)
            mismatches += [Mismatch(first + i, prompts[first + i], pos, msg)
                           for i, pos, msg in found]
            gaps += batch_gaps
    finally:
        model.train(was_training)
    for i, ids in enumerate(records):
        n_tokens += len(ids)
        stop = _stop_problem(ids, tokenizer.eos_token_id, spec.max_new_tokens, token_ids is None)
        if stop:
            mismatches.append(Mismatch(i, prompts[i], -1, stop))
    mismatches.sort(key=lambda m: (m.prompt_index, m.position if m.position >= 0 else 1 << 30))
    return Verification(not mismatches, n_tokens, time.perf_counter() - start, tolerance,
                        mismatches, max(gaps), token_ids is None)


def _stop_problem(ids, eos_id, max_new_tokens: int, from_text: bool) -> str | None:
    ended_at_eos = bool(ids) and ids[-1] == eos_id
    if ended_at_eos and len(ids) <= max_new_tokens:
        return None
    full = len(ids) == max_new_tokens or (from_text and len(ids) > max_new_tokens)
    if not ended_at_eos and full:  # re-tokenized text may split into more tokens
        return None
    if not ids:
        return "the recorded output is empty: greedy decoding always produces >= 1 token"
    return (f"{len(ids)} tokens without EOS: greedy decoding stops at EOS or after exactly "
            f"max_new_tokens={max_new_tokens}")


def _verify_batch(model, tokenizer, prompts, records, tolerance):
    """One forward pass over prompt + recorded output, right-padded (positions then match
    generation's left-padded ones: both count real tokens from 0)."""
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    rows = [p + r for p, r in zip(prompt_ids, records)]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows],
                        device=model.device)
    logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
    found, gaps = [], []
    for i, (p, rec) in enumerate(zip(prompt_ids, records)):
        if not rec:
            continue
        scores = logits[i, len(p) - 1:len(p) - 1 + len(rec)]     # row j predicts rec[j]
        chosen = scores.gather(1, torch.tensor(rec, device=scores.device)[:, None])[:, 0]
        top, argmax = scores.max(dim=1)
        gap = (top - chosen).tolist()
        for j, g in enumerate(gap):
            if g > tolerance:
                found.append((i, j, f"recorded {tokenizer.decode([rec[j]])!r} but the model's "
                              f"top choice is {tokenizer.decode([int(argmax[j])])!r}, "
                              f"{g:.2f} logits higher (tolerance {tolerance})"))
                break  # after the first divergence the rest is conditioned on an edit
            gaps.append(g)
    return found, gaps
