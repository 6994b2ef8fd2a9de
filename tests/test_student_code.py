"""The from-scratch exercises of notebook 3 graded from the notebook alone (grading.run.student_code,
grading.run.student_logps): honest solutions pass, however the loss is written; the classic
mistakes fail both the in-notebook self-check and the grader, each with its hint; calling the
reference earns nothing; and the result channel cannot be spoofed by the student's code."""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
import torch

from grading.checks.exercise_cases import loss_cases, loss_verdict
from grading.run.student_code import check_student_loss, reference_calls
from grading.run.student_logps import check_student_logps
from tests._runs import run_local

ROOT = Path(__file__).resolve().parent.parent
NB3 = ROOT / "notebooks" / "03_train_dpo.ipynb"
LOSS_BODY = """    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards, rejected_rewards"""
WRONG = {  # mistake -> (edit of LOSS_BODY, the words its hint must contain)
    "sum": ([("-F.logsigmoid(chosen_rewards - rejected_rewards).mean()",
              "-F.logsigmoid(chosen_rewards - rejected_rewards).sum()")], "MEAN over the batch"),
    "no reference": ([("(policy_chosen_logps - ref_chosen_logps)", "policy_chosen_logps"),
                      ("(policy_rejected_logps - ref_rejected_logps)", "policy_rejected_logps")],
                     "reference log-probs are missing"),
    "no reference, rejected side": (
        [("(policy_rejected_logps - ref_rejected_logps)", "policy_rejected_logps")],
        "reference log-probs are missing from rejected_rewards"),
    "sign flipped": ([("loss = -F.logsigmoid", "loss = F.logsigmoid")], "sign is flipped"),
    "beta one side": ([("rejected_rewards = beta * (", "rejected_rewards = (")],
                      "beta multiplies only the chosen side"),
}
RIGHT = {
    "logsigmoid": LOSS_BODY,
    "log of sigmoid": LOSS_BODY.replace(
        "-F.logsigmoid(chosen_rewards - rejected_rewards)",
        "-torch.log(torch.sigmoid(chosen_rewards - rejected_rewards))"),
    "softplus": LOSS_BODY.replace("-F.logsigmoid(chosen_rewards - rejected_rewards)",
                                  "F.softplus(-(chosen_rewards - rejected_rewards))"),
}


def loss_notebook(tmp_path: Path, body: str, before: str = "", name: str = "nb") -> Path:
    """Notebook 3 with compute_dpo_loss's body replaced (and code put before the def)."""
    nb = nbformat.read(NB3, as_version=4)
    cell = next(c for c in nb.cells if "def compute_dpo_loss" in c.source)
    assert LOSS_BODY in cell.source
    cell.source = cell.source.replace(LOSS_BODY, body)
    cell.source = cell.source.replace("# Exercise 3.1", before + "\n# Exercise 3.1", 1)
    path = tmp_path / name / NB3.name
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


def own_function(path: Path, name: str):
    """The notebook's import cells and def `name`, run here (the in-notebook self-check)."""
    from grading.run.student_code import definitions_source

    namespace: dict = {}
    exec(definitions_source(path), namespace)
    return namespace[name]


@pytest.mark.parametrize("way", sorted(RIGHT))
def test_every_correct_way_of_writing_the_loss_passes(tmp_path, way):
    from labkit.exercises import check_dpo_loss

    path = loss_notebook(tmp_path, RIGHT[way])
    assert check_dpo_loss(own_function(path, "compute_dpo_loss")).startswith("matches")
    assert check_student_loss(path, run_local, tmp_path / "x", timeout=120) == (
        True, "matches labkit.dpo.dpo_loss on 4 random batches")


@pytest.mark.parametrize("mistake", sorted(WRONG))
def test_each_classic_loss_mistake_fails_the_self_check_and_the_grader(tmp_path, mistake):
    from labkit.exercises import check_dpo_loss

    edits, words = WRONG[mistake]
    body = LOSS_BODY
    for old, new in edits:
        body = body.replace(old, new)
    path = loss_notebook(tmp_path, body)
    with pytest.raises(AssertionError, match=words):
        check_dpo_loss(own_function(path, "compute_dpo_loss"))
    shown = check_dpo_loss(own_function(path, "compute_dpo_loss"), raise_error=False)
    assert shown.startswith("NOT YET: ") and words in shown  # the notebook goes on
    ok, message = check_student_loss(path, run_local, tmp_path / "x", timeout=120)
    assert not ok and "differs from the reference" in message and words in message, message


CALLS_REFERENCE = {
    "from import": ("from labkit.dpo import dpo_loss", "    return dpo_loss(policy_chosen_logps,"
                    " policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)",
                    "labkit.dpo.dpo_loss"),
    "module path": ("import labkit.dpo", "    return labkit.dpo.dpo_loss(policy_chosen_logps,"
                    " policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)",
                    "labkit.dpo.dpo_loss"),
    "via a helper": ("from labkit import dpo as D\n\ndef helper(*a, **k):\n    return "
                     "D.dpo_loss(*a, **k)", "    return helper(policy_chosen_logps, "
                     "policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)",
                     "labkit.dpo.dpo_loss"),
    "TRL": ("from trl import DPOTrainer", "    return DPOTrainer.dpo_loss(None, "
            "policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)",
            "trl.DPOTrainer.dpo_loss"),
}


@pytest.mark.parametrize("how", sorted(CALLS_REFERENCE))
def test_calling_the_reference_scores_zero_and_says_why(tmp_path, how):
    before, body, named = CALLS_REFERENCE[how]
    path = loss_notebook(tmp_path, body, before)
    ok, message = check_student_loss(path, run_local, tmp_path / "x", timeout=120)
    assert not ok and message.startswith(f"compute_dpo_loss uses {named}"), message
    assert "write yourself" in message


def test_a_local_variable_named_like_the_reference_is_not_a_call():
    source = ("from labkit.dpo import dpo_loss\nimport torch.nn.functional as F\n\n"
              "def compute_dpo_loss(pc, pr, rc, rr, beta=0.1):\n"
              "    c, r = beta * (pc - rc), beta * (pr - rr)\n"
              "    dpo_loss = -F.logsigmoid(c - r).mean()\n    return dpo_loss, c, r\n")
    assert reference_calls(source, "compute_dpo_loss") == []
    assert reference_calls(source.replace("    dpo_loss = ", "    x = dpo_loss(pc, pr, rc, rr) + "),
                           "compute_dpo_loss") == ["labkit.dpo.dpo_loss"]


def test_a_hidden_import_of_the_reference_is_blocked_at_run_time(tmp_path):
    """Not visible to the source check: the fork cannot import labkit.dpo or trl at all."""
    body = ("    import importlib\n    ref = importlib.import_module('labkit.' + 'dpo')\n"
            "    return ref.dpo_loss(policy_chosen_logps, policy_rejected_logps, "
            "ref_chosen_logps, ref_rejected_logps, beta)")
    path = loss_notebook(tmp_path, body)
    ok, message = check_student_loss(path, run_local, tmp_path / "x", timeout=120)
    assert not ok and "labkit.dpo is the reference" in message, message


def test_the_logps_exercise_may_not_call_labkit_either(tmp_path):
    source = ("import labkit.dpo\n\ndef compute_sequence_logps(logits, input_ids, "
              "attention_mask, prompt_lengths):\n    return labkit.dpo.completion_logps("
              "logits, input_ids, attention_mask, prompt_lengths)\n")
    assert reference_calls(source, "compute_sequence_logps") == ["labkit.dpo.completion_logps"]
    nb = nbformat.read(NB3, as_version=4)
    cell = next(c for c in nb.cells if "def compute_sequence_logps" in c.source)
    cell.source = source.replace("import labkit.dpo\n\n", "from labkit.dpo import sequence_logps"
                                 " as mine, completion_logps as cl\n\n").replace(
        "labkit.dpo.completion_logps", "cl")
    nbformat.write(nb, tmp_path / NB3.name)
    ok, message = check_student_logps(tmp_path / NB3.name, run_local, tmp_path / "x")
    assert not ok and message.startswith(
        "compute_sequence_logps uses labkit.dpo.completion_logps"), message


# A hostile notebook: its definitions know the exact answers for the inputs (seed 0 is
# fixed in this test, as if the inputs had leaked), its function is wrong, and code that runs
# while the definitions load tries to put those answers where the grader reads: behind any
# marker it can find, on stdout, stderr and the driver's stdout. (The fork's own pipe back
# is the function's channel by design: what reaches it is checked on inputs drawn afresh
# each run, see test_the_inputs_are_fresh_each_run.)
SPOOF = '''
import os, sys, json
FORGED = {forged!r}

def spoof(fn):
    import os, sys, json
    reply = json.dumps(json.dumps({{"answers": FORGED}}))
    seen = list(sys.argv) + list(os.environ.values())
    for path in ("/proc/%d/fd/0" % os.getppid(), "/proc/%d/cmdline" % os.getppid()):
        try:
            seen.append(open(path, errors="replace").read())
        except OSError:
            pass
    try:
        seen.append(sys.stdin.read())
    except Exception:
        pass
    words = {{w for text in seen for w in text.replace("\\x00", " ").split()}}
    words |= {{w[:w.index("@@", 2) + 2] for w in words if w.startswith("@@") and "@@" in w[2:]}}
    replies = (reply, json.dumps(FORGED))   # this driver's format and a plain one
    lines = [w + r for w in words for r in replies] + ["@@RESULT-" + reply]
    targets = [1, 2]
    for line in lines:
        print(line)
        sys.__stdout__.write(line + "\\n")
        for fd in targets:
            try:
                os.write(fd, (line + "\\n").encode())
            except OSError:
                pass
        try:
            with open("/proc/%d/fd/1" % os.getppid(), "a") as handle:
                handle.write(line + "\\n")
        except OSError:
            pass
    sys.stdout.flush()
    if {exit_after}:
        os._exit(0)      # and stop before the driver could print its own answers
    return fn

@spoof
def compute_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                     ref_rejected_logps, beta=0.1):
    zero = policy_chosen_logps * 0
    return zero.sum(), zero, zero
'''


def forged_answers(seed: int = 0) -> list:
    from labkit.dpo import dpo_loss

    out = []
    for case in loss_cases(seed):
        inputs = [torch.tensor(v) for v in case["inputs"]]
        res = dpo_loss(*inputs, beta=case["beta"] or 0.1)
        out.append([r.double().reshape(-1).tolist() for r in res])
    return out


@pytest.mark.parametrize("exit_after", [False, True])
def test_code_that_runs_while_the_definitions_load_cannot_spoof_the_result(tmp_path,
                                                                           exit_after):
    nb = nbformat.read(NB3, as_version=4)
    cell = next(c for c in nb.cells if "def compute_dpo_loss" in c.source)
    cell.source = SPOOF.format(forged=forged_answers(0), exit_after=exit_after)
    nbformat.write(nb, tmp_path / NB3.name)
    ok, message = check_student_loss(tmp_path / NB3.name, run_local, tmp_path / "x",
                                     timeout=120, seed=0)
    assert not ok, message
    assert exit_after or message.startswith("loss differs from the reference"), message
    # and the same answers, returned by the function itself, would have passed
    honest = forged_answers(0)

    assert loss_verdict(loss_cases(0), honest)[0]


def test_the_inputs_are_fresh_each_run():
    from grading.run import student_code

    assert loss_cases(1) != loss_cases(2)
    seen = []   # the seed each run's cases are drawn from
    student_code.fresh_seed, original = (lambda seed=None: seen.append(original(seed)) or seen[-1],
                                         student_code.fresh_seed)
    try:
        for _ in range(2):
            check_student_loss(NB3, lambda *a: (1, "", "", False), Path("/nonexistent"), 1)
    except OSError:
        pass
    finally:
        student_code.fresh_seed = original
    assert len(seen) == 2 and seen[0] != seen[1]


@pytest.mark.slow
def test_no_spoof_inside_the_namespace_sandbox_either(tmp_path):
    """Inside the namespaces the fork is root of its user namespace: it drops every
    capability before loading the definitions, so the driver's stdin (the key) and stdout
    stay closed to it there too."""
    from grading.run.sandbox import Sandbox

    box = Sandbox(tmp_path / "box", "teaching").create()
    nb = nbformat.read(NB3, as_version=4)
    cell = next(c for c in nb.cells if "def compute_dpo_loss" in c.source)
    cell.source = SPOOF.format(forged=forged_answers(0), exit_after=True)
    nbformat.write(nb, tmp_path / NB3.name)
    ok, message = check_student_loss(tmp_path / NB3.name, box.run_untrusted, box.root / "x",
                                     timeout=120, seed=0)
    assert not ok, message
    assert check_student_loss(NB3, box.run_untrusted, box.root / "y", timeout=120)[0]


# Both exercises in one sandboxed process (what the auto-grader runs): each keeps its own
# verdict and message, whatever the other one does.
LOGPS_LINE = "    return (token_logps * answer).sum(dim=1)"
LOSS_OK = "matches labkit.dpo.dpo_loss on 4 random batches"
LOGPS_OK = "matches labkit.dpo.sequence_logps' core on 3 random batches"
ONE_BROKEN = {  # what happens to compute_sequence_logps -> (its edit, its message's start)
    "wrong": (LOGPS_LINE.replace("(token_logps * answer).sum(dim=1)",
                                 "token_logps[:, -1]"), "random batch 1 of 3: "),
    "raises": ("    raise ValueError('not yet')", "running notebook 3's definitions failed: "
               "ValueError: not yet"),
    "hangs": ("    while True:\n        pass", "compute_sequence_logps did not finish within "
              "8 s"),
    "kills its process": ("    import os, sys\n    print('about to leave', file=sys.stderr, "
                          "flush=True)\n    os._exit(3)",
                          "running notebook 3's definitions failed: about to leave"),
    "calls the reference": ("    from labkit.dpo import completion_logps\n    return "
                            "completion_logps(logits, input_ids, attention_mask, "
                            "prompt_lengths)", "compute_sequence_logps uses "
                            "labkit.dpo.completion_logps"),
    "is missing": (None, "notebook 3 has no `def compute_sequence_logps(...)`"),
}


def edited_notebook(tmp_path: Path, loss_body: str = LOSS_BODY, logps=LOGPS_LINE) -> Path:
    """Notebook 3 with compute_dpo_loss's body and compute_sequence_logps' last line replaced
    (logps None: without compute_sequence_logps)."""
    nb = nbformat.read(NB3, as_version=4)
    loss = next(c for c in nb.cells if "def compute_dpo_loss" in c.source)
    loss.source = loss.source.replace(LOSS_BODY, loss_body)
    cell = next(c for c in nb.cells if "def compute_sequence_logps" in c.source)
    cell.source = "" if logps is None else cell.source.replace(LOGPS_LINE, logps)
    path = tmp_path / NB3.name
    nbformat.write(nb, path)
    return path


def counted(calls: list):
    def run(argv, stdin, cwd, timeout):
        calls.append(argv)
        return run_local(argv, stdin, cwd, timeout)
    return run


@pytest.mark.parametrize("what", sorted(ONE_BROKEN))
def test_one_broken_exercise_costs_the_other_nothing(tmp_path, what):
    from grading.run.student_code import check_exercises

    edit, message = ONE_BROKEN[what]
    runs: list = []
    grades = check_exercises(edited_notebook(tmp_path, logps=edit), counted(runs),
                             tmp_path / "x", timeout=8)
    assert grades["student_loss"] == (True, LOSS_OK), grades
    ok, got = grades["student_logps"]
    assert not ok and got.startswith(message), got
    assert len(runs) == 1   # one process; a function the source rules out is not run in it
    assert ("compute_sequence_logps" in runs[0]) == (
        what not in ("calls the reference", "is missing"))


def test_both_exercises_run_in_one_process_each_on_its_own_verdict(tmp_path):
    from grading.run.student_code import check_exercises

    runs: list = []
    assert check_exercises(NB3, counted(runs), tmp_path / "ok", timeout=120) == {
        "student_loss": (True, LOSS_OK), "student_logps": (True, LOGPS_OK)}
    assert len(runs) == 1
    wrong_loss = LOSS_BODY.replace("-F.logsigmoid(chosen_rewards - rejected_rewards).mean()",
                                   "-F.logsigmoid(chosen_rewards - rejected_rewards).sum()")
    grades = check_exercises(edited_notebook(tmp_path, wrong_loss), run_local,
                             tmp_path / "x", timeout=120)
    assert grades["student_logps"] == (True, LOGPS_OK), grades
    assert not grades["student_loss"][0] and "MEAN over the batch" in grades["student_loss"][1]


def test_no_spoof_when_both_exercises_share_the_process(tmp_path):
    nb = nbformat.read(NB3, as_version=4)
    cell = next(c for c in nb.cells if "def compute_dpo_loss" in c.source)
    cell.source = SPOOF.format(forged=forged_answers(0), exit_after=False)
    nbformat.write(nb, tmp_path / NB3.name)
    from grading.run.student_code import check_exercises

    grades = check_exercises(tmp_path / NB3.name, run_local, tmp_path / "x", timeout=120,
                             seed=0)
    assert grades["student_loss"][1].startswith("loss differs from the reference"), grades
    assert grades["student_logps"] == (True, LOGPS_OK), grades


LOADED = '''
import os

def mark(fn):
    with open(os.path.join(os.environ["HOME"], "definitions-loaded"), "a") as handle:
        handle.write("x")
    return fn

@mark
def helper():
    pass
'''


def _waiting_pythons(argument: str) -> int:
    """How many Python processes run with `argument` (not the wrappers that start them),
    each blocked reading a pipe."""
    import sys

    found = 0
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
            waiting = "pipe_read" in (entry / "wchan").read_text()
        except OSError:
            continue
        found += argv[0] == sys.executable and argument in argv and waiting
    return found


@pytest.mark.slow
def test_started_beside_the_kernels_the_students_code_waits_for_its_input(tmp_path):
    """Inside namespaces the exercises' process starts at once (Python, torch, the forks),
    but no definition of the student's runs until the verdicts are asked for; a process
    never asked is stopped by cancel."""
    from grading.run.sandbox import Sandbox, namespaces_work
    from grading.run.student_code import start_exercises

    if not namespaces_work():
        pytest.skip("user namespaces are unavailable here: the process starts at finish")
    box = Sandbox(tmp_path / "box", "teaching").create()
    nb = nbformat.read(NB3, as_version=4)
    cell = next(c for c in nb.cells if "def compute_dpo_loss" in c.source)
    cell.source += "\n" + LOADED
    nbformat.write(nb, tmp_path / NB3.name)
    marker = box.work / "definitions-loaded"
    started = start_exercises(tmp_path / NB3.name, box.start_untrusted, box.root / "x")
    module = str(box.root / "x" / "notebook3_definitions.py")
    for _ in range(600):   # the driver and its two forks, all waiting for their input
        if _waiting_pythons(module) == 3:
            break
        time.sleep(0.2)
    assert _waiting_pythons(module) == 3 and not marker.exists()
    assert started.verdicts() == {"student_loss": (True, LOSS_OK),
                                  "student_logps": (True, LOGPS_OK)}
    assert marker.read_text() == "xx"   # loaded once in each fork, after the input came
    idle = start_exercises(tmp_path / NB3.name, box.start_untrusted, box.root / "y")
    process = idle.process.proc
    idle.cancel()
    assert process.returncode is not None and marker.read_text() == "xx"
