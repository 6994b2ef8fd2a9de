"""Watch what the policy *writes* while DPO trains, not only its loss.

A falling loss says the reward margin grew; it does not say whether the text changed.
`SampleCallback` greedily decodes a few held-out prompts once before training and after
every epoch (or every N steps), so a notebook can show outputs drifting from jargon to
plain, epoch by epoch, next to the curves of `labkit.viz.plot_training`.

Generating mid-training is safe with TRL 1.x: `DPOTrainer` replaces `model.forward` with a
fused log-prob head (`trl.trainer.utils.add_fused_lm_head`), but the patched forward runs
the original one unless it is called with `fused_lm_head=True`, and it keeps the original
signature, so `model.generate` decodes exactly as on an unpatched copy of the same weights
(tested). What needs care is the mode: the trainer keeps the model in train mode, so each
sample is decoded in eval mode without autograd, and the mode is then restored. The model
decoded is the one the Trainer hands to callbacks: its own, unwrapped `trainer.model`.

It is cheap (< 20 % on top of training the teaching model) for two reasons. Decoding is a
short greedy loop over the KV cache (`greedy_decode`) instead of `model.generate`, whose
bookkeeping adds ~20 % per call at this size; it gives exactly the same text as
`labkit.generation.generate` (tested, and re-checked on the first sample of every run, with
a fallback to `generate` should a model's generation config alter greedy decoding). And
on CPU it runs on one thread: each step is a few tiny matmuls, where OpenMP threads cost
more than they give and thrash when other processes share the cores.
"""
from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from .config import GenerationSpec
from .generation import generate


@contextmanager
def _cpu_threads(model, threads: int | None):
    """Run the block with `threads` intra-op threads when the model is on CPU."""
    if threads is None or model.device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed the forward's `past_key_values` to `cache`; accept both."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def greedy_decode(model, tokenizer, prompts, max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations of `prompts` (new text only), decoded with the KV cache.

    Same text as `generate(model, tokenizer, prompts, GenerationSpec(max_new_tokens))`:
    left padding, position ids counted from each prompt's first real token, EOS then pad
    once a row is done, stop when every row is done. The model's mode and the tokenizer's
    padding side are restored afterwards."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True).to(model.device)
        new_tokens = _greedy_loop(model, enc["input_ids"], enc["attention_mask"],
                                  max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def _greedy_loop(model, ids, mask, max_new_tokens, eos_id, pad_id):
    cache_kw, cache = _cache_kwarg(model), None  # the model makes the cache on the first call
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    chosen = []
    for _ in range(max_new_tokens):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **({cache_kw: cache} if cache is not None else {}))
        cache = out["cache"] if "cache" in out else out.get("past_key_values")
        token = out.logits[:, -1].argmax(-1).masked_fill(done, pad_id)
        chosen.append(token)
        done |= token == eos_id
        if done.all():
            break
        ids, positions = token[:, None], positions[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return torch.stack(chosen, dim=1)


class SampleCallback(TrainerCallback):
    """Record greedy outputs on `prompts` before training and as it goes.

    `samples` is a list of {"epoch", "step", "outputs"}: one record at the start (epoch 0,
    step 0), then one per epoch, or one every `every_n_steps` optimizer steps (plus the last
    step) when that is set; each `train()` starts a fresh list. Outputs are what
    `generate(model, tokenizer, prompts, GenerationSpec(max_new_tokens))` gives for the
    weights at that moment. `threads`: CPU threads while decoding (None: leave as is).
    Pass it to the trainer: `DPOTrainer(..., callbacks=[cb])`.
    """

    def __init__(self, tokenizer, prompts, *, max_new_tokens: int = 16,
                 every_n_steps: int | None = None, threads: int | None = 1):
        prompts = list(prompts)
        if not prompts:
            raise ValueError("SampleCallback needs at least one prompt")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.spec = GenerationSpec(max_new_tokens=max_new_tokens, batch_size=len(prompts))
        self.every_n_steps = every_n_steps
        self.threads = threads
        self.samples: list[dict] = []
        self._fast = None  # greedy_decode matches generate() for this model: checked once

    def sample(self, model) -> list[str]:
        """Greedy outputs of `model` on the prompts now (train/eval mode left as found)."""
        with _cpu_threads(model, self.threads):
            if self._fast is False:
                return generate(model, self.tokenizer, self.prompts, self.spec)
            outputs = greedy_decode(model, self.tokenizer, self.prompts, self.spec.max_new_tokens)
            if self._fast is None:
                outputs = self._check_fast(model, outputs)
            return outputs

    def _check_fast(self, model, outputs: list[str]) -> list[str]:
        """Once per run: greedy_decode must agree with generate(), else use generate()."""
        reference = generate(model, self.tokenizer, self.prompts, self.spec)
        self._fast = outputs == reference
        if not self._fast:
            warnings.warn("greedy_decode differs from generate() for this model (does its "
                          "generation config alter greedy decoding?): using generate()")
        return reference

    def _record(self, state, model, epoch=None) -> None:
        if not state.is_world_process_zero:  # every rank holds the same weights
            return
        epoch = float(state.epoch or 0.0) if epoch is None else epoch
        self.samples.append({"epoch": epoch, "step": int(state.global_step),
                             "outputs": self.sample(model)})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.samples, self._fast = [], None
        self._record(state, model, epoch=0.0)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps is None:
            self._record(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps is not None and state.global_step % self.every_n_steps == 0:
            self._record(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.samples and self.samples[-1]["step"] != state.global_step:
            self._record(state, model)

    def as_rows(self) -> list[dict]:
        """Long form, one row per (record, prompt): {"epoch", "step", "prompt", "output"}."""
        return [{"epoch": s["epoch"], "step": s["step"], "prompt": p, "output": o}
                for s in self.samples for p, o in zip(self.prompts, s["outputs"])]

    def samples_table(self):
        """A pandas DataFrame for display: one row per record, one column per prompt."""
        import pandas as pd

        index = [("before" if s["step"] == 0 else f"epoch {s['epoch']:g}, step {s['step']}")
                 for s in self.samples]
        columns = [p.strip() for p in self.prompts]
        return pd.DataFrame([s["outputs"] for s in self.samples], index=index, columns=columns)
