"""Exercise 3.3 (compute_sequence_logps), graded from notebook 3 alone, like
`student_code.check_student_loss`: the notebook's imports/defs/constants (never its training
cells) run in a sandboxed child on fresh random logits chosen here; the child only reports
numbers, and the grader compares them with `labkit.dpo.completion_logps` (the core of
`labkit.dpo.sequence_logps`) in its own process, naming the classic bug in its hint.

Scored as the step-3 item `student_logps` (grading.autograde, next to `student_loss`).
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable

from .student_code import run_definitions

FUNCTION = "compute_sequence_logps"

# call(fn, case) in the fork (student_code.DRIVER): the summed log-probs, one per row
CALL = """
def call(fn, case):
    args = (torch.tensor(case["logits"], dtype=torch.float32),
            torch.tensor(case["input_ids"], dtype=torch.long),
            torch.tensor(case["attention_mask"], dtype=torch.long),
            torch.tensor(case["prompt_lengths"], dtype=torch.long))
    return torch.as_tensor(fn(*args)).detach().double().reshape(-1).tolist()
"""


def make_cases(seed: int = 0) -> list[dict]:
    """Random right-padded batches: logits (n, T, V), token ids, an attention mask with
    different lengths per row, and prompt lengths that leave >= 2 completion tokens."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cases = []
    for n, width, vocab in ((3, 9, 11), (5, 14, 23), (1, 6, 7)):
        lengths = torch.randint(max(4, width - 4), width + 1, (n,), generator=gen)
        lengths[0] = width                                 # one row without padding
        prompts = torch.stack([torch.randint(1, int(l) - 1, (1,), generator=gen)[0]
                               for l in lengths])
        ids = torch.randint(0, vocab, (n, width), generator=gen)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        ids = ids * mask                                   # pad id 0, like GPT-2's reuse of EOS
        logits = torch.randn(n, width, vocab, generator=gen) * 3
        cases.append({"logits": logits.tolist(), "input_ids": ids.tolist(),
                      "attention_mask": mask.tolist(), "prompt_lengths": prompts.tolist()})
    return cases


def compare_with_reference(cases: list[dict], answers) -> tuple[bool, str]:
    import torch

    from labkit.exercises import compare_logps

    if not isinstance(answers, list) or len(answers) != len(cases):
        return False, f"{FUNCTION} gave no answer for some inputs"
    for number, (case, got) in enumerate(zip(cases, answers), start=1):
        tensors = (torch.tensor(case["logits"], dtype=torch.float32),
                   torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"]),
                   torch.tensor(case["prompt_lengths"]))
        ok, message = compare_logps(got, *tensors)
        if not ok:
            return False, f"random batch {number} of {len(cases)}: {message}"
    return True, f"matches labkit.dpo.sequence_logps' core on {len(cases)} random batches"


def check_student_logps(notebook_path: str | Path, run: Callable, workdir: Path,
                        timeout: float = 60, seed: int | None = None) -> tuple[bool, str]:
    """(passed, message). `run(argv, stdin, cwd, timeout)` -> (returncode, stdout, stderr,
    timed_out), as for `student_code.check_student_loss` (same unspoofable channel)."""
    cases = make_cases(secrets.randbelow(1 << 31) if seed is None else seed)  # fresh inputs
    ok, answers = run_definitions(notebook_path, FUNCTION, CALL, cases, run, workdir, timeout)
    return compare_with_reference(cases, answers) if ok else (False, answers)
