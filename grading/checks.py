"""check_step1..4: grade a run directory's artifacts, item by item, with a reason for each.

The same functions run inside the notebooks (`grading.check(N)`) and in the auto-grader's
own process, so what a student sees is what the instructor's grader computes. A check never
raises on a student's mistake: a missing artifact becomes "not done yet" with a hint, a
broken one a failed item whose message says what is wrong. Points come from `rubric`.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

from . import rubric
from .rubric import NOT_DONE, CheckItem, CheckResult

__all__ = ["CheckItem", "CheckResult", "check", "check_step1", "check_step2", "check_step3",
           "check_step4"]


# ----------------------------------------------------------------------------- helpers
def scored(step: int, name: str, passed: bool, message: str) -> CheckItem:
    """A rubric item's result: points and integrity flag come from the rubric."""
    spec = rubric.item(step, name)
    return CheckItem(name, spec.points, bool(passed), message, spec.integrity)


def _result(step: int, items: list[CheckItem], status: str = "") -> CheckResult:
    hints = [] if all(i.passed for i in items) else [rubric.NOT_DONE_HINTS[step]]
    return CheckResult(step, items, hints, status,
                       [i.name for i in rubric.items_for(step, integrity=True)])


def _all_failed(step: int, message: str, status: str = "") -> CheckResult:
    return _result(step, [scored(step, i.name, False, message)
                          for i in rubric.items_for(step, integrity=False)], status)


def _not_done(step: int, missing: str) -> CheckResult:
    return _all_failed(step, f"{NOT_DONE}: {missing} is missing", NOT_DONE)


def _load(run: Path, name: str, kind: str):
    """(record, None) or (None, reason): a student's broken artifact is a message."""
    from labkit.artifacts import ArtifactError, load_json

    try:
        return load_json(Path(run) / name, kind=kind), None
    except ArtifactError as exc:
        return None, str(exc)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{name} cannot be read ({exc}); re-run its step"


def _dict(record, key: str) -> dict:
    value = (record or {}).get(key)
    return value if isinstance(value, dict) else {}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _run(run_dir) -> Path:
    from labkit.artifacts import run_dir as default_run_dir

    return Path(run_dir) if run_dir else default_run_dir(create=False)


def load_step1(run):
    return _load(run, "step1_baseline.json", "step1_baseline")


def load_training(run):
    return _load(run, "step3_training.json", "step3_training")


def load_report(run):
    return _load(run, "step4_report.json", "step4_report")


def training_entries_of(record: dict) -> list[dict]:
    from labkit.health import training_entries

    history = record.get("log_history") if isinstance(record.get("log_history"), list) else []
    return training_entries([e for e in history if isinstance(e, dict)])


# ----------------------------------------------------------------------------- step 1
def check_step1(run_dir=None) -> CheckResult:
    from labkit.artifacts import STEP1_BASELINE

    run = _run(run_dir)
    if not (run / STEP1_BASELINE).exists():
        return _not_done(1, STEP1_BASELINE)
    rec, err = load_step1(run)
    if rec is None:
        return _all_failed(1, err)
    prompts = rec.get("prompts")
    n = len(prompts) if isinstance(prompts, list) and all(
        isinstance(p, str) and p.strip() for p in prompts) else 0
    return _result(1, [scored(1, "baseline_saved", True, f"{STEP1_BASELINE} found"),
                       _model_and_spec(rec), _held_prompts(rec, n), _outputs(rec, n)])


def _model_and_spec(rec: dict) -> CheckItem:
    from labkit.config import GenerationSpec

    resolved = _dict(rec, "model").get("resolved")
    if not (isinstance(resolved, str) and resolved):
        return scored(1, "model_and_spec", False, "the model that made the baseline is not "
                      "recorded (model.resolved): save info.to_dict()")
    if not rec.get("generation_spec"):
        return scored(1, "model_and_spec", False, "no generation_spec recorded")
    try:
        spec = GenerationSpec.from_dict(_dict(rec, "generation_spec"))
    except (TypeError, ValueError) as exc:
        return scored(1, "model_and_spec", False, f"generation_spec is not valid: {exc}")
    return scored(1, "model_and_spec", True, f"made by {resolved!r} with {spec}")


def _held_prompts(rec: dict, n: int) -> CheckItem:
    kinds = rec.get("prompt_kinds")
    kinds_ok = isinstance(kinds, list) and len(kinds) == n and set(kinds) <= {"theme", "far"}
    problems = ([] if n >= 4 else ["at least 4 are needed"]) + (
        [] if kinds_ok else ["prompt_kinds must say 'theme' or 'far' for each prompt"])
    return scored(1, "held_prompts", not problems, f"{n} held prompts"
                  + (": " + "; ".join(problems) if problems else ""))


def _outputs(rec: dict, n: int) -> CheckItem:
    outputs = rec.get("outputs") if isinstance(rec.get("outputs"), list) else []
    flat = [o for out in outputs for o in (out if isinstance(out, list) else [out])]
    empty = [i + 1 for i, o in enumerate(flat) if not (isinstance(o, str) and o.strip())]
    if n and len(outputs) == n and not empty:
        return scored(1, "outputs", True, f"{len(flat)} non-empty outputs")
    return scored(1, "outputs", False, f"need one non-empty output per prompt: {n} prompts, "
                  f"{len(outputs)} outputs" + (f", empty: {empty[:5]}" if empty else ""))


# ----------------------------------------------------------------------------- step 2
def load_pairs(run: Path):
    """(rows, lines, meta, reason) for step 2; reason is None when both files read."""
    from labkit.artifacts import STEP2_META, STEP2_PAIRS
    from labkit.data import PreferenceDataError, read_jsonl

    meta, err = _load(run, STEP2_META, "step2_meta")
    try:
        rows, lines = read_jsonl(Path(run) / STEP2_PAIRS)
    except FileNotFoundError:
        return None, None, meta, f"{STEP2_PAIRS} is missing"
    except (PreferenceDataError, OSError, UnicodeDecodeError) as exc:
        return None, None, meta, f"{STEP2_PAIRS} cannot be read: {exc}"
    return rows, lines, meta, err


def check_step2(run_dir=None) -> CheckResult:
    from labkit.artifacts import STEP2_META, STEP2_PAIRS
    from labkit.data import find_problems

    run = _run(run_dir)
    if not (run / STEP2_PAIRS).exists() and not (run / STEP2_META).exists():
        return _not_done(2, STEP2_PAIRS)
    rows, lines, meta, err = load_pairs(run)
    if err is None and (meta.get("n_pairs") != len(rows) or meta.get("pairs_sha256") !=
                        hashlib.sha256((run / STEP2_PAIRS).read_bytes()).hexdigest()):
        err = (f"{STEP2_META} does not describe {STEP2_PAIRS} (n_pairs {meta.get('n_pairs')} vs "
               f"{len(rows)} rows, or another sha256): save both with the notebook's cell")
    saved = scored(2, "pairs_saved", err is None, err or f"{len(rows)} pairs saved")
    if rows is None:
        return _result(2, [saved] + [scored(2, n, False, "needs a readable " + STEP2_PAIRS)
                                     for n in ("pairs_valid", "no_heldout_leak")])
    problems = find_problems(rows, lines=lines)
    valid = scored(2, "pairs_valid", not problems,
                   _problem_text(problems) if problems else f"{len(rows)} valid pairs")
    return _result(2, [saved, valid, _leak_item(run, rows, lines, meta, problems)])


def _leak_item(run, rows, lines, meta, problems) -> CheckItem:
    """labkit's own validation, with the step-1 prompts (and the meta's) as held-out."""
    from labkit.data import find_problems

    step1, _ = load_step1(run)
    if step1 is None:
        return scored(2, "no_heldout_leak", False, "step 1 not done yet: the leak check "
                      "compares your pairs with the step-1 held prompts")
    held = [p for p in (step1.get("prompts") or []) + ((meta or {}).get("heldout_prompts") or [])
            if isinstance(p, str)]
    leaks = sorted(set(find_problems(rows, lines=lines, heldout_prompts=held)) - set(problems),
                   key=lambda p: p.row or 0)
    return scored(2, "no_heldout_leak", not leaks,
                  _problem_text(leaks) if leaks else "no pair uses a held prompt")


def _problem_text(problems, limit: int = 4) -> str:
    shown = "; ".join(str(p) for p in problems[:limit])
    return shown + (f" (and {len(problems) - limit} more)" if len(problems) > limit else "")


# ----------------------------------------------------------------------------- step 3
def check_step3(run_dir=None, base=None) -> CheckResult:
    """`base`: (model, tokenizer, info) to compare the policy with; by default the base
    model recorded in the artifact is loaded (the auto-grader passes its own)."""
    from labkit.artifacts import STEP3_POLICY, STEP3_TRAINING

    run = _run(run_dir)
    if not (run / STEP3_TRAINING).exists() and not (run / STEP3_POLICY).exists():
        return _not_done(3, STEP3_TRAINING)
    rec, err = load_training(run)
    if rec is None:
        return _all_failed(3, err)
    entries = training_entries_of(rec)
    has_policy = (run / STEP3_POLICY).is_dir()
    trained = scored(3, "trained", len(entries) >= 3 and has_policy,
                     f"{len(entries)} logged training steps"
                     + ("" if len(entries) >= 3 else " (at least 3: set logging_steps=1)")
                     + ("" if has_policy else f"; {STEP3_POLICY}/ is missing: save the policy"))
    return _result(3, [trained, _finite_losses(entries), _health(rec),
                       policy_changed_item(run, rec, base), _crosscheck(rec, entries)])


def _finite_losses(entries: list[dict]) -> CheckItem:
    bad = [i + 1 for i, e in enumerate(entries) if not finite(e.get("loss"))]
    if not entries:
        return scored(3, "finite_losses", False, "no loss was logged")
    return scored(3, "finite_losses", not bad, f"loss is not a finite number at logged steps "
                  f"{bad[:5]}" if bad else "all logged losses are finite")


def _health(rec: dict) -> CheckItem:
    """labkit.health's verdict, recomputed from log_history (the recorded one is ignored)."""
    from labkit.health import diagnose

    beta = _dict(rec, "dpo_config").get("beta")
    try:
        diagnosis = diagnose(rec.get("log_history") or [], beta=beta if finite(beta) else None)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return scored(3, "health", False, f"log_history cannot be read: {exc}")
    ok = diagnosis.verdict not in {"no_learning", "diverged", "too_short"}
    return scored(3, "health", ok, f"{diagnosis.verdict}: " + "; ".join(diagnosis.reasons)
                  + ("" if ok else f". What to do: {diagnosis.advice}"))


def _crosscheck(rec: dict, entries: list[dict]) -> CheckItem:
    """Your loss vs TRL's on the same pairs (recomputed from the two numbers, not taken from
    abs_diff), and, when recorded, your step-1 loss vs TRL's first *logged* loss."""
    cc = _dict(rec, "crosscheck")
    student, trl = cc.get("student_loss"), cc.get("trl_loss")
    if not (finite(student) and finite(trl)):
        return scored(3, "crosscheck", False, "no finite crosscheck student_loss/trl_loss: run "
                      "the cross-check cell (crosscheck_with_trl with your loss) after training")
    pairs = {"on the trained policy": (student, trl)}
    first, logged = _dict(cc, "first_step"), entries[0].get("loss") if entries else None
    if finite(first.get("student_loss")) and finite(logged):
        pairs["at TRL's first logged step"] = (first["student_loss"], logged)
    worst = max(abs(a - b) for a, b in pairs.values())
    text = "; ".join(f"{k}: yours {a:.6f} vs TRL {b:.6f}" for k, (a, b) in pairs.items())
    return scored(3, "crosscheck", worst < 1e-4, text + ("" if worst < 1e-4 else
                  f" - |diff| {worst:.2e} >= 1e-4: check compute_dpo_loss against the formula "
                  "(beta, chosen minus rejected log-ratios, -logsigmoid, the mean)"))


def policy_weights(policy_dir: Path, like):
    """The saved policy's tensors (safetensors only: never unpickled), refusing files far
    larger than the base model `like` (an untrusted folder could hold anything)."""
    from safetensors.torch import load_file

    files = sorted(Path(policy_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {policy_dir}")
    limit = 2 * sum(p.numel() * p.element_size() for p in like.parameters()) + (1 << 20)
    if sum(f.stat().st_size for f in files) > limit:
        raise ValueError("the saved weights are far larger than the base model's")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def policy_changed_item(run: Path, rec: dict, base=None) -> CheckItem:
    """The saved weights hash to the recorded sha256, and some tensor differs from the base
    model's (compared in the policy's dtype, so a bf16 save of an untrained model is equal)."""
    import torch
    from labkit.artifacts import STEP3_POLICY, ArtifactError, weights_sha256

    try:
        digest = weights_sha256(Path(run) / STEP3_POLICY)
    except (ArtifactError, OSError) as exc:
        return scored(3, "policy_changed", False, f"no saved policy: {exc}")
    if digest != rec.get("policy_sha256"):
        return scored(3, "policy_changed", False, "the weights in step3_policy/ do not match "
                      "policy_sha256 in step3_training.json: save them with save_policy again")
    try:
        model = (base or _load_base(rec))[0]
        state, reference = policy_weights(Path(run) / STEP3_POLICY, model), model.state_dict()
    except Exception as exc:  # any failure to load is the submission's: say why
        return scored(3, "policy_changed", False, f"cannot compare with the base model: {exc}")
    common = [k for k in state if k in reference and state[k].shape == reference[k].shape]
    changed = [k for k in common if not torch.equal(state[k], reference[k].to(state[k].dtype))]
    if not common:
        return scored(3, "policy_changed", False, "the saved weights do not fit the base model")
    return scored(3, "policy_changed", bool(changed), f"{len(changed)}/{len(common)} weight "
                  "tensors differ from the base model" if changed else "the saved policy is "
                  "identical to the base model: did trainer.train() run before saving?")


_BASES: dict[str, tuple] = {}


def _load_base(rec: dict):
    from labkit.models import load_model

    name = _dict(rec, "base_model").get("resolved")
    if not isinstance(name, str) or not name:
        raise ValueError("base_model.resolved is not recorded in step3_training.json")
    if name not in _BASES:
        _BASES[name] = load_model(name, quiet=True)
    return _BASES[name]


# ----------------------------------------------------------------------------- step 4
def check_step4(run_dir=None) -> CheckResult:
    from labkit.artifacts import STEP4_REPORT

    run = _run(run_dir)
    if not (run / STEP4_REPORT).exists():
        return _not_done(4, STEP4_REPORT)
    rec, err = load_report(run)
    if rec is None:
        return _all_failed(4, err)
    step1, err1 = load_step1(run)
    return _result(4, [_same_as_step1(rec, step1, err1), _same_policy(run, rec),
                       _outputs_changed(rec), _metrics(rec, step1 or {})])


def _same_as_step1(rec: dict, step1, err1) -> CheckItem:
    if step1 is None:
        return scored(4, "same_prompts_spec", False, f"step 1 unreadable: {err1}")
    differ = [k for k, k1 in (("prompts", "prompts"), ("generation_spec", "generation_spec"),
                              ("outputs_before", "outputs")) if rec.get(k) != step1.get(k1)]
    return scored(4, "same_prompts_spec", not differ, "same prompts, outputs and GenerationSpec "
                  "as step 1" if not differ else f"differs from step 1: {', '.join(differ)}; "
                  "compare with the saved baseline, do not rebuild it")


def _same_policy(run: Path, rec: dict) -> CheckItem:
    from labkit.artifacts import STEP3_POLICY, ArtifactError, weights_sha256

    training, _ = load_training(run)
    try:
        actual = weights_sha256(run / STEP3_POLICY)
    except (ArtifactError, OSError):
        actual = None
    claimed = rec.get("policy_sha256")
    ok = bool(claimed) and claimed == actual == (training or {}).get("policy_sha256")
    return scored(4, "same_policy", ok, "the report is about the step-3 policy" if ok else
                  "policy_sha256 differs from the saved step-3 policy: reload it from "
                  "step3_policy/ and re-run")


def _outputs_changed(rec: dict) -> CheckItem:
    before, after = rec.get("outputs_before"), rec.get("outputs_after")
    if not (isinstance(before, list) and isinstance(after, list) and len(before) == len(after)):
        return scored(4, "outputs_changed", False, "outputs_before/outputs_after are missing "
                      "or of different lengths")
    n = sum(b != a for b, a in zip(before, after))
    return scored(4, "outputs_changed", n > 0, f"{n}/{len(after)} outputs changed" if n else
                  "no output changed: the policy behaves like the base model")


def _metrics(rec: dict, step1: dict) -> CheckItem:
    metrics = _dict(rec, "metrics")
    # judge_style only knows the teaching model's two styles: null is right for GPT-2
    nullable = set() if _dict(step1, "model").get("is_teaching", True) else {
        "style_rate_before", "style_rate_after"}
    missing = [k for k in rubric.METRIC_KEYS if not finite(metrics.get(k))
               and not (k in nullable and k in metrics and metrics[k] is None)]
    return scored(4, "metrics", not missing, f"missing or not finite: {', '.join(missing)}"
                  if missing else "all metrics present")


CHECKS = {1: check_step1, 2: check_step2, 3: check_step3, 4: check_step4}


def check(step: int, run_dir=None) -> CheckResult:
    """Run step `step`'s check on the run directory and show it (HTML in Jupyter, text
    elsewhere). Returns the CheckResult."""
    if step not in CHECKS:
        raise ValueError(f"grading.check takes a step number 1-4, not {step!r}")
    result = CHECKS[step](run_dir)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None:
        print(result)
    else:
        result._ipython_display_()
    return result
