"""Deterministic batched generation from a GenerationSpec.

Left padding plus an attention mask makes a batch decode exactly like one prompt at a time
(tested), so batching is pure speed. Only the new tokens are returned: as text, or with
`return_ids=True` also as the generated token ids (cut after the first EOS), which is what
`grading.checks.verify` checks: decoded text does not always re-tokenize to the same ids.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from . import runtime
from .config import GenerationSpec


@torch.no_grad()
def generate(model, tokenizer, prompts, spec: GenerationSpec | None = None,
             progress: bool = False, return_ids: bool = False):
    """Continue each prompt. Returns a list of strings (one per prompt), or a list of lists
    of `spec.num_samples` strings when sampling several. With `return_ids`, returns
    `(texts, ids)`: `ids` has the same shape, each item the list of generated token ids
    up to and including the first EOS (no padding); the texts are unchanged."""
    spec = spec or GenerationSpec()
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("generate() needs a non-empty list of non-empty prompt strings")
    outputs, ids = [], []
    # sampling draws from a private copy of the RNG state: the caller's stream is untouched
    sampling = runtime.seeded(spec.seed, model.device) if spec.do_sample else nullcontext()
    with runtime.eval_mode(model, tokenizer), sampling, runtime.threads(runtime.threads_for(model)):
        for start in range(0, len(prompts), spec.batch_size):
            batch = prompts[start:start + spec.batch_size]
            texts, batch_ids = _generate_batch(model, tokenizer, batch, spec)
            outputs.extend(texts)
            ids.extend(batch_ids)
            if progress:
                print(f"  generated {min(start + spec.batch_size, len(prompts))}/{len(prompts)}",
                      flush=True)
    if spec.num_samples > 1:
        n = spec.num_samples
        outputs = [outputs[i * n:(i + 1) * n] for i in range(len(prompts))]
        ids = [ids[i * n:(i + 1) * n] for i in range(len(prompts))]
    return (outputs, ids) if return_ids else outputs


def cut_at_eos(ids: list[int], eos_token_id) -> list[int]:
    """Generated ids up to and including the first EOS: what follows is padding."""
    eos = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
    for i, token in enumerate(ids):
        if token in eos:
            return ids[:i + 1]
    return ids


def _generate_batch(model, tokenizer, prompts, spec: GenerationSpec):
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    kwargs = dict(max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if spec.do_sample:
        kwargs.update(temperature=spec.temperature, top_p=spec.top_p, top_k=0,
                      num_return_sequences=spec.num_samples)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    out = model.generate(**enc, **kwargs)
    new_tokens = out[:, enc["input_ids"].shape[1]:]
    ids = [cut_at_eos(row, tokenizer.eos_token_id) for row in new_tokens.tolist()]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True), ids
