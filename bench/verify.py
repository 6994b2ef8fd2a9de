"""Grading outputs by teacher-forced verification vs by regenerating them.

The grader used to regenerate every held output greedily and compare text; `grading.checks.verify`
instead runs one batched forward pass over prompt + recorded output. Both are timed on the
same recorded outputs (7 prompts, 40 new tokens, greedy), interleaved; both must agree that
the outputs are the model's own.
"""
from __future__ import annotations

from .stats import interleave, ratio, summary


def measure(model, tokenizer, prompts, reps: int, log=print) -> dict:
    from labkit.config import GenerationSpec
    from labkit.generation import generate
    from grading.checks.verify import verify_outputs

    prompts, spec = list(prompts), GenerationSpec(max_new_tokens=40)
    texts, ids = generate(model, tokenizer, prompts, spec, return_ids=True)  # also warm-up
    runs = interleave({
        "regenerate": lambda: generate(model, tokenizer, prompts, spec) == texts,
        "verify": lambda: verify_outputs(model, tokenizer, prompts, texts, spec,
                                         token_ids=ids).ok}, reps, log)
    regen = summary(wall for wall, _, _ in runs["regenerate"])
    verify = summary(wall for wall, _, _ in runs["verify"])
    return {"prompts": len(prompts), "max_new_tokens": spec.max_new_tokens,
            "recorded_tokens": sum(len(r) for r in ids),
            "regenerate_seconds": regen, "verify_seconds": verify,
            "speedup": ratio(regen["median"], verify["median"]),
            "all_agree": all(ok for name in runs for _, _, ok in runs[name])}


def main() -> None:
    """`python -m bench.verify [MODEL]`: this section alone (default: teaching model)."""
    import json
    import sys

    from labkit import teaching
    from labkit.models import load_model

    model, tokenizer, info = load_model(sys.argv[1] if len(sys.argv) > 1 else "teaching",
                                        quiet=True)
    prompts = list(teaching.HELDOUT_PROMPTS[:6]) + [teaching.NEUTRAL_PROMPTS[0]]
    print(json.dumps({"model": info.kind, **measure(model, tokenizer, prompts, 3)}, indent=1))


if __name__ == "__main__":
    main()
