"""labkit.artifacts: versioned JSON artifacts, atomic writes that survive real interruptions
(an exception mid-write, SIGKILL mid-write), and the saved policy's weight hash."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import artifacts
from labkit.artifacts import (SCHEMA_VERSION, ArtifactError, atomic_write_text, load_json,
                              save_json, save_policy, weights_sha256)
from labkit.config import GenerationSpec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_model(teaching_tokenizer):
    """A small real GPT-2 (random weights) sized for the teaching tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(teaching_tokenizer), n_positions=32, n_embd=32,
                        n_layer=1, n_head=2)
    return GPT2LMHeadModel(config).eval()


def leftovers(directory: Path, keep) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if p.name not in set(keep))


# -------------------------------------------------------------------------- JSON records
def test_save_json_writes_header_and_payload(tmp_path):
    path = tmp_path / "run" / "step1_baseline.json"
    spec = GenerationSpec(max_new_tokens=7)
    record = save_json(path, {"seed": 3, "where": tmp_path, "spec": spec,
                              "loss": torch.tensor(0.5), "outputs": ["a", "b"]},
                       kind="step1_baseline")
    loaded = load_json(path, kind="step1_baseline")
    assert loaded["created_unix"] == record["created_unix"] and loaded["seed"] == 3
    assert loaded["schema_version"] == SCHEMA_VERSION
    assert loaded["kind"] == "step1_baseline"
    assert set(loaded["versions"]) == {"torch", "transformers", "trl"}
    assert loaded["versions"]["torch"] == torch.__version__
    assert isinstance(loaded["created_unix"], float)
    assert loaded["where"] == str(tmp_path)
    assert GenerationSpec.from_dict(loaded["spec"]) == spec
    assert loaded["loss"] == 0.5 and loaded["outputs"] == ["a", "b"]


def test_rewriting_replaces_the_artifact_whole(tmp_path):
    path = tmp_path / "a.json"
    save_json(path, {"outputs": ["x"] * 1000, "old_only": 1}, kind="k")
    save_json(path, {"outputs": ["y"]}, kind="k")
    record = load_json(path)
    assert record["outputs"] == ["y"] and "old_only" not in record
    assert leftovers(tmp_path, keep=[path.name]) == []


def test_exception_during_serialisation_keeps_previous_artifact(tmp_path):
    path = tmp_path / "step1_baseline.json"
    save_json(path, {"version": 1}, kind="step1_baseline")
    before = path.read_bytes()
    with pytest.raises(TypeError, match="cannot store object in a JSON artifact"):
        save_json(path, {"version": 2, "bad": object()}, kind="step1_baseline")
    assert path.read_bytes() == before
    assert leftovers(tmp_path, keep=[path.name]) == []


def test_exception_midway_through_the_file_write_keeps_previous_artifact(tmp_path):
    """The JSON text serialises fine, but a lone surrogate cannot be encoded as UTF-8: the
    write fails after the temp file was opened. A write in place would already have
    truncated the old artifact."""
    path = tmp_path / "step1_baseline.json"
    save_json(path, {"version": 1}, kind="step1_baseline")
    before = path.read_bytes()
    with pytest.raises(UnicodeEncodeError):
        save_json(path, {"version": 2, "outputs": ["fine " * 10_000, "bad \ud800"]},
                  kind="step1_baseline")
    assert path.read_bytes() == before
    assert load_json(path)["version"] == 1
    assert leftovers(tmp_path, keep=[path.name]) == []


# The same atomic write that save_json does, without importing torch for the header (the
# child starts in a fraction of a second).
_WRITER = ("import json, sys; from pathlib import Path; "
           "from labkit.artifacts import SCHEMA_VERSION, atomic_write_text; "
           "atomic_write_text(Path(sys.argv[1]), json.dumps({'schema_version': SCHEMA_VERSION, "
           "'kind': 'step1_baseline', 'version': 2, 'blob': 'x' * int(sys.argv[2])}))")


def _kill_mid_write(path: Path, n_bytes: int) -> int | None:
    """Start a process writing a big artifact to `path`; SIGKILL it as soon as its temp
    file holds some bytes. Returns the temp file's size at the kill, or None when the
    process finished before it could be caught mid-write."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n_bytes)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            for tmp in path.parent.glob(f".{path.name}.*.tmp"):
                try:
                    size = tmp.stat().st_size
                except FileNotFoundError:  # renamed in the meantime
                    continue
                if size > 0:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return size
        assert proc.poll() is not None, "the writer process hung"
        assert proc.returncode == 0, proc.stderr.read().decode()
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_mid_write_keeps_previous_artifact(tmp_path):
    path = tmp_path / "step1_baseline.json"
    save_json(path, {"version": 1}, kind="step1_baseline")
    before = path.read_bytes()
    caught = None
    for n_bytes in (64 << 20, 256 << 20):
        caught = _kill_mid_write(path, n_bytes)
        if caught is not None:
            break
        # too fast to catch: the new artifact must then be complete; restore and retry
        assert load_json(path)["version"] == 2
        save_json(path, {"version": 1}, kind="step1_baseline")
        before = path.read_bytes()
    assert caught is not None, "never managed to kill the writer mid-write"
    assert 0 < caught
    # the previous artifact is intact and still loads; only the dead writer's temp is left
    assert path.read_bytes() == before
    assert load_json(path, kind="step1_baseline")["version"] == 1
    [tmp] = [p for p in tmp_path.iterdir() if p != path]
    assert tmp.name.startswith(f".{path.name}.") and tmp.name.endswith(".tmp")
    # and the next run of the step replaces the artifact normally
    save_json(path, {"version": 3}, kind="step1_baseline")
    assert load_json(path)["version"] == 3


def test_atomic_write_text_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    atomic_write_text(path, "hello\n")
    assert path.read_text() == "hello\n"


# ------------------------------------------------------------------ load_json's errors
def test_load_json_missing(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist yet: run the step"):
        load_json(tmp_path / "step1_baseline.json")


def test_load_json_invalid(tmp_path):
    path = tmp_path / "step1_baseline.json"
    path.write_text('{"schema_version": 1, "kind": ', encoding="utf-8")
    with pytest.raises(ArtifactError, match="is not valid JSON") as err:
        load_json(path)
    assert "re-run its step" in str(err.value) and str(path) in str(err.value)


def test_load_json_not_an_object(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ArtifactError, match="should hold a JSON object"):
        load_json(path)


def test_load_json_wrong_kind(tmp_path):
    path = tmp_path / "step1_baseline.json"
    save_json(path, {}, kind="step4_report")
    with pytest.raises(ArtifactError) as err:
        load_json(path, kind="step1_baseline")
    assert "'step4_report'" in str(err.value) and "expected 'step1_baseline'" in str(err.value)
    assert load_json(path)["kind"] == "step4_report"  # no kind asked: any kind loads


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, None, "1"])
def test_load_json_wrong_schema_version(tmp_path, version):
    path = tmp_path / "a.json"
    record = {"kind": "k"} if version is None else {"schema_version": version, "kind": "k"}
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ArtifactError) as err:
        load_json(path, kind="k")
    assert f"schema_version {version!r}, expected {SCHEMA_VERSION}" in str(err.value)


def test_run_dir_from_env_and_argument(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_RUN_DIR", str(tmp_path / "from-env"))
    assert artifacts.run_dir() == tmp_path / "from-env"
    assert (tmp_path / "from-env").is_dir()
    assert artifacts.run_dir(tmp_path / "given", create=False) == tmp_path / "given"
    assert not (tmp_path / "given").exists()


# --------------------------------------------------------------------- the saved policy
def test_save_policy_hash_is_stable_and_tracks_the_weights(tiny_model, teaching_tokenizer,
                                                           tmp_path):
    import copy

    first = save_policy(tiny_model, teaching_tokenizer, tmp_path / "one" / "step3_policy")
    second = save_policy(tiny_model, teaching_tokenizer, tmp_path / "two" / "step3_policy")
    assert first == second == weights_sha256(tmp_path / "one" / "step3_policy")
    assert len(first) == 64

    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        changed.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    third = save_policy(changed, teaching_tokenizer, tmp_path / "three" / "step3_policy")
    assert third != first


def test_weights_sha256_needs_weight_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="no weight files"):
        weights_sha256(tmp_path)


def test_save_policy_replaces_the_folder_whole(tiny_model, teaching_tokenizer, tmp_path):
    import copy

    from transformers import AutoModelForCausalLM

    target = tmp_path / "step3_policy"
    save_policy(tiny_model, teaching_tokenizer, target)
    (target / "stale.txt").write_text("from an earlier run")
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        changed.lm_head.weight.mul_(2)
    digest = save_policy(changed, teaching_tokenizer, target)
    assert not (target / "stale.txt").exists()
    assert digest == weights_sha256(target)
    reloaded = AutoModelForCausalLM.from_pretrained(target)
    assert torch.equal(reloaded.lm_head.weight, changed.lm_head.weight)
    assert leftovers(tmp_path, keep=["step3_policy"]) == []


def test_failed_save_policy_leaves_previous_policy_intact(tiny_model, teaching_tokenizer,
                                                          tmp_path):
    """The second save writes the new weights, then fails on the tokenizer (None, as when
    a student forgets it): the previous policy folder must be untouched."""
    import copy

    target = tmp_path / "step3_policy"
    digest = save_policy(tiny_model, teaching_tokenizer, target)
    files_before = {p.name: p.read_bytes() for p in target.iterdir()}
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        changed.lm_head.weight.add_(1.0)
    with pytest.raises(AttributeError):
        save_policy(changed, None, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == files_before
    assert weights_sha256(target) == digest
    assert leftovers(tmp_path, keep=["step3_policy"]) == []
