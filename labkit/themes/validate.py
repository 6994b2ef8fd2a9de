"""Checking a parsed theme file: every problem at once, each with its table, row and field,
so an instructor fixes a theme in one pass. The pairs go through the same validator as a
student's pairs; a judge must agree with the theme's own pairs. The real-model pairs join a
student's training data: none may touch what step 4 evaluates (a held, held-out or judged
prompt, or its concept in other words).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..data import MIN_PAIRS, find_problems
from ..judges import Judge, parse_judge
from .concepts import concept_patterns, named_concepts

# 16 held-out pairs: one pair then moves the accuracy by 1/16, and its interval means something
MIN_THEME_PROMPTS, MIN_FAR_PROMPTS, MIN_HELDOUT_PAIRS = 4, 1, 16
# how far neutral perplexity may grow before step 4 calls a run worse, unless the theme says
# (a theme whose preference is costly by design, like `concise`, names its own)
MAX_PERPLEXITY_RATIO = 2.0
REAL_MODEL_PAIRS = "real_model_pairs"   # optional: added to a student's pairs on real models
PAIR_TABLES = ("example_pairs", "heldout_pairs", REAL_MODEL_PAIRS)
KEYS = {"title", "preference", "prompt_format", "max_perplexity_ratio", "held_prompts", "judge",
        *PAIR_TABLES, "student_version"}
# the student package's copy of a theme (labkit.bundle): its example pairs, the solution of
# exercise 2.1, are left out, and it says so with `student_version = true`
STUDENT_KEY = "student_version"
DEFAULT_FILE = "DEFAULT"  # in THEMES_DIR of a student package: the class's theme's name
REQUIRED = ("title", "preference", "held_prompts", "example_pairs", "heldout_pairs")


@dataclass(frozen=True)
class ThemeProblem:
    """One thing wrong with a theme file: where (table, 1-based row, field) and what to do."""

    table: str | None
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = [f"[{self.table}]" if self.table else "top level"]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field:
            where.append(f"field '{self.field}'")
        return ", ".join(where) + ": " + self.message


def find_theme_problems(data: dict, tokenizer=None, max_length=None,
                        is_teaching: bool = False) -> list[ThemeProblem]:
    """Every problem in a parsed theme file, in file order. The real-model pairs are not
    measured against the teaching model's tokenizer (`is_teaching`): it never trains on
    them."""
    problems = [ThemeProblem(None, None, key, "unknown key" + _hint(key, KEYS) + "; a theme has "
                             + ", ".join(sorted(KEYS))) for key in data if key not in KEYS]
    student = data.get(STUDENT_KEY) is True  # no example pairs, by design
    problems += [ThemeProblem(None, None, key, "missing: " + _WHAT[key]) for key in REQUIRED
                 if key not in data and not (student and key == "example_pairs")]
    for key in ("title", "preference", "prompt_format"):
        if key in data and not (isinstance(data[key], str) and data[key].strip()):
            problems.append(ThemeProblem(None, None, key, "must be a non-empty string"))
    ratio = data.get("max_perplexity_ratio", MAX_PERPLEXITY_RATIO)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 1:
        problems.append(ThemeProblem(None, None, "max_perplexity_ratio", "must be a number "
                                     "above 1 (how many times neutral perplexity may grow)"))
    held = data.get("held_prompts")
    problems += _held_problems(held) if held is not None else []
    held_ok = isinstance(held, dict) and not any(p.table == "held_prompts" for p in problems)
    judge, judge_problems = _judge(data.get("judge"))
    problems += judge_problems
    heldout_rows = _rows(data, "heldout_pairs", problems)
    example_rows = _rows(data, "example_pairs", problems)
    if heldout_rows is not None:
        problems += _pair_problems("heldout_pairs", heldout_rows, MIN_HELDOUT_PAIRS, judge,
                                   tokenizer, max_length, ())
    never = [*(held["theme"] + held["far"] if held_ok else [])]
    never += [r.get("prompt") for r in heldout_rows or [] if isinstance(r, dict)]
    if example_rows is not None:
        problems += _pair_problems("example_pairs", example_rows, MIN_PAIRS, judge,
                                   tokenizer, max_length, never)
    real_rows = _rows(data, REAL_MODEL_PAIRS, problems)
    if real_rows is not None:
        problems += _real_model_problems(real_rows, data, judge, never, None if is_teaching
                                         else tokenizer, max_length)
    tables = {"example_pairs": example_rows, "heldout_pairs": heldout_rows,
              **({REAL_MODEL_PAIRS: real_rows} if real_rows is not None else {})}
    if judge is not None and example_rows is not None and heldout_rows is not None and not any(
            p.table in PAIR_TABLES for p in problems):
        problems += _agreement_problems(judge, tables)
    return problems


_WHAT = {"title": "a short name for the preference, e.g. title = \"Plain over jargon\"",
         "preference": "the preference in one sentence",
         "held_prompts": "a [held_prompts] table with theme = [...] and far = [...]",
         "example_pairs": f"at least {MIN_PAIRS} [[example_pairs]] tables (prompt, chosen, "
                          "rejected)",
         "heldout_pairs": f"at least {MIN_HELDOUT_PAIRS} [[heldout_pairs]] tables (prompt, "
                          "chosen, rejected) on prompts the example pairs never use"}


def _hint(key, choices) -> str:
    close = difflib.get_close_matches(str(key), sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _held_problems(held) -> list[ThemeProblem]:
    if not isinstance(held, dict):
        return [ThemeProblem("held_prompts", None, None, "must be a table: [held_prompts] "
                             "with theme = [...] and far = [...]")]
    problems = [ThemeProblem("held_prompts", None, k, "unknown key" + _hint(k, {"theme", "far"}))
                for k in held if k not in ("theme", "far")]
    for key, least in (("theme", MIN_THEME_PROMPTS), ("far", MIN_FAR_PROMPTS)):
        prompts = held.get(key)
        if not isinstance(prompts, list) or len(prompts) < least:
            problems.append(ThemeProblem("held_prompts", None, key, f"needs a list of at least "
                                         f"{least} prompt(s)"))
            continue
        problems += _prompt_problems("held_prompts", key, prompts)
    if not problems and len(set(held["theme"] + held["far"])) < len(held["theme"] + held["far"]):
        problems.append(ThemeProblem("held_prompts", None, None, "a prompt is listed twice: "
                                     "each held prompt once"))
    return problems


def _prompt_problems(table, key, prompts) -> list[ThemeProblem]:
    problems = []
    for i, prompt in enumerate(prompts, start=1):
        if not (isinstance(prompt, str) and prompt.strip()):
            problems.append(ThemeProblem(table, i, key, "must be a non-empty string"))
        elif not prompt.endswith("\n"):
            problems.append(ThemeProblem(table, i, key, f"{prompt!r:.40} must end with a newline "
                                         "('\\n'), like every lab prompt"))
    return problems


def _judge(table) -> tuple[Judge | None, list[ThemeProblem]]:
    if table is None:
        return None, []
    judge, found = parse_judge(table)
    problems = [ThemeProblem("judge", None, field, message) for field, message in found]
    if isinstance(table, dict) and isinstance(table.get("prompts"), list):
        problems += _prompt_problems("judge", "prompts", table["prompts"])
    return (None if problems else judge), problems


def judge_agreements(judge: Judge, tables: dict) -> list:
    """Each of the judge's functions on the theme's pairs: the teaching model's judge does
    not read the real-model pairs (that model never trains on them)."""
    return judge.agreements(tables, any_model_only=(REAL_MODEL_PAIRS,))


def _agreement_problems(judge: Judge, tables: dict) -> list[ThemeProblem]:
    """A judge must prefer chosen on MIN_AGREEMENT of the theme's pairs: else it is
    refused, naming the pairs it disagrees on."""
    problems = []
    for agreement in judge_agreements(judge, tables):
        if agreement.valid:
            continue
        rows = "; ".join(f"{t} rows " + ", ".join(str(r) for tt, r in agreement.disagree if tt == t)
                         for t in tables if any(tt == t for tt, _ in agreement.disagree))
        field = "function" if agreement.function == judge.function else "teaching"
        problems.append(ThemeProblem("judge", None, field, f"{agreement}, below the 90 % a "
                                     f"judge needs; it does not prefer chosen on {rows}. Pick a "
                                     "judge that reads the preference, or fix those pairs"))
    return problems


def _rows(data, table, problems) -> list | None:
    rows = data.get(table)
    if rows is not None and not isinstance(rows, list):
        problems.append(ThemeProblem(table, None, None, f"must be an array of tables: write "
                                     f"each pair under its own [[{table}]] header"))
    return rows if isinstance(rows, list) else None


def _pair_problems(table, rows, least, judge: Judge | None, tokenizer, max_length,
                   never) -> list[ThemeProblem]:
    """labkit.data's row checks (fields, duplicates, leaks, lengths, swapped) as theme
    problems."""
    found = find_problems(rows, heldout_prompts=[p for p in never if isinstance(p, str)],
                          tokenizer=tokenizer, max_length=max_length, min_pairs=least,
                          **(judge.swapped_checks() if judge else {}))
    problems = [ThemeProblem(table, p.row, p.field, p.message.replace(
        "held-out evaluation prompts", "theme's held or held-out evaluation prompts")
        if table == "example_pairs" else p.message) for p in found]
    bad_rows = {p.row for p in found}
    for i, row in enumerate(rows, start=1):
        if i not in bad_rows and isinstance(row, dict) and not row["prompt"].endswith("\n"):
            problems.append(ThemeProblem(table, i, "prompt", "must end with a newline ('\\n'): "
                                         "its tokens are then a prefix of prompt + answer"))
    return problems


def _real_model_problems(rows, data, judge, never, tokenizer, max_length) -> list[ThemeProblem]:
    """The real-model pairs: valid pairs (as a student's), on no held or held-out prompt, no
    judged prompt, and no concept of either in other words."""
    judged = data["judge"].get("prompts") if isinstance(data.get("judge"), dict) else None
    judged = [p for p in judged if isinstance(p, str)] if isinstance(judged, list) else []
    problems = [ThemeProblem(REAL_MODEL_PAIRS, p.row, p.field, p.message.replace(
        "held-out evaluation prompts", "theme's held, held-out or judged prompts"))
        for p in _pair_problems(REAL_MODEL_PAIRS, rows, 0, judge and judge.for_model(False),
                                tokenizer, max_length, [*never, *judged])]
    patterns = concept_patterns(p for p in [*never, *judged] if isinstance(p, str))
    bad_rows = {p.row for p in problems}
    for i, row in enumerate(rows, start=1):
        hits = [] if i in bad_rows else named_concepts(row["prompt"], patterns)
        if hits:
            problems.append(ThemeProblem(REAL_MODEL_PAIRS, i, "prompt", f"names {hits[0]!r}, "
                                         "a concept step 4 evaluates (a held, held-out or "
                                         "judged prompt's): choose another concept"))
    return sorted(problems, key=lambda p: p.row or 0)
