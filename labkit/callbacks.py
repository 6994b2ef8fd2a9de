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
sample is decoded in eval mode under `torch.no_grad()` and the mode is then restored
(`labkit.generation.generate` does both). `model` is the trainer's own unwrapped model,
which is what the Trainer hands to callbacks.

It is cheap because, on CPU, decoding runs on one thread: each step is a few tiny matmuls,
where OpenMP threads cost more than they give (and thrash when the cores are shared).
"""
from __future__ import annotations

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


class SampleCallback(TrainerCallback):
    """Record greedy outputs on `prompts` before training and as it goes.

    `samples` is a list of {"epoch", "step", "outputs"}: one record at the start (epoch 0,
    step 0), then one per epoch, or one every `every_n_steps` optimizer steps (plus the last
    step) when that is set. Decoding uses `labkit.generation.generate` with a greedy
    `GenerationSpec(max_new_tokens)`, so a record equals what `generate` gives for the same
    weights. Pass the callback to the trainer: `DPOTrainer(..., callbacks=[cb])`.
    """

    def __init__(self, tokenizer, prompts, *, max_new_tokens: int = 24,
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

    def sample(self, model) -> list[str]:
        """Greedy outputs of `model` on the prompts now (train/eval mode left as found)."""
        with _cpu_threads(model, self.threads):
            return generate(model, self.tokenizer, self.prompts, self.spec)

    def _record(self, state, model, epoch=None) -> None:
        if not state.is_world_process_zero:  # every rank holds the same weights
            return
        epoch = float(state.epoch or 0.0) if epoch is None else epoch
        self.samples.append({"epoch": epoch, "step": int(state.global_step),
                             "outputs": self.sample(model)})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
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
