"""Themes: the one preference a lab run teaches, one TOML file each (`labkit/themes/<name>.toml`).

Why: the preference used to be spread over notebooks, labkit and the checks. A theme file
holds all of it — the preference in one sentence, example pairs (notebook 2's solution),
held prompts (on the theme and far from it), the held-out evaluation pairs (step 4's
accuracy) and, where a labkit judge can read it, the judge. `LABKIT_THEME` names the theme
(default `plain`); a path to a .toml file works too. A bad file is refused with every
problem at once, each naming its table, row and field, like the pairs validator.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..data import MIN_PAIRS, find_problems
from ..judges import Agreement, Judge, parse_judge

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (pyproject allows it): tomli has the same API
    import tomli as tomllib

THEMES_DIR = Path(__file__).parent
DEFAULT_THEME = "plain"
# 16 held-out pairs: one pair then moves the accuracy by 1/16, and its interval means something
MIN_THEME_PROMPTS, MIN_FAR_PROMPTS, MIN_HELDOUT_PAIRS = 4, 1, 16
# how far neutral perplexity may grow before step 4 calls a run worse, unless the theme says
# (a theme whose preference is costly by design, like `concise`, names its own)
MAX_PERPLEXITY_RATIO = 2.0
KEYS = {"title", "preference", "prompt_format", "max_perplexity_ratio", "held_prompts", "judge",
        "example_pairs",
        "heldout_pairs"}
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
                f"pairs\n  {judged}")


def theme_name() -> str:
    """The theme this run uses: `LABKIT_THEME`, else the default."""
    return os.environ.get("LABKIT_THEME", "").strip() or DEFAULT_THEME


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
               max_length: int | None = None) -> Theme:
    """Read and validate a theme (default: `theme_name()`). With `tokenizer` (and
    `max_length`), every pair must also fit that model's context. Raises ThemeError."""
    path = theme_path(name or theme_name())
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThemeError(str(path), [ThemeProblem(None, None, None, "file not found")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeError(str(path), [ThemeProblem(None, None, None, f"not valid TOML ({exc}); "
                                                  "fix the syntax there")]) from None
    problems = find_theme_problems(data, tokenizer=tokenizer, max_length=max_length)
    if problems:
        raise ThemeError(str(path), problems)
    held, judge = data["held_prompts"], parse_judge(data["judge"])[0] if "judge" in data else None
    judge = judge and replace(judge, prompts=judge.prompts or tuple(held["theme"]))
    pairs = {t: [_pair(r) for r in data[t]] for t in ("example_pairs", "heldout_pairs")}
    return Theme(name=path.stem, title=data["title"].strip(), preference=data["preference"].strip(),
                 theme_prompts=tuple(held["theme"]), far_prompts=tuple(held["far"]),
                 example_pairs=tuple(pairs["example_pairs"]),
                 heldout_pairs=tuple(pairs["heldout_pairs"]),
                 judge=judge, prompt_format=data.get("prompt_format", ""), path=path,
                 judge_agreements=tuple(judge.agreements(pairs)) if judge else (),
                 max_perplexity_ratio=float(data.get("max_perplexity_ratio",
                                                     MAX_PERPLEXITY_RATIO)))


def _pair(row: dict) -> dict:
    return {k: row[k] for k in ("prompt", "chosen", "rejected")}


# ----------------------------------------------------------------------------- validation
def find_theme_problems(data: dict, tokenizer=None, max_length=None) -> list[ThemeProblem]:
    """Every problem in a parsed theme file, in file order."""
    problems = [ThemeProblem(None, None, key, "unknown key" + _hint(key, KEYS) + "; a theme has "
                             + ", ".join(sorted(KEYS))) for key in data if key not in KEYS]
    problems += [ThemeProblem(None, None, key, "missing: " + _WHAT[key]) for key in REQUIRED
                 if key not in data]
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
    if example_rows is not None:
        never = [*(held["theme"] + held["far"] if held_ok else [])]
        never += [r.get("prompt") for r in heldout_rows or [] if isinstance(r, dict)]
        problems += _pair_problems("example_pairs", example_rows, MIN_PAIRS, judge,
                                   tokenizer, max_length, never)
    if judge is not None and example_rows is not None and heldout_rows is not None and not any(
            p.table in ("example_pairs", "heldout_pairs") for p in problems):
        problems += _agreement_problems(judge, {"example_pairs": example_rows,
                                                "heldout_pairs": heldout_rows})
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


def _agreement_problems(judge: Judge, tables: dict) -> list[ThemeProblem]:
    """A judge must prefer chosen on MIN_AGREEMENT of the theme's pairs: else it is
    refused, naming the pairs it disagrees on."""
    problems = []
    for agreement in judge.agreements(tables):
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
