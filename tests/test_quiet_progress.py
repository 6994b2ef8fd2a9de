"""`labkit run` prints one line per step and a summary: no library progress bars in between.

The checks load models in the runner's own process, where transformers draws a "Loading
weights" bar on stderr; `runtime.progress_bars_off` turns such bars off there. The bars
that matter to a student (the teaching-model build, training) stay in the notebooks.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tqdm's marks: "  0%|", "40/40 [00:00<", "27832.14it/s]", "1.2s/it]", a bar of blocks
PROGRESS_BAR = re.compile(r"\d+%\||\d+/\d+ \[\d|it/s\]|s/it\]|█")


def progress_lines(text: str) -> list[str]:
    """Lines (a carriage return starts one too, as on a terminal) that look like a bar."""
    return [line for line in re.split(r"[\r\n]+", text) if PROGRESS_BAR.search(line)]


def test_progress_line_detector():
    assert progress_lines("Loading weights:   0%|          | 0/40 [00:00<?, ?it/s]")
    assert progress_lines("x\rTrain: 100%|██████████| 8/8 [00:02<00:00,  3.1it/s]\n")
    assert not progress_lines("[3/4] 03_train_dpo.ipynb ...\n      PASS 19/19 in 22.1 s - "
                              "healthy, loss 0.693 -> 0.014\ntotal: 219.7 s - all pass")


LOAD_TINY_MODEL = textwrap.dedent("""
    import sys, tempfile
    from transformers import GPT2Config, GPT2LMHeadModel
    if sys.argv[1] == "quiet":
        from labkit.runtime import progress_bars_off
        quiet = progress_bars_off()  # what the runner holds while its checks load models
        quiet.__enter__()
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=32)
    with tempfile.TemporaryDirectory() as out:
        GPT2LMHeadModel(config).save_pretrained(out)
        GPT2LMHeadModel.from_pretrained(out)
    print("loaded")
""")


@pytest.mark.slow  # two fresh interpreters importing transformers
@pytest.mark.parametrize("mode", ["default", "quiet"])
def test_runner_process_loads_models_without_a_progress_bar(mode):
    """What the runner's checks do (from_pretrained in the runner's process), in a fresh
    process each time: transformers' global bar switch must not leak between tests.
    `default` shows the bar is really there to silence."""
    proc = subprocess.run([sys.executable, "-c", LOAD_TINY_MODEL, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**_env(), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-2000:]
    bars = progress_lines(proc.stdout + proc.stderr)
    if mode == "default":
        assert bars, "transformers drew no loading bar: this test no longer tests anything"
    else:
        assert not bars, bars


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}


@pytest.mark.slow
def test_labkit_run_output_is_one_line_per_step_and_a_summary(lab_run):
    stdout, stderr = lab_run.stdout, lab_run.stderr
    assert not progress_lines(stdout), progress_lines(stdout)
    assert not progress_lines(stderr), progress_lines(stderr)
    steps = [line for line in stdout.splitlines() if re.match(r"\[\d/4\] ", line)]
    assert steps == [f"[{i}/4] {p}.ipynb ..." for i, p in enumerate(
        ("01_baseline", "02_preferences", "03_train_dpo", "04_before_after"), start=1)]
    assert stdout.count("PASS") + stdout.count("FAIL") == 8  # per step, and in the table
    assert "total:" in stdout


@pytest.mark.parametrize("progress", [True, False])
def test_teaching_model_build_shows_a_progress_bar_only_when_asked(tmp_path, monkeypatch, capfd,
                                                                   progress):
    """The first-use build is the lab's longest wait: a bar (tqdm.auto: a widget in a
    notebook, text in a terminal) with the loss. A real build, cut to 3 pretraining steps."""
    from labkit import teaching

    monkeypatch.setitem(teaching.PRETRAIN, "steps", 3)
    teaching.build_teaching_model(tmp_path / "model", progress=progress)
    out, err = capfd.readouterr()
    assert teaching.is_built(tmp_path / "model")
    if progress:
        bars = [line for line in progress_lines(err) if "Building the teaching model" in line]
        assert bars and "Building the teaching model" in bars[-1] and "3/3" in bars[-1], err
        assert "loss=" in bars[-1], bars[-1]
        assert len(bars) == len(progress_lines(err)), f"another library's bar: {err}"
    else:
        assert not progress_lines(out + err) and not out.strip(), (out, err)


TRAINING_BAR = textwrap.dedent("""
    import os, tempfile
    os.environ["LABKIT_RUN_DIR"] = tempfile.mkdtemp()
    from labkit import session
    session.start(step=3)   # the notebooks' first cell: the lab's runtime policy
    from trl import DPOConfig
    print("disable_tqdm", DPOConfig(output_dir=tempfile.mkdtemp(), bf16=False).disable_tqdm)
""")


@pytest.mark.slow  # a fresh interpreter importing TRL
def test_notebooks_quiet_libraries_but_keep_the_training_progress_bar():
    """`session.start` (runtime.quiet_libraries) silences library logs; TRL must still draw its training bar, as
    notebook 3 builds DPOConfig without disable_tqdm (the browser test sees the bar)."""
    proc = subprocess.run([sys.executable, "-c", TRAINING_BAR], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**_env(), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "disable_tqdm False" in proc.stdout, proc.stdout
