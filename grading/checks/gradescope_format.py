"""Gradescope's results.json format, as documented (gradescope-autograders.readthedocs.io,
specs): the keys, their types and allowed values, and `validate`, which every results.json
this lab writes passes before it is written.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

TOP_KEYS = {"score": "number", "execution_time": "number", "output": "str",
            "output_format": "format", "test_output_format": "format",
            "test_name_format": "format", "visibility": "visibility",
            "stdout_visibility": "visibility", "extra_data": "dict", "tests": "list",
            "leaderboard": "list"}
TEST_KEYS = {"score": "number", "max_score": "number", "status": "status", "name": "str",
             "name_format": "format", "number": "str", "output": "str",
             "output_format": "format", "tags": "list", "visibility": "visibility",
             "extra_data": "dict"}
VISIBILITIES = ("visible", "after_published", "after_due_date", "hidden")
ENUMS = {"visibility": set(VISIBILITIES), "status": {"passed", "failed"},
         "format": {"text", "html", "simple_format", "md", "ansi"}}
# what this autograder always writes, beyond the format's own rules
REQUIRED_TEST_KEYS = ("name", "score", "max_score", "output", "visibility")


def write_results(path: Path, results: dict) -> None:
    """Write a results.json, refusing one that breaks the format (a grader bug, never the
    student's: it fails loudly in the instructor's log)."""
    problems = validate(results)
    if problems:
        raise ValueError("results.json does not match Gradescope's format: "
                         + "; ".join(problems))
    Path(path).write_text(json.dumps(results, indent=2, allow_nan=False) + "\n",
                          encoding="utf-8")


def validate(results) -> list[str]:
    """Problems with `results` as Gradescope's results.json: documented keys only, with
    their types and allowed values; a top-level score; and what this autograder always
    writes on each test (name, score, max_score, output, visibility)."""
    if not isinstance(results, dict):
        return ["results.json must be a JSON object"]
    problems = _check(results, TOP_KEYS, "results")
    tests = results.get("tests", [])
    if "score" not in results:
        problems.append("results: no top-level 'score'")
    for i, test in enumerate(tests if isinstance(tests, list) else []):
        where = f"tests[{i}]"
        if not isinstance(test, dict):
            problems.append(f"{where}: must be an object")
            continue
        problems += _check(test, TEST_KEYS, where)
        problems += [f"{where}: no '{k}'" for k in REQUIRED_TEST_KEYS if k not in test]
        tags = test.get("tags")
        if isinstance(tags, list) and not all(isinstance(x, str) for x in tags):
            problems.append(f"{where}.tags: must be strings")
    return problems


def _check(obj: dict, spec: dict, where: str) -> list[str]:
    problems = [f"{where}: unknown key '{k}' (not in Gradescope's format)"
                for k in obj if k not in spec]
    for key, kind in spec.items():
        if key not in obj:
            continue
        value = obj[key]
        if kind == "number":
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value))
        elif kind in ENUMS:
            ok = value in ENUMS[kind]
        else:
            ok = isinstance(value, {"str": str, "dict": dict, "list": list}[kind])
        if not ok:
            allowed = f"one of {sorted(ENUMS[kind])}" if kind in ENUMS else f"a {kind}"
            problems.append(f"{where}.{key}: {value!r} is not {allowed}")
    return problems
