"""check_step2: the preference pairs, their metadata, and no leak into what is held out."""
from __future__ import annotations

from pathlib import Path

from labkit.steps import Step1Baseline, Step2Meta, sha256_of
from labkit.themes.concepts import concept_patterns, named_concepts

from . import bounds
from .bounds import guarded
from .common import list_of, load, problem_text, run_path
from .results import CheckItem, CheckResult, not_done, scored, step_result


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


def check_step2(run_dir=None, theme=None) -> CheckResult:
    """`theme`: the class's Theme (its held-out concepts); default: labkit's current one."""
    from labkit.data import find_problems

    run = run_path(run_dir)
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
        enough, copied = copied_note(rows, theme)
        text = problem_text(problems) if problems else f"{len(rows)} valid pairs"
        return scored(2, "pairs_valid", not problems and enough,
                      text + (f"; {copied}" if copied else ""))
    valid = guarded(2, "pairs_valid", valid_item)
    return step_result(2, [saved, valid, guarded(2, "no_heldout_leak", _leak_item, run, rows,
                                                 lines, meta, problems, theme)])


def _leak_item(run, rows, lines, meta, problems, theme=None) -> CheckItem:
    """labkit's own validation, with the step-1 prompts (and the meta's) as held-out, and no
    pair on a concept step 4 keeps for its held-out evaluation."""
    from labkit.data import find_problems

    step1, _ = load(Step1Baseline, run)
    if step1 is None:
        return scored(2, "no_heldout_leak", False, "step 1 not done yet: the leak check "
                      "compares your pairs with the step-1 held prompts")
    held = [p for p in list_of(step1.prompts) + list_of(getattr(meta, "heldout_prompts", None))
            if isinstance(p, str)]
    leaks = sorted(set(find_problems(rows, lines=lines, heldout_prompts=held)) - set(problems),
                   key=lambda p: p.row or 0) + heldout_concept_problems(rows, lines, theme)
    return scored(2, "no_heldout_leak", not leaks, problem_text(leaks) if leaks else
                  "no pair uses a held prompt or a held-out evaluation concept")


def heldout_concepts(theme=None) -> list[str]:
    """The concepts step 4 keeps for its held-out evaluation: the class theme's held-out
    pairs and judged prompts ("Explain a mutex." -> "a mutex")."""
    return list(concept_patterns(_evaluation_prompts(theme)))


def _evaluation_prompts(theme=None) -> list[str]:
    from labkit.themes import load_theme

    theme = theme or load_theme()
    return [*theme.heldout_prompts, *(theme.judge.prompts if theme.judge else ())]


def heldout_concept_problems(rows, lines=None, theme=None) -> list:
    """Pairs whose prompt names a concept of step 4's held-out evaluation (see
    `heldout_concepts`): training on them would make "held-out" accuracy measure
    memorisation."""
    from labkit.data import Problem

    patterns = concept_patterns(_evaluation_prompts(theme))
    found = []
    for i, row in enumerate(rows):
        hits = named_concepts(row.get("prompt") if isinstance(row, dict) else None, patterns)
        if hits:
            found.append(Problem(i + 1, "prompt", f"uses {hits[0]!r}, a concept step 4 keeps "
                                 "for its held-out evaluation: choose another concept",
                                 lines[i] if lines and i < len(lines) else None))
    return found
