"""The saved step-3 policy against the base model: the grader's one model cache, reading
the policy's weights safely, and the `policy_changed` item.

Weights are read from safetensors only (never unpickled) and refused when far larger than
the base model: a submission's folder could hold anything.
"""
from __future__ import annotations

from pathlib import Path

from labkit.steps import Step3Training

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
    return scored(3, "policy_changed", bool(changed), f"{len(changed)}/{len(common)} weight "
                  "tensors differ from the base model" if changed else "the saved policy is "
                  "identical to the base model: did trainer.train() run before saving?")
