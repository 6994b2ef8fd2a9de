"""The output checks grade by teacher-forced verification (grading.checks.verify), not by
regenerating: outputs made in bf16 grade the same in fp32, a hand-edited output still fails,
and runs recorded before the token ids were saved are verified from their text."""
from __future__ import annotations

import json

import pytest

from grading.checks import integrity
from labkit import artifacts as A
from tests.conftest import edit_json

pytestmark = pytest.mark.slow


def test_the_real_run_records_ids_that_decode_to_its_outputs(run, teaching):
    step1, step4 = (json.loads((run / f).read_text()) for f in (A.STEP1_BASELINE,
                                                                 A.STEP4_REPORT))
    tok = teaching[1]
    assert [tok.decode(i, skip_special_tokens=True) for i in step1["output_ids"]] == \
        step1["outputs"]
    assert [tok.decode(i, skip_special_tokens=True) for i in step4["outputs_after_ids"]] == \
        step4["outputs_after"]


def test_bf16_made_artifacts_grade_the_same_in_fp32(run, teaching, figure):
    """Generate both output sets under CPU bf16 autocast (as a bf16 GPU run would), record
    them with their ids, and grade with the fp32 models: both items pass."""
    import torch

    from grading.checks.policy import load_policy
    from labkit.config import GenerationSpec
    from labkit.generation import generate

    step1 = json.loads((run / A.STEP1_BASELINE).read_text())
    spec = GenerationSpec.from_dict(step1["generation_spec"])
    policy = load_policy(run, teaching)
    made, differ = {}, 0
    for name, model in (("base", teaching[0]), ("policy", policy)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            made[name] = generate(model, teaching[1], step1["prompts"], spec, return_ids=True)
        differ += sum(a != b for a, b in zip(made[name][0], generate(
            model, teaching[1], step1["prompts"], spec)))
    figure("bf16-made outputs whose text differs from fp32 regeneration", differ)
    edit_json(run / A.STEP1_BASELINE, lambda r: r.update(outputs=made["base"][0],
                                                          output_ids=made["base"][1]))
    edit_json(run / A.STEP4_REPORT, lambda r: r.update(
        outputs_before=made["base"][0], outputs_after=made["policy"][0],
        outputs_after_ids=made["policy"][1]))
    for item in (integrity.baseline_reproduces_item(run, teaching),
                 integrity.outputs_reproduce_item(run, teaching)):
        assert item.passed, item.message
        assert "verified by teacher forcing" in item.message


def test_a_record_without_ids_is_verified_from_its_text(run, teaching):
    edit_json(run / A.STEP1_BASELINE, lambda r: r.pop("output_ids"))
    edit_json(run / A.STEP4_REPORT, lambda r: r.pop("outputs_after_ids"))
    for item in (integrity.baseline_reproduces_item(run, teaching),
                 integrity.outputs_reproduce_item(run, teaching)):
        assert item.passed and "re-tokenized" in item.message, item.message


def test_edited_text_with_its_old_ids_fails(run, teaching):
    def edit(r):
        r["outputs"][1] = r["outputs"][1].replace(" ", "  ", 1) + " Think of it like a map."
    edit_json(run / A.STEP1_BASELINE, edit)
    item = integrity.baseline_reproduces_item(run, teaching)
    assert not item.passed and "outputs [2] are not the text" in item.message


@pytest.mark.parametrize("with_ids", [True, False])
def test_an_edited_output_fails_at_the_edited_token(run, teaching, with_ids):
    """Text and ids edited together (or text alone, no ids): verification catches it."""
    tok = teaching[1]
    forged = "Think of it like a recipe you follow step by step."

    def edit(r):
        r["outputs_after"][0] = forged
        if with_ids:
            r["outputs_after_ids"][0] = tok(forged, add_special_tokens=False)["input_ids"] + [
                tok.eos_token_id]
        else:
            r.pop("outputs_after_ids")
    edit_json(run / A.STEP4_REPORT, edit)
    item = integrity.outputs_reproduce_item(run, teaching)
    assert not item.passed and "prompt 1" in item.message and "logits higher" in item.message, \
        item.message


def test_ids_of_the_wrong_shape_fail_with_a_reason(run, teaching):
    edit_json(run / A.STEP1_BASELINE, lambda r: r.update(output_ids=[[10 ** 9]] * len(
        r["outputs"])))
    item = integrity.baseline_reproduces_item(run, teaching)
    assert not item.passed and "not one list of token ids" in item.message
