"""The saved step-3 policy against the base model: the grader's one model cache, reading
the policy's weights safely, and the `policy_changed` item (changed, and tied to its
training by recomputing the recorded cross-check: `provenance`).

Weights are read from safetensors only (never unpickled) and refused when far larger than
the base model: a submission's folder could hold anything.
"""
from __future__ import annotations

import math
from pathlib import Path

from labkit.artifacts import finite
from labkit.steps import Step2Meta, Step3Training

from .results import CheckItem, scored

_BASES: dict[str, tuple] = {}


def base_model(name: str):
    """The grader's own (model, tokenizer, info) for `name`: trusted, loaded once per
    process, shared by the checks and the integrity recomputations."""
    from labkit.models import load_model

    if name not in _BASES:
        _BASES[name] = load_model(name, quiet=True)
    return _BASES[name]


def policy_weights(policy_dir: Path, like):
    """The saved policy's tensors, refusing files far larger than the base model `like`."""
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


def load_policy(run: Path, base):
    """A copy of the base model carrying the saved policy's weights (tokenizer: the base's).
    Tied weights (GPT-2's lm_head) may be absent from the file; anything else must fit."""
    import copy

    model = copy.deepcopy(base[0])
    state = policy_weights(Path(run) / Step3Training.POLICY_DIR, model)
    target = model.state_dict()
    wrong = [k for k, v in state.items() if k not in target or target[k].shape != v.shape]
    if wrong:
        raise ValueError(f"the saved weights do not fit the base model ({wrong[:3]})")
    loaded = {target[k].data_ptr() for k in state}
    missing = model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()},
                                    strict=False).missing_keys
    if any(target[k].data_ptr() not in loaded for k in missing):
        raise ValueError(f"the saved weights lack {missing[:3]}")
    return model.eval()


def recorded_base(rec: Step3Training):
    """The base model the step-3 record says it trained from, via the cache."""
    info = rec.base_model if isinstance(rec.base_model, dict) else {}
    name = info.get("resolved")
    if not isinstance(name, str) or not name:
        raise ValueError(f"base_model.resolved is not recorded in {Step3Training.FILE}")
    return base_model(name)


def policy_changed_item(run: Path, rec: Step3Training, base=None) -> CheckItem:
    """The saved weights hash to the recorded sha256, and some tensor differs from the base
    model's (compared in the policy's dtype, so a bf16 save of an untrained model is equal)."""
    import torch
    from labkit.artifacts import ArtifactError, weights_sha256

    policy_dir = Path(run) / Step3Training.POLICY_DIR
    try:
        digest = weights_sha256(policy_dir)
    except (ArtifactError, OSError) as exc:
        return scored(3, "policy_changed", False, f"no saved policy: {exc}")
    if digest != rec.policy_sha256:
        return scored(3, "policy_changed", False, f"the weights in {Step3Training.POLICY_DIR}/ "
                      f"do not match policy_sha256 in {Step3Training.FILE}: save them with "
                      "save_policy again")
    try:
        model = (base or recorded_base(rec))[0]
        state, reference = policy_weights(policy_dir, model), model.state_dict()
    except Exception as exc:  # any failure to load is the submission's: say why
        return scored(3, "policy_changed", False, f"cannot compare with the base model: {exc}")
    common = [k for k in state if k in reference and state[k].shape == reference[k].shape]
    changed = [k for k in common if not torch.equal(state[k], reference[k].to(state[k].dtype))]
    if not common:
        return scored(3, "policy_changed", False, "the saved weights do not fit the base model")
    if not changed:
        return scored(3, "policy_changed", False, "the saved policy is identical to the base "
                      "model: did trainer.train() run before saving?")
    try:
        ok, why = provenance(run, rec, base or recorded_base(rec))
    except Exception as exc:  # noqa: BLE001 - unreadable pairs or weights are the submission's
        ok, why = False, f"cannot recompute the cross-check from these weights: {exc}"
    return scored(3, "policy_changed", ok, f"{len(changed)}/{len(common)} weight tensors differ "
                  f"from the base model; {why}")


# Recomputed vs recorded loss: |diff| <= ABS + REL * recorded. A bf16-made crosscheck
# graded in fp32 differs by ~1e-4 on the teaching model; another run's policy (other pairs,
# same preference) by >= 0.1. Learning: clearly below ln 2, with a positive mean margin.
PROVENANCE_ABS, PROVENANCE_REL, LEARNED_BELOW = 0.01, 0.1, math.log(2) - 0.01


def provenance(run: Path, rec: Step3Training, base) -> tuple[bool, str]:
    """Tie the weights to the training they claim: from the saved policy and the base model,
    on the first batch of the saved step-2 pairs (those crosscheck_with_trl scored), the DPO
    loss at the recorded beta must match the recorded crosscheck and show learning."""
    from labkit.dpo import dpo_loss, sequence_logps

    from . import bounds

    cfg = rec.dpo_config if isinstance(rec.dpo_config, dict) else {}
    cc = rec.crosscheck if isinstance(rec.crosscheck, dict) else {}
    beta, batch = cfg.get("beta"), cfg.get("per_device_train_batch_size")
    recorded = next((cc[k] for k in ("labkit_loss", "trl_loss") if finite(cc.get(k))), None)
    if not (finite(beta) and beta > 0 and isinstance(batch, int) and batch >= 1):
        return False, "dpo_config lacks a positive beta and per_device_train_batch_size"
    if recorded is None:
        return False, ("no recorded crosscheck loss (labkit_loss) to tie these weights to their "
                       "training: run the cross-check cell, then save")
    if batch > bounds.MAX_SPEC["batch_size"]:
        return False, f"per_device_train_batch_size {batch} is over the grader's limit"
    too_big = bounds.json_problem(Path(run) / Step2Meta.PAIRS_FILE)
    if too_big:
        return False, too_big
    rows = Step2Meta.read_pairs(run)[0][:batch]
    prompts, chosen, rejected = ([r[k] for r in rows] for k in ("prompt", "chosen", "rejected"))
    policy, tok = load_policy(run, base), base[1]
    logps = [sequence_logps(m, tok, prompts, a, paired_with=b) for m in (policy, base[0])
             for a, b in ((chosen, rejected), (rejected, chosen))]
    loss, chosen_r, rejected_r = dpo_loss(*logps, beta=beta)
    loss, margin = float(loss), float((chosen_r - rejected_r).mean())
    tolerance = PROVENANCE_ABS + PROVENANCE_REL * abs(recorded)
    text = (f"on the first {len(rows)} step-2 pairs the saved policy's DPO loss is {loss:.4f} "
            f"(recorded {recorded:.4f}, tolerance {tolerance:.4f}), mean margin {margin:.3f}")
    if abs(loss - recorded) > tolerance:
        return False, (text + ": these weights do not reproduce the recorded cross-check, so they "
                       "are not the policy that training produced (edited weights, or another "
                       "run's policy)")
    if not (loss < LEARNED_BELOW and margin > 0):
        return False, (text + f": no learning shows (the loss must be below ln 2 - 0.01 = "
                       f"{LEARNED_BELOW:.3f} with a positive margin)")
    return True, text

