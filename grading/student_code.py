"""compute_dpo_loss from notebook 3, tested without running the notebook.

Like LLMs-from-scratch's `import_definitions_from_notebook`: keep only the imports, def/class
blocks and literal constants of the code cells (via `ast`, so a training cell never runs),
exec them in a separate, sandboxed process with a timeout (decorators and default arguments
are still code), feed random tensors chosen here, and compare what comes back with
`labkit.dpo.dpo_loss` in the grader's own process. The child only reports numbers; it never
decides the grade.
"""
from __future__ import annotations

import ast
import json
import re
import secrets
from pathlib import Path
from typing import Callable

FUNCTION = "compute_dpo_loss"
KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_MAGIC = re.compile(r"^\s*([%!]|\?\w|\w+\?\s*$)")

# Runs in the sandbox: python -c DRIVER <definitions.py> <marker>; cases come on stdin.
DRIVER = r"""
import ast, json, sys, torch
source = open(sys.argv[1], encoding="utf-8").read()
namespace = {"__name__": "student_definitions"}
for node in ast.parse(source).body:  # an import the function does not need may fail
    code = compile(ast.Module([node], []), "notebook-3-definitions", "exec")
    try:
        exec(code, namespace)
    except Exception:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            raise
fn = namespace["compute_dpo_loss"]
out = []
for case in json.loads(sys.stdin.read()):
    args = [torch.tensor(v, dtype=torch.float32) for v in case["inputs"]]
    res = fn(*args) if case["beta"] is None else fn(*args, beta=case["beta"])
    res = list(res) if isinstance(res, (tuple, list)) else [res]
    out.append([torch.as_tensor(r).detach().double().reshape(-1).tolist() for r in res])
print(sys.argv[2] + json.dumps(out), flush=True)
"""


def definitions_source(notebook_path: str | Path) -> str:
    """Imports, def/class blocks and literal constants of every code cell, in order, as one
    module's source. Cells that do not parse (e.g. unfinished code) are skipped; magics are
    dropped; imports are kept only when the definitions use a name they bind (importing
    TRL or matplotlib would only cost seconds and run more untrusted-chosen code)."""
    import nbformat

    nb = nbformat.read(str(notebook_path), as_version=4)
    kept = []
    for cell in nb.cells:
        if cell.cell_type != "code" or cell.source.lstrip().startswith("%%"):
            continue
        code = "\n".join("" if _MAGIC.match(line) else line for line in cell.source.splitlines())
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        kept += [node for node in tree.body if isinstance(node, KEPT) or _is_constant(node)]
    used = {n.id for node in kept if not isinstance(node, (ast.Import, ast.ImportFrom))
            for n in ast.walk(node) if isinstance(n, ast.Name)}
    return "\n\n".join(ast.unparse(node) for node in map(lambda n: _used_imports(n, used), kept)
                       if node is not None) + "\n"


def _used_imports(node, used: set[str]):
    """The node, with an import statement cut to the names `used` (None if none is)."""
    if not isinstance(node, (ast.Import, ast.ImportFrom)):
        return node
    names = [a for a in node.names
             if a.name == "*" or (a.asname or a.name.split(".")[0]) in used]
    if not names:
        return None
    return type(node)(**{**{f: getattr(node, f) for f in node._fields}, "names": names})


def _is_constant(node) -> bool:
    """`NAME = <literal>` (e.g. BETA = 0.1), which a def's default argument may use."""
    if not (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)):
        return False
    try:
        ast.literal_eval(node.value)
        return True
    except Exception:  # literal_eval raises several kinds on non-literals
        return False


def make_cases(seed: int = 0) -> list[dict]:
    """Random summed log-probs (negative, like real ones), several batch sizes and betas;
    `beta=None` calls the function without beta, to test its default of 0.1."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cases = []
    for batch, beta in ((4, None), (7, 0.5), (1, 0.1), (16, 2.0)):
        inputs = [(-(torch.rand(batch, generator=gen) * 40 + 1)).tolist() for _ in range(4)]
        cases.append({"inputs": inputs, "beta": beta})
    return cases


def compare_with_reference(cases: list[dict], answers) -> tuple[bool, str]:
    """Check the child's (loss, chosen_rewards, rejected_rewards) against labkit.dpo."""
    import torch
    from labkit.dpo import dpo_loss

    if not isinstance(answers, list) or len(answers) != len(cases):
        return False, "compute_dpo_loss gave no answer for some inputs"
    for case, got in zip(cases, answers):
        inputs = [torch.tensor(v, dtype=torch.float32) for v in case["inputs"]]
        want = dpo_loss(*inputs, beta=0.1 if case["beta"] is None else case["beta"])
        if not isinstance(got, list) or len(got) != 3:
            return False, ("compute_dpo_loss must return (loss, chosen_rewards, rejected_rewards)"
                           f"; it returned {len(got) if isinstance(got, list) else 0} value(s)")
        where = f"batch of {len(case['inputs'][0])}, beta={case['beta'] or 'default'}"
        for name, w, g in zip(("loss", "chosen_rewards", "rejected_rewards"), want, got):
            try:
                torch.testing.assert_close(torch.tensor(g, dtype=torch.float64),
                                           w.double().reshape(-1), rtol=1e-4, atol=1e-5)
            except (AssertionError, ValueError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0]
                return False, f"{name} differs from the reference ({where}): {first}"
    return True, f"matches labkit.dpo.dpo_loss on {len(cases)} random batches"


def check_student_loss(notebook_path: str | Path, run: Callable, workdir: Path,
                       timeout: float = 60) -> tuple[bool, str]:
    """(passed, message). `run(argv, stdin, cwd, timeout)` -> (returncode, stdout, stderr,
    timed_out) executes untrusted code (the auto-grader passes its sandbox)."""
    import sys

    try:
        source = definitions_source(notebook_path)
    except Exception as exc:  # a notebook we cannot read is the submission's problem
        return False, f"notebook 3 cannot be read: {exc}"
    if not any(isinstance(n, ast.FunctionDef) and n.name == FUNCTION
               for n in ast.parse(source).body):
        return False, f"notebook 3 has no `def {FUNCTION}(...)` at the top level of a cell"
    workdir.mkdir(parents=True, exist_ok=True)
    module = workdir / "notebook3_definitions.py"
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
