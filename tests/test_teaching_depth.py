"""Issue 14's teaching additions: the log-prob dynamics plot from a real run, the β sweep
(real DPOTrainer runs that leave the run directory alone), and the reflection answers
collected from the notebooks."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from labkit import reflections, viz
from tests._runs import preset_run  # noqa: F401 (fixture: the shared real preset run)
from tests.test_viz import rendered

ROOT = Path(__file__).resolve().parent.parent


def test_logps_dynamics_plots_chosen_rejected_and_margin_from_a_real_log(preset_run):
    fig = rendered(viz.plot_logps_dynamics(preset_run.log_history))
    left, right = fig.axes
    labels = [line.get_label() for line in left.get_lines()]
    assert labels[:2] == ["chosen", "rejected"]
    steps = [e["step"] for e in preset_run.log_history if "logps/chosen" in e]
    assert list(left.get_lines()[1].get_xdata()) == steps
    rejected = left.get_lines()[1].get_ydata()
    assert rejected[-1] < rejected[0] - 10          # rejected falls by tens of nats
    assert right.get_lines()[0].get_ydata()[-1] > 0   # the margin grew


def test_logps_dynamics_names_the_fix_when_nothing_was_logged():
    with pytest.raises(ValueError, match="logging_steps=1"):
        viz.plot_logps_dynamics([{"loss": 0.69, "step": 1}])


def test_beta_sweep_small_beta_moves_further_and_leaves_the_run_dir_alone(teaching, tmp_path,
                                                                           monkeypatch):
    from labkit import teaching as T
    from labkit.config import PRESETS, GenerationSpec
    from labkit.data import validate_pairs
    from labkit.experiments import beta_sweep, format_sweep
    from labkit.generation import generate

    monkeypatch.chdir(tmp_path)
    model, tokenizer, _ = teaching
    prompts, spec = list(T.HELDOUT_PROMPTS[:4]), GenerationSpec(max_new_tokens=30)
    before = generate(model, tokenizer, prompts, spec)
    p = PRESETS["teaching"]
    config = dict(learning_rate=p.learning_rate, num_train_epochs=p.num_train_epochs,
                  per_device_train_batch_size=p.per_device_train_batch_size, seed=42)
    rows = beta_sweep("teaching", validate_pairs(T.make_preference_pairs(8)), config, prompts,
                      before, spec, betas=(0.01, 1.0))
    assert [r["beta"] for r in rows] == [0.01, 1.0]
    small, large = rows
    assert small["logratio_margin"] > large["logratio_margin"] > 0
    assert small["kl"] > large["kl"] > 0
    assert list(tmp_path.iterdir()) == []               # trained in temporary folders only
    table = format_sweep(rows)
    assert "log-ratio margin" in table and len(table.splitlines()) == 4
    rendered(viz.plot_beta_sweep(rows))


def test_reflection_answers_are_collected_and_the_release_blanks_them(tmp_path):
    from labkit.release import release

    nb4 = ROOT / "notebooks" / "04_before_after.ipynb"
    solution = reflections.collect_answers(nb4)
    assert [r["id"] for r in solution] == ["R4.1", "R4.2", "R4.3"]
    assert all(r["answered"] for r in solution) and "ship" in solution[0]["question"]
    release(ROOT / "notebooks", tmp_path / "student")
    student = tmp_path / "student" / nb4.name
    rows = reflections.collect_answers(student)
    assert [r["question"] for r in rows] == [r["question"] for r in solution]
    assert not any(r["answered"] for r in rows)
    nb = nbformat.read(student, as_version=4)
    cell = next(c for c in nb.cells if "**R4.2**" in c.source)
    assert reflections.PLACEHOLDER in cell.source
    cell.source = cell.source.replace(reflections.PLACEHOLDER, "The KL would jump first.")
    nbformat.write(nb, tmp_path / "answered.ipynb")
    rows = reflections.collect_all([tmp_path / "answered.ipynb"])
    assert [r["answered"] for r in rows] == [False, True, False]
    assert rows[1]["answer"] == "The KL would jump first."
    assert rows[1]["notebook"] == "answered.ipynb"
    text = reflections.answers_markdown(rows)
    assert "> The KL would jump first." in text and text.count("_(not answered)_") == 2


def test_every_notebook_answer_cell_has_an_id():
    for path in sorted((ROOT / "notebooks").glob("0[1-4]_*.ipynb")):
        ids = [r["id"] for r in reflections.collect_answers(path)]
        assert all(i.startswith("R") for i in ids) and len(ids) == len(set(ids)), (path, ids)


def test_an_unreadable_notebook_is_named(tmp_path):
    bad = tmp_path / "03_train_dpo.ipynb"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="03_train_dpo.ipynb cannot be read"):
        reflections.collect_answers(bad)


FREEFORM = ROOT / "tests" / "data" / "freeform"


def load_set(name):
    import json

    return [json.loads(line) for line in (FREEFORM / f"{name}.jsonl").read_text().splitlines()]


def test_review_flags_free_form_pairs_and_passes_the_models_own_kind(teaching):
    from labkit import teaching as T
    from labkit.own_words import FAMILIAR, review_pairs

    model, tokenizer, _ = teaching
    template = review_pairs(model, tokenizer, T.make_preference_pairs(8))
    assert template.ok, str(template)
    assert max(r["chosen_nats_per_token"] for r in template.rows) < 1.0
    for name in ("casual", "terse", "wordy"):
        review = review_pairs(model, tokenizer, load_set(name))
        assert not review.ok
        assert any("never seen" in p for p in review.problems), (name, review.problems)
        costs = [r["chosen_nats_per_token"] for r in review.rows
                 if r["tokens"] < model.config.n_positions]
        assert costs and min(costs) > FAMILIAR
    wordy = review_pairs(model, tokenizer, load_set("wordy"))
    assert any("longer than the model's context" in p for p in wordy.problems)
    assert "To fix before training" in str(wordy)


def test_show_text_and_candidates(teaching):
    from labkit import teaching as T
    from labkit.own_words import candidates, show_text

    model, tokenizer, _ = teaching
    seen = show_text(model, tokenizer, "Explain a queue.\n", "A queue is just a line at the shop.")
    assert seen.startswith("tokens: |") and "shop?" in seen and "queue?" not in seen
    first = candidates(model, tokenizer, T.PAIR_PROMPTS[0], n=4, seed=1)
    assert len(first) == 4 and first == candidates(model, tokenizer, T.PAIR_PROMPTS[0], n=4, seed=1)
    assert {T.judge_style(t) for t in first} <= {"plain", "jargon", "unclear"}


def test_gradescope_items_carry_the_answers_at_zero_points():
    rows = [{"notebook": "04_before_after.ipynb", "id": "R4.1", "question": "Ship?",
             "answer": "Accuracy.", "answered": True},
            {"notebook": "04_before_after.ipynb", "id": "R4.2", "question": "10x lr?",
             "answer": "", "answered": False}]
    from grading.checks.report import SubmissionResult

    items = [t for t in SubmissionResult("s", "s", reflections=rows).gradescope()["tests"]
             if t["name"].startswith("Written")]
    assert [i["name"] for i in items] == ["Written answer R4.1 (04_before_after.ipynb)",
                                          "Written answer R4.2 (04_before_after.ipynb)"]
    assert all(i["score"] == i["max_score"] == 0 and i["visibility"] == "hidden" for i in items)
    assert items[0]["output"].endswith("Accuracy.") and "(not answered)" in items[1]["output"]
