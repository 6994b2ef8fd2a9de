"""A corpus of realistic student submissions, each with the grade a careful TA would give.

Every case is derived from the solution notebooks by small named edits (matching source
text, so a case follows the notebooks as they change and fails loudly when its text is
gone) and states, *before* grading, which rubric items it should fail and why. Points are
never written down: they come from grading.checks.rubric at grading time, so a reweighted rubric
does not break the corpus.

Kinds of case (kept cheap):
- `notebook`: one notebook graded alone (the grader runs the earlier steps from the
  reference solution and grades only this step);
- `lab`: the four notebooks;
- `artifact`: a copy of a real run directory, edited, graded with --no-execute (steps 1-2).

`python -m tests.students.run --out DIR [--run-dir RUN] [--docs]` (tests/students/run.py)
builds, grades (through the real CLI, --jobs 2) and compares; --docs rewrites docs/student-corpus.md. The slow test is
tests/test_student_corpus.py.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat

from tests.submissions import craft

ROOT = craft.ROOT
NB = craft.NAMES


# ----------------------------------------------------------------------------- notebook edits
def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def _code_index(nb, text: str) -> int:
    hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source]
    assert len(hits) == 1, f"{text!r} is in {len(hits)} code cells (expected 1)"
    return hits[0]


def sub(old: str, new: str) -> Callable[[Path], None]:
    """Replace `old` by `new` in the one code cell holding it."""
    return lambda path: craft.replace(path, old, new)


def add_after(anchor: str, code: str) -> Callable[[Path], None]:
    """A new code cell after the one holding `anchor`."""
    return lambda path: craft.inject(path, code, after=anchor)


def add_before(anchor: str, code: str) -> Callable[[Path], None]:
    return lambda path: craft.inject(path, code, before=anchor)


def duplicate(anchor: str) -> Callable[[Path], None]:
    """Run a cell twice (the copy right after it), as when a student re-runs it."""
    def edit(path: Path) -> None:
        nb = _read(path)
        i = _code_index(nb, anchor)
        nb.cells.insert(i + 1, nbformat.v4.new_code_cell(nb.cells[i].source))
        nbformat.write(nb, str(path))
    return edit


def in_notebook(step: int, *edits) -> Callable[[Path], None]:
    """For a `lab` case: apply notebook edits to one notebook of the submission folder."""
    def edit(folder: Path) -> None:
        for change in edits:
            change(folder / NB[step])
    return edit


# notebook-2 text (the solution retells the theme's example pairs on other concepts)
SOLUTION_PAIRS = ("pairs = [retold(pair, concept) for pair, concept in zip(theme.example_pairs, "
                  "EXTRA_CONCEPTS)]")
SWAPPED_PAIRS = SOLUTION_PAIRS + ("\npairs = [dict(prompt=p[\"prompt\"], chosen=p[\"rejected\"], "
                                  "rejected=p[\"chosen\"]) for p in pairs]")
EXAMPLE_PAIRS = "pairs = [dict(pair) for pair in theme.example_pairs]"   # copied from the theme
# pairs in a student's own words (tests/data/freeform/terse.jsonl: one-liners in plain English
# against real jargon; they fit the teaching model's 96 tokens)
_TERSE = ROOT / "tests" / "data" / "freeform" / "terse.jsonl"
OWN_WORDS_PAIRS = "pairs = " + repr([json.loads(line) for line in
                                     _TERSE.read_text(encoding="utf-8").splitlines() if line])

# notebook-3 text the edits match (the solution's own lines)
LOSS_LINE = "loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()"
CHOSEN_R = "chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)"
REJECTED_R = "rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)"
OUTPUT_DIR = 'output_dir=str(cfg.run_dir / "trainer"),'
TRAIN_CALL = "trainer.train()\n"
SAVE_CELL = "record = Step3Training.save_trained("

OTHER_PAIRS = '''
from labkit.teaching import EXTRA_CONCEPTS, PAIR_CONCEPTS, make_preference_pairs
# my own set: 14 plain-over-jargon pairs on other concepts than the solution's
pairs = make_preference_pairs(14, seed=5, concepts=PAIR_CONCEPTS[8:12] + EXTRA_CONCEPTS)
'''
RENAMED_LOSS = '''
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = ref_chosen_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (pi_logratios - ref_logratios))
    r_w = beta * (policy_chosen_logps - ref_chosen_logps)
    r_l = beta * (policy_rejected_logps - ref_rejected_logps)
    return losses.mean(), r_w, r_l
'''
EXPLORE_DATA = '''
import matplotlib.pyplot as plt
print(train_dataset)
print(train_dataset[0]["prompt"], "|", train_dataset[0]["chosen"][:60])
lengths = [len(tokenizer(r["chosen"])["input_ids"]) for r in train_dataset]
plt.hist(lengths); plt.title("chosen lengths (tokens)"); plt.show()
'''
EXPLORE_LOG = '''
import pandas as pd
frame = pd.DataFrame(trainer.state.log_history)
print(frame.tail(3).T)
print("trainable parameters:", sum(p.numel() for p in trainer.model.parameters()))
'''


# ----------------------------------------------------------------------------- artifact edits
def rewrite_pairs(change: Callable[[list], list]) -> Callable[[Path], None]:
    """Edit a run directory's pairs as a student writing the JSONL by hand would (the
    notebook's validation bypassed), keeping step2_meta.json in agreement with the file."""
    def edit(run: Path) -> None:
        from labkit.steps import sha256_of

        pairs_file, meta_file = run / "step2_preferences.jsonl", run / "step2_meta.json"
        rows = [json.loads(line) for line in pairs_file.read_text().splitlines() if line.strip()]
        rows = change(rows)
        pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        meta = json.loads(meta_file.read_text())
        meta.update(n_pairs=len(rows), pairs_sha256=sha256_of(pairs_file))
        meta_file.write_text(json.dumps(meta, indent=1))
    return edit


def leak_held_prompt(run: Path) -> None:
    held = json.loads((run / "step1_baseline.json").read_text())["prompts"][0]
    rewrite_pairs(lambda rows: [{**rows[0], "prompt": held}] + rows[1:])(run)


def _case_duplicate(rows):
    first = rows[0]
    return rows + [{"prompt": "  " + first["prompt"].upper(), "chosen": first["chosen"] + "  ",
                    "rejected": first["rejected"]}]


def _heldout_concepts(rows):
    from labkit.teaching import HELDOUT_CONCEPTS, make_preference_pairs

    step1 = {"a binary tree", "a graph", "dynamic programming", "a thread", "a mutex",
             "an interpreter"}  # the solution's step-1 held prompts: not these (that is a leak)
    concepts = tuple(c for c in HELDOUT_CONCEPTS if c not in step1)
    return make_preference_pairs(len(concepts), seed=3, concepts=concepts) + rows[:2]


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    name: str
    kind: str                         # "notebook", "lab" or "artifact"
    step: int | None                  # the notebook a `notebook` case edits
    what: str                         # what the student did
    edits: tuple = ()
    fails: frozenset = frozenset()    # rubric items a careful TA fails; all others pass
    why: str = ""                     # the TA's reasoning, for docs/student-corpus.md
    needs: str = ""                   # the fix this expectation waits for, if any
    shows: tuple = ()                 # text the executed notebooks must show (their outputs)

    @property
    def graded_steps(self) -> tuple[int, ...]:
        return {"notebook": (self.step,), "lab": (1, 2, 3, 4), "artifact": (1, 2)}[self.kind]


def nb(step, name, what, *edits, fails=(), why="", needs="", shows=()):
    return Case(name, "notebook", step, what, tuple(edits), frozenset(fails), why, needs,
                tuple(shows))


def art(name, what, *edits, fails=(), why="", needs=""):
    return Case(name, "artifact", None, what, tuple(edits), frozenset(fails), why, needs)


STEP3_TRAINING = ("trained", "finite_losses", "health", "policy_changed", "crosscheck",
                  "log_consistent")
LOSS_ITEMS = ("student_loss", "crosscheck")

CASES: tuple[Case, ...] = (
    # --- correct work, written differently: full marks
    Case("lab_solution", "lab", None, "the four solution notebooks, untouched"),
    nb(1, "other_held_prompts", "other on-theme held prompts and two far prompts",
       sub("theme_prompts = list(theme.theme_prompts)", "theme_prompts = list(theme.theme_prompts[1:5])"),
       sub("far_prompts = list(theme.far_prompts)",
           'far_prompts = ["Tell me about bread.\\n", "Tell me about the moon.\\n"]')),
    nb(2, "other_pairs_14", "another theme-consistent set: 14 pairs on other concepts",
       sub("### END SOLUTION", OTHER_PAIRS + "### END SOLUTION")),
    nb(3, "output_dir_relative", 'output_dir="dpo_out" (relative: works in JupyterLab)',
       sub(OUTPUT_DIR, 'output_dir="dpo_out",')),
    nb(3, "output_dir_absolute", "output_dir=os.path.abspath(...) next to the notebook",
       sub(OUTPUT_DIR, 'output_dir=__import__("os").path.abspath("dpo_out"),')),
    nb(3, "output_dir_missing", "no output_dir at all (TRL's default, trainer_output/)",
       sub(OUTPUT_DIR, "")),
    nb(3, "other_names", "TRL-style names in the loss, positional model/ref_model",
       sub(f"    {CHOSEN_R}\n    {REJECTED_R}\n    {LOSS_LINE}\n"
           "    return loss, chosen_rewards, rejected_rewards\n", RENAMED_LOSS.lstrip("\n")),
       sub("DPOTrainer(model=model, ref_model=ref_model,", "DPOTrainer(model, ref_model,")),
    nb(3, "extra_cells", "exploratory cells, prints and a plot before and after training",
       add_before("# Exercise 3.2", EXPLORE_DATA), add_after("trainer.train()", EXPLORE_LOG),
       add_after("def compute_dpo_loss", "print(compute_dpo_loss)")),
    nb(3, "loss_log_sigmoid", "loss written as torch.log(torch.sigmoid(...))",
       sub(LOSS_LINE, "loss = -torch.log(torch.sigmoid(chosen_rewards - rejected_rewards)).mean()")),
    nb(3, "loss_softplus", "loss written as F.softplus(-x)",
       sub(LOSS_LINE, "loss = F.softplus(-(chosen_rewards - rejected_rewards)).mean()")),
    nb(3, "batch2_epochs6", "batch size 2 and 6 epochs (24 steps instead of 20)",
       sub("per_device_train_batch_size=preset.per_device_train_batch_size,",
           "per_device_train_batch_size=2,"),
       sub("num_train_epochs=preset.num_train_epochs,", "num_train_epochs=6,")),
    nb(3, "cells_run_twice", "setup, loss, self-check, save and check cells each run twice",
       duplicate("cfg = session.start(step=3)"), duplicate("def compute_dpo_loss"),
       duplicate("check_dpo_loss(compute_dpo_loss"), duplicate(SAVE_CELL), duplicate("grading.check(3)")),
    nb(3, "no_callback", "callbacks=[watch] left out (exercise 3.2 now asks for it)",
       sub(", callbacks=[watch])", ")"),
       why="the callback only shows samples; the later cell says what to add"),
    # --- typical mistakes: lose exactly where the learning is missing
    Case("swapped", "lab", None, "chosen and rejected swapped in every pair (notebook 2)",
         (in_notebook(2, sub(SOLUTION_PAIRS, SWAPPED_PAIRS)),),
         frozenset({"moved_toward_preference", "not_worse"}),
         why="every pair is well formed and every mechanical part of the lab is right: the "
             "pairs save and validate (pairs_valid is about form), the loss is right, TRL trains "
             "healthily on the data it was given (margin > 0), the report is complete and "
             "reproduces. What is missing is the direction: the pairs prefer jargon, against "
             "the stated preference, so the policy moves away from it. Step 4 measures exactly "
             "that: the judge's change lies below 0 (moved the wrong way, the pairs look "
             "swapped), and the held-out pairs (which prefer plain) are now ranked wrong beyond "
             "chance, so the feedback says the run made the model worse"),
    Case("own_words_free_form", "lab", None, "8 pairs in the student's own words (terse "
         "one-liners in plain English against real jargon) on the teaching model",
         (in_notebook(2, sub(SOLUTION_PAIRS, OWN_WORDS_PAIRS)),),
         frozenset({"moved_toward_preference"}),
         why="honest work that the teaching model cannot learn from: the pairs cost it ~9.5 "
             "nats per token (its own text ~0.2), notebook 2 says so before the exercise and its "
             "review flags them. Training is healthy, but what the model writes does not move "
             "(the judge's change has an interval around 0: no detectable change, 0 points, "
             "the message names the unknown words as the reason). Not 100: the outcome the "
             "lab promises did not happen. Not worse either: neutral perplexity x1.3 and "
             "held-out accuracy at chance are within what the not_worse line allows (first "
             "written as failing not_worse too; the measured x1.29 is far from x2)"),
    Case("template_pairs", "lab", None, "14 pairs of the student's own in the teaching model's "
         "words (the template), on other concepts than the solution's",
         (in_notebook(2, sub("### END SOLUTION", OTHER_PAIRS + "### END SOLUTION")),),
         why="pairs the model can learn from: the style moves beyond the noise, full points"),
    nb(2, "copied_from_theme", "the theme's example pairs (the notebook's example) submitted "
       "as their own", sub(SOLUTION_PAIRS, EXAMPLE_PAIRS), fails=("pairs_valid",),
       why="the example pairs are the instructor's, printed by the notebook: flagged, and they "
           "do not count toward the 8 pairs exercise 2.1 asks for"),
    nb(3, "loss_missing_beta", "beta left out of the rewards (log-ratios only)",
       sub(CHOSEN_R, "chosen_rewards = policy_chosen_logps - ref_chosen_logps"),
       sub(REJECTED_R, "rejected_rewards = policy_rejected_logps - ref_rejected_logps"),
       fails=LOSS_ITEMS, shows=("NOT YET", "[ ] student_loss (0/5)"),
       why="loss items only; the notebook's own grading.check(3) runs the auto-grader's test "
           "on the kernel's function, so it shows the same failure as the self-check above it "
           "and the auto-grader (never NOT YET above PASSED)"),
    nb(3, "loss_sum", ".sum() instead of .mean() in the loss",
       sub(LOSS_LINE, LOSS_LINE.replace(".mean()", ".sum()")), fails=LOSS_ITEMS,
       why="the loss is wrong (the grader's own tests and the cross-check catch it); TRL "
           "trained with its own loss, so the training items stand"),
    nb(3, "loss_no_reference", "reference log-probs left out of the rewards",
       sub(CHOSEN_R, "chosen_rewards = beta * policy_chosen_logps"),
       sub(REJECTED_R, "rejected_rewards = beta * policy_rejected_logps"), fails=LOSS_ITEMS,
       why="the implicit reward is log(pi/pi_ref): loss items only"),
    nb(3, "loss_sign_flipped", "loss sign flipped (rejected - chosen)",
       sub(LOSS_LINE, "loss = -F.logsigmoid(rejected_rewards - chosen_rewards).mean()"),
       fails=LOSS_ITEMS, why="loss items only"),
    nb(3, "loss_beta_one_side", "beta applied to the chosen side only",
       sub(REJECTED_R, "rejected_rewards = policy_rejected_logps - ref_rejected_logps"),
       fails=LOSS_ITEMS, why="loss items only"),
    nb(3, "loss_calls_reference", "compute_dpo_loss returns labkit.dpo.dpo_loss(...)",
       sub(f"    {CHOSEN_R}\n    {REJECTED_R}\n    {LOSS_LINE}\n"
           "    return loss, chosen_rewards, rejected_rewards\n",
           "    from labkit.dpo import dpo_loss\n    return dpo_loss(policy_chosen_logps, "
           "policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)\n"),
       fails=("student_loss",),
       why="the loss was not written: no credit for it; the cross-check plumbing did run"),
    nb(3, "learning_rate_0", "learning_rate=0 in DPOConfig",
       sub("learning_rate=preset.learning_rate,", "learning_rate=0.0,"),
       fails=("health", "policy_changed", "log_consistent"),
       why="the run logged steps but learned nothing: the policy is the base model"),
    nb(3, "train_forgotten", "trainer.train() forgotten",
       sub(TRAIN_CALL, ""), fails=STEP3_TRAINING,
       why="no training run, so nothing of it to grade; the loss was written and earns its item"),
    nb(3, "tokenizer_kwarg", "tokenizer=tokenizer instead of processing_class= (TypeError)",
       sub("processing_class=tokenizer", "tokenizer=tokenizer"), fails=STEP3_TRAINING,
       why="the trainer was never built: no run; the loss still earns its item"),
    nb(3, "saved_before_training", "the save cell run before trainer.train()",
       sub(TRAIN_CALL, ""), add_after("# Exercise 3.2", "trainer.train()"),
       add_after("# Exercise 3.2", "from labkit.steps import Step3Training\n"
                 "record = Step3Training.save_trained(cfg.run_dir, trainer, tokenizer, "
                 "base_model=info, health=None, crosscheck=None)"),
       fails=STEP3_TRAINING,
       why="nothing of a trained policy was saved (saving an untrained trainer stops the "
           "notebook); the loss still earns its item"),
    nb(1, "no_far_prompt", "six on-theme held prompts and no far prompt",
       sub("far_prompts = list(theme.far_prompts)", "far_prompts = []"), fails=("held_prompts",),
       why="the exercise asks for >= 1 far prompt (the alignment tax is measured on it)"),
    nb(2, "seven_pairs_notebook", "7 pairs: the notebook's validation stops before saving",
       sub("### END SOLUTION", "pairs = pairs[:7]\n### END SOLUTION"),
       fails=("pairs_saved", "pairs_valid", "no_heldout_leak"),
       why="the notebook refuses to save and says why (add one pair); nothing was saved, so "
           "nothing of step 2 can be graded"),
    art("seven_pairs", "7 pairs saved by hand (validation bypassed)",
        rewrite_pairs(lambda rows: rows[:7]), fails=("pairs_valid",)),
    art("held_prompt_leaked", "a step-1 held prompt used as a training prompt",
        leak_held_prompt, fails=("no_heldout_leak",)),
    art("case_duplicate", "a whitespace/case duplicate of pair 1 added",
        rewrite_pairs(_case_duplicate), fails=("pairs_valid",)),
    art("heldout_concepts", "training pairs on the step-4 held-out concepts",
        rewrite_pairs(_heldout_concepts), fails=("no_heldout_leak",),
        why="held-out accuracy would measure memorisation"),
)
assert len({c.name for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------- build
def build(case: Case, root: Path, run_dir: Path | None = None) -> Path:
    """Write the case's submission under `root`; returns what to pass to the grader."""
    root.mkdir(parents=True, exist_ok=True)
    if case.kind == "artifact":
        dest = root / case.name
        shutil.copytree(run_dir, dest / "run", ignore=shutil.ignore_patterns(
            "executed", "step3_*", "step4_*", "trainer*", "*.log"))
        for edit in case.edits:
            edit(dest / "run")
        return dest
    if case.kind == "lab":
        dest = craft.solution(root / case.name)
        for edit in case.edits:
            edit(dest)
        return dest
    dest = root / f"{case.step:02d}_{case.name}.ipynb"
    shutil.copyfile(craft.NOTEBOOKS / NB[case.step], dest)
    for edit in case.edits:
        edit(dest)
    return dest


def result_name(case: Case) -> str:
    return case.name if case.kind != "notebook" else f"{case.step:02d}_{case.name}"
