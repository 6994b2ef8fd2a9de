"""The points table: every graded item of steps 1-4, as data (results: grading.checks.results).

Checks (grading.check) and the auto-grader look points and descriptions up here, so the
rubric an instructor reads is exactly the one that is scored. Items marked `integrity` are
recomputations only the auto-grader runs (they need the notebook file, the grader's own copy
of the base model, or teacher-forced verification); `grading.check(N)` in a notebook lists them but does
not score them, except exercises 3.1 and 3.3 (student_loss, student_logps), which it runs on
the kernel's own functions with the auto-grader's test (grading.notebook_exercises). Each
step is worth 25 points in the auto-grader, 100 in all.
"""
from __future__ import annotations

from dataclasses import dataclass

from labkit.steps import METRIC_KEYS  # noqa: F401 - the rubric's `metrics` item


@dataclass(frozen=True)
class Item:
    step: int
    name: str
    points: float
    description: str
    integrity: bool = False


RUBRIC: tuple[Item, ...] = (
    # Step 1: the baseline, captured before any training
    Item(1, "baseline_saved", 5, "step1_baseline.json exists and is a readable step-1 artifact"),
    Item(1, "model_and_spec", 5, "it records the model that made it and a valid GenerationSpec "
         "(max_new_tokens <= 256, num_samples <= 16, batch_size <= 64)"),
    Item(1, "held_prompts", 5, "at least 4 on-theme and 1 far held prompts, each with its "
         "kind (theme/far); at most 32, each under 2000 characters"),
    Item(1, "outputs", 5, "one non-empty output per prompt"),
    Item(1, "baseline_reproduces", 5, "the base model produces these outputs with the recorded "
         "GenerationSpec: teacher-forced, each recorded token the top choice within "
         "grading.checks.verify's tolerance (device/dtype independent); recorded ids decode to the text",
         integrity=True),
    # Step 2: preference pairs
    Item(2, "pairs_saved", 5, "step2_preferences.jsonl and step2_meta.json exist and agree "
         "(pair count, sha256 of the JSONL)"),
    Item(2, "pairs_valid", 10, "at least 8 valid pairs of your own: every field a non-empty "
         "string, chosen differs from rejected, no duplicates; pairs copied from the theme's "
         "example pairs (after normalising) are flagged and do not count"),
    Item(2, "no_heldout_leak", 10, "no pair uses one of the step-1 held prompts, nor a "
         "concept of step 4's held-out evaluation (the class theme's held-out pairs and "
         "judged prompts)"),
    # Step 3: DPO training with TRL. The two exercises weigh most: the code written from
    # scratch (3.1 loss, 3.3 log-probs, and the loss agreeing with TRL's: 11 points) and the
    # TRL run itself (3.2: trained and healthy, 9); the plumbing around them 5.
    Item(3, "trained", 5, "Exercise 3.2: a DPOTrainer run was saved and logged at least 3 "
         "training steps"),
    Item(3, "finite_losses", 1, "every logged loss is a finite number"),
    Item(3, "health", 4, "Exercise 3.2: the training-health verdict (recomputed from "
         "log_history) is neither no_learning nor diverged"),
    Item(3, "policy_changed", 2, "the saved policy's weights match their recorded sha256, "
         "differ from the base model's, and reproduce the recorded cross-check loss on the first "
         "batch of the saved pairs (difference <= 0.01 + 10%), below ln 2 - 0.01 with margin > 0"),
    Item(3, "crosscheck", 3, "your compute_dpo_loss agrees with TRL's loss on the same pairs "
         "and with TRL's first logged loss (absolute difference < 1e-4)"),
    Item(3, "log_consistent", 2, "the log matches the saved config and data: steps = "
         "ceil(pairs / batch) x epochs, learning_rate > 0, trained on the step-2 pairs, "
         "starting from the grader's base model", integrity=True),
    Item(3, "student_loss", 5, "Exercise 3.1: compute_dpo_loss, taken from notebook 3 alone, "
         "equals labkit.dpo.dpo_loss on fresh random tensors; it must be written, not "
         "imported (a call into labkit.dpo or TRL scores 0); grading.check(3) in the notebook "
         "runs the same test on the kernel's function", integrity=True),
    Item(3, "student_logps", 3, "Exercise 3.3: compute_sequence_logps, taken from notebook 3 "
         "alone, equals labkit's summed completion log-probs on fresh random logits (written, "
         "not imported; grading.check(3) runs it too)", integrity=True),
    # Step 4: before / after. The outcome the lab promises (the policy writes measurably more
    # like the preference) is worth 5 of the 25: a real share, but not so much that a careful
    # run on a model DPO barely moves (8 pairs on a pretrained model) fails the step. Points
    # come only from an interval that excludes 0, never from a point estimate. "Changed greedy
    # outputs" is a weak signal (a broken run changes them too): 1 point.
    Item(4, "same_prompts_spec", 4, "outputs before/after come from the step-1 prompts, "
         "outputs and GenerationSpec, unchanged"),
    Item(4, "same_policy", 4, "the report names the step-3 policy (same weights sha256)"),
    Item(4, "outputs_changed", 1, "at least one output changed after training"),
    Item(4, "metrics", 3, "the report holds every metric, each a finite number (the judge's "
         "means may be null only for a theme without a judge)"),
    Item(4, "moved_toward_preference", 5, "the theme's judge (any model; the teaching model's "
         "own judge there) scored k sampled answers per judged prompt before and after: the "
         "95 % paired-bootstrap interval of the change, recomputed from the recorded scores, "
         "lies entirely above 0. No detectable change or the wrong way (pairs swapped) scores "
         "0 with the reason; a theme without a judge is 'not measured' (0)"),
    Item(4, "not_worse", 1, "the run did not make the model worse: held-out accuracy's Wilson "
         "interval does not lie below 0.5, and neutral perplexity did not grow more than the "
         "theme's max_perplexity_ratio (x2 unless the theme says; else an explicit WORSE line)"),
    Item(4, "outputs_reproduce", 7, "the saved policy produces the reported outputs_after with "
         "the step-1 GenerationSpec (teacher-forced, as baseline_reproduces)", integrity=True),
)

STEP_TITLES = {1: "Baseline", 2: "Preference pairs", 3: "DPO training", 4: "Before and after"}

NOTEBOOKS = {1: "01_baseline.ipynb", 2: "02_preferences.ipynb", 3: "03_train_dpo.ipynb",
             4: "04_before_after.ipynb"}

# What to do when a step's artifact is missing: which notebook, which cells. The auto-grader
# puts the name of the file the student submitted in place of NOTEBOOKS[step].
NOT_DONE_HINTS = {
    1: "Open 01_baseline.ipynb, finish Exercise 1.1 (theme_prompts and far_prompts) "
       "and run every cell top to bottom (Kernel > Restart & Run All); the cell under "
       "'5) Save the baseline' writes step1_baseline.json.",
    2: "Open 02_preferences.ipynb, finish Exercise 2.1 (at least 8 pairs) and run "
       "every cell; the cell under '4) Save the dataset' writes step2_preferences.jsonl and "
       "step2_meta.json. Step 1 must be done first.",
    3: "Open 03_train_dpo.ipynb, finish Exercise 3.1 (compute_dpo_loss) and "
       "Exercise 3.2 (DPOConfig, DPOTrainer, trainer.train()), then run every cell; the cell "
       "under '5) Save the policy' writes step3_policy/ and step3_training.json.",
    4: "Open 04_before_after.ipynb, finish Exercise 4.1 (`changed`) and run every "
       "cell; the cell under '6) Save the report' writes step4_report.json. Step 3 must be "
       "done first.",
}


def items_for(step: int, integrity: bool | None = None) -> list[Item]:
    """The step's items; `integrity` True/False selects only those / only the others."""
    if step not in STEP_TITLES:
        raise ValueError(f"there are steps 1-4, not {step!r}")
    return [i for i in RUBRIC if i.step == step and (integrity is None or i.integrity == integrity)]


def item(step: int, name: str) -> Item:
    for candidate in RUBRIC:
        if candidate.step == step and candidate.name == name:
            return candidate
    raise KeyError(f"no rubric item {name!r} in step {step}")


def max_points(step: int | None = None, integrity: bool | None = None) -> float:
    steps = [step] if step else list(STEP_TITLES)
    return sum(i.points for s in steps for i in items_for(s, integrity))


def as_markdown() -> str:
    """The rubric as a Markdown table (docs/rubric.md, via `python -m grading.docs`)."""
    lines = ["| step | item | points | graded by | what it checks |", "|---|---|---|---|---|"]
    for i in RUBRIC:
        who = "auto-grader" if i.integrity else "notebook + auto-grader"
        lines.append(f"| {i.step} | {i.name} | {i.points:g} | {who} | {i.description} |")
    return "\n".join(lines)


NOT_DONE = "not done yet"
