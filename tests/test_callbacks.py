"""labkit.callbacks.SampleCallback on REAL DPO runs of the teaching model (CPU).

What matters: a record before training and one per epoch; the trainer's model back in train
mode (and the thread count restored) after every sample, with training unharmed; the text
identical to `labkit.generation.generate` greedy - before training, and after it on an
unpatched copy of the trained weights (TRL patches `model.forward`); and cheap: < 20 % on
top of the training time.
"""
from __future__ import annotations

import copy
import math
import tempfile
import time

import pytest
import torch
from transformers import TrainerCallback

from labkit import callbacks, teaching
from labkit.callbacks import MAX_NEW_TOKENS, SampleCallback, greedy_decode, greedy_tokens
from labkit.config import GenerationSpec
from labkit.data import validate_pairs
from labkit.generation import generate
from labkit.models import load_model
from tests._runs import dpo_args, fresh_teaching_model
from tests.conftest import record_figure

PROMPTS = teaching.HELDOUT_PROMPTS[:3]
SPEC = GenerationSpec(max_new_tokens=MAX_NEW_TOKENS)  # the callback's default


def teaching_prompts():
    """Prompts of very different lengths (so left padding matters), plus an odd one."""
    return teaching.HELDOUT_PROMPTS + teaching.NEUTRAL_PROMPTS + ("Explain <b>x</b> & y.\n",)


class Observer(TrainerCallback):
    """Placed just before and just after SampleCallback (callbacks run in the order given):
    the model's mode and torch's thread count as it found them and as it left them."""

    def __init__(self):
        self.seen = []

    def _look(self, event, model):
        self.seen.append((event, model.training, torch.get_num_threads()))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._look("train_begin", model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._look("epoch_end", model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._look("step_end", model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._look("train_end", model)


def train_with(callbacks, **overrides):
    """A real DPOTrainer run of the teaching preset -> (trainer, wall seconds of train()).
    The CPU seconds of train() are left in `trainer.labkit_cpu_seconds`."""
    from trl import DPOTrainer

    model, tokenizer = fresh_teaching_model()
    dataset = validate_pairs(teaching.make_preference_pairs(8, seed=0))
    with tempfile.TemporaryDirectory(prefix="labkit-callback-") as out:
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model),
                             args=dpo_args(out, **overrides), train_dataset=dataset,
                             processing_class=tokenizer, callbacks=list(callbacks))
        start, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        trainer.labkit_cpu_seconds = time.process_time() - cpu
        return trainer, time.perf_counter() - start


@pytest.fixture(scope="module")
def sampled(teaching_dir):
    """One preset run (10 epochs, 20 steps) with the callback, and the outputs `generate`
    gives on the same starting weights, taken before TRL touches the model."""
    model, tokenizer = fresh_teaching_model()
    before = generate(model, tokenizer, PROMPTS, SPEC)
    callback = SampleCallback(tokenizer, PROMPTS)
    found, left = Observer(), Observer()
    trainer, _ = train_with([found, callback, left])
    return callback, (found, left), trainer, before


def test_one_record_before_training_and_one_per_epoch(sampled):
    callback = sampled[0]
    assert len(callback.samples) == 1 + 10
    assert [s["epoch"] for s in callback.samples] == [float(e) for e in range(11)]
    assert [s["step"] for s in callback.samples] == list(range(0, 21, 2))
    for record in callback.samples:
        assert len(record["outputs"]) == len(PROMPTS)
        assert all(isinstance(o, str) and o.strip() for o in record["outputs"])


def test_model_mode_and_threads_left_as_found_and_training_succeeds(sampled):
    _, (found, left), trainer, _ = sampled
    assert [e for e, _, _ in left.seen if e != "step_end"] == \
        ["train_begin"] + ["epoch_end"] * 10 + ["train_end"]
    assert left.seen == found.seen
    # the Trainer switches to train mode after on_train_begin; from then on, train mode
    assert all(training for event, training, _ in left.seen if event == "epoch_end")
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < math.log(2) - 0.1, "the callback must not get in the way of training"


def test_before_training_record_equals_generate(sampled):
    callback, _, _, before = sampled
    assert callback.samples[0]["outputs"] == before


def test_last_record_equals_generate_on_an_unpatched_copy(sampled):
    """TRL swapped the policy's forward for a fused head; decoding it mid-training must give
    what a clean model with the same weights gives."""
    callback, _, trainer, _ = sampled
    clean, tokenizer, _ = load_model("teaching", quiet=True)
    clean.load_state_dict(trainer.model.state_dict())
    after = generate(clean, tokenizer, PROMPTS, SPEC)
    assert callback.samples[-1]["outputs"] == after
    assert callback.samples[-1]["outputs"] != callback.samples[0]["outputs"], "DPO moved nothing"


def test_a_draft_is_kept_only_while_greedy_decoding_still_picks_it(teaching, monkeypatch):
    """The previous sample is reused when one pass confirms it; once the weights move enough
    to change a pick, the text is decoded again - and both equal generate(). (The margin is
    set to 0 here so that no near-tie of this build hides the reuse; the next test checks
    that the real margin is far above the rounding it guards against.)"""
    model, tokenizer, _ = teaching
    prompts = list(teaching_prompts())
    draft = greedy_tokens(model, tokenizer, prompts, 24)
    monkeypatch.setattr(callbacks, "DRAFT_MARGIN", 0.0)
    kept = greedy_tokens(model, tokenizer, prompts, 24, draft=draft)
    assert torch.equal(kept, draft)
    if model.dtype == torch.float32:  # drafts are only trusted in fp32
        assert kept is draft, "confirmed in one pass, not decoded again"
    torch.manual_seed(0)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(0.05 * torch.randn_like(param))
    redone = greedy_tokens(moved, tokenizer, prompts, 24, draft=draft)
    assert redone is not draft and not torch.equal(redone, draft)
    assert tokenizer.batch_decode(redone, skip_special_tokens=True) == \
        generate(moved, tokenizer, prompts, GenerationSpec(max_new_tokens=24, batch_size=64))


@torch.no_grad()
def test_draft_margin_dwarfs_rounding_between_one_pass_and_step_by_step(teaching):
    """A draft is trusted when each token wins by DRAFT_MARGIN in one pass over prompt+draft.
    That is sound only if the logits of that pass and of `model.generate`'s step-by-step
    decoding (KV cache) differ by far less: measured here, on this build and machine."""
    model, tokenizer, _ = teaching
    if model.dtype != torch.float32:
        pytest.skip("drafts are only used in fp32")
    enc = tokenizer(list(teaching_prompts()), return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=24, do_sample=False, temperature=None,
                         top_p=None, top_k=None, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    step_by_step = torch.stack(out.logits, dim=1)
    prompt_len = enc["input_ids"].shape[1]
    mask = torch.cat([enc["attention_mask"], torch.ones_like(out.sequences[:, prompt_len:])], 1)
    one_pass = model(input_ids=out.sequences, attention_mask=mask,
                     position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    one_pass = one_pass[:, prompt_len - 1:-1]
    difference = (one_pass - step_by_step).abs().max().item()
    record_figure("one pass vs step-by-step logits (teaching model, fp32)", f"{difference:.1e}")
    assert difference < callbacks.DRAFT_MARGIN / 10


def test_rows_and_table(sampled):
    callback = sampled[0]
    rows = callback.as_rows()
    assert len(rows) == 11 * len(PROMPTS)
    assert set(rows[0]) == {"epoch", "step", "prompt", "output"}
    table = callback.samples_table()
    assert table.shape == (11, len(PROMPTS))
    assert table.index[0] == "before" and table.iloc[-1, 0] == callback.samples[-1]["outputs"][0]


def test_every_n_steps_on_one_thread(teaching_dir):
    """Records at steps 0, 3, 6 and the last (8); `threads=1` puts torch's thread count back."""
    _, tokenizer = fresh_teaching_model()
    callback = SampleCallback(tokenizer, PROMPTS[:1], max_new_tokens=4, every_n_steps=3,
                              threads=1)
    found, left = Observer(), Observer()
    train_with([found, callback, left], num_train_epochs=4)  # 8 steps
    assert [s["step"] for s in callback.samples] == [0, 3, 6, 8]
    assert left.seen == found.seen and len(left.seen) == 1 + 8 + 4 + 1


@pytest.mark.parametrize("max_new_tokens", [1, 16, 24, 60])
def test_greedy_decode_equals_generate(teaching, max_new_tokens):
    model, tokenizer, _ = teaching
    prompts = list(teaching_prompts())
    spec = GenerationSpec(max_new_tokens=max_new_tokens, batch_size=len(prompts))
    model.train()
    try:
        assert greedy_decode(model, tokenizer, prompts, max_new_tokens) == \
            generate(model, tokenizer, prompts, spec)
        assert model.training and tokenizer.padding_side == "left"
    finally:
        model.eval()
