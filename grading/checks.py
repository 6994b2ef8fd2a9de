"""check_step1..4: grade a run directory's artifacts, item by item, with a reason for each.

The same functions run inside the notebooks (`grading.check(N)`) and in the auto-grader's
own process, so what a student sees is what the instructor's grader computes. A check never
raises on a student's mistake: a missing artifact becomes "not done yet" with a hint, a
broken one a failed item whose message says what is wrong. Points come from `rubric`.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from . import rubric
from .rubric import NOT_DONE, CheckItem, CheckResult

__all__ = ["CheckItem", "CheckResult", "check", "check_step1", "check_step2", "check_step3",
           "check_step4"]


# ----------------------------------------------------------------------------- helpers
def scored_item(step: int, name: str, passed: bool, message: str) -> CheckItem:
    spec = rubric.item(step, name)
    return CheckItem(name, spec.points, bool(passed), message, spec.integrity)


def _not_done(step: int, missing: str) -> CheckResult:
    items = [scored_item(step, i.name, False, f"{NOT_DONE}: {missing} is missing")
             for i in rubric.items_for(step, integrity=False)]
    return CheckResult(step, items, [rubric.NOT_DONE_HINTS[step]], NOT_DONE,
                       [i.name for i in rubric.items_for(step, integrity=True)])


def _result(step: int, items: list[CheckItem], hints: list[str]) -> CheckResult:
    return CheckResult(step, items, hints,
                       pending=[i.name for i in rubric.items_for(step, integrity=True)])


def _load(run: Path, name: str, kind: str):
    """(record, None) or (None, reason): a student's broken artifact is a message."""
    from labkit.artifacts import ArtifactError, load_json

    try:
        return load_json(run / name, kind=kind), None
    except ArtifactError as exc:
        return None, str(exc)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{name} cannot be read ({exc}); re-run its step"


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _run(run_dir) -> Path:
    from labkit.artifacts import run_dir as default_run_dir

    return Path(run_dir) if run_dir else default_run_dir(create=False)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- step 1
def load_step1(run: Path):
    from labkit.artifacts import STEP1_BASELINE

    return _load(Path(run), STEP1_BASELINE, "step1_baseline")


def check_step1(run_dir=None) -> CheckResult:
    from labkit.artifacts import STEP1_BASELINE
    from labkit.config import GenerationSpec

    run = _run(run_dir)
    if not (run / STEP1_BASELINE).exists():
        return _not_done(1, STEP1_BASELINE)
    rec, err = load_step1(run)
    if rec is None:
        return _result(1, [scored_item(1, "baseline_saved", False, err)] + [
            scored_item(1, i.name, False, "needs a readable step1_baseline.json")
            for i in rubric.items_for(1, integrity=False)[1:]], [rubric.NOT_DONE_HINTS[1]])
    items = [scored_item(1, "baseline_saved", True, f"{STEP1_BASELINE} found")]
    model = rec.get("model") if isinstance(rec.get("model"), dict) else {}
    try:
        spec = GenerationSpec.from_dict(rec.get("generation_spec") or {})
        problem = None if rec.get("generation_spec") else "no generation_spec recorded"
    except (TypeError, ValueError) as exc:
        spec, problem = None, f"generation_spec is not a valid GenerationSpec: {exc}"
    if not (isinstance(model.get("resolved"), str) and model.get("resolved")):
        problem = "the model that made the baseline is not recorded (model.resolved)"
    items.append(scored_item(1, "model_and_spec", problem is None, problem or
                       f"made by {model['resolved']!r} with {spec}"))
    prompts, kinds = rec.get("prompts"), rec.get("prompt_kinds")
    ok_prompts = isinstance(prompts, list) and all(isinstance(p, str) and p.strip() for p in prompts)
    n = len(prompts) if ok_prompts else 0
    kinds_ok = isinstance(kinds, list) and len(kinds) == n and set(kinds) <= {"theme", "far"}
    items.append(scored_item(1, "held_prompts", ok_prompts and n >= 4 and kinds_ok,
                       f"{n} held prompts" + ("" if n >= 4 else ": at least 4 are needed")
                       + ("" if kinds_ok else "; prompt_kinds must give 'theme' or 'far' for "
                          "each prompt")))
    outputs = rec.get("outputs")
    flat = [o for out in outputs for o in (out if isinstance(out, list) else [out])] \
        if isinstance(outputs, list) else []
    empty = [i + 1 for i, o in enumerate(flat) if not (isinstance(o, str) and o.strip())]
    ok = isinstance(outputs, list) and len(outputs) == n and n > 0 and not empty
    items.append(scored_item(1, "outputs", ok, f"{len(flat)} non-empty outputs" if ok else
                       f"need one non-empty output per prompt: {n} prompts, "
                       f"{len(outputs) if isinstance(outputs, list) else 0} outputs"
                       + (f", empty: {empty[:5]}" if empty else "")))
    hints = [] if all(i.passed for i in items) else [rubric.NOT_DONE_HINTS[1]]
    return _result(1, items, hints)


# ----------------------------------------------------------------------------- step 2
def load_pairs(run: Path):
    """(rows, lines, meta, reason) for step 2; reason is None when both files read."""
    from labkit.artifacts import STEP2_META, STEP2_PAIRS
    from labkit.data import PreferenceDataError, read_jsonl

    meta, err = _load(run, STEP2_META, "step2_meta")
    try:
        rows, lines = read_jsonl(run / STEP2_PAIRS)
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
    if err is None and (meta.get("n_pairs") != len(rows)
                        or meta.get("pairs_sha256") != sha256_file(run / STEP2_PAIRS)):
        err = (f"{STEP2_META} does not describe {STEP2_PAIRS} (n_pairs {meta.get('n_pairs')} vs "
               f"{len(rows)} rows, or a different sha256): save both with the notebook's cell")
    items = [scored_item(2, "pairs_saved", err is None, err or f"{len(rows)} pairs saved")]
    if rows is None:
        items += [scored_item(2, n, False, "needs a readable step2_preferences.jsonl")
                  for n in ("pairs_valid", "no_heldout_leak")]
        return _result(2, items, [rubric.NOT_DONE_HINTS[2]])
    problems = find_problems(rows, lines=lines)
    items.append(scored_item(2, "pairs_valid", not problems, f"{len(rows)} valid pairs" if not problems
                       else _problem_text(problems)))
    step1, _ = load_step1(run)
    held = [p for p in (step1 or {}).get("prompts") or [] if isinstance(p, str)]
    held += [p for p in (meta or {}).get("heldout_prompts") or [] if isinstance(p, str)]
    if step1 is None:
        items.append(scored_item(2, "no_heldout_leak", False, "step 1 not done yet: the leak check "
                           "compares your pairs with the step-1 held prompts"))
    else:
        leaks = sorted(set(find_problems(rows, lines=lines, heldout_prompts=held)) - set(problems),
                       key=lambda p: p.row or 0)
        items.append(scored_item(2, "no_heldout_leak", not leaks, "no pair uses a held prompt" if
                           not leaks else _problem_text(leaks)))
    hints = [] if all(i.passed for i in items) else [
        "Fix the rows named above in the exercise cell of notebooks/02_preferences.ipynb, then "
        "re-run the cell that saves the pairs."]
    return _result(2, items, hints)


def _problem_text(problems, limit: int = 4) -> str:
    shown = "; ".join(str(p) for p in problems[:limit])
    return shown + (f" (and {len(problems) - limit} more)" if len(problems) > limit else "")


# ----------------------------------------------------------------------------- step 3
def load_training(run: Path):
    from labkit.artifacts import STEP3_TRAINING

    return _load(run, STEP3_TRAINING, "step3_training")


def check_step3(run_dir=None, base=None) -> CheckResult:
    """`base`: (model, tokenizer, info) to compare the policy with; by default the base
    model recorded in the artifact is loaded (the auto-grader passes its own)."""
    from labkit.artifacts import STEP3_POLICY, STEP3_TRAINING
    from labkit.health import diagnose, training_entries

    run = _run(run_dir)
    if not (run / STEP3_TRAINING).exists() and not (run / STEP3_POLICY).exists():
        return _not_done(3, STEP3_TRAINING)
    rec, err = load_training(run)
    if rec is None:
        return _result(3, [scored_item(3, i.name, False, err or "needs step3_training.json")
                           for i in rubric.items_for(3, integrity=False)],
                       [rubric.NOT_DONE_HINTS[3]])
    history = rec.get("log_history") if isinstance(rec.get("log_history"), list) else []
    entries = training_entries([e for e in history if isinstance(e, dict)])
    has_policy = (run / STEP3_POLICY).is_dir()
    items = [scored_item(3, "trained", len(entries) >= 3 and has_policy,
                   f"{len(entries)} logged training steps" + ("" if len(entries) >= 3 else
                   " (at least 3 needed: set logging_steps=1)") + ("" if has_policy else
                   f"; {STEP3_POLICY}/ is missing: save the policy"))]
    losses = [e.get("loss") for e in entries]
    bad = [i + 1 for i, v in enumerate(losses) if not finite(v)]
    items.append(scored_item(3, "finite_losses", bool(losses) and not bad, "all logged losses finite"
                       if losses and not bad else f"no finite loss at logged steps {bad[:5]}"
                       if bad else "no loss was logged"))
    beta = (rec.get("dpo_config") or {}).get("beta")
    try:
        diagnosis = diagnose(history, beta=beta if finite(beta) else None)
        ok = diagnosis.verdict not in {"no_learning", "diverged", "too_short"}
        items.append(scored_item(3, "health", ok, f"{diagnosis.verdict}: "
                           + "; ".join(diagnosis.reasons) + ("" if ok else
                           f". What to do: {diagnosis.advice}")))
    except (TypeError, ValueError, KeyError) as exc:
        items.append(scored_item(3, "health", False, f"log_history cannot be read: {exc}"))
    items.append(policy_changed_item(run, rec, base))
    items.append(_crosscheck_item(rec, entries))
    hints = [] if all(i.passed for i in items) else [rubric.NOT_DONE_HINTS[3]]
    return _result(3, items, hints)


def _crosscheck_item(rec: dict, entries: list[dict]) -> CheckItem:
    """Your loss vs TRL's on the same pairs (recomputed from the two numbers, not taken from
    abs_diff), and, when recorded, your step-1 loss vs TRL's first *logged* loss."""
    cc = rec.get("crosscheck") if isinstance(rec.get("crosscheck"), dict) else {}
    student, trl = cc.get("student_loss"), cc.get("trl_loss")
    if not (finite(student) and finite(trl)):
        return scored_item(3, "crosscheck", False, "no finite crosscheck student_loss/trl_loss: run "
                     "the cross-check cell (crosscheck_with_trl with your loss) after training")
    diffs = {"on the trained policy": (student, trl)}
    first = cc.get("first_step") if isinstance(cc.get("first_step"), dict) else {}
    logged = entries[0].get("loss") if entries else None
    if finite(first.get("student_loss")) and finite(logged):
        diffs["at TRL's first logged step"] = (first["student_loss"], logged)
    bad = {k: abs(a - b) for k, (a, b) in diffs.items() if not abs(a - b) < 1e-4}
    text = "; ".join(f"{k}: yours {a:.6f} vs TRL {b:.6f}" for k, (a, b) in diffs.items())
    return scored_item(3, "crosscheck", not bad, text + ("" if not bad else
                 f" - |diff| {max(bad.values()):.2e} >= 1e-4: check compute_dpo_loss against "
                 "the formula (beta, chosen minus rejected log-ratios, -logsigmoid, the mean)"))


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
    import torch
    from labkit.artifacts import STEP3_POLICY, ArtifactError, weights_sha256

    policy_dir = run / STEP3_POLICY
    try:
        digest = weights_sha256(policy_dir)
    except (ArtifactError, OSError) as exc:
        return scored_item(3, "policy_changed", False, f"no saved policy: {exc}")
    if digest != rec.get("policy_sha256"):
        return scored_item(3, "policy_changed", False, "the weights in step3_policy/ do not match "
                     "policy_sha256 in step3_training.json: save them with save_policy again")
    try:
        model = (base or _load_base(rec))[0]
        state = policy_weights(policy_dir, model)
    except Exception as exc:  # any failure to load is the submission's, with the reason
        return scored_item(3, "policy_changed", False, f"cannot compare with the base model: {exc}")
    base_state = model.state_dict()
    common = [k for k in state if k in base_state and state[k].shape == base_state[k].shape]
    if not common:
        return scored_item(3, "policy_changed", False, "the saved weights do not fit the base model")
    changed = [k for k in common if not torch.equal(state[k], base_state[k].to(state[k].dtype))]
    return scored_item(3, "policy_changed", bool(changed), f"{len(changed)}/{len(common)} weight "
                 "tensors differ from the base model" if changed else "the saved policy is "
                 "identical to the base model: did trainer.train() run before saving?")


_BASES: dict[str, tuple] = {}


def _load_base(rec: dict):
    from labkit.models import load_model

    name = (rec.get("base_model") or {}).get("resolved")
    if not isinstance(name, str) or not name:
        raise ValueError("base_model.resolved is not recorded in step3_training.json")
    if name not in _BASES:
        _BASES[name] = load_model(name, quiet=True)
    return _BASES[name]


# ----------------------------------------------------------------------------- step 4
def load_report(run: Path):
    from labkit.artifacts import STEP4_REPORT

    return _load(run, STEP4_REPORT, "step4_report")


def check_step4(run_dir=None) -> CheckResult:
    from labkit.artifacts import STEP3_POLICY, STEP4_REPORT, ArtifactError, weights_sha256

    run = _run(run_dir)
    if not (run / STEP4_REPORT).exists():
        return _not_done(4, STEP4_REPORT)
    rec, err = load_report(run)
    if rec is None:
        return _result(4, [scored_item(4, i.name, False, err) for i in rubric.items_for(4, False)],
                       [rubric.NOT_DONE_HINTS[4]])
    step1, err1 = load_step1(run)
    step1 = step1 or {}
    same = [k for k, s1 in (("prompts", "prompts"), ("generation_spec", "generation_spec"),
                            ("outputs_before", "outputs")) if rec.get(k) != step1.get(s1)]
    items = [scored_item(4, "same_prompts_spec", not err1 and not same and bool(rec.get("prompts")),
                   f"step 1 unreadable: {err1}" if err1 else "same prompts, outputs and "
                   "GenerationSpec as step 1" if not same else f"differs from step 1: "
                   f"{', '.join(same)}; compare with the saved baseline, do not rebuild it")]
    training, _ = load_training(run)
    try:
        actual = weights_sha256(run / STEP3_POLICY)
    except (ArtifactError, OSError):
        actual = None
    claimed = rec.get("policy_sha256")
    ok = bool(claimed) and claimed == actual == (training or {}).get("policy_sha256")
    items.append(scored_item(4, "same_policy", ok, "the report is about the step-3 policy" if ok
                       else "policy_sha256 differs from the saved step-3 policy: reload it "
                       "from step3_policy/ and re-run"))
    before, after = rec.get("outputs_before"), rec.get("outputs_after")
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after) > 0:
        n = sum(b != a for b, a in zip(before, after))
        items.append(scored_item(4, "outputs_changed", n > 0, f"{n}/{len(after)} outputs changed" if n
                           else "no output changed: the policy behaves like the base model"))
    else:
        items.append(scored_item(4, "outputs_changed", False, "outputs_before/outputs_after missing "
                           "or of different lengths"))
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    # judge_style only knows the teaching model's two styles: None is right for GPT-2
    optional = set() if (step1.get("model") or {}).get("is_teaching", True) else \
        {"style_rate_before", "style_rate_after"}
    missing = [k for k in rubric.METRIC_KEYS if not (finite(metrics.get(k)) or (
        k in optional and k in metrics and metrics[k] is None))]
    items.append(scored_item(4, "metrics", not missing, "all metrics present" if not missing else
                       f"missing or not finite: {', '.join(missing)}"))
    hints = [] if all(i.passed for i in items) else [rubric.NOT_DONE_HINTS[4]]
    return _result(4, items, hints)


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


def to_json(results: list[CheckResult]) -> str:
    return json.dumps([r.to_dict() for r in results], indent=2)
