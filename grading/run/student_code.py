"""compute_dpo_loss from notebook 3, tested without running the notebook.

Like LLMs-from-scratch's `import_definitions_from_notebook`: keep only the imports, def/class
blocks and literal constants of the code cells (via `ast`, so a training cell never runs),
exec them in a separate, sandboxed process with a timeout (decorators and default arguments
are still code), feed random tensors chosen here, and compare what comes back with
`labkit.dpo.dpo_loss` in the grader's own process. The child only reports numbers; it never
decides the grade.

The result channel cannot be written by the student's code: the driver forks
before reading anything; the definitions load in the fork with stdin on /dev/null, stdout
sent to stderr and no capabilities, and hand their numbers back over a pipe. Only the
driver's other half, which the student's code never runs in, reads the per-run key from
stdin (after the fork, so the key is never in the fork's memory) and prints key + numbers.
The reference is off limits too: a function that calls labkit.dpo or TRL scores 0 (seen in
the source by `reference_calls`, and those modules cannot be imported in the fork).
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
# what a from-scratch exercise may not call (the answers live there)
REFERENCE_MODULES = ("labkit.dpo", "labkit.exercises", "trl")

# python -c DRIVER <definitions.py> <function>; stdin: "<key>\n<cases JSON>". CALL (per
# exercise) defines call(fn, case) -> list of numbers (or of lists).
DRIVER = r"""
import ast, ctypes, json, os, sys, traceback
try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)        # PR_SET_DUMPABLE 0: /proc/<pid>/fd, mem, ptrace closed
except Exception:
    libc = None
cases_r, cases_w = os.pipe()
answers_r, answers_w = os.pipe()
pid = os.fork()
if pid == 0:  # the fork that loads the student's code: no way back but answers_w
    os.close(cases_w); os.close(answers_r)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    if libc is not None:
        libc.prctl(38, 1, 0, 0, 0)    # PR_SET_NO_NEW_PRIVS
        libc.prctl(28, 0x2f, 0, 0, 0) # PR_SET_SECUREBITS: no root magic (inside namespaces)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        libc.capset(header, (ctypes.c_uint32 * 6)())   # drop every capability
    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if any(name == m or name.startswith(m + ".") for m in BLOCKED):
                raise ImportError(f"{name} is the reference: write this function yourself")
    BLOCKED = ("labkit.dpo", "labkit.exercises", "trl")
    sys.meta_path.insert(0, Blocked())
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in BLOCKED):
            del sys.modules[name]
    try:
        namespace = {"__name__": "student_definitions"}
        for node in ast.parse(open(sys.argv[1], encoding="utf-8").read()).body:
            code = compile(ast.Module([node], []), "notebook-3-definitions", "exec")
            try:
                exec(code, namespace)
            except Exception:   # an import the function does not need may fail
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    raise
        fn = namespace[sys.argv[2]]
        with os.fdopen(cases_r, encoding="utf-8") as handle:
            cases = json.load(handle)
        import torch
        CALL
        reply = {"answers": [call(fn, case) for case in cases]}
    except BaseException as exc:
        traceback.print_exc()
        reply = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    with os.fdopen(answers_w, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(reply))
    os._exit(0)
os.close(cases_r); os.close(answers_w)
key, _, cases = sys.stdin.read().partition("\n")
try:
    with os.fdopen(cases_w, "w", encoding="utf-8") as handle:
        handle.write(cases)
except BrokenPipeError:
    pass
with os.fdopen(answers_r, "rb") as handle:
    reply = handle.read(64 << 20).decode("utf-8", "replace")
os.waitpid(pid, 0)
print(key + json.dumps(reply), flush=True)
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


def compare_with_reference(cases: list[dict], answers) -> tuple[bool, str]:
    """Check the child's (loss, chosen_rewards, rejected_rewards) against labkit.dpo, with
    the hint (labkit.exercises) that names a classic mistake."""
    import torch
    from labkit.exercises import compare_dpo_loss

    if not isinstance(answers, list) or len(answers) != len(cases):
        return False, "compute_dpo_loss gave no answer for some inputs"
    for case, got in zip(cases, answers):
        inputs = [torch.tensor(v, dtype=torch.float32) for v in case["inputs"]]
        try:
            got = [torch.tensor(g, dtype=torch.float64) for g in got]
        except (TypeError, ValueError, RuntimeError):
            return False, f"{FUNCTION} returned something that is not numbers"
        ok, message = compare_dpo_loss(got, *inputs,
                                       beta=0.1 if case["beta"] is None else case["beta"])
        if not ok:
            return False, message
    return True, f"matches labkit.dpo.dpo_loss on {len(cases)} random batches"


CALL = """
def call(fn, case):
    args = [torch.tensor(v, dtype=torch.float32) for v in case["inputs"]]
    res = fn(*args) if case["beta"] is None else fn(*args, beta=case["beta"])
    res = list(res) if isinstance(res, (tuple, list)) else [res]
    return [torch.as_tensor(r).detach().double().reshape(-1).tolist() for r in res]
"""


def check_student_loss(notebook_path: str | Path, run: Callable, workdir: Path,
                       timeout: float = 60, seed: int | None = None) -> tuple[bool, str]:
    """(passed, message). `run(argv, stdin, cwd, timeout)` -> (returncode, stdout, stderr,
    timed_out) executes untrusted code (the auto-grader passes its sandbox). The inputs are
    drawn afresh each run (`seed` fixes them), so no answer can be known in advance."""
    cases = make_cases(secrets.randbelow(1 << 31) if seed is None else seed)  # fresh inputs
    ok, answers = run_definitions(notebook_path, FUNCTION, CALL, cases, run, workdir, timeout)
    return compare_with_reference(cases, answers) if ok else (False, answers)


def run_definitions(notebook_path, function: str, call: str, cases: list, run: Callable,
                    workdir: Path, timeout: float):
    """(True, answers) from `function` of notebook 3's definitions run on `cases` in the
    sandbox, or (False, why): no such function, it calls the reference, it failed."""
    import sys

    try:
        source = definitions_source(notebook_path)
    except Exception as exc:  # a notebook we cannot read is the submission's problem
        return False, f"notebook 3 cannot be read: {exc}"
    if not any(isinstance(n, ast.FunctionDef) and n.name == function
               for n in ast.parse(source).body):
        return False, f"notebook 3 has no `def {function}(...)` at the top level of a cell"
    used = reference_calls(source, function)
    if used:
        return False, (f"{function} uses {', '.join(used)}: that is the reference this exercise "
                       "asks you to write yourself (0 points until it is computed from the "
                       "tensors, e.g. with torch and torch.nn.functional)")
    workdir.mkdir(parents=True, exist_ok=True)
    module = workdir / f"notebook3_{function}.py"
    module.write_text(source, encoding="utf-8")
    key = f"@@RESULT-{secrets.token_hex(16)}@@"   # never in argv, env or the fork's memory
    driver = DRIVER.replace("        CALL\n", _indent(call, 8))
    rc, out, err, timed_out = run([sys.executable, "-c", driver, str(module), function],
                                  key + "\n" + json.dumps(cases), workdir, timeout)
    if timed_out:
        return False, f"{function} did not finish within {timeout:g} s"
    lines = [l for l in out.splitlines() if l.startswith(key)]
    try:
        reply = json.loads(json.loads(lines[-1][len(key):])) if lines else None
    except (json.JSONDecodeError, TypeError):
        reply = None
    if not isinstance(reply, dict):
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return False, f"running notebook 3's definitions failed: {tail[:300]}"
    if "error" in reply:
        return False, f"running notebook 3's definitions failed: {str(reply['error'])[:300]}"
    return True, reply.get("answers")


def _indent(code: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in code.strip("\n").splitlines())


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
