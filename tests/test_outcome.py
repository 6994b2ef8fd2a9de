"""Measuring the outcome: intervals (labkit.stats), the theme judges (labkit.judges), the
step-4 outcome (labkit.outcome) and how it is graded (grading.checks.outcome)."""
from __future__ import annotations

from pathlib import Path

import pytest

from labkit import stats
from labkit.judges import Judge, parse_judge
from labkit.outcome import outcome_from_samples
from labkit.themes import load_theme
from tests.conftest import record_figure

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_wilson_matches_the_textbook_values():
    e = stats.wilson(8, 8)
    assert e.value == 1.0 and e.high == 1.0 and e.low == pytest.approx(0.676, abs=1e-3)
    e = stats.wilson(6, 16)
    assert (round(e.low, 3), round(e.high, 3)) == (0.185, 0.614)
    with pytest.raises(ValueError, match="successes <= n"):
        stats.wilson(3, 2)


def test_paired_bootstrap_is_seeded_and_reads_the_verdict():
    before = [0.4, 0.5, 0.6, 0.5, 0.45, 0.55]
    moved = stats.paired_bootstrap(before, [b + 0.3 for b in before])
    assert moved.value == pytest.approx(0.3) and moved.low > 0
    assert stats.verdict(moved) == stats.MOVED
    wrong = stats.paired_bootstrap(before, [b - 0.2 for b in before])
    assert stats.verdict(wrong) == stats.WRONG_WAY
    noise = stats.paired_bootstrap(before, [0.5, 0.4, 0.65, 0.45, 0.5, 0.5])
    assert noise.low < 0 < noise.high and stats.verdict(noise) == stats.NO_CHANGE
    assert stats.paired_bootstrap(before, before[::-1]) == stats.paired_bootstrap(before,
                                                                                  before[::-1])
    with pytest.raises(ValueError, match="one before and one after"):
        stats.paired_bootstrap([1.0], [1.0, 2.0])


@pytest.mark.parametrize("name, functions", [("plain", ("reading_ease", "judge_style")),
                                             ("concise", ("word_count",))])
def test_shipped_judges_agree_with_their_themes_pairs(name, functions):
    theme = load_theme(name)
    assert tuple(a.function for a in theme.judge_agreements) == functions
    for agreement in theme.judge_agreements:
        record_figure(f"theme {name}: judge {agreement.function}", str(agreement))
        assert agreement.valid and agreement.share >= 0.9
        # the real-model pairs too, except for the teaching model's judge (never trained on them)
        real = theme.real_model_pairs if agreement.function == theme.judge.function else ()
        assert agreement.n == len(theme.example_pairs) + len(theme.heldout_pairs) + len(real)
    assert "prefers chosen on" in str(theme)


def test_an_inverted_judge_is_refused_naming_the_pairs(tmp_path):
    """word_count prefers the shorter answer: on plain's pairs the plain answer is the longer
    one, so the judge reads the preference inverted, and the loader refuses it, naming where."""
    from labkit.themes import ThemeError

    text = load_theme("plain").path.read_text(encoding="utf-8")
    inverted = tmp_path / "inverted.toml"
    inverted.write_text(text.replace('function = "reading_ease"', 'function = "word_count"'),
                        encoding="utf-8")
    with pytest.raises(ThemeError) as caught:
        load_theme(inverted)
    (problem,) = [str(p) for p in caught.value.problems]
    record_figure("inverted judge (word_count on plain)", problem[:120])
    # the real-model pairs' plain answers are longer too: 1 of 42 is shorter
    assert problem.startswith("[judge], field 'function': word_count prefers chosen on 1/66")
    assert "example_pairs rows 1, 2, 3" in problem and "heldout_pairs rows 1, 2" in problem
    assert "real_model_pairs rows 1, 2, 3" in problem and ", 32, 34," in problem


def test_parse_judge_names_each_bad_field():
    judge, problems = parse_judge({"function": "vibes", "preferred": "", "extra": 1})
    assert judge is None
    assert [f for f, _ in problems] == ["extra", "function", "preferred"]
    judge, problems = parse_judge({"function": "reading_ease", "teaching": "judge_style",
                                   "preferred": "plain"})
    assert not problems and judge.for_model(True).function == "judge_style"
    assert judge.for_model(False).function == "reading_ease"


def test_judges_score_higher_for_the_preference():
    plain = Judge("reading_ease", "plain")
    assert plain.prefers("Think of it like a box for your stuff.",
                         "Formally, the construct denotes a canonical morphism.")
    assert Judge("word_count", "concise").score("One two three.") == -3.0
    style = Judge("judge_style", "plain", "jargon")
    assert style.score("Think of it like a box.") == 1.0 and style("Formally, it denotes.") == "jargon"
    assert plain.score("") == 0.0
    # clipped to Flesch's 0-100: one unpunctuated run-on sample cannot swing a prompt's mean
    import textstat

    run_on = ("canonically the asymptotically bounded construct constitutes a parametric "
              "mechanism for invariant preservation under heterogeneous compositional "
              "transformations and denotational interpretations of operational semantics")
    assert textstat.flesch_reading_ease(run_on) < -50 and plain.score(run_on) == 0.0
    short = "Go. Go. Go."
    assert textstat.flesch_reading_ease(short) > 100 and plain.score(short) == 100.0


def test_outcome_from_samples_gives_rates_intervals_and_verdict():
    judge = Judge("judge_style", "plain", "jargon")
    plain, jargon = "Think of it like a box for your stuff.", "Formally, it denotes a morphism."
    prompts = [f"Explain thing {i}.\n" for i in range(12)]
    before = [[plain, jargon, jargon, plain] for _ in prompts]
    after = [[plain, plain, plain, jargon] for _ in prompts]
    outcome = outcome_from_samples(judge, prompts, before, after)
    assert outcome.before.value == 0.5 and outcome.after.value == 0.75
    assert outcome.before.n == 48 and outcome.before.method == "Wilson 95 %"
    assert outcome.difference.value == pytest.approx(0.25) and outcome.verdict == stats.MOVED
    same = outcome_from_samples(judge, prompts, before, before)
    assert same.verdict == stats.NO_CHANGE
    assert outcome_from_samples(judge, prompts, after, before).verdict == stats.WRONG_WAY
    assert set(outcome.to_dict()) >= {"scores_before", "scores_after", "difference", "verdict"}
    with pytest.raises(ValueError, match="samples for every prompt"):
        outcome_from_samples(judge, prompts, before[:3], after)


def test_plot_outcome_shows_both_intervals_and_the_verdict():
    from labkit.viz import plot_outcome

    judge = Judge("word_count", "concise")
    prompts = [f"Explain thing {i}.\n" for i in range(6)]
    before = [["one two three four", "one two three"] for _ in prompts]
    after = [["one two", "one"] for _ in prompts]
    outcome = outcome_from_samples(judge, prompts, before, after)
    fig = plot_outcome(outcome)
    assert [ax.get_title() for ax in fig.axes][1] == stats.MOVED
    assert len(fig.axes[0].lines) >= 1 and fig.axes[1].get_ylabel().startswith("change")


# ----------------------------------------------------------------------------- grading.check(3)
def _notebook3_namespace(edit=lambda source: source) -> dict:
    """The definitions of notebook 3's solution, run as a kernel would, with IPython's `In`."""
    from grading.run.student_code import definitions_source

    source = edit(definitions_source(NOTEBOOKS / "03_train_dpo.ipynb"))
    namespace = {"In": ["", source]}
    exec(source, namespace)  # noqa: S102 - the notebook's own definitions
    return namespace


def _step3_result():
    from grading.checks.results import scored, step_result

    return step_result(3, [scored(3, "trained", True, "ok")])


def test_notebook_check_runs_the_graders_exercise_tests():
    from grading.checks.notebook_exercises import with_exercises

    result = with_exercises(_step3_result(), _notebook3_namespace())
    items = {i.name: i for i in result.items}
    assert items["student_loss"].passed and items["student_logps"].passed
    assert "student_loss" not in result.pending and result.status == "passed"


def test_notebook_check_fails_a_loss_without_beta_like_the_grader():
    from grading.checks.notebook_exercises import with_exercises

    namespace = _notebook3_namespace(lambda s: s.replace("beta * (policy_chosen_logps",
                                                         "(policy_chosen_logps"))
    result = with_exercises(_step3_result(), namespace)
    loss = next(i for i in result.items if i.name == "student_loss")
    assert not loss.passed and result.status == "failed" and result.hints
    assert "[ ] student_loss (0/5)" in str(result)


def test_notebook_check_refuses_the_reference_and_names_a_missing_function():
    from grading.checks.notebook_exercises import with_exercises

    calls = ("\nfrom labkit.dpo import dpo_loss\ndef compute_dpo_loss(*args, beta=0.1):\n"
             "    return dpo_loss(*args, beta=beta)\n")
    namespace = _notebook3_namespace(lambda s: s + calls)
    namespace.pop("compute_sequence_logps")
    items = {i.name: i for i in with_exercises(_step3_result(), namespace).items}
    assert not items["student_loss"].passed and "labkit.dpo.dpo_loss" in items["student_loss"].message
    assert "is not defined in this kernel" in items["student_logps"].message
