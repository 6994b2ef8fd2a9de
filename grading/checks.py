"""check_step1..4: grade a run directory's step records, item by item, with a reason each.

The same functions run inside the notebooks (`grading.check(N)`) and in the auto-grader's
own process, so what a student sees is what the instructor's grader computes. A check never
raises on a student's mistake: a missing artifact becomes "not done yet" with a hint, a
broken one a failed item whose message says what is wrong. Records are loaded tolerantly
(`labkit.steps`, strict=False): a malformed field fails only the items that read it. Points
come from `rubric`; comparing weights with the base model is `grading.policy`'s job.
"""
from __future__ import annotations

import math
from pathlib import Path

from labkit.steps import Step1Baseline, Step2Meta, Step3Training, sha256_of

from . import bounds
from .bounds import guarded
from .results import CheckItem, CheckResult, all_failed, not_done, scored, step_result

__all__ = ["CheckItem", "CheckResult", "check", "check_step1", "check_step2", "check_step3",
           "check_step4"]


# ----------------------------------------------------------------------------- helpers
def load(cls, run: Path):
    """(record, None) or (None, reason): a student's broken artifact is a message. Size and
    nesting depth are bounded before parsing (`bounds.json_problem`)."""
    from labkit.artifacts import ArtifactError

    too_big = bounds.json_problem(cls.path(run))
    if too_big:
        return None, too_big
    try:
        return cls.load(run, strict=False), None
    except ArtifactError as exc:
        return None, str(exc)
    except (RecursionError, MemoryError) as exc:
        return None, f"{cls.FILE} cannot be read ({type(exc).__name__}); re-run its step"


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _run(run_dir) -> Path:
    from labkit.artifacts import run_dir as default_run_dir

    return Path(run_dir) if run_dir else default_run_dir(create=False)


def training_entries_of(rec: Step3Training) -> list[dict]:
    from labkit.health import training_entries

    history = rec.log_history if isinstance(rec.log_history, list) else []
    return training_entries([e for e in history if isinstance(e, dict)])


# ----------------------------------------------------------------------------- step 1
def _open(step: int, cls, run_dir):
    """(run, record, None), or (run, None, the step's result) when the record's file is
    missing ("not done yet") or cannot be read as that record (every item failed)."""
    run = _run(run_dir)
    if not cls.exists(run):
        return run, None, not_done(step, cls.FILE)
    rec, err = load(cls, run)
    return run, rec, None if rec is not None else all_failed(step, err)


def check_step1(run_dir=None) -> CheckResult:
    run, rec, early = _open(1, Step1Baseline, run_dir)
    if early:
        return early
    prompts = rec.prompts
    n = len(prompts) if isinstance(prompts, list) and all(
        isinstance(p, str) and p.strip() for p in prompts) else 0
    return step_result(1, [scored(1, "baseline_saved", True, f"{Step1Baseline.FILE} found"),
                           guarded(1, "model_and_spec", _model_and_spec, rec),
                           guarded(1, "held_prompts", _held_prompts, rec, n),
                           guarded(1, "outputs", _outputs, rec, n)])


def _model_and_spec(rec: Step1Baseline) -> CheckItem:
    from labkit.config import GenerationSpec

    resolved = as_dict(rec.model).get("resolved")
    if not (isinstance(resolved, str) and resolved):
        return scored(1, "model_and_spec", False, "the model that made the baseline is not "
                      "recorded (model.resolved): save info.to_dict()")
    if not rec.generation_spec:
        return scored(1, "model_and_spec", False, "no generation_spec recorded")
    try:
        spec = GenerationSpec.from_dict(as_dict(rec.generation_spec))
    except (TypeError, ValueError) as exc:
        return scored(1, "model_and_spec", False, f"generation_spec is not valid: {exc}")
    too_much = bounds.spec_problems(rec.generation_spec)
    if too_much:
        return scored(1, "model_and_spec", False, "; ".join(too_much))
    return scored(1, "model_and_spec", True, f"made by {resolved!r} with {spec}")


def _held_prompts(rec: Step1Baseline, n: int) -> CheckItem:
    """At least 4 on-theme prompts and at least 1 far one (notebook 1's Exercise 1.1), each
    with its kind, within the grader's limits."""
    kinds = rec.prompt_kinds
    kinds_ok = isinstance(kinds, list) and len(kinds) == n and all(
        isinstance(k, str) and k in ("theme", "far") for k in kinds)
    counts = {k: kinds.count(k) for k in ("theme", "far")} if kinds_ok else {}
    problems = [p for p in [bounds.prompts_problem(rec.prompts)] if p]
    if not kinds_ok:
        problems.append("prompt_kinds must say 'theme' or 'far' for each prompt")
    elif counts["theme"] < 4 or counts["far"] < 1:
        problems.append(f"{counts['theme']} on-theme and {counts['far']} far prompts: at least "
                        "4 on-theme and 1 far are needed (theme_prompts and far_prompts)")
    shown = f"{n} held prompts" + (f" ({counts['theme']} on-theme, {counts['far']} far)"
                                   if counts else "")
    return scored(1, "held_prompts", not problems,
                  shown + (": " + "; ".join(problems) if problems else ""))


def _outputs(rec: Step1Baseline, n: int) -> CheckItem:
    outputs = rec.outputs if isinstance(rec.outputs, list) else []
    flat = [o for out in outputs for o in (out if isinstance(out, list) else [out])]
    empty = [i + 1 for i, o in enumerate(flat) if not (isinstance(o, str) and o.strip())]
    if n and len(outputs) == n and not empty:
        return scored(1, "outputs", True, f"{len(flat)} non-empty outputs")
    return scored(1, "outputs", False, f"need one non-empty output per prompt: {n} prompts, "
                  f"{len(outputs)} outputs" + (f", empty: {empty[:5]}" if empty else ""))


# ----------------------------------------------------------------------------- step 2
def load_pairs(run: Path):
    """(rows, lines, meta, reason) for step 2; reason is None when both files read."""
    from labkit.data import PreferenceDataError

    meta, err = load(Step2Meta, run)
    too_big = bounds.json_problem(run / Step2Meta.PAIRS_FILE)
    if too_big:
        return None, None, meta, too_big
    try:
        rows, lines = Step2Meta.read_pairs(run)
    except FileNotFoundError:
        return None, None, meta, f"{Step2Meta.PAIRS_FILE} is missing"
    except (PreferenceDataError, OSError, UnicodeDecodeError, RecursionError) as exc:
        return None, None, meta, f"{Step2Meta.PAIRS_FILE} cannot be read: {exc}"
    return rows, lines, meta, err


def check_step2(run_dir=None) -> CheckResult:
    from labkit.data import find_problems

    run = _run(run_dir)
    pairs_file = run / Step2Meta.PAIRS_FILE
    if not pairs_file.exists() and not Step2Meta.exists(run):
        return not_done(2, Step2Meta.PAIRS_FILE)
    rows, lines, meta, err = load_pairs(run)
    if rows is not None and len(rows) > bounds.MAX_PAIRS:
        rows, err = None, (f"{len(rows)} pairs, over the grader's limit of {bounds.MAX_PAIRS}: "
                           "nothing else was checked")
    if err is None and meta.problems:
        err = f"{Step2Meta.FILE}: " + "; ".join(f"field {k!r} {v}" for k, v in
                                                 meta.problems.items())
    elif err is None and (meta.n_pairs != len(rows)
                          or meta.pairs_sha256 != sha256_of(pairs_file)):
        err = (f"{Step2Meta.FILE} does not describe {Step2Meta.PAIRS_FILE} (n_pairs "
               f"{meta.n_pairs} vs {len(rows)} rows, or another sha256): save both with the "
               "notebook's cell")
    saved = scored(2, "pairs_saved", err is None, err or f"{len(rows)} pairs saved")
    if rows is None:
        return step_result(2, [saved] + [scored(2, n, False, "needs a readable "
                                                + Step2Meta.PAIRS_FILE)
                                         for n in ("pairs_valid", "no_heldout_leak")])
    problems = []

    def valid_item():
        from .own_pairs import copied_note

        problems.extend(find_problems(rows, lines=lines))
        enough, copied = copied_note(rows)
        text = _problem_text(problems) if problems else f"{len(rows)} valid pairs"
        return scored(2, "pairs_valid", not problems and enough,
                      text + (f"; {copied}" if copied else ""))
    valid = guarded(2, "pairs_valid", valid_item)
    return step_result(2, [saved, valid, guarded(2, "no_heldout_leak", _leak_item, run, rows,
                                                 lines, meta, problems)])


def _leak_item(run, rows, lines, meta, problems) -> CheckItem:
    """labkit's own validation, with the step-1 prompts (and the meta's) as held-out, and no
    pair on a concept step 4 keeps for its held-out evaluation."""
    from labkit.data import find_problems

    step1, _ = load(Step1Baseline, run)
    if step1 is None:
        return scored(2, "no_heldout_leak", False, "step 1 not done yet: the leak check "
                      "compares your pairs with the step-1 held prompts")
    held = [p for p in _list(step1.prompts) + _list(getattr(meta, "heldout_prompts", None))
            if isinstance(p, str)]
    leaks = sorted(set(find_problems(rows, lines=lines, heldout_prompts=held)) - set(problems),
                   key=lambda p: p.row or 0) + heldout_concept_problems(rows, lines)
    return scored(2, "no_heldout_leak", not leaks, _problem_text(leaks) if leaks else
                  "no pair uses a held prompt or a held-out evaluation concept")


def heldout_concepts(theme=None) -> list[str]:
    """The concepts step 4 keeps for its held-out evaluation: the class theme's held-out
    pairs and judged prompts ("Explain a mutex." -> "a mutex")."""
    import re

    from labkit.themes import load_theme

    theme = theme or load_theme()
    prompts = [*theme.heldout_prompts, *(theme.judge.prompts if theme.judge else ())]
    concepts = (re.sub(r"^(explain|describe|what is|tell me about) ", "",
                       " ".join(p.casefold().split()).rstrip(".?!:")) for p in prompts)
    return list(dict.fromkeys(c for c in concepts if c))


def heldout_concept_problems(rows, lines=None, theme=None) -> list:
    """Pairs whose prompt names a concept of step 4's held-out evaluation (see
    `heldout_concepts`): training on them would make "held-out" accuracy measure
    memorisation."""
    import re

    from labkit.data import Problem

    patterns = {c: re.compile(r"\b" + re.escape(re.sub(r"^(a|an|the) ", "", c)) + r"s?\b")
                for c in heldout_concepts(theme)}
    found = []
    for i, row in enumerate(rows):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        text = " ".join(prompt.casefold().split()) if isinstance(prompt, str) else ""
        hits = [c for c, pattern in patterns.items() if pattern.search(text)]
        if hits:
            found.append(Problem(i + 1, "prompt", f"uses {hits[0]!r}, a concept step 4 keeps "
                                 "for its held-out evaluation: choose another concept",
                                 lines[i] if lines and i < len(lines) else None))
    return found


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _problem_text(problems, limit: int = 4) -> str:
    shown = "; ".join(str(p) for p in problems[:limit])
    return shown + (f" (and {len(problems) - limit} more)" if len(problems) > limit else "")


# ----------------------------------------------------------------------------- step 3
def check_step3(run_dir=None, base=None) -> CheckResult:
    """`base`: (model, tokenizer, info) to compare the policy with; by default the base
    model recorded in the artifact (grading.policy loads it; the auto-grader passes its own)."""
    from .policy import policy_changed_item

    run = _run(run_dir)
    policy_dir = run / Step3Training.POLICY_DIR
    if not Step3Training.exists(run) and not policy_dir.exists():
        return not_done(3, Step3Training.FILE)
    rec, err = load(Step3Training, run)
    if rec is None:
        return all_failed(3, err)
    entries = training_entries_of(rec)
    has_policy = policy_dir.is_dir()
    trained = scored(3, "trained", len(entries) >= 3 and has_policy,
                     f"{len(entries)} logged training steps"
                     + ("" if len(entries) >= 3 else " (at least 3: set logging_steps=1)")
                     + ("" if has_policy else f"; {Step3Training.POLICY_DIR}/ is missing: "
                        "save the policy"))
    return step_result(3, [trained, guarded(3, "finite_losses", _finite_losses, entries),
                           guarded(3, "health", _health, rec),
                           guarded(3, "policy_changed", policy_changed_item, run, rec, base),
                           guarded(3, "crosscheck", _crosscheck, rec, entries)])


def _finite_losses(entries: list[dict]) -> CheckItem:
    bad = [i + 1 for i, e in enumerate(entries) if not finite(e.get("loss"))]
    if not entries:
        return scored(3, "finite_losses", False, "no loss was logged")
    return scored(3, "finite_losses", not bad, f"loss is not a finite number at logged steps "
                  f"{bad[:5]}" if bad else "all logged losses are finite")


def _health(rec: Step3Training) -> CheckItem:
    """labkit.health's verdict, recomputed from log_history (the recorded one is ignored)."""
    from labkit.health import diagnose

    beta = as_dict(rec.dpo_config).get("beta")
    try:
        diagnosis = diagnose(rec.log_history or [], beta=beta if finite(beta) else None)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return scored(3, "health", False, f"log_history cannot be read: {exc}")
    ok = diagnosis.verdict not in {"no_learning", "diverged", "too_short"}
    return scored(3, "health", ok, f"{diagnosis.verdict}: " + "; ".join(diagnosis.reasons)
                  + ("" if ok else f". What to do: {diagnosis.advice}"))


def _crosscheck(rec: Step3Training, entries: list[dict]) -> CheckItem:
    """Your loss vs TRL's on the same pairs (recomputed from the two numbers, not taken from
    abs_diff), and, when recorded, your step-1 loss vs TRL's first *logged* loss."""
    cc = as_dict(rec.crosscheck)
    student, trl = cc.get("student_loss"), cc.get("trl_loss")
    if not (finite(student) and finite(trl)):
        return scored(3, "crosscheck", False, "no finite crosscheck student_loss/trl_loss: run "
                      "the cross-check cell (crosscheck_with_trl with your loss) after training")
    pairs = {"on the trained policy": (student, trl)}
    first, logged = as_dict(cc.get("first_step")), entries[0].get("loss") if entries else None
    if finite(first.get("student_loss")) and finite(logged):
        pairs["at TRL's first logged step"] = (first["student_loss"], logged)
    worst = max(abs(a - b) for a, b in pairs.values())
    text = "; ".join(f"{k}: yours {a:.6f} vs TRL {b:.6f}" for k, (a, b) in pairs.items())
    return scored(3, "crosscheck", worst < 1e-4, text + ("" if worst < 1e-4 else
                  f" - |diff| {worst:.2e} >= 1e-4: check compute_dpo_loss against the formula "
                  "(beta, chosen minus rejected log-ratios, -logsigmoid, the mean)"))


# ----------------------------------------------------------------------------- step 4
def check_step4(run_dir=None) -> CheckResult:
    """Step 4's items live in grading.step4 (with the direction check)."""
    from .step4 import check_step4 as check

    return check(run_dir)


CHECKS = {1: check_step1, 2: check_step2, 3: check_step3, 4: check_step4}


def check(step: int, run_dir=None) -> CheckResult:
    """Run step `step`'s check on the run directory and show it (HTML in Jupyter, text
    elsewhere). Returns the CheckResult. In a notebook, step 3 also grades exercises 3.1
    and 3.3 from this kernel's functions, as the auto-grader does."""
    if step not in CHECKS:
        raise ValueError(f"grading.check takes a step number 1-4, not {step!r}")
    result = CHECKS[step](run_dir)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:  # exercises 3.1/3.3 from this kernel, as the auto-grader grades them
        from .notebook_exercises import with_exercises

        result = with_exercises(result, shell.user_ns)
    if shell is None:
        print(result)
    else:
        result._ipython_display_()
    return result
