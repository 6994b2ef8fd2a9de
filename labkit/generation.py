"""Deterministic batched generation from a GenerationSpec.

Left padding plus an attention mask makes a batch decode exactly like one prompt at a time
(tested), so batching is pure speed. Only the new tokens are returned.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from . import runtime
from .config import GenerationSpec


@torch.no_grad()
def generate(model, tokenizer, prompts, spec: GenerationSpec | None = None,
             progress: bool = False):
    """Continue each prompt. Returns a list of strings (one per prompt), or a list of lists
    of `spec.num_samples` strings when sampling several."""
    spec = spec or GenerationSpec()
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("generate() needs a non-empty list of non-empty prompt strings")
    outputs = []
    # sampling draws from a private copy of the RNG state: the caller's stream is untouched
    sampling = runtime.seeded(spec.seed, model.device) if spec.do_sample else nullcontext()
    with runtime.eval_mode(model, tokenizer), sampling, runtime.threads(runtime.threads_for(model)):
        for start in range(0, len(prompts), spec.batch_size):
            batch = prompts[start:start + spec.batch_size]
            outputs.extend(_generate_batch(model, tokenizer, batch, spec))
            if progress:
                print(f"  generated {min(start + spec.batch_size, len(prompts))}/{len(prompts)}",
                      flush=True)
    if spec.num_samples == 1:
        return outputs
    n = spec.num_samples
    return [outputs[i * n:(i + 1) * n] for i in range(len(prompts))]


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
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
