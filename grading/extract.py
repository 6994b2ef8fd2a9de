"""What the grader takes out of an untrusted submission, and recomputes rather than trusts.

- compute_dpo_loss from notebook 3, tested without running the notebook. Like
  LLMs-from-scratch's `import_definitions_from_notebook`: keep only the imports, def/class
  blocks and literal constants of the code cells (via `ast`, so a training cell never runs),
  exec them in a separate, sandboxed process with a timeout (decorators and default
  arguments are still code), feed random tensors chosen here, and compare what comes back
  with `labkit.dpo.dpo_loss` in the grader's own process. The child only reports numbers;
  it never decides the grade.
- which notebook is which step, and a sanitised copy of the run's artifacts.
- integrity: what the artifacts claim, recomputed with the grader's own base model
  (regenerate the baseline and the aligned outputs, check the log against its config).
"""
from __future__ import annotations

import ast
import json
import math
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Callable

from . import checks
from .checks import finite, scored
from .rubric import CheckItem

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


# ----------------------------------------------------------------------------- submissions
STEP_FROM_NAME = re.compile(r"^0?([1-4])(?:[_\-\s.]|$)")
STEP_FROM_CHECK = re.compile(r"grading\.check\(\s*([1-4])\s*[,)]")
MAX_JSON_BYTES = 64 << 20


def notebook_step(path: Path) -> int | None:
    """Which step a notebook is: by its name (01_..., 3-train.ipynb), else by the
    `grading.check(N)` it calls. None when neither tells."""
    from .rubric import NOTEBOOKS

    for step, name in NOTEBOOKS.items():
        if path.name == name:
            return step
    match = STEP_FROM_NAME.match(path.name)
    if match:
        return int(match.group(1))
    try:
        found = STEP_FROM_CHECK.findall(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return int(found[-1]) if found else None


def find_notebooks(folder: Path) -> tuple[dict[int, Path], list[str]]:
    """{step: notebook} in a submission folder (or its notebooks/ subfolder), and notes on
    what was ambiguous or unrecognised."""
    from .rubric import NOTEBOOKS

    candidates = sorted(p for d in (folder, folder / "notebooks") if d.is_dir()
                        for p in d.glob("*.ipynb") if p.is_file() and not p.is_symlink())
    found, notes = {}, []
    for path in candidates:
        step = notebook_step(path)
        if step is None:
            notes.append(f"{path.name}: not recognised as one of the lab's notebooks (ignored)")
        elif step in found and found[step].name == NOTEBOOKS[step]:
            notes.append(f"{path.name}: a second notebook for step {step} (ignored)")
        else:
            if step in found:
                notes.append(f"{found[step].name}: a second notebook for step {step} (ignored)")
            found[step] = path
    return found, notes


def copy_artifacts(src: Path, dst: Path) -> list[str]:
    """Copy the step artifacts of a run directory for grading: regular files only (a
    symlink could point anywhere), JSON/JSONL at most 64 MB, nothing else from the folder
    (checkpoints, caches). Returns what was left out, and why."""
    from labkit import artifacts as A

    dst.mkdir(parents=True, exist_ok=True)
    if Path(src).is_symlink():  # e.g. run/ -> another student's run/
        return [f"{Path(src).name}/ (a symbolic link: nothing in it was graded)"]
    skipped = []
    names = [A.STEP1_BASELINE, A.STEP2_PAIRS, A.STEP2_META, A.STEP3_TRAINING, A.STEP4_REPORT]
    policy = Path(src) / A.STEP3_POLICY
    if policy.is_dir() and not policy.is_symlink():
        (dst / A.STEP3_POLICY).mkdir(exist_ok=True)
        names += [f"{A.STEP3_POLICY}/{p.name}" for p in policy.iterdir()]
    for name in names:
        path = Path(src) / name
        try:
            info = path.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            skipped.append(f"{name} (not a regular file)")
        elif path.suffix in {".json", ".jsonl"} and info.st_size > MAX_JSON_BYTES:
            skipped.append(f"{name} (larger than 64 MB)")
        else:
            shutil.copyfile(path, dst / name)
    return skipped


# ----------------------------------------------------------------------------- integrity
# Recomputations only the auto-grader runs, with its own trusted base model `base`
# (model, tokenizer, info): they test that the artifacts are what the code would produce.
def baseline_reproduces_item(run: Path, base) -> CheckItem:
    rec, err = checks.load_step1(run)
    if rec is None:
        return scored(1, "baseline_reproduces", False, err)
    made_by = checks._dict(rec, "model").get("resolved")
    if made_by != base[2].resolved:
        return scored(1, "baseline_reproduces", False, f"the baseline says it was made by "
                      f"{made_by!r}, but this class uses {base[2].resolved!r}")
    return scored(1, "baseline_reproduces", *_regenerates(base[0], base[1], rec, "outputs"))


def outputs_reproduce_item(run: Path, base) -> CheckItem:
    rec, err = checks.load_report(run)
    step1, err1 = checks.load_step1(run)
    if rec is None or step1 is None:
        return scored(4, "outputs_reproduce", False, err or err1)
    try:
        policy = load_policy(run, base)
    except Exception as exc:  # a missing or mismatched policy is the submission's
        return scored(4, "outputs_reproduce", False, f"cannot load the saved policy: {exc}")
    claimed = {**step1, "outputs_after": rec.get("outputs_after")}
    return scored(4, "outputs_reproduce", *_regenerates(policy, base[1], claimed,
                                                         "outputs_after"))


def _regenerates(model, tokenizer, rec: dict, key: str) -> tuple[bool, str]:
    """Generate rec's prompts with rec's GenerationSpec; equal to rec[key]?"""
    from labkit.config import GenerationSpec
    from labkit.generation import generate

    try:
        spec = GenerationSpec.from_dict(checks._dict(rec, "generation_spec"))
        outputs = generate(model, tokenizer, rec.get("prompts"), spec)
    except Exception as exc:  # a bad spec or prompt list is the submission's
        return False, f"cannot regenerate: {exc}"
    if outputs == rec.get(key):
        return True, f"all {len(outputs)} outputs regenerated exactly"
    bad = [i + 1 for i, (a, b) in enumerate(zip(outputs, rec.get(key) or [])) if a != b]
    return False, (f"regenerating gives different outputs (prompts {bad[:5] or 'all'}): "
                   "the artifact was not produced by the saved model")


def load_policy(run: Path, base):
    """A copy of the base model carrying the saved policy's weights (tokenizer: the base's).
    Tied weights (GPT-2's lm_head) may be absent from the file; anything else must fit."""
    import copy

    from labkit.artifacts import STEP3_POLICY

    model = copy.deepcopy(base[0])
    state = checks.policy_weights(Path(run) / STEP3_POLICY, model)
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


def log_consistent_item(run: Path, base_info) -> CheckItem:
    """The log must be what this config on this data from this base model produces."""
    rec, err = checks.load_training(run)
    if rec is None:
        return scored(3, "log_consistent", False, err)
    entries, cfg = checks.training_entries_of(rec), checks._dict(rec, "dpo_config")
    rows, _, meta, _ = checks.load_pairs(Path(run))
    lr, n = cfg.get("learning_rate"), rec.get("n_pairs")
    problems = [] if finite(lr) and lr > 0 else [f"learning_rate is {lr!r}: nothing can be "
                                                  "learned at 0"]
    if rows is None or n != len(rows) or rec.get("pairs_sha256") != (meta or {}).get(
            "pairs_sha256"):
        problems.append("not trained on the saved step-2 pairs (n_pairs or pairs_sha256 differ)")
    problems += _step_count_problems(cfg, n, entries)
    logged = [e["learning_rate"] for e in entries if finite(e.get("learning_rate"))]
    if logged and finite(lr) and not 0 < max(logged) <= lr * (1 + 1e-6):
        problems.append(f"the logged learning rates (max {max(logged):g}) do not fit "
                        f"learning_rate={lr:g}")
    trained_from = checks._dict(rec, "base_model").get("resolved")
    if trained_from != base_info.resolved:
        problems.append(f"trained from {trained_from!r}, but this class uses "
                        f"{base_info.resolved!r}")
    return scored(3, "log_consistent", not problems, "; ".join(problems) or
                  f"{len(entries)} logged steps fit the config and the step-2 data")


def _step_count_problems(cfg: dict, n, entries: list[dict]) -> list[str]:
    bs, epochs = cfg.get("per_device_train_batch_size"), cfg.get("num_train_epochs")
    if not (finite(bs) and bs >= 1 and finite(epochs) and epochs > 0 and isinstance(n, int)):
        return ["dpo_config lacks per_device_train_batch_size/num_train_epochs"]
    accumulation = cfg.get("gradient_accumulation_steps") or 1
    expected = math.ceil(math.ceil(n / bs) / accumulation * epochs)
    last = max((e["step"] for e in entries if finite(e.get("step"))), default=0)
    return [] if last == expected else [f"the log ends at step {last}, but {n} pairs at batch "
                                        f"{bs} for {epochs} epochs make {expected} steps"]


def grade_run(run: Path, base, student_loss: tuple[bool, str]):
    """Every step's CheckResult on a (sanitised) run directory, integrity items included.
    A step not done at all gets its integrity items as "not done yet" too, except
    student_loss, which needs only notebook 3's code."""
    from .rubric import NOT_DONE, items_for

    results = [checks.check_step1(run), checks.check_step2(run),
               checks.check_step3(run, base=base), checks.check_step4(run)]
    recompute = {1: lambda: [baseline_reproduces_item(run, base)],
                 3: lambda: [log_consistent_item(run, base[2])],
                 4: lambda: [outputs_reproduce_item(run, base)]}
    for result in results:
        if result.status == NOT_DONE:
            items = [scored(result.step, i.name, False, NOT_DONE) for i in
                     items_for(result.step, integrity=True) if i.name != "student_loss"]
        else:
            items = recompute.get(result.step, list)()
        if result.step == 3:
            items.append(scored(3, "student_loss", *student_loss))
        result.add(items)
    return results
