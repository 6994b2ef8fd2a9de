"""policy_changed ties the saved weights to the training they claim: the grader recomputes
the DPO loss of the saved policy vs its base on the first batch of the saved step-2 pairs
and compares it with the recorded cross-check (issue 12, class 1). Weights that are the base
plus noise, or another run's policy (trained on other pairs), fail and say what differed."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from grading import checks
from grading.checks import policy
from labkit import artifacts as A
from tests import _runs
from tests.conftest import edit_json

pytestmark = pytest.mark.slow


def swap_policy(run: Path, model, tokenizer) -> None:
    """Put `model` in step3_policy/ and update the recorded sha256, as a forger would."""
    digest = A.save_policy(model, tokenizer, run / A.STEP3_POLICY)
    edit_json(run / A.STEP3_TRAINING, lambda r: r.update(policy_sha256=digest))


def changed_item(run: Path, teaching):
    return next(i for i in checks.check_step3(run, base=teaching).items
                if i.name == "policy_changed")


def test_the_real_policy_reproduces_its_recorded_crosscheck(run, teaching, figure):
    item = changed_item(run, teaching)
    assert item.passed, item.message
    assert "DPO loss is" in item.message and "mean margin" in item.message
    recorded = json.loads((run / A.STEP3_TRAINING).read_text())["crosscheck"]["labkit_loss"]
    figure("policy provenance: recorded cross-check loss", f"{recorded:.4f}")


def test_base_plus_noise_fails_even_with_a_matching_crosscheck(run, teaching):
    noisy = copy.deepcopy(teaching[0])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    swap_policy(run, noisy, teaching[1])
    item = changed_item(run, teaching)
    assert not item.passed and "do not reproduce the recorded cross-check" in item.message
    # the forger also writes the noise's own loss into the cross-check: no learning shows
    loss = float(item.message.split("DPO loss is ")[1].split()[0])
    edit_json(run / A.STEP3_TRAINING, lambda r: r["crosscheck"].update(labkit_loss=loss))
    item = changed_item(run, teaching)
    assert not item.passed and "no learning shows" in item.message, item.message


def test_another_runs_policy_trained_on_other_pairs_fails(run, teaching):
    rows = [json.loads(line) for line in (run / A.STEP2_PAIRS).read_text().splitlines()]
    other = _runs.train(8, pair_seed=1)
    other_prompts = {p["prompt"] for p in other.trainer.train_dataset}
    assert {r["prompt"] for r in rows[:4]} != other_prompts  # really other pairs
    swap_policy(run, other.policy, teaching[1])
    item = changed_item(run, teaching)
    assert not item.passed and "do not reproduce the recorded cross-check" in item.message, \
        item.message


def test_a_missing_crosscheck_cannot_vouch_for_the_weights(run, teaching):
    edit_json(run / A.STEP3_TRAINING, lambda r: r.update(crosscheck={}))
    item = changed_item(run, teaching)
    assert not item.passed and "no recorded crosscheck loss" in item.message


def test_the_tolerance_is_stated_and_allows_a_bf16_crosscheck(run, teaching):
    """A cross-check computed under bf16 autocast (a bf16 run) still matches in fp32."""
    from labkit.dpo import dpo_loss, sequence_logps

    rec = json.loads((run / A.STEP3_TRAINING).read_text())
    batch = rec["dpo_config"]["per_device_train_batch_size"]
    rows = [json.loads(line) for line in (run / A.STEP2_PAIRS).read_text().splitlines()][:batch]
    p, c, r = ([row[k] for row in rows] for k in ("prompt", "chosen", "rejected"))
    trained = policy.load_policy(run, teaching)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps = [sequence_logps(m, teaching[1], p, a, paired_with=b) for m in (trained, teaching[0])
                 for a, b in ((c, r), (r, c))]
    bf16_loss = float(dpo_loss(*logps, beta=rec["dpo_config"]["beta"])[0])
    edit_json(run / A.STEP3_TRAINING, lambda x: x["crosscheck"].update(labkit_loss=bf16_loss))
    item = changed_item(run, teaching)
    assert item.passed and "tolerance" in item.message, item.message
