"""Themes: the one preference a lab run teaches, one TOML file each (`labkit/themes/<name>.toml`).

Why: one home for the preference, read by the notebooks, labkit and the checks. A theme file
holds all of it — the preference in one sentence, example pairs (notebook 2's solution),
held prompts (on the theme and far from it), the held-out evaluation pairs (step 4's
accuracy), optionally extra pairs for real models (`[[real_model_pairs]]`: notebook 2 adds
them to a student's pairs on any model but the teaching model, as a handful of pairs alone
does not change what a real model writes, docs/models.md) and, where a labkit judge can read
it, the judge. `LABKIT_THEME` names the theme (default `plain`); a path to a .toml file
works too. A bad file is refused with every problem at once, each naming its table, row and
field, like the pairs validator.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..data import FIELDS, normalised
from ..judges import Agreement, Judge, parse_judge
from .validate import (DEFAULT_FILE, KEYS, MAX_PERPLEXITY_RATIO, MIN_FAR_PROMPTS,  # noqa: F401
                       MIN_HELDOUT_PAIRS, MIN_THEME_PROMPTS, PAIR_TABLES, REAL_MODEL_PAIRS,
                       REQUIRED, STUDENT_KEY, ThemeProblem, find_theme_problems,
                       judge_agreements)

import tomllib

THEMES_DIR = Path(__file__).parent
DEFAULT_THEME = "plain"


class ThemeError(ValueError):
    """Every problem in one theme file; `.problems` holds them for programs."""

    def __init__(self, source: str, problems: list[ThemeProblem]):
        self.source, self.problems = source, list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in theme {source}:\n{lines}")


@dataclass(frozen=True)
class Theme:
    name: str
    title: str
    preference: str
    theme_prompts: tuple[str, ...]
    far_prompts: tuple[str, ...]
    example_pairs: tuple[dict, ...]
    heldout_pairs: tuple[dict, ...]
    judge: Judge | None = None
    prompt_format: str = ""
    path: Path | None = None
    judge_agreements: tuple[Agreement, ...] = ()   # each judge function on the theme's pairs
    max_perplexity_ratio: float = MAX_PERPLEXITY_RATIO
    real_model_pairs: tuple[dict, ...] = ()  # the instructor's, added on real models only

    @property
    def reference(self) -> str:
        """How another process names this theme: a shipped theme by its name, an
        instructor's file by its absolute path (that process's working folder differs)."""
        if self.path is None or self.path.resolve().parent == THEMES_DIR.resolve():
            return self.name
        return str(self.path.resolve())

    @property
    def held_prompts(self) -> list[str]:
        return [*self.theme_prompts, *self.far_prompts]

    @property
    def prompt_kinds(self) -> list[str]:
        return ["theme"] * len(self.theme_prompts) + ["far"] * len(self.far_prompts)

    @property
    def heldout_prompts(self) -> list[str]:
        """The held-out evaluation pairs' prompts: never to be trained on."""
        return list(dict.fromkeys(p["prompt"] for p in self.heldout_pairs))

    @property
    def evaluation_prompts(self) -> list[str]:
        """Every prompt the theme evaluates on (held, held-out pairs', the judge's)."""
        judged = self.judge.prompts if self.judge else ()
        return list(dict.fromkeys([*self.held_prompts, *self.heldout_prompts, *judged]))

    def provided_rows(self, rows) -> list[int]:
        """1-based rows that are this theme's real-model pairs (after `normalised`): the
        instructor's data, neither a student's own pairs nor copied from the examples."""
        theirs = {_key(p) for p in self.real_model_pairs}
        return [i for i, row in enumerate(rows, start=1) if isinstance(row, dict)
                and all(isinstance(row.get(k), str) for k in FIELDS) and _key(row) in theirs]

    def with_real_model_pairs(self, pairs, is_teaching: bool,
                              held_prompts=()) -> tuple[list[dict], str]:
        """(`pairs`, then this theme's real-model pairs; a note saying what was added and
        why). Nothing is added on the teaching model, nor a pair on one of `held_prompts`
        (never trained on). Running it again gives the same pairs."""
        pairs = list(pairs)
        if is_teaching or not self.real_model_pairs:
            return pairs, ""
        theirs = set(self.provided_rows(pairs))
        own = [p for i, p in enumerate(pairs, start=1) if i not in theirs]
        held = {normalised(p) for p in held_prompts if isinstance(p, str)}
        extra = [dict(p) for p in self.real_model_pairs if normalised(p["prompt"]) not in held]
        left_out = len(self.real_model_pairs) - len(extra)
        note = (f"Added the theme's {len(extra)} real-model pairs (rows {len(own) + 1}-"
                f"{len(own) + len(extra)}) to your {len(own)}: on a real model a handful of "
                "pairs alone does not change what it writes (docs/models.md). They are your "
                "instructor's data, not graded as yours"
                + (f"; {left_out} left out: on your held prompts" if left_out else "") + ".")
        return own + extra, note

    def judge_checks(self) -> dict:
        """`judge`/`preferred` for labkit.data's swapped-pair check ({} without a label
        judge)."""
        return self.judge.swapped_checks() if self.judge else {}

    def judge_for(self, is_teaching: bool) -> Judge | None:
        """The judge that reads this model's text (None: the theme has no judge)."""
        return self.judge.for_model(is_teaching) if self.judge else None

    def __str__(self) -> str:
        judged = ("judge: " + "; ".join(map(str, self.judge_agreements)) + " (a judge needs "
                  "90 %)" if self.judge else "no judge: step 4's outcome is not measured")
        return (f"theme {self.name!r}: {self.title}\n  preference: {self.preference}\n"
                f"  {len(self.theme_prompts)} theme + {len(self.far_prompts)} far held prompts, "
                f"{len(self.example_pairs)} example pairs, {len(self.heldout_pairs)} held-out "
                f"pairs" + (f", {len(self.real_model_pairs)} real-model pairs" if
                            self.real_model_pairs else "") + f"\n  {judged}")


def theme_name() -> str:
    """The theme this run uses: `LABKIT_THEME`, else the class's theme a student package
    names (THEMES_DIR/DEFAULT), else the default."""
    named = THEMES_DIR / DEFAULT_FILE
    package_default = named.read_text(encoding="utf-8").strip() if named.is_file() else ""
    return os.environ.get("LABKIT_THEME", "").strip() or package_default or DEFAULT_THEME


def available() -> list[str]:
    return sorted(p.stem for p in THEMES_DIR.glob("*.toml"))


def theme_path(name: str | os.PathLike) -> Path:
    text = str(name)
    if text.endswith(".toml") or os.sep in text:
        return Path(text)
    path = THEMES_DIR / f"{text}.toml"
    if not path.exists():
        close = difflib.get_close_matches(text, available(), n=1)
        raise ThemeError(repr(text), [ThemeProblem(None, None, None, (
            f"no such theme{f' (did you mean {close[0]!r}?)' if close else ''}; shipped: "
            f"{', '.join(available())}. Set LABKIT_THEME to one of them or to a .toml path"))])
    return path


def load_theme(name: str | os.PathLike | None = None, tokenizer=None,
               max_length: int | None = None, is_teaching: bool = False) -> Theme:
    """Read and validate a theme (default: `theme_name()`). With `tokenizer` (and
    `max_length`), every pair must also fit that model's context (the real-model pairs
    only when `is_teaching` is False: the teaching model never trains on them). Raises
    ThemeError."""
    path = theme_path(name or theme_name())
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThemeError(str(path), [ThemeProblem(None, None, None, "file not found")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeError(str(path), [ThemeProblem(None, None, None, f"not valid TOML ({exc}); "
                                                  "fix the syntax there")]) from None
    problems = find_theme_problems(data, tokenizer=tokenizer, max_length=max_length,
                                   is_teaching=is_teaching)
    if problems:
        raise ThemeError(str(path), problems)
    held, judge = data["held_prompts"], parse_judge(data["judge"])[0] if "judge" in data else None
    judge = judge and replace(judge, prompts=judge.prompts or tuple(held["theme"]))
    pairs = {t: [_pair(r) for r in data.get(t, ())] for t in PAIR_TABLES}
    return Theme(name=path.stem, title=data["title"].strip(), preference=data["preference"].strip(),
                 theme_prompts=tuple(held["theme"]), far_prompts=tuple(held["far"]),
                 example_pairs=tuple(pairs["example_pairs"]),
                 heldout_pairs=tuple(pairs["heldout_pairs"]),
                 judge=judge, prompt_format=data.get("prompt_format", ""), path=path,
                 judge_agreements=tuple(judge_agreements(judge, {
                     t: rows for t, rows in pairs.items() if t in data or t != REAL_MODEL_PAIRS}))
                 if judge else (),
                 max_perplexity_ratio=float(data.get("max_perplexity_ratio",
                                                     MAX_PERPLEXITY_RATIO)),
                 real_model_pairs=tuple(pairs[REAL_MODEL_PAIRS]))


def _pair(row: dict) -> dict:
    return {k: row[k] for k in FIELDS}


def _key(row: dict) -> tuple[str, ...]:
    return tuple(normalised(row[k]) for k in FIELDS)
