"""Preference pairs {prompt, chosen, rejected}: validation with row-level errors, JSONL I/O.

TRL accepts many broken datasets silently (empty text, chosen == rejected, rows whose
prompt fills max_length are dropped without a word) or fails with a bare KeyError. Every
problem is caught here first, all at once, each naming the row (and JSONL line) and field.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

FIELDS = ("prompt", "chosen", "rejected")
MIN_PAIRS = 8


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data. `row` is 1-based; `line` is the JSONL line, if any."""

    row: int | None
    field: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (line {self.line})" if self.line else ""))
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.field:
            where.append(f"field '{self.field}'")
        return (", ".join(where) + ": " if where else "") + self.message


class PreferenceDataError(ValueError):
    """Raised with every problem found; `.problems` holds them for programs."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the preference data:\n{lines}")


def _field_problems(row, index: int, line: int | None) -> list[Problem]:
    if not isinstance(row, dict):
        return [Problem(index, None, f"expected an object with keys {list(FIELDS)}, got "
                        f"{type(row).__name__}", line)]
    found = []
    for key in row:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            found.append(Problem(index, str(key), f"unknown field{hint}; a pair has exactly "
                                 f"{', '.join(FIELDS)}", line))
    for key in FIELDS:
        if key not in row:
            found.append(Problem(index, key, "missing: every pair needs prompt, chosen and "
                                 "rejected", line))
        elif not isinstance(row[key], str):
            found.append(Problem(index, key, f"must be a string, got "
                                 f"{type(row[key]).__name__} ({row[key]!r:.40})", line))
        elif not row[key].strip():
            found.append(Problem(index, key, "is empty or only whitespace: write the text",
                                 line))
    return found


def find_problems(rows: Iterable, *, heldout_prompts: Iterable[str] = (), tokenizer=None,
                  max_length: int | None = None, min_pairs: int = MIN_PAIRS,
                  judge: Callable[[str], str] | None = None, preferred: str | None = None,
                  lines: list[int] | None = None) -> list[Problem]:
    """Every problem in `rows`, in row order. Optional checks: held-out prompt leaks,
    truncation (needs `tokenizer` and `max_length`), swapped pairs (needs `judge`, a
    text -> label function, and the `preferred` label)."""
    rows = list(rows)
    heldout = {p.strip() for p in heldout_prompts}
    seen: dict[tuple, int] = {}
    problems: list[Problem] = []
    for i, row in enumerate(rows, start=1):
        line = lines[i - 1] if lines else None
        basic = _field_problems(row, i, line)
        problems.extend(basic)
        if basic:
            continue
        prompt, chosen, rejected = (row[k] for k in FIELDS)
        if chosen.strip() == rejected.strip():
            problems.append(Problem(i, "rejected", "is identical to 'chosen': the pair "
                                    "teaches nothing (DPO's loss stays at ln 2)", line))
        key = (prompt.strip(), chosen.strip(), rejected.strip())
        if key in seen:
            problems.append(Problem(i, None, f"duplicate of row {seen[key]}: the same pair "
                                    "twice only weights it double", line))
        seen.setdefault(key, i)
        if prompt.strip() in heldout:
            problems.append(Problem(i, "prompt", "is one of the held-out evaluation prompts: "
                                    "training on it would leak the test; pick another", line))
        if tokenizer is not None and max_length:
            n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if n >= max_length:
                problems.append(Problem(i, "prompt", f"is {n} tokens, but max_length is "
                                        f"{max_length}: the response would be truncated to "
                                        "nothing (TRL silently drops such rows); shorten it",
                                        line))
        if judge is not None and preferred is not None:
            if judge(chosen) != preferred and judge(rejected) == preferred:
                problems.append(Problem(i, "chosen", f"looks swapped: 'rejected' reads as "
                                        f"{preferred} and 'chosen' does not", line))
    if len(rows) < min_pairs:
        problems.append(Problem(None, None, f"only {len(rows)} pair(s); at least {min_pairs} "
                                "are needed for DPO to move the model"))
    return problems


def validate_pairs(rows: Iterable, **checks):
    """Validate and return a `datasets.Dataset` with exactly prompt/chosen/rejected columns.
    Raises `PreferenceDataError` listing every problem (see `find_problems`)."""
    from datasets import Dataset

    rows = list(rows)
    problems = find_problems(rows, **checks)
    if problems:
        raise PreferenceDataError(problems)
    return Dataset.from_list([{k: r[k] for k in FIELDS} for r in rows])


def read_jsonl(path: str | Path) -> tuple[list, list[int]]:
    """Rows and their line numbers. A malformed line raises with its line number."""
    rows, lines, problems = [], [], []
    text = Path(path).read_text(encoding="utf-8")
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw))
            lines.append(number)
        except json.JSONDecodeError as exc:
            problems.append(Problem(None, None, f"not valid JSON ({exc.msg} at column "
                                    f"{exc.colno}): each line must be one JSON object", number))
    if problems:
        raise PreferenceDataError(problems)
    return rows, lines


def load_jsonl(path: str | Path, **checks):
    """Read and validate a JSONL file of pairs -> `datasets.Dataset`."""
    rows, lines = read_jsonl(path)
    return validate_pairs(rows, lines=lines, **checks)


def save_jsonl(rows: Iterable, path: str | Path, **checks):
    """Validate, then write atomically. Nothing is written when validation fails."""
    from .artifacts import atomic_write_text

    dataset = validate_pairs(rows, **checks)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in dataset.to_list())
    atomic_write_text(Path(path), text)
    return dataset
