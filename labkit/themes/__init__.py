"""Themes: the one preference a lab run teaches, one TOML file each (`labkit/themes/<name>.toml`).

Why: one home for the preference, read by the notebooks, labkit and the checks. A theme file
holds all of it — the preference in one sentence, example pairs (notebook 2's solution),
held prompts (on the theme and far from it), the held-out evaluation pairs (step 4's
accuracy) and, where a labkit judge can read it, the judge. `LABKIT_THEME` names the theme
(default `plain`); a path to a .toml file works too. A bad file is refused with every
problem at once, each naming its table, row and field, like the pairs validator.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import MIN_PAIRS, find_problems

import tomllib

THEMES_DIR = Path(__file__).parent
DEFAULT_THEME = "plain"
MIN_THEME_PROMPTS, MIN_FAR_PROMPTS, MIN_HELDOUT_PAIRS = 4, 1, 4
# judge name -> (module, function): a text -> label function in labkit
JUDGES = {"judge_style": ("labkit.teaching", "judge_style")}
KEYS = {"title", "preference", "prompt_format", "held_prompts", "judge", "example_pairs",
        "heldout_pairs", "student_version"}
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


class ThemeError(ValueError):
    """Every problem in one theme file; `.problems` holds them for programs."""

    def __init__(self, source: str, problems: list[ThemeProblem]):
        self.source, self.problems = source, list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in theme {source}:\n{lines}")


@dataclass(frozen=True)
class Judge:
    """A labkit text -> label function, and which label the theme prefers."""

    function: str
    preferred: str
    rejected: str | None
    prompts: tuple[str, ...]    # sampled before/after for the preferred-style rate

    def __call__(self, text: str) -> str:
        import importlib

        module, name = JUDGES[self.function]
        return getattr(importlib.import_module(module), name)(text)

    def rate(self, texts) -> float:
        """Share of `texts` the judge reads as the preferred label."""
        texts = list(texts)
        if not texts:
            raise ValueError("a style rate needs at least one text")
        return sum(self(t) == self.preferred for t in texts) / len(texts)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.preferred, self.rejected or "other", "unclear"]))


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

    def judge_checks(self) -> dict:
        """`judge`/`preferred` for labkit.data's swapped-pair check ({} without a judge)."""
        return dict(judge=self.judge, preferred=self.judge.preferred) if self.judge else {}

    def __str__(self) -> str:
        judged = (f"judge {self.judge.function} (prefers {self.judge.preferred!r})"
                  if self.judge else "no judge (no style rate)")
        return (f"theme {self.name!r}: {self.title}\n  preference: {self.preference}\n"
                f"  {len(self.theme_prompts)} theme + {len(self.far_prompts)} far held prompts, "
                f"{len(self.example_pairs)} example pairs, {len(self.heldout_pairs)} held-out "
                f"pairs, {judged}")


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
    held, judge = data["held_prompts"], data.get("judge")
    return Theme(name=path.stem, title=data["title"].strip(), preference=data["preference"].strip(),
                 theme_prompts=tuple(held["theme"]), far_prompts=tuple(held["far"]),
                 example_pairs=tuple(_pair(r) for r in data.get("example_pairs", ())),
                 heldout_pairs=tuple(_pair(r) for r in data["heldout_pairs"]),
                 judge=None if judge is None else Judge(
                     judge["function"], judge["preferred"], judge.get("rejected"),
                     tuple(judge.get("prompts") or held["theme"])),
                 prompt_format=data.get("prompt_format", ""), path=path)


def _pair(row: dict) -> dict:
    return {k: row[k] for k in ("prompt", "chosen", "rejected")}


# ----------------------------------------------------------------------------- validation
def find_theme_problems(data: dict, tokenizer=None, max_length=None) -> list[ThemeProblem]:
    """Every problem in a parsed theme file, in file order."""
    problems = [ThemeProblem(None, None, key, "unknown key" + _hint(key, KEYS) + "; a theme has "
                             + ", ".join(sorted(KEYS))) for key in data if key not in KEYS]
    student = data.get(STUDENT_KEY) is True  # no example pairs, by design
    problems += [ThemeProblem(None, None, key, "missing: " + _WHAT[key]) for key in REQUIRED
                 if key not in data and not (student and key == "example_pairs")]
    for key in ("title", "preference", "prompt_format"):
        if key in data and not (isinstance(data[key], str) and data[key].strip()):
            problems.append(ThemeProblem(None, None, key, "must be a non-empty string"))
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


def _judge(judge) -> tuple[Judge | None, list[ThemeProblem]]:
    if judge is None:
        return None, []
    if not isinstance(judge, dict):
        return None, [ThemeProblem("judge", None, None, "must be a table: [judge] with "
                                   "function and preferred (or leave it out: no style rate)")]
    allowed = {"function", "preferred", "rejected", "prompts"}
    problems = [ThemeProblem("judge", None, k, "unknown key" + _hint(k, allowed))
                for k in judge if k not in allowed]
    if judge.get("function") not in JUDGES:
        problems.append(ThemeProblem("judge", None, "function", f"{judge.get('function')!r} is "
                                     f"not a labkit judge; known: {', '.join(JUDGES)}"))
    for key in ("preferred", "rejected"):
        value = judge.get(key)
        if (key == "preferred" or value is not None) and not (isinstance(value, str) and value):
            problems.append(ThemeProblem("judge", None, key, "must be the judge's label (a "
                                         "non-empty string)"))
    prompts = judge.get("prompts")
    if prompts is not None:
        problems += (_prompt_problems("judge", "prompts", prompts) if isinstance(prompts, list)
                     and prompts else [ThemeProblem("judge", None, "prompts", "must be a "
                                                    "non-empty list of prompts")])
    if problems:
        return None, problems
    return Judge(judge["function"], judge["preferred"], judge.get("rejected"), ()), []


def _rows(data, table, problems) -> list | None:
    rows = data.get(table)
    if rows is not None and not isinstance(rows, list):
        problems.append(ThemeProblem(table, None, None, f"must be an array of tables: write "
                                     f"each pair under its own [[{table}]] header"))
    return rows if isinstance(rows, list) else None


def _pair_problems(table, rows, least, judge: Callable | None, tokenizer, max_length,
                   never) -> list[ThemeProblem]:
    """labkit.data's row checks (fields, duplicates, leaks, lengths, swapped), then the
    judge's reading of each row, all as theme problems."""
    found = find_problems(rows, heldout_prompts=[p for p in never if isinstance(p, str)],
                          tokenizer=tokenizer, max_length=max_length, min_pairs=least,
                          **(dict(judge=judge, preferred=judge.preferred) if judge else {}))
    problems = [ThemeProblem(table, p.row, p.field, p.message.replace(
        "held-out evaluation prompts", "theme's held or held-out evaluation prompts")
        if table == "example_pairs" else p.message) for p in found]
    bad_rows = {p.row for p in found}
    for i, row in enumerate(rows, start=1):
        if i in bad_rows or not isinstance(row, dict):
            continue
        if not row["prompt"].endswith("\n"):
            problems.append(ThemeProblem(table, i, "prompt", "must end with a newline ('\\n'): "
                                         "its tokens are then a prefix of prompt + answer"))
        if judge is not None and judge(row["chosen"]) != judge.preferred:
            problems.append(ThemeProblem(table, i, "chosen", f"the judge {judge.function} reads "
                                         f"it as {judge(row['chosen'])!r}, not "
                                         f"{judge.preferred!r}: rewrite it in the preferred style"))
        if judge is not None and judge(row["rejected"]) == judge.preferred:
            problems.append(ThemeProblem(table, i, "rejected", f"the judge {judge.function} reads "
                                         f"it as {judge.preferred!r}: the rejected answer must "
                                         "not read as the preferred one"))
    return problems
