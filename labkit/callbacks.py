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

Why it is cheap: the teaching preset trains in seconds, and at this size a decoding step
costs about as much Python per token as compute, so sampling must avoid per-call overhead
to stay within its budget over training (tests/test_callbacks.py):
- a greedy loop over the KV cache (`greedy_tokens`) instead of `model.generate`, whose
  per-call bookkeeping costs more; the text is the same as `labkit.generation.generate`'s
  (tested, and re-checked against it on the first sample of every run);
- most epochs leave the greedy text unchanged, so the previous sample is the draft, checked
  in ONE forward pass (speculative decoding with the last epoch as the draft); the text is
  decoded again only when a pick changed;
- 16 new tokens by default: the first sentence, where the teaching model's style shows.
`threads=1` decodes on one CPU thread. Leave it off on a machine of your own: switching
torch's thread count costs more than it saves. Use it where other processes fight for the
cores: there, multi-thread OpenMP decoding is several times slower than one thread.
"""
from __future__ import annotations

import inspect
import warnings

import torch
from transformers import TrainerCallback

from . import runtime
from .config import GenerationSpec
from .generation import generate

# fp32 logits from one pass over prompt+draft and from token-by-token decoding differ by
# < 1e-5 (other matmul shapes: 6e-6 measured on the teaching model, logits up to 15); a
# draft token is trusted only when it wins by 100x more, so rounding cannot flip a pick.
DRAFT_MARGIN = 1e-3
MAX_NEW_TOKENS = 16


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed the forward's `past_key_values` to `cache`; accept both."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def greedy_tokens(model, tokenizer, prompts, max_new_tokens: int = MAX_NEW_TOKENS, draft=None):
    """Greedy new-token ids, shape (len(prompts), <= max_new_tokens), EOS then pad once a
    row is done. `draft`: ids from an earlier call with the same prompts and length (the
    previous epoch's, say); returned as they are when one forward pass shows the model still
    picks every one of them, each by more than DRAFT_MARGIN (fp32 only)."""
    with runtime.eval_mode(model, tokenizer):
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True).to(model.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if draft is not None and _draft_holds(model, ids, mask, draft, tokenizer.eos_token_id):
            return draft
        return _greedy_loop(model, ids, mask, max_new_tokens, tokenizer.eos_token_id,
                            tokenizer.pad_token_id)


def greedy_decode(model, tokenizer, prompts, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """The same text as `generate(model, tokenizer, prompts, GenerationSpec(max_new_tokens))`
    (left padding, position ids from each prompt's first real token, stop when all rows hit
    EOS), decoded with a bare KV-cache loop."""
    new_tokens = greedy_tokens(model, tokenizer, prompts, max_new_tokens)
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


def _draft_holds(model, ids, mask, draft, eos_id) -> bool:
    """Would greedy decoding pick every draft token again? One pass over prompt + draft."""
    if model.dtype != torch.float32 or draft.shape[0] != ids.shape[0]:
        return False
    full_mask = torch.cat([mask, torch.ones_like(draft)], dim=1)
    logits = model(input_ids=torch.cat([ids, draft], dim=1), attention_mask=full_mask,
                   position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0), use_cache=False).logits
    top = logits[:, ids.shape[1] - 1:-1].topk(2, dim=-1)
    clear_win = top.values[..., 0] - top.values[..., 1] > DRAFT_MARGIN
    picked = (top.indices[..., 0] == draft) & clear_win
    # only tokens up to each row's first EOS count: after it, greedy decoding just pads
    eos_seen = (draft == eos_id).long().cumsum(dim=1)
    counts = (eos_seen == 0) | ((eos_seen == 1) & (draft == eos_id))
    return bool((picked | ~counts).all())


class SampleCallback(TrainerCallback):
    """Record greedy outputs on `prompts` before training and as it goes.

    `samples` is a list of {"epoch", "step", "outputs"}: one record at the start (epoch 0,
    step 0), then one per epoch, or one every `every_n_steps` optimizer steps (plus the last
    step) when that is set; each `train()` starts a fresh list. Outputs are what
    `generate(model, tokenizer, prompts, GenerationSpec(max_new_tokens))` gives for the
    weights at that moment. `threads`: CPU threads while decoding (None: torch's setting).
    Pass it to the trainer: `DPOTrainer(..., callbacks=[cb])`.
    """

    def __init__(self, tokenizer, prompts, *, max_new_tokens: int = MAX_NEW_TOKENS,
                 every_n_steps: int | None = None, threads: int | None = None):
        prompts = list(prompts)
        if not prompts:
            raise ValueError("SampleCallback needs at least one prompt")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        self.tokenizer, self.prompts = tokenizer, prompts
        self.spec = GenerationSpec(max_new_tokens=max_new_tokens, batch_size=len(prompts))
        self.every_n_steps, self.threads = every_n_steps, threads
        self.samples: list[dict] = []
        self._draft, self._fast = None, None  # last ids; greedy_tokens agrees with generate()

    def sample(self, model) -> list[str]:
        """Greedy outputs of `model` on the prompts now (train/eval mode left as found)."""
        with runtime.threads(self.threads if model.device.type == "cpu" else None):
            if self._fast is False:
                return generate(model, self.tokenizer, self.prompts, self.spec)
            self._draft = greedy_tokens(model, self.tokenizer, self.prompts,
                                        self.spec.max_new_tokens, draft=self._draft)
            outputs = self.tokenizer.batch_decode(self._draft, skip_special_tokens=True)
            return outputs if self._fast else self._check_fast(model, outputs)

    def _check_fast(self, model, outputs: list[str]) -> list[str]:
        """Once per run: the fast path must agree with generate(), else use generate()."""
        reference = generate(model, self.tokenizer, self.prompts, self.spec)
        self._fast = outputs == reference
        if not self._fast:
            warnings.warn("greedy_tokens differs from generate() for this model (does its "
                          "generation config alter greedy decoding?): using generate()")
        return reference

    def _record(self, state, model, epoch=None) -> None:
        if not state.is_world_process_zero:  # every rank holds the same weights
            return
        epoch = float(state.epoch or 0.0) if epoch is None else epoch
        self.samples.append({"epoch": epoch, "step": int(state.global_step),
                             "outputs": self.sample(model)})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.samples, self._draft, self._fast = [], None, None
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
