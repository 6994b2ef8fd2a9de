"""The reference steps a single-notebook submission lacks: run once, kept in the labkit
cache under a key, verified on every use, rebuilt when corrupt or partial, copied
read-only into each sandbox and hidden from the kernels.

The fast tests drive the cache with a build that writes files (the cache's contract: what
`build(run)` leaves in `run` is what is kept); the slow ones grade real notebooks through
the CLI, against the cache the session shares (LABKIT_CACHE)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from grading.run.reference_cache import (FILES, MANIFEST, SHARED_RUN, ReferenceCache,
                                         ReferenceRunFailed, copy_reference, make_key,
                                         reference_steps, restore)
from tests.submissions import craft

ROOT = Path(__file__).resolve().parent.parent
REF = {s: craft.NOTEBOOKS / n for s, n in craft.NAMES.items()}


def writer(calls: list, text: str = "baseline"):
    """A build that records its call and writes a step-1 record and a policy file."""
    def build(run: Path):
        calls.append(run)
        (run / "step3_policy").mkdir(parents=True)
        (run / "step1_baseline.json").write_text(json.dumps({"text": text}))
        (run / "step3_policy" / "model.safetensors").write_bytes(b"\0weights")
    return build


def test_reference_steps_are_the_prefix_before_every_graded_step():
    assert reference_steps({1: REF[1], 2: REF[2], 3: Path("mine.ipynb")}, [3]) == (1, 2)
    assert reference_steps({1: REF[1], 2: Path("mine.ipynb")}, [2]) == (1,)
    assert reference_steps({1: REF[1], 2: REF[2], 3: REF[3], 4: REF[4]}, [1, 2, 3, 4]) == ()
    assert reference_steps({2: REF[2], 3: Path("mine.ipynb")}, [3]) == ()  # not from step 1
    assert reference_steps({1: Path("mine.ipynb")}, [1]) == ()


def test_the_key_follows_notebooks_model_theme_and_code_not_paths(tmp_path):
    key = make_key(REF, (1, 2), "teaching", None)
    copy = tmp_path / "elsewhere.ipynb"
    copy.write_bytes(REF[1].read_bytes())
    assert make_key({**REF, 1: copy}, (1, 2), "teaching", None) == key  # bytes, not paths
    edited = tmp_path / "edited.ipynb"
    edited.write_bytes(REF[1].read_bytes().replace(b"theme_prompts", b"theme_prompts ", 1))
    others = [make_key({**REF, 1: edited}, (1, 2), "teaching", None),
              make_key(REF, (1, 2), "gpt2", None), make_key(REF, (1, 2), "teaching", "concise"),
              make_key(REF, (1,), "teaching", None)]
    assert len({k.digest for k in [key, *others]}) == 5
    theme = tmp_path / "mine.toml"
    theme.write_text("a = 1\n")
    first = make_key(REF, (1, 2), "teaching", str(theme))
    theme.write_text("a = 2\n")
    assert make_key(REF, (1, 2), "teaching", str(theme)) != first  # a theme file by content


def test_an_entry_is_built_once_then_reused(tmp_path):
    cache, calls = ReferenceCache(tmp_path / "cache"), []
    key = make_key(REF, (1,), "teaching", None)
    entry = cache.ensure(key, writer(calls))
    assert cache.ensure(key, writer(calls)) == entry and len(calls) == 1
    manifest = json.loads((entry / MANIFEST).read_text())
    assert set(manifest["files"]) == {"step1_baseline.json", "step3_policy/model.safetensors"}
    assert cache.problem(key) is None
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".")]  # no leftovers


@pytest.mark.parametrize("damage", ["changed", "truncated", "missing file", "extra file",
                                    "no manifest", "manifest of another key"])
def test_a_corrupt_or_partial_entry_is_rebuilt_never_used(tmp_path, damage):
    cache, calls = ReferenceCache(tmp_path / "cache"), []
    key = make_key(REF, (1,), "teaching", None)
    entry = cache.ensure(key, writer(calls))
    record = entry / FILES / "step1_baseline.json"
    if damage == "changed":
        record.write_text(json.dumps({"text": "tampered"}))
    elif damage == "truncated":
        record.write_text(record.read_text()[:5])
    elif damage == "missing file":
        (entry / FILES / "step3_policy" / "model.safetensors").unlink()
    elif damage == "extra file":
        (entry / FILES / "step4_report.json").write_text("{}")
    elif damage == "no manifest":  # a build interrupted before its last write
        (entry / MANIFEST).unlink()
    else:
        manifest = json.loads((entry / MANIFEST).read_text())
        manifest["key"]["model"] = "gpt2"
        (entry / MANIFEST).write_text(json.dumps(manifest))
    fresh = ReferenceCache(tmp_path / "cache")  # another grader process
    assert fresh.problem(key) is not None
    assert cache.problem(key) is not None  # the verifying process notices too
    assert fresh.ensure(key, writer(calls)) == entry and len(calls) == 2
    assert json.loads(record.read_text()) == {"text": "baseline"}
    assert fresh.problem(key) is None and not (entry / FILES / "step4_report.json").exists()


def test_a_failed_reference_run_leaves_no_entry(tmp_path):
    cache = ReferenceCache(tmp_path / "cache")
    key = make_key(REF, (1,), "teaching", None)

    def fails(run: Path):
        run.mkdir(parents=True)
        (run / "step1_baseline.json").write_text("{")
        raise ReferenceRunFailed("01_baseline.ipynb: error: boom")

    with pytest.raises(ReferenceRunFailed):
        cache.ensure(key, fails)
    assert not cache.entry(key).exists() and cache.problem(key)
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".build")]


def test_copies_are_read_only_and_a_changed_copy_is_put_back(tmp_path):
    cache = ReferenceCache(tmp_path / "cache")
    key = make_key(REF, (1,), "teaching", None)
    entry = cache.ensure(key, writer([]))
    run = tmp_path / "box" / "run"
    copy_reference(entry, run)
    files = json.loads((entry / MANIFEST).read_text())["files"]
    assert (run / "step1_baseline.json").stat().st_mode & 0o777 == 0o444
    assert restore(run, files, entry) == []
    (run / "step1_baseline.json").unlink()  # a notebook replaced the reference's record
    (run / "step1_baseline.json").write_text('{"text": "mine"}')
    (run / "step3_policy" / "model.safetensors").unlink()
    assert sorted(restore(run, files, entry)) == ["step1_baseline.json",
                                                  "step3_policy/model.safetensors"]
    assert json.loads((run / "step1_baseline.json").read_text()) == {"text": "baseline"}
    assert cache.problem(key) is None  # the entry itself never changed


def test_kernels_cannot_see_the_shared_reference_runs(tmp_path):
    from grading.run.sandbox import Sandbox, namespaces_work

    if not namespaces_work():
        pytest.skip("user namespaces are unavailable here (no filesystem allow-list at all)")
    cache = ReferenceCache()  # the labkit cache's folder, which kernels may otherwise read
    key = make_key(REF, (1,), "kernel-visibility-test", None)
    entry = cache.ensure(key, writer([]))
    try:
        box = Sandbox(tmp_path / "box", "teaching").create()
        code = ("import os, sys\nprint('SEEN', os.listdir(sys.argv[1]), "
                "os.path.exists(sys.argv[2]))")
        rc, out, err, _ = box.run_untrusted(
            [sys.executable, "-c", code, str(cache.root), str(entry / MANIFEST)], "", box.lab, 60)
        assert rc == 0, err
        assert "SEEN [] False" in out
        rc, out, _, _ = box.run_untrusted(
            [sys.executable, "-c", "import os, sys; print('SEEN', os.listdir(sys.argv[1]))",
             str(cache.root.parent)], "", box.lab, 60)
        assert "reference-runs" in out  # the rest of the labkit cache stays readable
    finally:
        cache.discard(key)


# ----------------------------------------------------------------------------- real notebooks
def grade(subs, out: Path, *extra):
    proc = subprocess.run([sys.executable, "-m", "grading", *map(str, subs), "--out", str(out),
                           "--model", "teaching", *extra], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "02_preferences" / "record.json").read_text())


def item_scores(record: dict) -> dict:
    return {(s["step"], i["name"]): i["earned"] for s in record["steps"] for i in s["items"]}


@pytest.mark.slow
def test_corrupted_entry_is_rebuilt_and_grades_like_no_cache(tmp_path, teaching_dir):
    """Notebook 2 alone: step 1 comes from the cache (its entry made as the grader makes it,
    unless an earlier test of the session made it); a corrupted entry is rebuilt by the
    next batch, which grades exactly like running step 1 in the submission's own sandbox."""
    from grading.autograde import Options
    from grading.run.reference_cache import shared_steps
    from grading.run.submission import plan

    sub = craft.single(2, tmp_path / "subs")
    with tempfile.TemporaryDirectory() as batch:  # short: kernel sockets live under it
        steps, _, entry = shared_steps(plan(sub, craft.NOTEBOOKS), Options(model="teaching"),
                                       Path(batch), pytest.fail)
    key = make_key({1: REF[1]}, (1,), "teaching", None)
    cache = ReferenceCache()
    assert steps == (1,) and entry == cache.entry(key) and cache.problem(key) is None
    record = entry / FILES / "step1_baseline.json"
    record.write_bytes(record.read_bytes().replace(b'"outputs"', b'"outputz"', 1))
    assert cache.problem(key) == "step1_baseline.json does not match its hash in the manifest"
    cached = grade([sub], tmp_path / "cached")
    rebuilt = record.read_bytes()  # a fresh run (its record has its own time stamp)
    assert b'"outputz"' not in rebuilt and b'"outputs"' in rebuilt
    assert cache.problem(key) is None
    uncached = grade([sub], tmp_path / "uncached", "--no-reference-cache")
    assert cached["runs"][0]["message"] == SHARED_RUN != uncached["runs"][0]["message"]
    assert item_scores(cached) == item_scores(uncached)
    assert sum(item_scores(cached).values()) == 25
