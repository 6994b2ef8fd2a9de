"""Exercise 3.1 (compute_sequence_logps), graded from notebook 3 alone, like
`student_code.check_student_loss`: the notebook's imports/defs/constants (never its training
cells) run in a sandboxed child on fresh random logits chosen here; the child only reports
numbers, and the grader compares them with `labkit.dpo.completion_logps` (the core of
`labkit.dpo.sequence_logps`) in its own process, naming the classic bug in its hint.

Wiring (integrator): call `check_student_logps(notebook_path, run, workdir)` where
`check_student_loss` is called, and score it as a step-3 item (e.g. "student_logps").
"""
from __future__ import annotations

import ast
import json
import secrets
from pathlib import Path
from typing import Callable

from .student_code import definitions_source

FUNCTION = "compute_sequence_logps"

# python -c DRIVER <definitions.py> <marker>; cases come on stdin.
DRIVER = r"""
import ast, json, sys, torch
source = open(sys.argv[1], encoding="utf-8").read()
namespace = {"__name__": "student_definitions"}
for node in ast.parse(source).body:
    code = compile(ast.Module([node], []), "notebook-3-definitions", "exec")
    try:
        exec(code, namespace)
    except Exception:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            raise
fn = namespace["compute_sequence_logps"]
out = []
for case in json.loads(sys.stdin.read()):
    args = (torch.tensor(case["logits"], dtype=torch.float32),
            torch.tensor(case["input_ids"], dtype=torch.long),
            torch.tensor(case["attention_mask"], dtype=torch.long),
            torch.tensor(case["prompt_lengths"], dtype=torch.long))
    res = fn(*args)
    out.append(torch.as_tensor(res).detach().double().reshape(-1).tolist())
print(sys.argv[2] + json.dumps(out), flush=True)
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
                        timeout: float = 60) -> tuple[bool, str]:
    """(passed, message). `run(argv, stdin, cwd, timeout)` -> (returncode, stdout, stderr,
    timed_out), as for `student_code.check_student_loss`."""
    import sys

    try:
        source = definitions_source(notebook_path)
    except Exception as exc:  # a notebook we cannot read is the submission's problem
        return False, f"notebook 3 cannot be read: {exc}"
    if not any(isinstance(n, ast.FunctionDef) and n.name == FUNCTION
               for n in ast.parse(source).body):
        return False, f"notebook 3 has no `def {FUNCTION}(...)` at the top level of a cell"
    workdir.mkdir(parents=True, exist_ok=True)
    module = workdir / "notebook3_logps_definitions.py"
    module.write_text(source, encoding="utf-8")
    cases, marker = make_cases(), f"@@RESULT-{secrets.token_hex(8)}@@"
    rc, out, err, timed_out = run([sys.executable, "-c", DRIVER, str(module), marker],
                                  json.dumps(cases), workdir, timeout)
    if timed_out:
        return False, f"{FUNCTION} did not finish within {timeout:g} s"
    lines = [l for l in out.splitlines() if l.startswith(marker)]
    if rc != 0 or not lines:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return False, f"running notebook 3's definitions failed: {tail[:300]}"
    try:
        answers = json.loads(lines[-1][len(marker):])
    except json.JSONDecodeError:
        return False, f"{FUNCTION} returned something that is not numbers"
    return compare_with_reference(cases, answers)
