"""grading.check on run directories made by the real lab (`lab_run`: `python -m labkit run`
on the teaching model), and on copies edited the way students' mistakes edit them.

Checks must never raise on a student's mistake: a missing artifact is "not done yet" with a
hint, a broken one a failed item that says what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

import grading
from grading import checks
from grading.checks import integrity, results, rubric
from labkit import artifacts as A
from tests.conftest import edit_json


def rewrite_pairs(run: Path, change, update_meta: bool = True) -> None:
    rows = [json.loads(l) for l in (run / A.STEP2_PAIRS).read_text().splitlines()]
    change(rows)
    (run / A.STEP2_PAIRS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if update_meta:
        sha = hashlib.sha256((run / A.STEP2_PAIRS).read_bytes()).hexdigest()
        edit_json(run / A.STEP2_META, lambda m: m.update(pairs_sha256=sha, n_pairs=len(rows)))


def item(result, name):
    return next(i for i in result.items if i.name == name)


# ----------------------------------------------------------------------------- no run
@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_missing_artifacts_are_not_done_yet_with_a_hint(step, tmp_path):
    result = checks.CHECKS[step](tmp_path)
    assert result.status == rubric.NOT_DONE and not result.passed and result.score == 0
    assert result.max_score == rubric.max_points(step, integrity=False)
    assert all("not done yet" in i.message for i in result.items)
    assert rubric.NOTEBOOKS[step] in result.hints[0]
    assert "not done yet" in str(result) and "not done yet" in result._repr_html_()


def test_check_prints_outside_jupyter_and_returns_the_result(tmp_path, capsys):
    result = grading.check(2, run_dir=tmp_path)
    assert result.step == 2 and result.status == rubric.NOT_DONE
    assert "Step 2 - Preference pairs: NOT DONE YET (0/25 points)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="step number 1-4"):
        grading.check(5, run_dir=tmp_path)


def test_check_shows_once_in_ipython_even_as_last_expression(tmp_path, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell(f"import grading\ngrading.check(1, run_dir={str(tmp_path)!r})",
                       store_history=True)
        shell.run_cell(f"r = grading.check(1, run_dir={str(tmp_path)!r})\nr", store_history=True)
    finally:
        InteractiveShell.clear_instance()
    assert capsys.readouterr().out.count("Step 1 - Baseline") == 2  # once per cell


def test_html_escapes_messages():
    result = results.CheckResult(1, [results.CheckItem("x", 1, False, "<script>alert(1)</script>")])
    assert "<script>" not in result._repr_html_() and "&lt;script&gt;" in result._repr_html_()
    assert result.status == "failed" and result.to_dict()["max_score"] == 1


def test_rubric_is_100_points_25_per_step():
    assert rubric.max_points() == 100
    assert all(rubric.max_points(s) == 25 for s in (1, 2, 3, 4))
    assert "| 3 | student_loss | 5 | auto-grader |" in rubric.as_markdown()


# ----------------------------------------------------------------------------- own pairs
def test_the_themes_real_model_pairs_are_neither_own_nor_copied(tmp_path):
    """Notebook 2 adds the theme's real-model pairs on a real model: the instructor's data,
    so they neither count toward a student's 8 nor are flagged as copied."""
    from grading.checks.own_pairs import copied_note, copied_rows
    from labkit.teaching import EXTRA_CONCEPTS, make_preference_pairs
    from labkit.themes import load_theme
    from tests.test_themes import JUDGED, REAL, write_theme

    theme = load_theme("plain")
    own = make_preference_pairs(8, seed=5, concepts=EXTRA_CONCEPTS)
    pairs, _ = theme.with_real_model_pairs(own, is_teaching=False)
    assert copied_rows(pairs, theme) == []
    assert copied_note(pairs, theme) == (True, "42 rows are the theme's real-model pairs (your "
                                         "instructor's, added on a real model), not counted as "
                                         "yours: 8 own pair(s)")
    enough, note = copied_note(pairs[3:], theme)      # 5 of one's own are not 8
    assert not enough and note.endswith(": 5 own pair(s), at least 8 are needed")
    copied = [dict(p) for p in theme.example_pairs] + list(theme.real_model_pairs)
    assert copied_rows(copied, theme) == list(range(1, 9))      # the examples still are copies
    assert not copied_note(copied, theme)[0]
    # an instructor's own theme file: its real-model pairs are the provided ones
    mine = load_theme(write_theme(tmp_path, JUDGED, real=REAL))
    rows = own + [dict(p) for p in REAL]
    assert mine.provided_rows(rows) == [9, 10, 11, 12]
    assert copied_note(rows, mine) == (True, "4 rows are the theme's real-model pairs (your "
                                       "instructor's, added on a real model), not counted as "
                                       "yours: 8 own pair(s)")
    assert copied_note(rows, theme) == (True, "")   # not the plain theme's: a student's own


# ----------------------------------------------------------------------------- real run
@pytest.mark.slow
def test_the_real_lab_run_passes_every_step(run):
    for step in (1, 2, 3, 4):
        result = checks.CHECKS[step](run)
        assert result.passed, str(result)
        assert result.score == result.max_score == rubric.max_points(step, integrity=False)
        assert result.pending == [i.name for i in rubric.items_for(step, integrity=True)]


@pytest.mark.slow
def test_corrupt_artifact_is_a_failed_item_not_a_traceback(run):
    (run / A.STEP1_BASELINE).write_text("{ half-written")
    result = checks.check_step1(run)
    assert result.status == "failed" and result.score == 0
    assert "not valid JSON" in item(result, "baseline_saved").message


@pytest.mark.slow
def test_too_few_prompts_and_an_empty_output_fail_step1(run):
    edit_json(run / A.STEP1_BASELINE, lambda r: r.update(
        prompts=r["prompts"][:3], prompt_kinds=r["prompt_kinds"][:3],
        outputs=r["outputs"][:2] + ["  "]))
    result = checks.check_step1(run)
    assert "at least 4" in item(result, "held_prompts").message
    assert "empty: [3]" in item(result, "outputs").message
    assert item(result, "model_and_spec").passed


@pytest.mark.slow
def test_identical_chosen_and_rejected_fail_step2_with_the_reason(run):
    rewrite_pairs(run, lambda rows: rows[0].update(rejected=rows[0]["chosen"]))
    result = checks.check_step2(run)
    assert not result.passed and item(result, "pairs_saved").passed
    assert "row 1" in item(result, "pairs_valid").message
    assert "identical to 'chosen'" in item(result, "pairs_valid").message


@pytest.mark.slow
def test_a_held_prompt_in_the_pairs_is_a_leak(run):
    held = json.loads((run / A.STEP1_BASELINE).read_text())["prompts"][0]
    rewrite_pairs(run, lambda rows: rows[2].update(prompt=held))
    result = checks.check_step2(run)
    assert item(result, "pairs_valid").passed
    assert "held-out evaluation prompts" in item(result, "no_heldout_leak").message


@pytest.mark.slow
def test_pairs_edited_after_saving_no_longer_match_the_meta(run):
    rewrite_pairs(run, lambda rows: rows.pop(), update_meta=False)
    result = checks.check_step2(run)
    assert "does not describe" in item(result, "pairs_saved").message
    assert "only 7 pair(s)" in item(result, "pairs_valid").message


@pytest.mark.slow
def test_flat_log_is_diagnosed_no_learning(run):
    def flatten(record):
        for entry in record["log_history"]:
            if "loss" in entry:
                entry.update({"loss": math.log(2), "rewards/chosen": 0.0,
                              "rewards/rejected": 0.0, "rewards/margins": 0.0})
    edit_json(run / A.STEP3_TRAINING, flatten)
    result = checks.check_step3(run)
    assert not item(result, "health").passed
    assert item(result, "health").message.startswith("no_learning")
    assert "ln 2" in item(result, "health").message


@pytest.mark.slow
def test_policy_identical_to_base_fails(run, teaching):
    import copy

    model, tokenizer, _ = teaching
    digest = A.save_policy(copy.deepcopy(model), tokenizer, run / A.STEP3_POLICY)
    edit_json(run / A.STEP3_TRAINING, lambda r: r.update(policy_sha256=digest))
    message = item(checks.check_step3(run), "policy_changed").message
    assert "identical to the base model" in message


@pytest.mark.slow
def test_policy_weights_that_do_not_match_their_hash_fail(run):
    edit_json(run / A.STEP3_TRAINING, lambda r: r.update(policy_sha256="0" * 64))
    assert "do not match" in item(checks.check_step3(run), "policy_changed").message


@pytest.mark.slow
def test_a_wrong_student_loss_fails_the_crosscheck(run):
    edit_json(run / A.STEP3_TRAINING,
              lambda r: r["crosscheck"].update(student_loss=r["crosscheck"]["trl_loss"] + 0.01))
    crosscheck = item(checks.check_step3(run), "crosscheck")
    assert not crosscheck.passed and ">= 1e-4" in crosscheck.message


@pytest.mark.slow
def test_step4_needs_the_step1_prompts_a_change_and_every_metric(run):
    def spoil(r):
        r["outputs_after"] = list(r["outputs_before"])
        r["prompts"] = r["prompts"][1:]
        del r["metrics"]["kl_mean"]
    edit_json(run / A.STEP4_REPORT, spoil)
    result = checks.check_step4(run)
    assert "prompts" in item(result, "same_prompts_spec").message
    assert "no output changed" in item(result, "outputs_changed").message
    assert "kl_mean" in item(result, "metrics").message
    assert item(result, "same_policy").passed


@pytest.mark.slow
def test_step2_with_the_real_model_pairs_counts_only_the_students_own(run):
    from labkit.themes import load_theme

    real = load_theme("plain").real_model_pairs
    rewrite_pairs(run, lambda rows: rows.extend(dict(p) for p in real))
    result = checks.check_step2(run)
    assert result.passed, result.items        # valid, and no leak of any held-out concept
    assert item(result, "pairs_valid").message == (
        "50 valid pairs; 42 rows are the theme's real-model pairs (your instructor's, added on a "
        "real model), not counted as yours: 8 own pair(s)")
    rewrite_pairs(run, lambda rows: rows.__delitem__(slice(0, 3)))
    valid = item(checks.check_step2(run), "pairs_valid")
    assert not valid.passed and valid.message.endswith("5 own pair(s), at least 8 are needed")


@pytest.mark.slow
def test_swapped_pairs_are_counted_among_the_students_own_only(run):
    from labkit.themes import load_theme

    def swap_then_add_the_real_model_pairs(rows):
        for row in rows:
            row.update(chosen=row["rejected"], rejected=row["chosen"])
        rows.extend(dict(p) for p in load_theme("plain").real_model_pairs)

    rewrite_pairs(run, swap_then_add_the_real_model_pairs)
    edit_json(run / A.STEP4_REPORT, lambda r: r["outcome"].update(
        scores_after=[b - 0.3 for b in r["outcome"]["scores_before"]]))
    moved = item(checks.check_step4(run), "moved_toward_preference")
    assert "moved the wrong way" in moved.message
    assert "the judge prefers rejected over chosen on 8 of 8," in moved.message, moved.message


# ----------------------------------------------------------------------------- integrity
@pytest.mark.slow
def test_integrity_recomputations_pass_on_the_real_run(run, teaching):
    assert integrity.baseline_reproduces_item(run, teaching).passed
    assert integrity.log_consistent_item(run, teaching[2]).passed
    assert integrity.outputs_reproduce_item(run, teaching).passed


@pytest.mark.slow
def test_outputs_edited_into_the_report_do_not_reproduce(run, teaching):
    edit_json(run / A.STEP4_REPORT, lambda r: r.update(outputs_after=[
        "Think of it like a recipe you follow step by step." for _ in r["outputs_after"]]))
    assert checks.check_step4(run).passed  # the artifact alone looks fine...
    reproduced = integrity.outputs_reproduce_item(run, teaching)
    assert not reproduced.passed and "not produced by the saved model" in reproduced.message


@pytest.mark.slow
def test_log_that_does_not_fit_its_config_is_caught(run, teaching):
    edit_json(run / A.STEP3_TRAINING, lambda r: r["dpo_config"].update(
        learning_rate=0.0, num_train_epochs=3))
    message = integrity.log_consistent_item(run, teaching[2]).message
    assert "learning_rate is 0.0" in message and "make 6 steps" in message
