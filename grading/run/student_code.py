"""The from-scratch exercises of notebook 3 (compute_dpo_loss, compute_sequence_logps),
tested without running the notebook.

Like LLMs-from-scratch's `import_definitions_from_notebook`: keep only the imports, def/class
blocks and literal constants of the code cells (via `ast`, so a training cell never runs),
exec them in a separate, sandboxed process with a timeout (decorators and default arguments
are still code), feed random tensors chosen here, and compare what comes back with labkit's
reference in the grader's own process (grading.checks.exercise_cases). The child only
reports numbers; it never decides the grade.

Both exercises run in one sandboxed process (grading/run/exercise_fork.py): it imports
torch once, then forks once per function, so each keeps its own verdict and message. The
result channel cannot be written by the student's code: the forks load the definitions
with stdin on /dev/null, their output on pipes of their own and no capabilities; only the
driver, which never runs the student's code, reads the per-run key from stdin (after the
forks, so the key is never in their memory) and prints key + answers. The reference is off
limits too: a function that calls labkit.dpo or TRL scores 0 (seen in the source by
`reference_calls`, and those modules cannot be imported in the fork).
"""
from __future__ import annotations

import ast
import json
import re
import secrets
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from ..checks.exercise_cases import EXERCISES, KEPT, LOSS, Exercise, fresh_seed, reference_calls

DRIVER = Path(__file__).with_name("exercise_fork.py").read_text(encoding="utf-8")
STARTUP = 60  # seconds the sandboxed process may take to start (Python, torch) on top
_MAGIC = re.compile(r"^\s*([%!]|\?\w|\w+\?\s*$)")


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


def start_exercises(notebook_path, start: Callable, workdir: Path, timeout: float = 60,
                    seed: int | None = None) -> "Started":
    """Both exercises, each on its own inputs drawn afresh (`seed` fixes them), in one
    sandboxed process that `start(argv, cwd)` starts (e.g. `Sandbox.start_untrusted`);
    `.verdicts()` gives {item: (passed, message)}. Each is judged alone: one that is missing,
    wrong, calls the reference, fails or runs past `timeout` costs the other nothing.
    `notebook_path` None: the submission has no notebook 3."""
    return Started(notebook_path, {ex.function: (ex.call, ex.make_cases(fresh_seed(seed)))
                                   for ex in EXERCISES}, start, workdir, timeout)


def check_exercises(notebook_path: str | Path, run: Callable, workdir: Path,
                    timeout: float = 60, seed: int | None = None) -> dict[str, tuple[bool, str]]:
    """{item: (passed, message)} of both exercises, as `start_exercises`, for a
    `run(argv, stdin, cwd, timeout)` -> (returncode, stdout, stderr, timed_out)."""
    return start_exercises(notebook_path, partial(Later, run), workdir, timeout,
                           seed).verdicts()


def check_exercise(exercise: Exercise, notebook_path: str | Path, run: Callable,
                   workdir: Path, timeout: float = 60,
                   seed: int | None = None) -> tuple[bool, str]:
    """(passed, message) of one exercise alone, for a `run(argv, stdin, cwd, timeout)` ->
    (returncode, stdout, stderr, timed_out) that executes untrusted code (the auto-grader
    passes its sandbox). The inputs are drawn afresh each run (`seed` fixes them), so no
    answer can be known in advance."""
    cases = exercise.make_cases(fresh_seed(seed))
    return Started(notebook_path, {exercise.function: (exercise.call, cases)},
                   partial(Later, run), workdir, timeout).verdicts()[exercise.item]


def check_student_loss(notebook_path: str | Path, run: Callable, workdir: Path,
                       timeout: float = 60, seed: int | None = None) -> tuple[bool, str]:
    """(passed, message) of exercise 3.1 alone (`check_exercise`)."""
    return check_exercise(LOSS, notebook_path, run, workdir, timeout, seed)


def verdict(compare: Callable, cases: list, answers: tuple) -> tuple[bool, str]:
    """(passed, message): the comparison's when the function answered, else why not."""
    ok, got = answers
    return compare(cases, got) if ok else (False, got)


@dataclass
class Later:
    """The process of a `run(argv, stdin, cwd, timeout)` as a started one: it runs at
    `finish` (for runners without a start of their own, e.g. the tests')."""

    run: Callable
    argv: list
    cwd: Path

    def finish(self, stdin: str, timeout: float):
        return self.run(self.argv, stdin, self.cwd, timeout)

    def kill(self) -> None:
        pass


class Started:
    """Functions of notebook 3's definitions, given as {function: (call source, cases)},
    their sandboxed process started by `start(argv, cwd)` (where it starts at once, it
    imports torch, forks and waits: nothing of the student's runs before `answers`, which
    sends the cases). `cancel` stops it if `answers` never comes."""

    def __init__(self, notebook_path, calls: dict[str, tuple[str, list]], start: Callable,
                 workdir: Path, timeout: float):
        self.calls, self.timeout, self.process = calls, timeout, None
        self.results, source = _ruled_out(notebook_path, list(calls))
        self.todo = [f for f in calls if f not in self.results]
        if self.todo:
            workdir.mkdir(parents=True, exist_ok=True)
            module = workdir / "notebook3_definitions.py"
            module.write_text(source, encoding="utf-8")
            self.process = start([sys.executable, "-s", "-c", DRIVER, str(module),
                                  f"{timeout:g}", *self.todo], workdir)

    def answers(self) -> dict[str, tuple]:
        """{function: (True, answers) or (False, why)}; why: no such function, it calls
        the reference, it failed, it ran past `timeout` seconds."""
        if self.process is not None:
            process, self.process = self.process, None
            key = f"@@RESULT-{secrets.token_hex(16)}@@"  # never in argv, env or the forks
            specs = {f: {"call": self.calls[f][0], "cases": self.calls[f][1]} for f in self.todo}
            rc, out, err, timed_out = process.finish(key + "\n" + json.dumps(specs),
                                                     self.timeout + STARTUP)
            lines = [line for line in out.splitlines() if line.startswith(key)]
            reports = _parsed(lines[-1][len(key):]) if lines else None
            reports = reports if isinstance(reports, dict) else {}
            self.results.update({f: _answers(f, reports.get(f), err, timed_out, self.timeout)
                                 for f in self.todo})
        return {f: self.results[f] for f in self.calls}

    def verdicts(self) -> dict[str, tuple[bool, str]]:
        """{item: (passed, message)} of the exercises among the functions."""
        answers = self.answers()
        return {ex.item: verdict(ex.compare, self.calls[ex.function][1], answers[ex.function])
                for ex in EXERCISES if ex.function in self.calls}

    def cancel(self) -> None:
        if self.process is not None:
            self.process.kill()


def _ruled_out(notebook_path, functions: list[str]) -> tuple[dict, str]:
    """({function: (False, why)} for those not to run, the definitions' source)."""
    if notebook_path is None:
        return {f: (False, "notebook 3 is not in the submission") for f in functions}, ""
    try:
        source = definitions_source(notebook_path)
    except Exception as exc:  # a notebook we cannot read is the submission's problem
        return {f: (False, f"notebook 3 cannot be read: {exc}") for f in functions}, ""
    defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    results = {}
    for function in functions:
        used = reference_calls(source, function) if function in defined else []
        if function not in defined:
            results[function] = (False, f"notebook 3 has no `def {function}(...)` at the top "
                                        "level of a cell")
        elif used:
            results[function] = (False, (
                f"{function} uses {', '.join(used)}: that is the reference this exercise asks "
                "you to write yourself (0 points until it is computed from the tensors, e.g. "
                "with torch and torch.nn.functional)"))
    return results, source


def _answers(function: str, report, err: str, timed_out: bool, timeout: float) -> tuple:
    """(True, answers) or (False, why) from one fork's report (None: the driver gave none,
    then `err`, the process's stderr, says why)."""
    late = (False, f"{function} did not finish within {timeout:g} s")
    if not isinstance(report, dict):
        reply = None
        if timed_out:
            return late
    elif report.get("timed_out"):
        return late
    else:
        err, reply = str(report.get("stderr", "")), _parsed(report.get("reply"))
    if not isinstance(reply, dict):
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return False, f"running notebook 3's definitions failed: {tail[:300]}"
    if "error" in reply:
        return False, f"running notebook 3's definitions failed: {str(reply['error'])[:300]}"
    return True, reply.get("answers")


def _parsed(text):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
