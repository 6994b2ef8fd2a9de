"""Preference pairs {prompt, chosen, rejected}: validation with row-level errors, JSONL I/O.

TRL accepts many broken datasets silently (empty text, chosen == rejected, rows whose
prompt fills max_length are dropped without a word) or fails with a bare KeyError. Every
problem is caught here first, all at once, each naming the row (and JSONL line) and field.
"""
from __future__ import annotations

import difflib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

FIELDS = ("prompt", "chosen", "rejected")
MIN_PAIRS = 8
# Characters that some line splitters (str.splitlines, JavaScript) treat as line ends, and
# lone surrogates, which are not encodable as UTF-8: written as \u escapes, so a JSONL line
# is always one record however pasted text looks.
_UNSAFE_IN_LINE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")
# tokenizer.model_max_length when a tokenizer does not know its model's context
_UNKNOWN_CONTEXT = 10**6


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
        elif (bad := re.search("[\ud800-\udfff]", row[key])) is not None:
            found.append(Problem(index, key, f"holds an invalid character (lone surrogate "
                                 f"U+{ord(bad.group()):04X} at position {bad.start() + 1}): "
                                 "it cannot be stored as text; delete it and retype", line))
    return found


def normalised(text: str) -> str:
    """What a reader sees: Unicode-compatible forms folded (NFKC: a non-breaking space is a
    space), case ignored, runs of whitespace collapsed. Duplicates and leaks compare this."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def context_length(tokenizer, max_length: int | None = None) -> int | None:
    """The most tokens one training sequence may have: the model's context (from the
    tokenizer's model_max_length, when it knows it) and `max_length`, whichever is smaller."""
    known = getattr(tokenizer, "model_max_length", None)
    limits = [n for n in (known, max_length) if isinstance(n, int) and 0 < n < _UNKNOWN_CONTEXT]
    return min(limits) if limits else None


def _length_problems(row: dict, index: int, line, tokenizer, max_length) -> list[Problem]:
    """Token counts as TRL sees them: prompt + answer by plain concatenation, plus EOS.
    Longer than the context crashes training (IndexError); longer than max_length is cut
    silently; a prompt that fills max_length makes TRL drop the row."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    limit = context_length(tokenizer, max_length)
    context = context_length(tokenizer)
    n_prompt = count(row["prompt"])
    if max_length and n_prompt >= max_length:
        return [Problem(index, "prompt", f"is {n_prompt} tokens, but max_length is "
                        f"{max_length}: the response would be truncated to nothing (TRL "
                        "silently drops such rows); shorten it", line)]
    found = []
    for key in ("chosen", "rejected"):
        n = count(row["prompt"] + row[key]) + 1
        if limit is None or n <= limit:
            continue
        if context is not None and n > context:
            why = (f"the model reads at most {context} tokens (training would stop with an "
                   "IndexError)")
        else:
            why = f"max_length is {max_length} (TRL would cut the end off without a word)"
        found.append(Problem(index, key, f"prompt + {key} is {n} tokens (with EOS), but "
                             f"{why}; shorten the {key} or the prompt", line))
    return found


def find_problems(rows: Iterable, *, heldout_prompts: Iterable[str] = (), tokenizer=None,
                  max_length: int | None = None, min_pairs: int = MIN_PAIRS,
                  judge: Callable[[str], str] | None = None, preferred: str | None = None,
                  lines: list[int] | None = None) -> list[Problem]:
    """Every problem in `rows`, in row order. Duplicates and leaks are compared after
    `normalised` (case, spacing, Unicode forms). Optional checks: held-out prompt leaks,
    length against the model's context and `max_length` (needs `tokenizer`), swapped pairs
    (needs `judge`, a text -> label function, and the `preferred` label)."""
    rows = list(rows)
    heldout = {normalised(p) for p in heldout_prompts if isinstance(p, str)}
    seen: dict[tuple, int] = {}
    problems: list[Problem] = []
    for i, row in enumerate(rows, start=1):
        line = lines[i - 1] if lines else None
        basic = _field_problems(row, i, line)
        problems.extend(basic)
        if basic:
            continue
        prompt, chosen, rejected = (row[k] for k in FIELDS)
        if normalised(chosen) == normalised(rejected):
            problems.append(Problem(i, "rejected", "is identical to 'chosen' (ignoring case "
                                    "and spacing): the pair teaches nothing (DPO's loss stays "
                                    "at ln 2)", line))
        key = tuple(normalised(row[k]) for k in FIELDS)
        if key in seen:
            problems.append(Problem(i, None, f"duplicate of row {seen[key]} (the same pair once "
                                    "case and spacing are ignored): the same pair twice only "
                                    "weights it double; change or delete one", line))
        seen.setdefault(key, i)
        if normalised(prompt) in heldout:
            problems.append(Problem(i, "prompt", "is one of the held-out evaluation prompts: "
                                    "training on it would leak the test; pick another", line))
        if tokenizer is not None:
            problems.extend(_length_problems(row, i, line, tokenizer, max_length))
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
    """Rows and their line numbers. A malformed line raises with its line number. Lines end
    at "\n" only (str.splitlines would also split inside text holding U+2028 and kin)."""
    rows, lines, problems = [], [], []
    text = Path(path).read_text(encoding="utf-8")
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
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
    text = "".join(jsonl_line(r) for r in dataset.to_list())
    atomic_write_text(Path(path), text)
    return dataset


def jsonl_line(record) -> str:
    """One record as one "\n"-terminated line, readable UTF-8, whatever its text holds."""
    text = json.dumps(record, ensure_ascii=False)
    return _UNSAFE_IN_LINE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"
