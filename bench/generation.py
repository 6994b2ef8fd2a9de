"""Section 2: batched generation vs one prompt at a time (target: >= 3x, identical outputs).

labkit generates a whole batch per `generate()` call with left padding; the claim is that
this is pure speed. Both variants go through `labkit.generation.generate` (batch_size 8 vs
1), greedy, 40 new tokens, so the only difference is batching; outputs must match exactly.
"""
from __future__ import annotations

from dataclasses import replace

from .stats import interleave, ratio, summary

N_PROMPTS = 8


def measure(model, tokenizer, prompts, reps: int, spec=None, log=print) -> dict:
    from labkit.config import GenerationSpec
    from labkit.generation import generate

    prompts = list(prompts)[:N_PROMPTS]
    spec = spec or GenerationSpec()
    batched_spec = replace(spec, batch_size=len(prompts))
    single_spec = replace(spec, batch_size=1)
    generate(model, tokenizer, prompts[:2], batched_spec)  # warm-up: first call pays setup
    runs = interleave({"batched": lambda: generate(model, tokenizer, prompts, batched_spec),
                       "one_by_one": lambda: generate(model, tokenizer, prompts, single_spec)},
                      reps, log)
    outputs = {name: [out for _, _, out in r] for name, r in runs.items()}
    identical = all(o == outputs["batched"][0] for o in outputs["batched"] + outputs["one_by_one"])
    mismatched = [i for i, (a, b) in enumerate(zip(outputs["batched"][0],
                                                   outputs["one_by_one"][0])) if a != b]
    batched = summary(wall for wall, _, _ in runs["batched"])
    single = summary(wall for wall, _, _ in runs["one_by_one"])
    cpu = {name: summary(c for _, c, _ in r) for name, r in runs.items()}
    return {"prompts": len(prompts), "max_new_tokens": spec.max_new_tokens,
            "batched_seconds": batched, "one_by_one_seconds": single,
            "speedup": ratio(single["median"], batched["median"]),
            "cpu_seconds": cpu, "cpu_speedup": ratio(cpu["one_by_one"]["median"],
                                                     cpu["batched"]["median"]),
            "outputs_identical": identical, "mismatched_prompts": mismatched,
            "sample_output": outputs["batched"][0][0][:80]}
