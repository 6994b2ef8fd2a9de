"""labkit.steps: each step record round-trips through its file, old runs still load, a bad
field is named (strict) or kept aside for the checks (tolerant)."""
from __future__ import annotations

import json

import pytest

from labkit import artifacts
from labkit.artifacts import ArtifactError
from labkit.steps import STEPS, Step1Baseline, Step2Meta, Step3Training, Step4Report

EXAMPLES = {
    Step1Baseline: dict(model={"resolved": "teaching"}, seed=0, generation_spec={"max_new_tokens": 5},
                        prompts=["Explain a.", "Explain b."], prompt_kinds=["theme", "far"],
                        outputs=["one", "two"]),
    Step2Meta: dict(n_pairs=8, pairs_sha256="0" * 64, heldout_prompts=["Explain a."], theme="t"),
    Step3Training: dict(base_model={"resolved": "teaching"}, policy_sha256="1" * 64,
                        pairs_sha256="0" * 64, n_pairs=8, train_seconds=1.5,
                        dpo_config={"beta": 0.1}, log_history=[{"loss": 0.69, "step": 1}],
                        health={"verdict": "healthy"},
                        crosscheck={"student_loss": 0.5, "trl_loss": 0.5,
                                    "first_step": {"student_loss": 0.69, "trl_loss": 0.69}},
                        samples_during_training=[{"step": 1, "samples": ["x"]}]),
    Step4Report: dict(generation_spec={"max_new_tokens": 5}, prompts=["p"], outputs_before=["a"],
                      outputs_after=["b"], changed=[True], policy_sha256="1" * 64,
                      metrics={"kl_mean": 0.1}),
}


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_round_trip(cls, tmp_path):
    record = cls(**EXAMPLES[cls])
    path = record.save(tmp_path)
    assert path == tmp_path / cls.FILE
    loaded = cls.load(tmp_path)
    assert loaded == record and loaded.problems == {}
    raw = json.loads(path.read_text())
    assert raw["kind"] == cls.KIND and raw["schema_version"] == cls.SCHEMA_VERSION == 1


def test_file_names_come_from_artifacts():
    assert [STEPS[n].FILE for n in (1, 2, 3, 4)] == [
        artifacts.STEP1_BASELINE, artifacts.STEP2_META, artifacts.STEP3_TRAINING,
        artifacts.STEP4_REPORT]
    assert Step2Meta.PAIRS_FILE == artifacts.STEP2_PAIRS
    assert Step3Training.POLICY_DIR == artifacts.STEP3_POLICY


def test_an_old_run_without_samples_still_loads(tmp_path):
    """Schema-1 step-3 files written before samples_during_training existed (by save_json
    with a hand-written dict, as the notebooks used to)."""
    payload = {k: v for k, v in EXAMPLES[Step3Training].items() if k != "samples_during_training"}
    artifacts.save_json(tmp_path / artifacts.STEP3_TRAINING, payload, kind="step3_training")
    record = Step3Training.load(tmp_path)
    assert record.samples_during_training is None
    assert record.crosscheck["first_step"]["student_loss"] == 0.69


def test_strict_load_names_file_and_field(tmp_path):
    bad = {**EXAMPLES[Step1Baseline], "prompts": "Explain a."}
    artifacts.save_json(tmp_path / artifacts.STEP1_BASELINE, bad, kind="step1_baseline")
    with pytest.raises(ArtifactError, match=r"step1_baseline\.json.*'prompts'.*list"):
        Step1Baseline.load(tmp_path)


def test_tolerant_load_keeps_the_raw_value_and_the_other_fields(tmp_path):
    bad = {k: v for k, v in EXAMPLES[Step1Baseline].items() if k != "seed"}
    bad["outputs"] = 3
    artifacts.save_json(tmp_path / artifacts.STEP1_BASELINE, bad, kind="step1_baseline")
    record = Step1Baseline.load(tmp_path, strict=False)
    assert record.outputs == 3 and record.prompts == ["Explain a.", "Explain b."]
    assert set(record.problems) == {"seed", "outputs"}
    assert "missing" in record.problems["seed"] and record.raw["outputs"] == 3


def test_tolerant_load_still_refuses_a_wrong_kind_or_version(tmp_path):
    artifacts.save_json(tmp_path / artifacts.STEP1_BASELINE, {}, kind="step4_report")
    with pytest.raises(ArtifactError, match="expected 'step1_baseline'"):
        Step1Baseline.load(tmp_path, strict=False)
    with pytest.raises(ArtifactError, match="does not exist"):
        Step4Report.load(tmp_path, strict=False)


def test_save_refuses_a_bad_field_and_writes_nothing(tmp_path):
    record = Step2Meta(**{**EXAMPLES[Step2Meta], "n_pairs": "8"})
    with pytest.raises(ArtifactError, match=r"'n_pairs' should be an integer"):
        record.save(tmp_path)
    assert not (tmp_path / Step2Meta.FILE).exists()


def test_step2_save_pairs_writes_both_files_that_agree(tmp_path):
    from labkit import teaching

    pairs = teaching.make_preference_pairs(8, seed=0)
    path = Step2Meta.save_pairs(tmp_path, pairs, theme="plain", heldout_prompts=["Explain x."])
    meta = Step2Meta.load(tmp_path)
    rows, _ = Step2Meta.read_pairs(tmp_path)
    assert path.name == Step2Meta.PAIRS_FILE and meta.n_pairs == len(rows) == 8
    import hashlib
    assert meta.pairs_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta.heldout_prompts == ["Explain x."]


def test_step4_build_fills_the_metrics_in_order():
    from labkit.steps import METRIC_KEYS

    report = Step4Report.build({"max_new_tokens": 5}, ["p", "q"], ["a", "b"], ["a", "c"],
                               [False, True], "1" * 64, heldout_preference_accuracy=0.75,
                               kl_mean=0.2, perplexity=(10.0, 11.0), style_rate=(None, None))
    assert list(report.metrics) == list(METRIC_KEYS)
    assert report.metrics["changed_outputs"] == 1 and report.metrics["held_prompts"] == 2
    assert report.validate() == {}


def test_saving_an_untrained_trainer_says_train_first_and_writes_nothing(teaching_dir,
                                                                         tmp_path):
    """The save cell run before trainer.train(): a sentence, not a bare StopIteration."""
    import copy

    from trl import DPOTrainer

    from labkit import teaching
    from labkit.data import validate_pairs
    from tests._runs import dpo_args, fresh_teaching_model

    model, tokenizer = fresh_teaching_model()
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model),
                         args=dpo_args(str(tmp_path / "out")), processing_class=tokenizer,
                         train_dataset=validate_pairs(teaching.make_preference_pairs(8)))
    run = tmp_path / "run"
    with pytest.raises(ArtifactError, match=r"trainer\.train\(\) has not run"):
        Step3Training.save_trained(run, trainer, tokenizer, base_model={"resolved": "teaching"},
                                   health=None, crosscheck=None)
    assert not Step3Training.exists(run) and not (run / Step3Training.POLICY_DIR).exists()
