"""labkit.data: one test per class of bad input, each checking that the error names the row
(and the JSONL line) and the field; atomic, validated JSONL I/O."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from labkit import teaching
from labkit.data import (FIELDS, MIN_PAIRS, PreferenceDataError, Problem, find_problems,
                         load_jsonl, read_jsonl, save_jsonl, validate_pairs)

DATA = Path(__file__).parent / "data"


@pytest.fixture
def rows():
    """Eight valid plain-over-jargon pairs (a fresh copy per test)."""
    return copy.deepcopy(json.loads((DATA / "pairs_small.json").read_text(encoding="utf-8")))


def write_jsonl(path: Path, rows, blank_lines_before=()) -> Path:
    """One JSON object per line; an empty line is put before each row index listed, so
    that line numbers and row numbers differ."""
    lines = []
    for i, row in enumerate(rows):
        if i in blank_lines_before:
            lines.append("")
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def single_problem(rows, **checks) -> Problem:
    """Validation must fail with exactly one problem; return it (after checking that the
    exception's message lists it)."""
    with pytest.raises(PreferenceDataError) as err:
        validate_pairs(rows, **checks)
    problems = err.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    assert str(problems[0]) in str(err.value)
    return problems[0]


def test_fixture_file_is_valid_with_every_check(rows, teaching_tokenizer):
    dataset = validate_pairs(rows, heldout_prompts=teaching.HELDOUT_PROMPTS,
                             tokenizer=teaching_tokenizer, max_length=128,
                             judge=teaching.judge_style, preferred="plain")
    assert len(dataset) == len(rows) == MIN_PAIRS
    assert find_problems(rows) == []


def test_validate_pairs_returns_dataset_with_exactly_the_three_columns(rows):
    from datasets import Dataset

    reordered = [{"rejected": r["rejected"], "prompt": r["prompt"], "chosen": r["chosen"]}
                 for r in rows]
    dataset = validate_pairs(reordered)
    assert isinstance(dataset, Dataset)
    assert dataset.column_names == list(FIELDS) == ["prompt", "chosen", "rejected"]
    assert dataset.to_list() == rows


# --------------------------------------------------------------- one test per bad input
def test_missing_field(rows):
    del rows[2]["rejected"]
    problem = single_problem(rows)
    assert (problem.row, problem.field) == (3, "rejected")
    assert "missing" in problem.message
    assert str(problem).startswith("row 3, field 'rejected': ")


def test_missing_field_in_jsonl_names_row_and_line(rows, tmp_path):
    del rows[2]["chosen"]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows, blank_lines_before={1, 2})
    with pytest.raises(PreferenceDataError) as err:
        load_jsonl(path)
    [problem] = err.value.problems
    assert (problem.row, problem.line, problem.field) == (3, 5, "chosen")
    assert "row 3 (line 5), field 'chosen'" in str(err.value)


def test_misspelled_field_gets_a_did_you_mean_hint(rows):
    rows[1]["chosne"] = rows[1].pop("chosen")
    with pytest.raises(PreferenceDataError) as err:
        validate_pairs(rows)
    by_field = {p.field: p for p in err.value.problems}
    assert set(by_field) == {"chosne", "chosen"}
    assert all(p.row == 2 for p in err.value.problems)
    assert "did you mean 'chosen'?" in str(by_field["chosne"])
    assert "row 2, field 'chosne'" in str(err.value)
    assert "missing" in by_field["chosen"].message


def test_extra_field_is_rejected_without_a_false_hint(rows):
    rows[4]["score"] = 0.9
    problem = single_problem(rows)
    assert (problem.row, problem.field) == (5, "score")
    assert "unknown field" in problem.message and "did you mean" not in problem.message


@pytest.mark.parametrize("value, type_name", [(5, "int"), (None, "NoneType"),
                                              (["a list"], "list")])
def test_non_string_value(rows, value, type_name):
    rows[4]["chosen"] = value
    problem = single_problem(rows)
    assert (problem.row, problem.field) == (5, "chosen")
    assert f"must be a string, got {type_name}" in problem.message


def test_row_that_is_not_an_object(rows):
    rows[3] = ["Explain x.\n", "a", "b"]
    problem = single_problem(rows)
    assert problem.row == 4 and "got list" in problem.message


@pytest.mark.parametrize("value", ["", "   ", " \n\t "])
def test_empty_or_whitespace_text(rows, value):
    rows[6]["prompt"] = value
    problem = single_problem(rows)
    assert (problem.row, problem.field) == (7, "prompt")
    assert "empty" in problem.message


def test_chosen_identical_to_rejected(rows):
    rows[0]["rejected"] = rows[0]["chosen"] + "  "  # differs only by whitespace
    problem = single_problem(rows)
    assert (problem.row, problem.field) == (1, "rejected")
    assert "identical" in problem.message


def test_duplicate_pair(rows):
    rows.append(dict(rows[2]))
    problem = single_problem(rows)
    assert problem.row == 9
    assert "duplicate of row 3" in problem.message
    assert str(problem).startswith("row 9: ")


def test_heldout_prompt_leak(rows):
    rows[5]["prompt"] = teaching.HELDOUT_PROMPTS[3]
    assert find_problems(rows) == []  # the leak check needs the held-out prompts
    problem = single_problem(rows, heldout_prompts=teaching.HELDOUT_PROMPTS)
    assert (problem.row, problem.field) == (6, "prompt")
    assert "held-out" in problem.message


def test_pair_truncated_to_nothing_at_max_length(rows, teaching_tokenizer):
    long_prompt = ("Explain how a compiler, an operating system, a database index and "
                   "garbage collection work together.\n")
    n_tokens = len(teaching_tokenizer(long_prompt, add_special_tokens=False)["input_ids"])
    rows[7]["prompt"] = long_prompt
    # fits: no problem; prompt fills max_length: nothing left for the response
    validate_pairs(rows, tokenizer=teaching_tokenizer, max_length=n_tokens + 1)
    problem = single_problem(rows, tokenizer=teaching_tokenizer, max_length=n_tokens)
    assert (problem.row, problem.field) == (8, "prompt")
    assert f"is {n_tokens} tokens, but max_length is {n_tokens}" in problem.message


def test_fewer_pairs_than_the_minimum(rows):
    problem = single_problem(rows[:3])
    assert problem.row is None and problem.field is None
    assert f"only 3 pair(s); at least {MIN_PAIRS}" in problem.message
    validate_pairs(rows[:3], min_pairs=3)


def test_malformed_json_line_names_the_line(rows, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:-1]            # line 3 loses its closing brace
    lines[6] = "{'prompt': 'x'}"        # line 7 uses Python quotes
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError) as err:
        read_jsonl(path)
    assert [p.line for p in err.value.problems] == [3, 7]
    assert "line 3: not valid JSON" in str(err.value)
    assert "line 7: not valid JSON" in str(err.value)
    with pytest.raises(PreferenceDataError):
        load_jsonl(path)


def test_swapped_pair(rows):
    rows[6]["chosen"], rows[6]["rejected"] = rows[6]["rejected"], rows[6]["chosen"]
    assert find_problems(rows) == []  # only the judge can see it
    problem = single_problem(rows, judge=teaching.judge_style, preferred="plain")
    assert (problem.row, problem.field) == (7, "chosen")
    assert "swapped" in problem.message


def test_every_problem_is_reported_at_once_in_row_order(rows):
    rows[1]["chosen"] = ""
    rows[4]["prompt"] = teaching.HELDOUT_PROMPTS[0]
    del rows[6]["rejected"]
    with pytest.raises(PreferenceDataError) as err:
        validate_pairs(rows, heldout_prompts=teaching.HELDOUT_PROMPTS)
    assert [(p.row, p.field) for p in err.value.problems] == [
        (2, "chosen"), (5, "prompt"), (7, "rejected")]
    assert str(err.value).startswith("3 problem(s)")


# ---------------------------------------------------------------------------- JSONL I/O
def test_save_jsonl_round_trip(rows, tmp_path):
    rows[0]["chosen"] = "Think of it like a café menü — simple. " + rows[0]["chosen"]
    path = tmp_path / "run" / "step2_preferences.jsonl"
    save_jsonl(rows, path, heldout_prompts=teaching.HELDOUT_PROMPTS)
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == len(rows) and text.endswith("\n")
    assert "café" in text  # stored as UTF-8, not \u escapes
    assert load_jsonl(path).to_list() == rows
    assert list(path.parent.iterdir()) == [path]  # no temp files left


def test_save_jsonl_writes_no_file_when_validation_fails(rows, tmp_path):
    rows[3]["rejected"] = rows[3]["chosen"]
    path = tmp_path / "step2_preferences.jsonl"
    with pytest.raises(PreferenceDataError):
        save_jsonl(rows, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_save_jsonl_leaves_an_existing_file_unchanged_when_validation_fails(rows, tmp_path):
    path = tmp_path / "step2_preferences.jsonl"
    save_jsonl(rows, path)
    before = path.read_bytes()
    bad = copy.deepcopy(rows)
    bad[0]["prompt"] = teaching.HELDOUT_PROMPTS[0]
    bad[1]["chosne"] = bad[1].pop("chosen")
    with pytest.raises(PreferenceDataError):
        save_jsonl(bad, path, heldout_prompts=teaching.HELDOUT_PROMPTS)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]
