"""labkit.runtime: library calls leave the process as they found it; only entry points
(the session cell, the command lines, the grader) set threads, TF32, warnings and seeds,
and each can be undone."""
from __future__ import annotations

import warnings

import pytest
import torch

from labkit import runtime
from labkit.config import GenerationSpec


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
    filters = list(warnings.filters)
    session.start(1)
    session.start(1)  # re-running the first cell does not stack policies
    assert torch.get_num_threads() == 1
    session.stop()
    assert torch.get_num_threads() == 3 and list(warnings.filters) == filters
    assert "DPO Lab - step 1" in capsys.readouterr().out
