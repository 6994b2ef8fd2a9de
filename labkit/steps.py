"""One typed record per step artifact: the contract between the notebooks and the grader.

Each record names its file, its fields and their types, and saves/loads itself through
`labkit.artifacts` (atomic write, header with schema_version, kind, library versions).
Notebooks build and `save` them; the checks, the integrity recomputations and the headless
runner `load` them; nothing else reads artifacts by loose string keys.

`load(run_dir)` is strict: a missing file, a wrong kind/version or a field of the wrong
type raises `ArtifactError` naming the file and the field. `load(run_dir, strict=False)` is
for grading: the header must be right, but a malformed field only lands in
`record.problems` (its raw value kept on the attribute, the whole JSON in `record.raw`), so
a check can fail just the item that needs it.
"""
from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Optional

from . import artifacts
from .artifacts import SCHEMA_VERSION, ArtifactError, file_sha256

# The metrics a step-4 report holds, in order (the rubric's `metrics` item checks them).
METRIC_KEYS = ("changed_outputs", "held_prompts", "heldout_preference_accuracy", "kl_mean",
               "perplexity_before", "perplexity_after", "style_rate_before", "style_rate_after")
# The DPOConfig fields a step-3 record keeps (the grader checks the log against them).
DPO_CONFIG_KEYS = ("learning_rate", "beta", "num_train_epochs", "per_device_train_batch_size",
                   "max_length", "loss_type", "seed", "precompute_ref_log_probs")


@dataclass
class StepRecord:
    """Base of the step records: subclasses set FILE and KIND and declare their fields."""

    FILE: ClassVar[str] = ""
    KIND: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION

    @classmethod
    def path(cls, run_dir=None) -> Path:
        return artifacts.run_dir(run_dir, create=False) / cls.FILE

    @classmethod
    def exists(cls, run_dir=None) -> bool:
        return cls.path(run_dir).exists()

    def payload(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def save(self, run_dir=None) -> Path:
        """Validate the fields, then write the artifact atomically; returns its path."""
        problems = self.validate()
        if problems:
            name, why = next(iter(problems.items()))
            raise ArtifactError(f"{self.FILE}: field {name!r} {why}; nothing was saved")
        path = artifacts.run_dir(run_dir) / self.FILE
        artifacts.save_json(path, self.payload(), kind=self.KIND)
        return path

    @classmethod
    def load(cls, run_dir=None, strict: bool = True):
        """The record in `run_dir`; see the module docstring for `strict`."""
        path = cls.path(run_dir)
        try:
            raw = artifacts.load_json(path, kind=cls.KIND)
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path.name} cannot be read ({exc}); re-run its step") from exc
        values, problems = {}, {}
        for f in fields(cls):
            if not f.init:
                continue
            if f.name in raw:
                values[f.name] = raw[f.name]
            elif f.default is not MISSING or f.default_factory is not MISSING:
                continue
            else:
                values[f.name], problems[f.name] = None, "is missing"
        record = cls(**values)
        problems.update({k: v for k, v in record.validate().items() if k not in problems})
        if strict and problems:
            name, why = next(iter(problems.items()))
            raise ArtifactError(f"{path}: field {name!r} {why}; re-run its step")
        record.raw, record.problems = raw, problems
        return record

    def validate(self) -> dict[str, str]:
        """{field: what is wrong} for every field whose value does not fit its type."""
        hints = typing.get_type_hints(type(self))
        return {f.name: why for f in fields(self) if f.init
                for why in [_type_problem(getattr(self, f.name), hints[f.name])] if why}

    def __post_init__(self):
        self.raw: dict = {}
        self.problems: dict[str, str] = {}


def _type_problem(value, hint) -> str:
    """'' when `value` fits the annotation `hint`, else a short reason."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return ""
    if origin is typing.Union:
        return "" if any(not _type_problem(value, a) for a in args) else \
            f"should be {' or '.join(_name(a) for a in args)}, not {_name(type(value))}"
    if hint is type(None):
        return "" if value is None else "should be null"
    if origin is list:
        if not isinstance(value, list):
            return f"should be a list, not {_name(type(value))}"
        for i, item in enumerate(value):
            why = _type_problem(item, args[0]) if args else ""
            if why:
                return f"item {i + 1} {why}"
        return ""
    base = origin or hint
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, base)
    return "" if ok else f"should be {_name(base)}, not {_name(type(value))}"


def _name(tp) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            dict: "an object", list: "a list", type(None): "null"}.get(tp, getattr(tp, "__name__",
                                                                                  str(tp)))


sha256_of = file_sha256  # the name the checks import


# ----------------------------------------------------------------------------- the steps
@dataclass
class Step1Baseline(StepRecord):
    """Notebook 1: what the base model says to the held prompts, before any training."""

    FILE: ClassVar[str] = artifacts.STEP1_BASELINE
    KIND: ClassVar[str] = "step1_baseline"
    model: dict                      # ModelInfo.to_dict() of the model that made it
    seed: int
    generation_spec: dict            # GenerationSpec.to_dict(), reused verbatim in step 4
    prompts: list[str]
    prompt_kinds: list[str]          # "theme" or "far", one per prompt
    outputs: list                    # one str per prompt (a list of str when sampling n)
    # generate(..., return_ids=True)'s ids, one list per output: what the grader verifies
    # (decoded text does not always re-tokenize to the same ids); absent in older runs
    output_ids: Optional[list] = None


@dataclass
class Step2Meta(StepRecord):
    """Notebook 2: describes the pairs file (PAIRS_FILE) saved next to it."""

    FILE: ClassVar[str] = artifacts.STEP2_META
    KIND: ClassVar[str] = "step2_meta"
    PAIRS_FILE: ClassVar[str] = artifacts.STEP2_PAIRS
    n_pairs: int
    pairs_sha256: str                # of the JSONL file's bytes
    heldout_prompts: list[str]
    theme: str

    @classmethod
    def save_pairs(cls, run_dir, pairs, theme: str, **checks) -> Path:
        """Validate and write the pairs JSONL (nothing written if invalid), then its meta;
        `checks` go to `labkit.data.save_jsonl` (heldout_prompts, tokenizer, ...)."""
        from .data import save_jsonl

        pairs_path = artifacts.run_dir(run_dir) / cls.PAIRS_FILE
        save_jsonl(pairs, pairs_path, **checks)
        cls(n_pairs=len(pairs), pairs_sha256=sha256_of(pairs_path), theme=theme,
            heldout_prompts=list(checks.get("heldout_prompts") or [])).save(run_dir)
        return pairs_path

    @classmethod
    def read_pairs(cls, run_dir=None):
        """(rows, line numbers) of the pairs file, as labkit.data.read_jsonl gives them."""
        from .data import read_jsonl

        return read_jsonl(cls.path(run_dir).with_name(cls.PAIRS_FILE))


@dataclass
class Step3Training(StepRecord):
    """Notebook 3: how the policy in POLICY_DIR was trained, and how training went."""

    FILE: ClassVar[str] = artifacts.STEP3_TRAINING
    KIND: ClassVar[str] = "step3_training"
    POLICY_DIR: ClassVar[str] = artifacts.STEP3_POLICY
    base_model: dict                 # ModelInfo.to_dict() of the starting model
    policy_sha256: str               # artifacts.weights_sha256 of POLICY_DIR
    pairs_sha256: str                # the step-2 pairs it was trained on
    n_pairs: int
    train_seconds: float
    dpo_config: dict                 # DPO_CONFIG_KEYS of the DPOConfig
    log_history: list                # trainer.state.log_history
    health: dict                     # labkit.health Diagnosis.to_dict()
    # {student_loss, labkit_loss, trl_loss, abs_diff, first_step: {student_loss, trl_loss}}
    crosscheck: dict
    samples_during_training: Optional[list] = None  # SampleCallback.samples

    @classmethod
    def save_trained(cls, run_dir, trainer, tokenizer, base_model, health, crosscheck,
                     samples=None) -> "Step3Training":
        """Save trainer.model into POLICY_DIR, then the record describing it (trained on
        the step-2 pairs file, all of whose rows count in n_pairs)."""
        run = artifacts.run_dir(run_dir)
        history = list(trainer.state.log_history)
        runtimes = [e["train_runtime"] for e in history if "train_runtime" in e]
        if not runtimes:
            raise ArtifactError("nothing trained to save yet: trainer.train() has not run to "
                                "the end in this kernel (its log has no train_runtime). Run "
                                "the training cell, then this one; nothing was saved")
        record = cls(
            base_model=_as_dict(base_model),
            policy_sha256=artifacts.save_policy(trainer.model, tokenizer, run / cls.POLICY_DIR),
            pairs_sha256=sha256_of(run / Step2Meta.PAIRS_FILE),
            n_pairs=len(Step2Meta.read_pairs(run)[0]),
            train_seconds=runtimes[-1],
            dpo_config={k: getattr(trainer.args, k) for k in DPO_CONFIG_KEYS},
            log_history=history, health=_as_dict(health), crosscheck=crosscheck,
            samples_during_training=samples)
        record.save(run)
        return record


@dataclass
class Step4Report(StepRecord):
    """Notebook 4: the step-1 prompts answered before and after training, and the metrics."""

    FILE: ClassVar[str] = artifacts.STEP4_REPORT
    KIND: ClassVar[str] = "step4_report"
    generation_spec: dict
    prompts: list[str]
    outputs_before: list
    outputs_after: list
    changed: list                    # one bool per prompt (Exercise 4.1)
    policy_sha256: str
    # METRIC_KEYS; style_rate_* hold the judge's mean score (null for a theme without a judge)
    metrics: dict
    outputs_after_ids: Optional[list] = None  # the ids of outputs_after (as Step1's output_ids)
    outcome: Optional[dict] = None   # labkit.outcome.Outcome.to_dict(): the measured shift
    heldout_accuracy: Optional[dict] = None   # labkit.stats.Estimate.to_dict() (n, interval)

    @classmethod
    def build(cls, spec, prompts, before, after, changed, policy_sha256, *,
              heldout_preference_accuracy, kl_mean, perplexity, style_rate=(None, None),
              after_ids=None, outcome=None, heldout_accuracy=None) -> "Step4Report":
        """The report, with `perplexity` and `style_rate` as (before, after) pairs,
        `after_ids` the token ids of `after` (generate(..., return_ids=True)), `outcome` a
        labkit.outcome.Outcome (its means fill style_rate) and `heldout_accuracy` an
        Estimate of the held-out accuracy."""
        if outcome is not None:
            style_rate = (outcome.before.value, outcome.after.value)
        values = (sum(changed), len(prompts), heldout_preference_accuracy, kl_mean,
                  *perplexity, *style_rate)
        return cls(generation_spec=_as_dict(spec), prompts=prompts, outputs_before=before,
                   outputs_after=after, changed=changed, policy_sha256=policy_sha256,
                   metrics=dict(zip(METRIC_KEYS, values)), outputs_after_ids=after_ids,
                   outcome=_as_dict(outcome) if outcome is not None else None,
                   heldout_accuracy=_as_dict(heldout_accuracy)
                   if heldout_accuracy is not None else None)


def _as_dict(value) -> dict:
    return value.to_dict() if hasattr(value, "to_dict") else value


STEPS = {1: Step1Baseline, 2: Step2Meta, 3: Step3Training, 4: Step4Report}
