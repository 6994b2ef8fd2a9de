"""Real DPO runs on the teaching model, shared by test_dpo, test_health and test_metrics.

Each run is a real `DPOTrainer.train()` on CPU (a few seconds, more on a busy machine), so
every configuration is trained at most once per pytest process: `train(**overrides)` is
memoised here, and the fixtures below only hand out its result. (pytest gives each test
module its own copy of an imported fixture, so the memo, not the fixture scope, is what
makes the runs shared.) The models in a `Run` are shared: deepcopy before changing them.
"""
from __future__ import annotations

import copy
import functools
import tempfile
import time
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Run:
    trainer: object          # the DPOTrainer after .train()
    policy: object           # trainer.model: the trained policy
    ref: object              # the frozen reference (a copy of the starting policy)
    tokenizer: object        # the tokenizer TRL trained with
    beta: float
    log_history: list
    seconds: float           # wall time of .train()


def dpo_args(output_dir: str, **overrides):
    """TRL's DPOConfig from the teaching preset (as notebook 3 builds it), plus overrides."""
    from trl import DPOConfig

    from labkit.config import PRESETS

    preset = PRESETS["teaching"]
    kwargs = dict(learning_rate=preset.learning_rate, num_train_epochs=preset.num_train_epochs,
                  per_device_train_batch_size=preset.per_device_train_batch_size,
                  beta=preset.beta, max_length=preset.max_length,
                  logging_steps=preset.logging_steps)
    kwargs.update(overrides)
    return DPOConfig(output_dir=output_dir, bf16=False, report_to=[], save_strategy="no",
                     activation_checkpointing=False, disable_tqdm=True, seed=42,
                     log_level="error", **kwargs)


def fresh_teaching_model():
    """A new (model, tokenizer) of the teaching model: TRL mutates what it is given."""
    import torch

    from labkit.models import load_model

    torch.manual_seed(0)
    model, tokenizer, _ = load_model("teaching", quiet=True)
    return model, tokenizer


@functools.lru_cache(maxsize=None)
def train(n_pairs: int = 8, pair_seed: int = 0, **overrides) -> Run:
    """DPO on `teaching.make_preference_pairs(n_pairs, seed=pair_seed)` with the teaching
    preset (overridden by DPOConfig fields), reference = deepcopy of the starting model."""
    from trl import DPOTrainer

    from labkit import teaching
    from labkit.data import validate_pairs

    model, tokenizer = fresh_teaching_model()
    dataset = validate_pairs(teaching.make_preference_pairs(n_pairs, seed=pair_seed))
    with tempfile.TemporaryDirectory(prefix="labkit-dpo-run-") as out:
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model),
                             args=dpo_args(out, **overrides), train_dataset=dataset,
                             processing_class=tokenizer)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return Run(trainer, trainer.model, trainer.ref_model, tokenizer, trainer.beta,
               list(trainer.state.log_history), seconds)


# Configurations the tests name. Over-optimisation: lr 0.1 with beta 0.01 drives the loss
# below 0.05 by the third of 6 logged steps while rejected log-probs fall ~200x.
PRESET = {}
NO_LEARNING = {"learning_rate": 0.0, "num_train_epochs": 2}
OVER_OPTIMISED = {"learning_rate": 0.1, "beta": 0.01, "num_train_epochs": 3}
TOO_SHORT = {"num_train_epochs": 1}


@pytest.fixture(scope="session")
def preset_run(teaching_dir) -> Run:
    """The teaching preset (lr 3e-4, beta 0.1, 10 epochs, batch 4: 20 logged steps)."""
    return train(**PRESET)


def run_local(argv, stdin, cwd, timeout):
    """The grader's `run(argv, stdin, cwd, timeout)` contract without the namespace sandbox
    (for tests of the student-code drivers, whose own protections are under test)."""
    import subprocess

    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=cwd,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return -9, "", "", True
    return proc.returncode, proc.stdout, proc.stderr, False
