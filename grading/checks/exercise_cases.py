"""Exercises 3.1 and 3.3 (`compute_dpo_loss`, `compute_sequence_logps`) as the grader tests
them, one definition for both sides: the auto-grader runs the functions of notebook 3's code
in its sandbox (grading.run.student_code), `grading.check(3)` runs the kernel's own
(notebook_exercises). Each `Exercise` is its rubric item, the function's name, the grader's
`call(fn, case)` (source, run wherever the function runs), fresh random cases and the
comparison with labkit's reference, whose hint names a classic mistake. Both sides apply
the same rule: a function that calls the reference (`reference_calls`) scores 0.
"""
from __future__ import annotations

import ast
import secrets
from dataclasses import dataclass
from typing import Callable

# what a notebook's definitions keep (with literal constants): never a statement that runs
KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# what a from-scratch exercise may not call (the answers live there)
REFERENCE_MODULES = ("labkit.dpo", "labkit.exercises", "trl")


@dataclass(frozen=True)
class Exercise:
    item: str                                   # the step-3 rubric item it scores
    function: str                               # the notebook's def
    call: str                                   # defines call(fn, case) -> numbers
    make_cases: Callable[[int], list]           # seed -> JSON-able cases
    compare: Callable[[list, object], tuple]    # (cases, answers) -> (passed, message)


LOSS_FUNCTION = "compute_dpo_loss"
LOSS_CALL = """
def call(fn, case):
    args = [torch.tensor(v, dtype=torch.float32) for v in case["inputs"]]
    res = fn(*args) if case["beta"] is None else fn(*args, beta=case["beta"])
    res = list(res) if isinstance(res, (tuple, list)) else [res]
    return [torch.as_tensor(r).detach().double().reshape(-1).tolist() for r in res]
"""


def loss_cases(seed: int = 0) -> list[dict]:
    """Random summed log-probs (negative, like real ones), several batch sizes and betas;
    `beta=None` calls the function without beta, to test its default of 0.1. The reference
    stays within 8 nats of the policy, as in training, so that |margin| <= 32: every
    correct way of writing the loss (log(sigmoid(x)) included) is exact in float32 there."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cases = []
    for batch, beta in ((4, None), (7, 0.5), (1, 0.1), (16, 2.0)):
        policy = [-(torch.rand(batch, generator=gen) * 40 + 10) for _ in range(2)]
        ref = [p + (torch.rand(batch, generator=gen) * 2 - 1) * 8 for p in policy]
        inputs = [t.tolist() for t in (policy[0], policy[1], ref[0], ref[1])]
        cases.append({"inputs": inputs, "beta": beta})
    return cases


def loss_verdict(cases: list[dict], answers) -> tuple[bool, str]:
    """The (loss, chosen_rewards, rejected_rewards) answers against labkit.dpo, with the
    hint (labkit.exercises) that names a classic mistake."""
    import torch

    from labkit.exercises import compare_dpo_loss

    if not isinstance(answers, list) or len(answers) != len(cases):
        return False, f"{LOSS_FUNCTION} gave no answer for some inputs"
    for case, got in zip(cases, answers):
        inputs = [torch.tensor(v, dtype=torch.float32) for v in case["inputs"]]
        try:
            got = [torch.tensor(g, dtype=torch.float64) for g in got]
        except (TypeError, ValueError, RuntimeError):
            return False, f"{LOSS_FUNCTION} returned something that is not numbers"
        ok, message = compare_dpo_loss(got, *inputs,
                                       beta=0.1 if case["beta"] is None else case["beta"])
        if not ok:
            return False, message
    return True, f"matches labkit.dpo.dpo_loss on {len(cases)} random batches"


LOGPS_FUNCTION = "compute_sequence_logps"
LOGPS_CALL = """
def call(fn, case):
    args = (torch.tensor(case["logits"], dtype=torch.float32),
            torch.tensor(case["input_ids"], dtype=torch.long),
            torch.tensor(case["attention_mask"], dtype=torch.long),
            torch.tensor(case["prompt_lengths"], dtype=torch.long))
    return torch.as_tensor(fn(*args)).detach().double().reshape(-1).tolist()
"""


def logps_cases(seed: int = 0) -> list[dict]:
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


def logps_verdict(cases: list[dict], answers) -> tuple[bool, str]:
    """The summed completion log-probs against labkit.dpo's, naming the classic bug."""
    import torch

    from labkit.exercises import compare_logps

    if not isinstance(answers, list) or len(answers) != len(cases):
        return False, f"{LOGPS_FUNCTION} gave no answer for some inputs"
    for number, (case, got) in enumerate(zip(cases, answers), start=1):
        tensors = (torch.tensor(case["logits"], dtype=torch.float32),
                   torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"]),
                   torch.tensor(case["prompt_lengths"]))
        ok, message = compare_logps(got, *tensors)
        if not ok:
            return False, f"random batch {number} of {len(cases)}: {message}"
    return True, f"matches labkit.dpo.sequence_logps' core on {len(cases)} random batches"


LOSS = Exercise("student_loss", LOSS_FUNCTION, LOSS_CALL, loss_cases, loss_verdict)
LOGPS = Exercise("student_logps", LOGPS_FUNCTION, LOGPS_CALL, logps_cases, logps_verdict)
EXERCISES = (LOSS, LOGPS)


def fresh_seed(seed: int | None = None) -> int:
    """`seed`, or a new secret one: cases no submission can know in advance."""
    return secrets.randbelow(1 << 31) if seed is None else seed


def reference_calls(source: str, function: str) -> list[str]:
    """Dotted names from REFERENCE_MODULES that `function` (or a top-level def/class it
    uses, or its decorators) refers to, resolved through the source's imports."""
    tree = ast.parse(source)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef,
                                                           ast.AsyncFunctionDef, ast.ClassDef))}
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    origin = {}
    for node in imports:
        for alias in node.names:
            if isinstance(node, ast.Import):
                bound = alias.asname or alias.name.split(".")[0]
                origin[bound] = alias.name if alias.asname else bound
            elif node.module and not node.level:
                origin[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found, seen, todo = [], set(), [function]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        local = {n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name)
                 and isinstance(n.ctx, ast.Store)} | {a.arg for a in ast.walk(defs[name])
                                                     if isinstance(a, ast.arg)}
        for node in ast.walk(defs[name]):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    f"{node.module}.{a.name}" for a in node.names if node.module]
                found += [m for m in mods if _is_reference(m)]
            dotted = _dotted(node)
            if dotted is None:
                continue
            root, _, rest = dotted.partition(".")
            if root in local:  # a local variable that happens to share a name
                continue
            todo.append(root)
            full = origin.get(root, "") + ("." + rest if rest else "")
            if origin.get(root) and _is_reference(full):
                found.append(full)
    return sorted(f for f in set(found)  # labkit.dpo.dpo_loss, not also labkit.dpo
                  if not any(o.startswith(f + ".") for o in found))


def _is_reference(dotted: str) -> bool:
    return any(dotted == m or dotted.startswith(m + ".") for m in REFERENCE_MODULES)


def _dotted(node) -> str | None:
    """`a.b.c` for a Name/Attribute chain (the outermost one only), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])
