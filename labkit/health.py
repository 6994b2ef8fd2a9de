"""Reading `trainer.state.log_history`: a healthy run, alignment theater, memorised pairs or
over-optimisation.

A DPO run can look fine while nothing was learned (loss pinned at ln 2, grad_norm 0, rewards
exactly 0), and `rewards/accuracies` hits 1.0 even at useless learning rates. `diagnose`
reads the curves TRL 1.x logs and returns a verdict with the reasons and what to change;
the advice names the run's own values (beta, learning rate, epochs) where they are known,
and never suggests a value the run already uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

LN2 = math.log(2.0)
MIN_STEPS = 3
VERDICTS = ("healthy", "weak", "no_learning", "diverged", "over_optimised", "saturated",
            "too_short")
COLLAPSED = 0.05  # a DPO loss this low means the pair is separated by ~3 nats x beta

ADVICE = {
    "healthy": "Loss fell from ln 2 and the reward margin grew: the policy now prefers chosen "
               "over rejected. Go on and check the outputs before and after.",
    "weak": "The policy moved a little, but not enough to trust: raise learning_rate (e.g. x3) "
            "or num_train_epochs (e.g. x2), and check the pairs really differ.",
    "no_learning": "Nothing was learned - the curves only look like training (alignment "
                   "theater). Check learning_rate > 0, that chosen and rejected differ, that the "
                   "reference is a separate frozen copy, and that the loss is not detached.",
    "diverged": "Training produced NaN/inf: lower learning_rate (e.g. /10), keep bf16 off on "
                "CPU, and check for empty completions.",
    "saturated": "The loss reached ~0 within the first third of training while the margins "
                 "kept growing: the policy memorised these few pairs instead of learning the "
                 "preference. Lower learning_rate (e.g. /5) or train fewer epochs, or add "
                 "pairs; then check held-out accuracy and perplexity in step 4.",
    "over_optimised": "Loss collapsed to ~0 within the first steps while margins kept "
                      "exploding: with this few pairs the policy is running away from the "
                      "reference. Raise beta (e.g. x3) or lower learning_rate (e.g. /10).",
    "too_short": "Too few logged steps to judge: set logging_steps=1 and train for more steps "
                 "(more epochs or a smaller batch).",
}


@dataclass
class Diagnosis:
    verdict: str
    reasons: list[str] = field(default_factory=list)
    advice: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict in {"healthy", "weak"}

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reasons": self.reasons, "advice": self.advice}

    def __str__(self) -> str:
        lines = [f"Verdict: {self.verdict.upper().replace('_', ' ')}"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines + [f"What to do: {self.advice}"])


def training_entries(log_history) -> list[dict]:
    """The per-step training logs (not eval entries, not the final summary)."""
    return [e for e in log_history
            if "loss" in e and not any(k.startswith("eval_") for k in e)
            and "train_runtime" not in e]


def _series(entries, key):
    return [float(e[key]) for e in entries if key in e]


def _run_values(entries, beta, learning_rate, num_train_epochs) -> dict:
    """The run's own settings, for advice: the given ones, else what the log shows (TRL
    logs each step's learning rate before the scheduler steps, so with its default linear
    schedule the largest logged value is the configured one; epochs from the last step)."""
    logged_lrs = [v for v in _series(entries, "learning_rate") if v > 0]
    if learning_rate is None and logged_lrs:
        learning_rate = max(logged_lrs)
    if num_train_epochs is None and entries and "epoch" in entries[-1]:
        num_train_epochs = math.ceil(float(entries[-1]["epoch"]) - 1e-6)
    return {"beta": beta, "learning_rate": learning_rate, "epochs": num_train_epochs}


def _advice(name: str, run: dict) -> str:
    """ADVICE[name], with the run's values in it where they are known: each suggestion is a
    change from what the run used (x3, /5...), never a value it already has."""
    beta, lr, epochs = run["beta"], run["learning_rate"], run["epochs"]
    lower_lr = (f"lower learning_rate from {lr:g} to {lr / 10:g}" if lr
                else "lower learning_rate (e.g. /10)")
    if name == "over_optimised" and (beta or lr):
        raise_beta = (f"Raise beta from {beta:g} to {3 * beta:g} (it keeps the policy closer "
                      f"to the reference)" if beta else "Raise beta (e.g. x3)")
        return (f"Loss collapsed to ~0 within the first steps while margins kept exploding: "
                f"with this few pairs the policy is running away from the reference. "
                f"{raise_beta}, or {lower_lr}.")
    if name == "saturated" and (lr or epochs):
        changes = [f"lower learning_rate from {lr:g} to {lr / 5:g}" if lr else
                   "lower learning_rate (e.g. /5)"]
        if epochs and epochs >= 4:  # fewer than that would leave too few steps to judge
            changes.append(f"train {epochs // 2} epochs instead of {epochs}")
        used = ", ".join(f"{k} {v:g}" for k, v in (("beta", beta), ("learning_rate", lr),
                                                    ("num_train_epochs", epochs)) if v)
        return (f"The loss reached ~0 within the first third of training while the margins "
                f"kept growing: with {used}, the policy memorised these few pairs instead of "
                f"learning the preference. {_upper_first(' or '.join(changes))}, or add pairs; "
                f"then check held-out accuracy and perplexity in step 4.")
    if name == "weak" and (lr or epochs):
        raise_lr = (f"raise learning_rate from {lr:g} to {3 * lr:g}" if lr
                    else "raise learning_rate (e.g. x3)")
        more = (f"num_train_epochs from {epochs} to {2 * epochs}" if epochs
                else "num_train_epochs (e.g. x2)")
        return (f"The policy moved a little, but not enough to trust: {raise_lr} or "
                f"{more}, and check the pairs really differ.")
    if name == "diverged" and lr:
        return (f"Training produced NaN/inf: {lower_lr}, keep bf16 off on CPU, and check for "
                f"empty completions.")
    return ADVICE[name]


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def diagnose(log_history, beta: float | None = None, learning_rate: float | None = None,
             num_train_epochs: int | None = None) -> Diagnosis:
    """Verdict on a DPO run from its log_history (TRL 1.x key names). `beta` (optional)
    lets the over-optimisation test read margins in nats; it, `learning_rate` and
    `num_train_epochs` (optional) make the advice name the run's own values."""
    entries = training_entries(log_history)
    run = _run_values(entries, beta, learning_rate, num_train_epochs)
    verdict = _diagnose(entries, beta)
    verdict.advice = _advice(verdict.verdict, run)
    return verdict


def _verdict(name: str, reasons: list[str]) -> Diagnosis:
    return Diagnosis(name, reasons, ADVICE[name])


def _diagnose(entries, beta) -> Diagnosis:
    losses = _series(entries, "loss")
    if any(not math.isfinite(v) for k in ("loss", "grad_norm", "rewards/margins")
           for v in _series(entries, k)):
        return _verdict("diverged", ["a logged loss, grad_norm or margin is NaN or inf"])
    if len(losses) < MIN_STEPS:
        return _verdict("too_short", [f"only {len(losses)} logged training step(s); "
                                      f"at least {MIN_STEPS} are needed"])
    theater = _no_learning_reasons(entries, losses)
    if theater:
        return _verdict("no_learning", theater)
    over = _over_optimisation_reasons(entries, losses, beta)
    if over:
        return _verdict("over_optimised", over)
    saturated = _saturation_reasons(entries, losses)
    if saturated:
        return _verdict("saturated", saturated)
    return _learning_verdict(entries, losses)


def _saturation_reasons(entries, losses) -> list[str]:
    """Memorised pairs: the loss is ~0 within the first third of the steps, stays there, and
    the margins still grow (SmolLM2 with GPT-2's preset: 0.693 -> 0.047 -> 0.0003 -> 0.0000,
    margin 13.6). Without the runaway of over-optimisation, but nothing left to learn."""
    margins = _series(entries, "rewards/margins")
    collapsed = next((i for i, v in enumerate(losses) if v < COLLAPSED), None)
    if collapsed is None or not margins or collapsed + 1 > math.ceil(len(losses) / 3):
        return []
    after = losses[collapsed:]
    if max(after) >= COLLAPSED or margins[-1] <= margins[collapsed]:
        return []
    return [f"loss {losses[0]:.3f} -> {losses[collapsed]:.4f} at logged step {collapsed + 1} "
            f"of {len(losses)}, and {losses[-1]:.4f} at the end",
            f"margins kept growing after that ({margins[collapsed]:.2f} -> {margins[-1]:.2f})"]


def _no_learning_reasons(entries, losses) -> list[str]:
    grads = _series(entries, "grad_norm")
    reasons = []
    if grads and max(grads) == 0.0:
        reasons.append("grad_norm is 0 at every step: no gradient reaches the weights")
    if all(abs(v - LN2) < 2e-3 for v in losses):
        reasons.append(f"loss stays at ln 2 = {LN2:.4f} throughout: the policy never moved "
                       "relative to the reference")
    rewards = _series(entries, "rewards/chosen") + _series(entries, "rewards/rejected")
    if rewards and all(r == 0.0 for r in rewards):
        reasons.append("rewards/chosen and rewards/rejected are exactly 0 at every step")
    lrs = _series(entries, "learning_rate")
    if reasons and lrs and max(lrs) == 0.0:
        reasons.append("learning_rate is 0")
    return reasons


def _over_optimisation_reasons(entries, losses, beta) -> list[str]:
    """Loss collapsed early while the policy kept running from the reference, or the
    runaway is so extreme (hundreds of nats) that its timing no longer matters."""
    margins = _series(entries, "rewards/margins")
    rejected = _series(entries, "logps/rejected")
    runaway, extreme = [], False
    if beta and margins and margins[-1] / beta > 150:
        runaway.append(f"the final margin is {margins[-1] / beta:.0f} nats of log-ratio")
        extreme = margins[-1] / beta > 400
    if len(rejected) >= 2 and rejected[0] < 0 and rejected[-1] / rejected[0] > 4:
        runaway.append(f"rejected log-probs fell from {rejected[0]:.1f} to {rejected[-1]:.1f}")
        extreme = extreme or rejected[-1] / rejected[0] > 20
    collapsed = next((i for i, v in enumerate(losses) if v < 0.05), None)
    if not runaway or collapsed is None or not margins or margins[-1] <= margins[collapsed]:
        return []
    if collapsed > 0.35 * len(losses) and not extreme:
        return []
    return [f"loss fell below 0.05 at logged step {collapsed + 1} of {len(losses)}",
            f"margins kept growing after that ({margins[collapsed]:.2f} -> {margins[-1]:.2f})",
            *runaway]


def _learning_verdict(entries, losses) -> Diagnosis:
    margins = _series(entries, "rewards/margins")
    tail = losses[-max(1, len(losses) // 4):]
    fell = losses[0] - sum(tail) / len(tail)
    reasons = [f"loss {losses[0]:.3f} -> {losses[-1]:.3f} (start ln 2 = {LN2:.3f})"]
    if margins:
        reasons.append(f"reward margin {margins[0]:.3f} -> {margins[-1]:.3f}")
    grads = _series(entries, "grad_norm")
    if grads:
        reasons.append(f"grad_norm between {min(grads):.3g} and {max(grads):.3g}")
    if fell > 0.05 and margins and margins[-1] > margins[0]:
        return _verdict("healthy", reasons)
    return _verdict("weak", reasons + ["the loss fell by less than 0.05 or margins did not grow"])
