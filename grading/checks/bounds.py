"""Limits on what a submission may ask the grader to do, and per-item guards.

A submission's artifacts are data written by a student's code: the grader must neither
crash on them (one bad field fails the items that read it, never the submission) nor be
made to work without bound (thousands of prompts to verify, a 10 000-token spec, a JSON
file nested 100 000 deep). Every limit is checked *before* any parsing or recomputation,
and a value past it fails the item with a reason that names the limit.
"""
from __future__ import annotations

import re
from pathlib import Path

from .results import CheckItem, scored

# Far above what the notebooks ask for (4-8 held prompts, 8-20 pairs, 40 new tokens),
# far below what would stall a batch (verification cost grows with prompts x tokens).
MAX_HELD_PROMPTS = 32
MAX_PROMPT_CHARS = 2_000
MAX_PAIRS = 500
MAX_SPEC = {"max_new_tokens": 256, "num_samples": 16, "batch_size": 64}
MAX_JSON_BYTES = 16 << 20      # one artifact (the pairs JSONL too)
MAX_JSON_DEPTH = 32            # the records nest 4 deep; json recursion fails near 1000

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_problem(path: Path) -> str | None:
    """Why `path` (JSON or JSONL) is too large or too deeply nested to parse, or None.
    Depth is counted on the raw text with strings removed, so nothing is parsed."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return None  # missing: the loader says so in its own words
    if size > MAX_JSON_BYTES:
        return (f"{path.name} is {size / 2**20:.1f} MB, over the grader's "
                f"{MAX_JSON_BYTES >> 20} MB limit for one artifact")
    text = path.read_bytes().decode("utf-8", errors="replace")
    depth = deepest = 0
    for ch in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        return (f"{path.name} nests {deepest} levels deep (the grader reads at most "
                f"{MAX_JSON_DEPTH}): save it with the notebook's cell")
    return None


def spec_problems(spec: dict) -> list[str]:
    """GenerationSpec values past the grader's caps (checked before generating anything)."""
    spec = spec if isinstance(spec, dict) else {}
    return [f"generation_spec.{k} is {spec[k]!r}, over the grader's limit of {cap}"
            for k, cap in MAX_SPEC.items()
            if isinstance(spec.get(k), (int, float)) and spec[k] > cap]


def prompts_problem(prompts) -> str | None:
    """Why the held prompts are too many or too long for the grader, or None."""
    if not isinstance(prompts, list):
        return None
    if len(prompts) > MAX_HELD_PROMPTS:
        return (f"{len(prompts)} held prompts, over the grader's limit of {MAX_HELD_PROMPTS}: "
                "keep a handful (4-8) that show the preference")
    long = [i + 1 for i, p in enumerate(prompts) if isinstance(p, str)
            and len(p) > MAX_PROMPT_CHARS]
    return (f"held prompts {long[:5]} are longer than {MAX_PROMPT_CHARS} characters"
            if long else None)


def guarded(step: int, name: str, fn, *args, **kwargs) -> CheckItem:
    """fn(*args) -> CheckItem, or that item failed with the reason when fn raises: a field
    of an unexpected type or shape fails this item only, never the submission."""
    try:
        return fn(*args, **kwargs)
    except RecursionError:
        return scored(step, name, False, "an artifact nests too deeply to be checked")
    except Exception as exc:  # noqa: BLE001 - the submission's data, reported as its problem
        text = str(exc).replace("\n", " ")[:300]
        return scored(step, name, False, f"cannot be checked: {type(exc).__name__}: {text} "
                      "(an artifact field has an unexpected type or shape: save it with the "
                      "notebook's cell)")
