"""labkit.health.diagnose: verdicts on REAL short DPO runs of the teaching model (CPU), plus
hand-made log histories for the failure modes a few seconds of training cannot produce."""
from __future__ import annotations

import copy
import json
import math

import pytest

from labkit.health import ADVICE, LN2, VERDICTS, Diagnosis, diagnose, training_entries
from tests._runs import NO_LEARNING, OVER_OPTIMISED, PRESET, TOO_SHORT, train
from tests.conftest import record_figure

REAL_RUNS = {
    "preset": (PRESET, {"healthy"}),
    "lr0": (NO_LEARNING, {"no_learning"}),
    "lr0.1-beta0.01": (OVER_OPTIMISED, {"over_optimised", "diverged"}),
    "1-epoch": (TOO_SHORT, {"too_short"}),
}


@pytest.mark.parametrize("name", list(REAL_RUNS))
@pytest.mark.parametrize("give_beta", [True, False], ids=["beta", "no-beta"])
def test_diagnose_real_runs(teaching_dir, name, give_beta):
    config, expected = REAL_RUNS[name]
    run = train(**config)
    diagnosis = diagnose(run.log_history, beta=run.beta if give_beta else None)
    losses = [e["loss"] for e in training_entries(run.log_history)]
    if give_beta:
        record_figure(f"diagnose({name})", f"{diagnosis.verdict}, {len(losses)} steps, loss "
                      f"{losses[0]:.3f} -> {losses[-1]:.4f}, train {run.seconds:.1f} s")
    assert diagnosis.verdict in expected, f"{config}: {diagnosis}"
    if give_beta and diagnosis.verdict == "over_optimised":  # advice names the run's beta
        assert f"beta from {run.beta:g} to {3 * run.beta:g}" in diagnosis.advice
    if diagnosis.verdict in {"over_optimised", "diverged"}:  # and its logged learning rate
        assert "learning_rate from 0.1 to 0.01" in diagnosis.advice, diagnosis.advice
    else:
        assert diagnosis.advice == ADVICE[diagnosis.verdict]
    assert diagnosis.reasons


def test_real_run_reasons_name_the_cause(teaching_dir):
    lr0 = diagnose(train(**NO_LEARNING).log_history)
    assert any("ln 2" in r for r in lr0.reasons) and any("learning_rate is 0" in r
                                                         for r in lr0.reasons), lr0.reasons
    assert not lr0.ok
    short = diagnose(train(**TOO_SHORT).log_history)
    assert "only 2 logged training step(s)" in short.reasons[0]
    preset = train(**PRESET)
    healthy = diagnose(preset.log_history, beta=preset.beta)
    assert healthy.ok and healthy.reasons[0].startswith("loss 0.693 ->")
    over = train(**OVER_OPTIMISED)
    runaway = diagnose(over.log_history, beta=over.beta)
    if runaway.verdict == "over_optimised":
        assert any("nats of log-ratio" in r for r in runaway.reasons), runaway.reasons
        assert any("rejected log-probs fell" in r for r in runaway.reasons), runaway.reasons


def test_real_logs_have_a_summary_entry_that_is_not_a_step(teaching_dir):
    history = train(**PRESET).log_history
    assert "train_runtime" in history[-1] and "loss" not in history[-1]
    assert len(training_entries(history)) == len(history) - 1 == 20


# ------------------------------------------------------------------ hand-made histories
def steps(losses, margins=None, grad_norm=1.0, learning_rate=1e-4, **extra):
    margins = margins or [0.1 * i for i in range(len(losses))]
    return [{"loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate,
             "rewards/chosen": m / 2, "rewards/rejected": -m / 2, "rewards/margins": m,
             "step": i + 1, **extra} for i, (loss, m) in enumerate(zip(losses, margins))]


FALLING = [0.693, 0.60, 0.50, 0.40, 0.35]


@pytest.mark.parametrize("key", ["loss", "grad_norm", "rewards/margins"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_is_diverged(key, bad):
    history = steps(FALLING)
    history[3][key] = bad
    diagnosis = diagnose(history)
    assert diagnosis.verdict == "diverged", diagnosis
    assert not diagnosis.ok


def test_nan_beats_too_short():
    assert diagnose(steps([0.69, math.nan])).verdict == "diverged"


def test_grad_norm_zero_throughout_is_no_learning(teaching_dir):
    """A real healthy history with grad_norm forced to 0 (TRL #1778): no gradient reached
    the weights, whatever the other curves say."""
    history = copy.deepcopy(train(**PRESET).log_history)
    for entry in training_entries(history):
        entry["grad_norm"] = 0.0
    diagnosis = diagnose(history, beta=0.1)
    assert diagnosis.verdict == "no_learning", diagnosis
    assert any("grad_norm is 0" in r for r in diagnosis.reasons)


def test_loss_pinned_at_ln2_is_no_learning_even_with_tiny_rewards():
    history = steps([LN2, LN2 + 1e-4, LN2 - 1e-4, LN2], margins=[0, 1e-4, 2e-4, 1e-4])
    diagnosis = diagnose(history)
    assert diagnosis.verdict == "no_learning"
    assert any("ln 2" in r for r in diagnosis.reasons)


def test_eval_entries_and_the_summary_are_ignored(teaching_dir):
    """Eval entries (eval_ prefix) and the final summary must neither count as steps nor
    trip the NaN check: the verdict and reasons stay those of the training entries."""
    history = copy.deepcopy(train(**PRESET).log_history)
    clean = diagnose(history, beta=0.1)
    noisy = history[:5] + [{"eval_loss": math.nan, "eval_rewards/margins": math.inf,
                            "epoch": 1.0, "step": 5}] + history[5:-1]
    noisy += [{"eval_loss": 0.0, "eval_rewards/margins": 1e6, "epoch": 10.0, "step": 20},
              {**history[-1], "train_loss": math.nan}]
    assert diagnose(noisy, beta=0.1).to_dict() == clean.to_dict()
    only_eval = [e for e in noisy if "loss" not in e]
    diagnosis = diagnose(only_eval)
    assert diagnosis.verdict == "too_short" and "only 0" in diagnosis.reasons[0]


def test_small_fall_is_weak():
    diagnosis = diagnose(steps([0.693, 0.69, 0.68, 0.675], margins=[0, 0.01, 0.02, 0.03]))
    assert diagnosis.verdict == "weak", diagnosis
    assert diagnosis.ok


def test_every_verdict_has_advice_and_renders():
    assert set(ADVICE) == set(VERDICTS)
    produced = {
        "healthy": diagnose(steps(FALLING)),
        "weak": diagnose(steps([0.693, 0.69, 0.68, 0.675])),
        "no_learning": diagnose(steps([LN2] * 4, margins=[0.0] * 4)),
        "diverged": diagnose(steps([0.69, math.nan, 0.5])),
        "too_short": diagnose(steps([0.69, 0.6])),
        "over_optimised": diagnose(
            steps([0.69, 0.01, 0.001, 0.0005, 0.0001, 0.0001],
                  margins=[0.0, 5.0, 10.0, 20.0, 30.0, 40.0]), beta=0.1),
        "saturated": diagnose(steps(*MEMORISED)),
    }
    for verdict, diagnosis in produced.items():
        assert diagnosis.verdict == verdict, diagnosis
        assert len(ADVICE[verdict]) > 40
        if verdict == "over_optimised":  # beta is known: the advice names it
            assert "beta from 0.1 to 0.3" in diagnosis.advice
        if verdict in {"over_optimised", "saturated", "weak", "diverged"}:
            # the learning rate is in the log (1e-4): the advice names it
            assert "learning_rate from 0.0001 to" in diagnosis.advice, diagnosis.advice
        else:
            assert diagnosis.advice == ADVICE[verdict]
        text = str(diagnosis)
        assert text.startswith(f"Verdict: {verdict.upper().replace('_', ' ')}")
        assert "What to do: " + diagnosis.advice in text
        assert all(f"  - {r}" in text for r in diagnosis.reasons)


def test_to_dict_is_json_ready():
    diagnosis = diagnose(steps(FALLING))
    data = diagnosis.to_dict()
    assert data == {"verdict": "healthy", "reasons": diagnosis.reasons,
                    "advice": ADVICE["healthy"]}
    assert Diagnosis(**json.loads(json.dumps(data))) == diagnosis


def _history(losses, margins, rejected):
    return [{"loss": l, "rewards/margins": m, "logps/rejected": r, "grad_norm": 1.0,
             "rewards/chosen": m / 2, "rewards/rejected": -m / 2}
            for l, m, r in zip(losses, margins, rejected)]


def test_extreme_runaway_is_over_optimised_even_when_the_collapse_is_late():
    losses = [0.69, 0.6, 0.5, 0.3, 0.1, 0.04, 0.01, 0.005, 0.002, 0.001]
    margins = [0.0, 0.5, 1, 2, 3, 4, 5, 6, 7, 8]
    runaway = _history(losses, margins, [-7, -20, -60, -150, -300, -450, -600, -700, -780, -837])
    assert diagnose(runaway, beta=0.01).verdict == "over_optimised"
    assert diagnose(runaway).verdict == "over_optimised"  # from log-probs alone
    mild = _history(losses, [m / 2 for m in margins], [-7, -8, -9, -10, -12, -13, -14, -15, -16, -17])
    assert diagnose(mild, beta=0.1).verdict == "healthy"


# ------------------------------------------- memorised pairs; advice that reads the run
# SmolLM2-135M-Instruct with GPT-2's preset (lr 5e-5, beta 0.1, 3 epochs of 8 pairs, 6 steps)
MEMORISED = ([0.6931, 0.0470, 0.0003, 0.0000, 0.0000, 0.0000],
             [0.0, 3.1, 8.2, 11.0, 12.7, 13.6])


def test_loss_at_zero_in_the_first_third_with_growing_margins_is_saturated():
    diagnosis = diagnose(steps(*MEMORISED), beta=0.1)  # 136 nats: below the runaway line
    assert diagnosis.verdict == "saturated", diagnosis
    assert not diagnosis.ok
    assert any("logged step 2 of 6" in r for r in diagnosis.reasons), diagnosis.reasons
    assert any("3.10 -> 13.60" in r for r in diagnosis.reasons), diagnosis.reasons


@pytest.mark.parametrize("losses,margins", [
    (FALLING, None),                                                # never collapses
    ([0.69, 0.5, 0.3, 0.1, 0.04, 0.01], [0, 1, 2, 3, 4, 5]),        # collapses late: fine
    ([0.69, 0.04, 0.3, 0.2, 0.1, 0.08], [0, 3, 2, 2.5, 3, 3.2]),    # dips once, recovers
    ([0.69, 0.04, 0.01, 0.01, 0.01, 0.01], [0, 3, 3, 3, 3, 3]),     # margins stopped growing
])
def test_what_is_not_saturated(losses, margins):
    assert diagnose(steps(losses, margins), beta=0.1).verdict != "saturated"


def test_saturated_advice_reads_the_runs_own_values():
    history = steps(*MEMORISED)
    for i, entry in enumerate(history):
        entry["epoch"] = (i + 1) / 2  # 6 steps over 3 epochs, as TRL logs them
    advice = diagnose(history, beta=0.1, learning_rate=5e-5).advice
    assert "beta 0.1, learning_rate 5e-05, num_train_epochs 3" in advice, advice
    assert "Lower learning_rate from 5e-05 to 1e-05, or add pairs" in advice, advice
    assert "epochs instead" not in advice  # 1 epoch = 2 steps: too short to judge
    longer = diagnose(history, beta=0.1, learning_rate=5e-5, num_train_epochs=10).advice
    assert "or train 5 epochs instead of 10" in longer, longer


def test_advice_never_suggests_the_value_the_run_already_uses():
    """Issue 10: 'Raise beta (e.g. 0.1)' was printed for a run at beta 0.1."""
    runaway = _history([0.69, 0.01, 0.001, 0.0005, 0.0001, 0.0001], [0, 5, 10, 20, 30, 40],
                       [-7, -30, -90, -200, -400, -800])
    for beta in (0.01, 0.1, 0.5):
        diagnosis = diagnose(runaway, beta=beta, learning_rate=1e-4)
        assert diagnosis.verdict == "over_optimised"
        assert f"from {beta:g} to {3 * beta:g}" in diagnosis.advice, diagnosis.advice
        assert f"e.g. {beta:g})" not in diagnosis.advice
        assert "from 0.0001 to 1e-05" in diagnosis.advice
    weak = diagnose(steps([0.693, 0.69, 0.68, 0.675], epoch=1.0), learning_rate=2e-5)
    assert weak.verdict == "weak"
    assert "from 2e-05 to 6e-05" in weak.advice and "from 1 to 2" in weak.advice, weak.advice
    logged = diagnose(steps([0.693, 0.69, 0.68, 0.675], learning_rate=3e-5))  # from the log
    assert "from 3e-05 to 9e-05" in logged.advice, logged.advice
    unknown = diagnose([{k: v for k, v in e.items() if k != "learning_rate"}
                        for e in steps([0.693, 0.69, 0.68, 0.675])])
    assert unknown.advice == ADVICE["weak"]  # nothing known: the generic "x3"


REAL_SMOLLM2 = {"lr5e-05-epochs3-beta0.1": "saturated",   # GPT-2's preset: memorised
                "lr1e-05-epochs3-beta0.1": "healthy",     # the llama-instruct preset
                "lr5e-06-epochs3-beta0.1": "healthy"}


@pytest.mark.parametrize("name", list(REAL_SMOLLM2))
def test_real_smollm2_runs_get_the_verdict_a_practitioner_gives(name):
    """Logs of real SmolLM2-135M-Instruct runs (tests/data, from `python -m bench.calibrate`):
    GPT-2's preset memorises the 8 pairs; the calibrated preset and a gentler one learn."""
    from pathlib import Path

    runs = json.loads((Path(__file__).parent / "data" / "smollm2_dpo_runs.json").read_text())
    run = runs["runs"][name]
    diagnosis = diagnose(run["log_history"], beta=run["setting"]["beta"])
    assert diagnosis.verdict == REAL_SMOLLM2[name], diagnosis
    if diagnosis.verdict == "saturated":
        assert "learning_rate from 5e-05 to 1e-05" in diagnosis.advice, diagnosis.advice
        assert "beta 0.1" in diagnosis.advice
