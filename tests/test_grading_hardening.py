"""The grader on crafted artifacts (issue 12 classes 2 and 6, the direction check, and issue
10's far prompt and held-out concepts): one bad field fails the items that read it with a
reason, never the submission; limits are enforced before any recomputation."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from grading import checks
from grading.checks import bounds, integrity
from grading.checks.rubric import max_points
from labkit import artifacts as A
from tests.conftest import edit_json


# ----------------------------------------------------------------------------- no model
def test_json_depth_and_size_are_bounded_before_parsing(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nests 100001 levels deep" in bounds.json_problem(deep)
    brackets_in_strings = tmp_path / "ok.json"
    brackets_in_strings.write_text(json.dumps({"text": "[[[[" * 1000 + '\\"{{'}))
    assert bounds.json_problem(brackets_in_strings) is None
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(bounds.MAX_JSON_BYTES + 1)
    assert "over the grader's 16 MB limit" in bounds.json_problem(big)


def test_spec_and_prompt_caps_name_the_limit():
    assert bounds.spec_problems({"max_new_tokens": 5000, "batch_size": 8}) == [
        "generation_spec.max_new_tokens is 5000, over the grader's limit of 256"]
    assert "over the grader's limit of 32" in bounds.prompts_problem(["p"] * 33)
    assert bounds.prompts_problem(["p"] * 8) is None


def test_a_guard_turns_any_exception_into_that_items_failure():
    def boom():
        raise TypeError("unhashable type: 'list'")
    item = bounds.guarded(1, "held_prompts", boom)
    assert not item.passed and "TypeError: unhashable type" in item.message
    deep = bounds.guarded(1, "held_prompts", lambda: (_ for _ in ()).throw(RecursionError()))
    assert not deep.passed and "nests too deeply" in deep.message


def test_pairs_on_held_out_evaluation_concepts_are_named():
    rows = [{"prompt": "Explain a Binary  Tree.\n"}, {"prompt": "Explain a function.\n"},
            {"prompt": "What are pointers?\n"}, {"prompt": "Explain a paragraph.\n"}]
    from grading.checks.step2 import heldout_concept_problems

    found = heldout_concept_problems(rows, lines=[1, 2, 3, 4])
    tail = ", a concept step 4 keeps for its held-out evaluation: choose another concept"
    assert [str(p) for p in found] == [
        "row 1 (line 1), field 'prompt': uses 'a binary tree'" + tail,
        "row 3 (line 3), field 'prompt': uses 'a pointer'" + tail]


# ----------------------------------------------------------------------------- on a real run
def rewrite_pairs(run: Path, change) -> None:
    rows = [json.loads(line) for line in (run / A.STEP2_PAIRS).read_text().splitlines()]
    change(rows)
    (run / A.STEP2_PAIRS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    sha = hashlib.sha256((run / A.STEP2_PAIRS).read_bytes()).hexdigest()
    edit_json(run / A.STEP2_META, lambda m: m.update(pairs_sha256=sha, n_pairs=len(rows)))


def graded(run: Path, teaching) -> dict:
    """{step: {item: CheckItem}} from the auto-grader's own grade_run."""
    return {r.step: {i.name: i for i in r.items}
            for r in integrity.grade_run(run, teaching, {"student_loss": (True, "ok"),
                                                          "student_logps": (True, "ok")})}


def score(items: dict) -> float:
    return sum(i.earned for i in items.values())


def failed(items: dict) -> set:
    return {name for name, i in items.items() if not i.passed}


DEEP = "[" * 50_000 + "]" * 50_000

BAD_FIELDS = {  # file, edit, {step: the items that must fail (all others pass)}
    "heldout_prompts is a string": (A.STEP2_META, lambda r: r.update(
        heldout_prompts="Explain recursion.\n"), {2: {"pairs_saved"}}),
    "a list inside prompt_kinds": (A.STEP1_BASELINE, lambda r: r["prompt_kinds"].__setitem__(
        0, ["theme"]), {1: {"held_prompts"}}),
    "outputs_after is a number": (A.STEP4_REPORT, lambda r: r.update(outputs_after=5),
                                  {4: {"outputs_changed", "outputs_reproduce"}}),
    "prompts is a string": (A.STEP1_BASELINE, lambda r: r.update(prompts="Explain it.\n"),
                            {1: {"held_prompts", "outputs", "baseline_reproduces"},
                             4: {"same_prompts_spec", "outputs_reproduce"}}),
    "metrics is a list": (A.STEP4_REPORT, lambda r: r.update(
        metrics=json.loads("[1]")), {4: {"metrics", "not_worse"}}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_one_bad_field_fails_only_the_items_that_read_it(run, teaching, case):
    file, edit, expected = BAD_FIELDS[case]
    edit_json(run / file, edit)
    result = graded(run, teaching)
    for step in (1, 2, 3, 4):
        assert failed(result[step]) == expected.get(step, set()), (step, {
            n: i.message for n, i in result[step].items() if not i.passed})
    for step, names in expected.items():
        for name in names:
            assert "could not be checked" not in result[step][name].message


@pytest.mark.slow
def test_deeply_nested_json_fails_its_step_with_a_reason_not_the_submission(run, teaching):
    text = (run / A.STEP4_REPORT).read_text()
    (run / A.STEP4_REPORT).write_text(text.replace('"metrics": {', f'"deep": {DEEP}, '
                                                   '"metrics": {', 1))
    (run / A.STEP2_PAIRS).write_text((run / A.STEP2_PAIRS).read_text() + DEEP + "\n")
    result = graded(run, teaching)
    assert score(result[1]) == max_points(1)
    assert "levels deep" in result[4]["same_prompts_spec"].message
    assert "levels deep" in result[2]["pairs_saved"].message
    assert score(result[4]) == 0 and score(result[2]) == 0


@pytest.mark.slow
def test_caps_fail_before_anything_is_recomputed(run, teaching):
    edit_json(run / A.STEP1_BASELINE, lambda r: r.update(
        prompts=r["prompts"] * 10, prompt_kinds=r["prompt_kinds"] * 10,
        outputs=r["outputs"] * 10, output_ids=None,
        generation_spec={**r["generation_spec"], "max_new_tokens": 5000}))
    result = graded(run, teaching)
    assert "over the grader's limit of 32" in result[1]["held_prompts"].message
    assert "max_new_tokens is 5000, over the grader's limit of 256" in \
        result[1]["model_and_spec"].message
    for step, name in ((1, "baseline_reproduces"), (4, "outputs_reproduce")):
        assert "nothing was recomputed" in result[step][name].message
    rewrite_pairs(run, lambda rows: rows.extend(rows * 70))
    step2 = checks.check_step2(run)
    assert "over the grader's limit of 500" in step2.items[0].message


@pytest.mark.slow
def test_a_far_prompt_is_required(run):
    edit_json(run / A.STEP1_BASELINE, lambda r: r.update(prompt_kinds=["theme"] * len(
        r["prompts"])))
    held = next(i for i in checks.check_step1(run).items if i.name == "held_prompts")
    assert not held.passed and "0 far prompts: at least 4 on-theme and 1 far" in held.message


@pytest.mark.slow
def test_a_pair_on_a_held_out_concept_fails_the_leak_check(run):
    rewrite_pairs(run, lambda rows: rows[2].update(prompt="Explain a mutex.\n"))
    leak = next(i for i in checks.check_step2(run).items if i.name == "no_heldout_leak")
    assert not leak.passed and "row 3 (line 3), field 'prompt': uses 'a mutex'" in leak.message


def item4(run, name):
    return next(i for i in checks.check_step4(run).items if i.name == name)


def shift(run, by: float) -> None:
    """Make the recorded outcome's scores after = before + `by` (the verdict left as is)."""
    edit_json(run / A.STEP4_REPORT, lambda r: r["outcome"].update(
        scores_after=[b + by for b in r["outcome"]["scores_before"]]))


@pytest.mark.slow
def test_the_style_moved_toward_the_preference_on_the_real_run(run):
    moved, worse = item4(run, "moved_toward_preference"), item4(run, "not_worse")
    assert moved.passed and "moved toward the preference (the interval excludes 0)" in moved.message
    assert worse.passed and "held-out accuracy" in worse.message


@pytest.mark.slow
def test_swapped_pairs_are_flagged_and_a_style_moving_away_fails(run):
    rewrite_pairs(run, lambda rows: [r.update(chosen=r["rejected"], rejected=r["chosen"])
                                     for r in rows])
    shift(run, -0.3)
    moved = item4(run, "moved_toward_preference")
    assert not moved.passed and "moved the wrong way" in moved.message
    assert "Your pairs look swapped: the judge prefers rejected over chosen on 8 of 8" \
        in moved.message


@pytest.mark.slow
def test_no_detectable_change_scores_zero_and_says_why(run):
    shift(run, 0.0)     # the recorded verdict still says "moved": the grader recomputes it
    moved = item4(run, "moved_toward_preference")
    assert not moved.passed and "no detectable change" in moved.message
    assert "the interval contains 0" in moved.message and "in the model's words" in moved.message


@pytest.mark.slow
def test_a_theme_without_a_judge_is_not_measured(run, tmp_path, monkeypatch):
    import re

    from labkit.themes import load_theme

    text = load_theme("plain").path.read_text(encoding="utf-8")
    (tmp_path / "nojudge.toml").write_text(re.sub(r"\[judge\].*?\n\n", "", text, flags=re.S))
    monkeypatch.setenv("LABKIT_THEME", str(tmp_path / "nojudge.toml"))
    moved = item4(run, "moved_toward_preference")
    assert not moved.passed and moved.message.startswith("not measured")


@pytest.mark.slow
def test_a_run_that_made_the_model_worse_is_told_so(run):
    edit_json(run / A.STEP4_REPORT, lambda r: r["metrics"].update(
        heldout_preference_accuracy=0.125, perplexity_after=r["metrics"]["perplexity_before"] * 6))
    worse = item4(run, "not_worse")
    assert not worse.passed and worse.message.startswith("WORSE: this run made the model worse")
    assert "held-out accuracy 0.12 [0.03, 0.36] (n=16)" in worse.message and "x6.00" in worse.message
