"""labkit.runtime: library calls leave the process as they found it; only entry points
(the session cell, the command lines, the grader) set threads, TF32, warnings and seeds,
and each can be undone."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from labkit import runtime
from labkit.config import GenerationSpec

ROOT = Path(__file__).resolve().parent.parent


def process_state() -> dict:
    return {"threads": torch.get_num_threads(),
            "tf32": (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32),
            "filters": list(warnings.filters), "rng": torch.get_rng_state()}


def assert_same(before: dict, after: dict) -> None:
    assert after["threads"] == before["threads"]
    assert after["tf32"] == before["tf32"]
    assert after["filters"] == before["filters"]
    assert torch.equal(after["rng"], before["rng"])


@pytest.fixture
def odd_threads():
    """A thread count no policy would pick (3), so that any change to it shows."""
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_teaching_then_gpt2_shaped_leave_the_process_as_found(teaching_dir, gpt2_dir, odd_threads):
    from labkit.generation import generate
    from labkit.models import load_model, pick_dtype

    before = process_state()
    for name in ("teaching", str(gpt2_dir)):
        model, tokenizer, info = load_model(name, quiet=True)
        pick_dtype(info.device)
        generate(model, tokenizer, ["Explain recursion."], GenerationSpec(max_new_tokens=3))
        generate(model, tokenizer, ["Explain recursion."],
                 GenerationSpec(max_new_tokens=3, do_sample=True, seed=5))
        assert_same(before, process_state())
        del model


def test_sampling_uses_its_own_seed_and_leaves_the_global_rng_alone(teaching, odd_threads):
    from labkit.generation import generate

    model, tokenizer, _ = teaching
    spec = GenerationSpec(max_new_tokens=6, do_sample=True, num_samples=2, seed=7)
    torch.manual_seed(123)
    before = process_state()
    first = generate(model, tokenizer, ["Explain recursion."], spec)
    assert_same(before, process_state())
    torch.manual_seed(999)  # another global stream: the same samples
    assert generate(model, tokenizer, ["Explain recursion."], spec) == first


def test_generate_decodes_the_teaching_model_on_one_thread_and_puts_the_count_back(
        teaching, odd_threads):
    seen = []
    model = teaching[0]
    hook = model.register_forward_hook(lambda *args: seen.append(torch.get_num_threads()))
    try:
        from labkit.generation import generate

        generate(model, teaching[1], ["Explain recursion."], GenerationSpec(max_new_tokens=2))
    finally:
        hook.remove()
    assert seen and set(seen) == {1} and torch.get_num_threads() == 3


def test_lab_policy_is_undone_by_closing_it(odd_threads):
    before = process_state()
    policy = runtime.lab_policy("teaching", "cpu")
    assert torch.get_num_threads() == 1
    assert any(f[1] is not None and "pin_memory" in f[1].pattern for f in warnings.filters)
    policy.close()
    assert_same(before, process_state())


def test_only_named_warnings_are_hidden():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # as a kernel shows them
        with runtime.known_warnings_ignored():
            warnings.warn("`torch_dtype` is deprecated! Use `dtype` instead!", FutureWarning)
            warnings.warn("DPOConfig.foo will be removed in TRL 2", FutureWarning)
            warnings.warn("bar is deprecated", DeprecationWarning)
    messages = [str(w.message) for w in caught]
    assert messages == ["DPOConfig.foo will be removed in TRL 2", "bar is deprecated"]


def test_tf32_context_restores_the_flags():
    before = process_state()
    with runtime.tf32(not before["tf32"][0]):
        assert torch.backends.cuda.matmul.allow_tf32 == (not before["tf32"][0])
    assert_same(before, process_state())


def test_session_start_then_stop_restores_threads_and_filters(monkeypatch, tmp_path, odd_threads,
                                                              capsys):
    from labkit import session

    monkeypatch.setenv("LABKIT_MODEL", "teaching")
    monkeypatch.setenv("LABKIT_RUN_DIR", str(tmp_path))
    runtime.preload_stack()  # first imports add the libraries' own filters, which stay
    filters = list(warnings.filters)
    session.start(1)
    session.start(1)  # re-running the first cell does not stack policies
    assert torch.get_num_threads() == 1
    session.stop()
    assert torch.get_num_threads() == 3 and list(warnings.filters) == filters
    assert "DPO Lab - step 1" in capsys.readouterr().out


def _run_python(*args: str, **env) -> subprocess.CompletedProcess:
    """A fresh `python ARGS...` in the project root, with `env` on top of this one's."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, cwd=str(ROOT), env={**os.environ, **env})


def _imported(argv: list[str]) -> set[str]:
    """The modules a fresh `python -X importtime ARGV...` process imported."""
    proc = _run_python("-X", "importtime", *argv)
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_notebooks_still_validate_without_the_iri_grammar():
    """After skip_iri_grammar, nbformat accepts a lab notebook and still rejects a broken one
    (its schema never checks the `iri` format), and rfc3987_syntax itself still imports."""
    code = f"""
import importlib.util, sys
from labkit.runtime import skip_iri_grammar
skip_iri_grammar()
import nbformat
assert "jsonschema" in sys.modules and "lark" not in sys.modules
nb = nbformat.read({str(ROOT / 'notebooks' / '01_baseline.ipynb')!r}, as_version=4)
nbformat.validate(nb)
nb.cells[0]["cell_type"] = "no such type"
try:
    nbformat.validate(nb)
except nbformat.ValidationError:
    print("rejected")
if importlib.util.find_spec("rfc3987_syntax"):
    import rfc3987_syntax
    assert rfc3987_syntax.is_valid_syntax("iri", "https://example.org/\\u00e9")
"""
    proc = _run_python("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "rejected"


@pytest.mark.parametrize("argv", [["-m", "grading", "--help"],
                                  ["-m", "grading.runner", "--help"]])
def test_the_command_lines_skip_the_iri_grammar_before_anything_imports_jsonschema(argv):
    """The grader and `labkit run` import jsonschema through skip_iri_grammar first: a module
    that imports nbformat at its top again would compile the grammar in every process."""
    modules = _imported(argv)
    assert "jsonschema" in modules
    assert "lark" not in modules  # the grammar compiler (a blocked import is listed, at 0 s)


@pytest.mark.parametrize("collector_on", [True, False])
def test_preload_stack_imports_with_no_collection_then_freezes(collector_on):
    """No garbage collection runs while the stack imports, and afterwards the collector is as
    it was, with the imports' objects frozen (later collections skip them)."""
    code = f"""
import gc, sys
from labkit import runtime
{'' if collector_on else 'gc.disable()'}
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info))
runtime.preload_stack()
assert all(name in sys.modules for name in runtime.STACK), runtime.STACK
assert collections == [], collections
assert gc.isenabled() is {collector_on}
frozen = gc.get_freeze_count()
runtime.preload_stack()  # again: nothing to import, nothing frozen anew
assert gc.get_freeze_count() == frozen
print(frozen)
"""
    proc = _run_python("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) > 100_000  # torch + transformers: hundreds of thousands


@pytest.mark.parametrize("entry", [
    "from labkit import session; session.start(1)",
    "from grading.__main__ import main; main([str(tmp / 'nobody'), '--out', str(tmp / 'out'), "
    "'--theme', str(tmp / 'no-theme.toml')])",
    "from grading.runner import main; main(['--run-dir', str(tmp / 'run'), "
    "'--theme', str(tmp / 'no-theme.toml')])",
])
def test_kernels_graders_and_lab_runs_preload_the_stack(entry, tmp_path):
    """The notebook's first cell, the grader and `labkit run` each import the stack through
    preload_stack (here they stop early, on a missing theme file, after it)."""
    code = f"""
import gc
from pathlib import Path
tmp = Path({str(tmp_path)!r})
assert gc.get_freeze_count() == 0
{entry}
print(gc.get_freeze_count())
"""
    proc = _run_python("-c", code, LABKIT_MODEL="teaching", LABKIT_RUN_DIR=str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) > 100_000, proc.stdout[-2000:]
