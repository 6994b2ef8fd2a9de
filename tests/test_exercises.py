"""Exercise 3.3 (compute_sequence_logps): the notebook's solution equals labkit's, each
classic wrong variant gets its own hint, and the grader scores it from notebook 3 alone."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from labkit.exercises import _variants, compare_logps
from tests._runs import run_local

ROOT = Path(__file__).resolve().parent.parent
NB3 = ROOT / "notebooks" / "03_train_dpo.ipynb"
SOLUTION_LINE = "    return (token_logps * answer).sum(dim=1)"
LAST_TOKEN = ("    last = attention_mask.sum(dim=1) - 2\n"
              "    return token_logps[torch.arange(len(last)), last]")


def case_tensors(seed=0):
    from grading.checks.exercise_cases import logps_cases

    case = logps_cases(seed)[1]
    return (torch.tensor(case["logits"]), torch.tensor(case["input_ids"]),
            torch.tensor(case["attention_mask"]), torch.tensor(case["prompt_lengths"]))


@pytest.mark.parametrize("name", ["last token only", "mean", "prompt included",
                                  "padding included", "no shift"])
def test_each_classic_bug_fails_with_its_own_hint(name):
    tensors = case_tensors()
    value, hint = _variants(*tensors)[name]
    ok, message = compare_logps(value, *tensors)
    assert not ok and message.endswith(hint), message


def test_the_reference_passes_and_a_wrong_shape_is_named():
    from labkit.dpo import completion_logps

    tensors = case_tensors()
    assert compare_logps(completion_logps(*tensors), *tensors)[0]
    ok, message = compare_logps(torch.zeros(2), *tensors)
    assert not ok and "shape (2,), expected (5,)" in message


def variant_notebook(tmp_path: Path, body: str) -> Path:
    nb = nbformat.read(NB3, as_version=4)
    cell = next(c for c in nb.cells if "def compute_sequence_logps" in c.source)
    assert SOLUTION_LINE in cell.source
    cell.source = cell.source.replace(SOLUTION_LINE, body)
    path = tmp_path / "03_train_dpo.ipynb"
    nbformat.write(nb, path)
    return path


def test_grader_scores_the_exercise_from_notebook_3_alone(tmp_path):
    from grading.run.student_code import definitions_source
    from grading.run.student_logps import check_student_logps

    source = definitions_source(NB3)
    assert "def compute_sequence_logps" in source and "trainer.train()" not in source
    assert check_student_logps(NB3, run_local, tmp_path / "ok", timeout=120) == (
        True, "matches labkit.dpo.sequence_logps' core on 3 random batches")
    last = variant_notebook(tmp_path, LAST_TOKEN)
    ok, message = check_student_logps(last, run_local, tmp_path / "last", timeout=120)
    assert not ok and "log-prob of the last token only" in message, message


def test_grader_fails_the_release_stub_and_a_missing_function(tmp_path):
    from grading.run.student_logps import check_student_logps
    from labkit.release import release

    release(ROOT / "notebooks", tmp_path / "student")
    stub = tmp_path / "student" / NB3.name
    ok, message = check_student_logps(stub, run_local, tmp_path / "stub", timeout=120)
    assert not ok and "Exercise 3.3 is not done yet" in message, message
    nb = nbformat.read(NB3, as_version=4)
    nb.cells = [c for c in nb.cells if "def compute_sequence_logps" not in c.source]
    nbformat.write(nb, tmp_path / "none.ipynb")
    assert check_student_logps(tmp_path / "none.ipynb", run_local, tmp_path / "none") == (
        False, "notebook 3 has no `def compute_sequence_logps(...)` at the top level of a cell")


def test_check_sequence_logps_on_a_real_batch(teaching):
    from labkit import teaching as T
    from labkit.dpo import completion_logps
    from labkit.exercises import check_sequence_logps

    model, tokenizer, _ = teaching
    pairs = T.make_preference_pairs(4)
    prompts, chosen = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    assert check_sequence_logps(completion_logps, model, tokenizer, prompts, chosen).startswith(
        "matches labkit's summed completion log-probs on 4 rows")
    with pytest.raises(AssertionError, match="last token only|log-prob of the last token"):
        check_sequence_logps(lambda *a: _variants(*a)["last token only"][0], model, tokenizer,
                             prompts, chosen)
