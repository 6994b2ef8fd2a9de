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
    # fits the model's context: no problem; prompt fills max_length: nothing left to learn
    validate_pairs(rows, tokenizer=teaching_tokenizer)
    problems = find_problems(rows, tokenizer=teaching_tokenizer, max_length=n_tokens)
    (problem,) = [p for p in problems if p.row == 8]  # one problem: the row is dropped
    assert problem.field == "prompt"
    assert f"is {n_tokens} tokens, but max_length is {n_tokens}" in problem.message


def test_pair_longer_than_the_models_context_names_row_field_and_tokens(rows,
                                                                      teaching_tokenizer):
    """Past the model's context the embedding lookup fails with a bare IndexError inside
    training; the validator says which pair, which field and how many tokens instead."""
    context = teaching_tokenizer.model_max_length
    rows[2]["rejected"] = " ".join(["Consequently, the invariants hold."] * 30)
    n = len(teaching_tokenizer(rows[2]["prompt"] + rows[2]["rejected"],
                               add_special_tokens=False)["input_ids"]) + 1
    assert n > context
    problem = single_problem(rows, tokenizer=teaching_tokenizer, max_length=4 * context)
    assert (problem.row, problem.field) == (3, "rejected")
    assert f"is {n} tokens" in problem.message
    assert f"at most {context} tokens" in problem.message and "IndexError" in problem.message


def test_pair_longer_than_max_length_would_be_cut_silently(rows, teaching_tokenizer):
    n = len(teaching_tokenizer(rows[4]["prompt"] + rows[4]["chosen"],
                               add_special_tokens=False)["input_ids"]) + 1
    longest = max(len(teaching_tokenizer(r["prompt"] + r[k], add_special_tokens=False)
                      ["input_ids"]) + 1 for r in rows for k in ("chosen", "rejected"))
    validate_pairs(rows, tokenizer=teaching_tokenizer, max_length=longest)
    problems = find_problems(rows, tokenizer=teaching_tokenizer, max_length=n - 1)
    mine = [p for p in problems if p.row == 5 and p.field == "chosen"]
    assert mine and f"is {n} tokens" in mine[0].message
    assert f"max_length is {n - 1}" in mine[0].message


@pytest.mark.parametrize("edit", [str.upper, lambda t: t.replace(" ", "  ", 1),
                                  lambda t: t.replace(" ", "\t", 1),
                                  lambda t: t.replace(" ", "\u00a0", 2),
                                  lambda t: " " + t + "\n"],
                         ids=["case", "double-space", "tab", "nbsp", "padding"])
def test_duplicates_are_found_after_case_and_spacing_are_ignored(rows, edit):
    rows[6] = {k: edit(v) for k, v in rows[1].items()}
    problem = single_problem(rows)
    assert (problem.row, problem.field) == (7, None)
    assert "duplicate of row 2" in problem.message


def test_chosen_equal_to_rejected_up_to_case_and_spacing(rows):
    rows[3]["rejected"] = rows[3]["chosen"].upper().replace(" ", "\u00a0 ")
    problem = single_problem(rows)
    assert (problem.row, problem.field) == (4, "rejected")


def test_heldout_leak_is_found_up_to_case_and_spacing(rows):
    rows[5]["prompt"] = "  " + teaching.HELDOUT_PROMPTS[3].lower().replace(" ", "\u00a0")
    problem = single_problem(rows, heldout_prompts=teaching.HELDOUT_PROMPTS)
    assert (problem.row, problem.field) == (6, "prompt")


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


# Characters that break naive line handling or storage: line/paragraph separators, NEL, the
# ASCII file/group/record separators, NUL, CR, bidi overrides, combining marks, astral
# characters, quotes and backslashes.
HOSTILE = ["\u2028", "\u2029", "\u0085", "\x1c", "\x1d", "\x1e", "\x00", "\r", "\n", "\t",
           "\u200f", "\u202e", "\u0301", "\U0001f600", "\\", '"', "\ufeff", "\x0b", "\x0c",
           "é", "ß", "\u00a0", "{", "}", "a", "b", " "]


def hostile_text(rng, length: int) -> str:
    body = "".join(rng.choice(HOSTILE) for _ in range(length))
    return "x" + body + "y"  # never only whitespace


def test_save_read_validate_is_identity_for_hostile_text(tmp_path):
    """Property test over seeded random rows: whatever the text holds, the saved file has one
    line per pair and reading it back gives exactly the rows that were saved."""
    import random

    rng = random.Random(1234)
    for trial in range(40):
        rows = [{k: hostile_text(rng, rng.choice([1, 5, 40, 300])) + f" {trial}-{i}-{k}"
                 for k in FIELDS} for i in range(MIN_PAIRS)]
        if trial == 0:
            rows[0]["chosen"] = "long " + "\u2028".join(["word"] * 2500)  # ~10k characters
        path = tmp_path / f"pairs{trial}.jsonl"
        save_jsonl(rows, path)
        raw = path.read_bytes()
        assert raw.count(b"\n") == len(rows) and raw.endswith(b"\n")
        assert len(raw.decode("utf-8").splitlines()) == len(rows)  # even str.splitlines
        read, lines = read_jsonl(path)
        assert read == rows and lines == list(range(1, len(rows) + 1))
        assert load_jsonl(path).to_list() == rows


def test_lone_surrogate_is_refused_with_row_and_field_and_nothing_is_written(rows, tmp_path):
    rows[2]["chosen"] = rows[2]["chosen"][:10] + "\ud83d" + rows[2]["chosen"][10:]
    path = tmp_path / "pairs.jsonl"
    with pytest.raises(PreferenceDataError) as err:
        save_jsonl(rows, path)
    (problem,) = err.value.problems
    assert (problem.row, problem.field) == (3, "chosen")
    assert "U+D83D at position 11" in problem.message
    assert not path.exists()


def test_reader_accepts_windows_line_ends(rows, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\r\n" for r in rows))
    assert read_jsonl(path)[0] == rows
