"""The benchmark harness (`python -m bench`): a seconds-long smoke run, and the docs table.

Not the benchmark itself (that takes ~15 min on 2 cores): `--quick --skip-lab --skip-gpt2
--reps 1` exercises the overhead and generation sections end to end on the teaching model
and checks the results file has every key with sane values.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("machine", "versions", "started_at", "finished_at", "reps", "sections",
             "training_overhead_ratio", "generation_batched_speedup",
             "generation_outputs_identical", "gpt2_cpu_train_seconds", "gpt2_cpu_peak_rss_mb",
             "lab_seconds", "gpu")


@pytest.fixture(scope="module")
def quick_results(teaching_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    cmd = [sys.executable, "-m", "bench", "--quick", "--skip-lab", "--skip-gpt2", "--reps", "1",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_quick_run_writes_every_key_with_sane_values(quick_results):
    data = quick_results
    assert not data["errors"], data["errors"]
    for key in TOP_LEVEL:
        assert key in data, key
    assert data["quick"] is True and data["reps"] == 1
    assert data["training_overhead_ratio"] > 0
    assert data["generation_batched_speedup"] > 0
    assert data["generation_outputs_identical"] is True
    verify = data["sections"]["verify_teaching"]  # teacher-forced grading vs regeneration
    assert verify["all_agree"] is True and data["verify_teaching_speedup"] > 0
    overhead = data["sections"]["overhead"]
    assert len(overhead["labkit"]["reps"]) == 1 and len(overhead["bare_trl"]["reps"]) == 1
    assert overhead["same_losses"], "labkit and bare TRL must train identically"
    assert data["gpt2_cpu_train_seconds"] is None and data["lab_seconds"] is None
    assert "skipped" in data["sections"]["lab"]["reason"]
    import torch

    if not torch.cuda.is_available():
        assert data["gpu"] is None
    assert data["machine"]["slug"].startswith(("cpu-", "gpu-"))


@pytest.mark.slow
def test_docs_render_from_the_quick_results(quick_results, tmp_path):
    from bench import report

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "m.json").write_text(json.dumps(quick_results))
    text = report.write_docs(tmp_path / "results", tmp_path / "benchmarks.md").read_text()
    assert f"## {quick_results['machine']['slug']}" in text
    assert "Training overhead" in text and "outputs identical" in text
    assert "teacher-forced verify, teaching model" in text and "both accept" in text
    assert "QUICK smoke run" in text


def _full_results() -> dict:
    """A hand-made results file with every section filled, for the renderer alone."""
    reps = lambda *v: {"median": sorted(v)[len(v) // 2], "min": min(v), "max": max(v),  # noqa: E731
                       "reps": list(v)}
    mode = {"seconds": reps(40.0, 41.0, 42.0), "cpu_seconds": reps(80.0, 81.0, 82.0),
            "peak_rss_mb": reps(3000.0, 3100.0, 3200.0)}
    gpu_mode = {"seconds": reps(2.0, 2.1, 2.2), "tokens_per_second": reps(900.0, 1000.0, 1100.0),
                "peak_gpu_mb": reps(2000.0, 2000.0, 2000.0), "mfu": reps(0.01, 0.01, 0.01)}
    return {"machine": {"slug": "gpu-test-card", "cpu": "Test CPU", "cores": 16, "gpu": "Card"},
            "versions": {"python": "3.12", "torch": "2.x"}, "reps": 3, "quick": False,
            "training_overhead_ratio": 1.2,
            "lab_seconds": {"total": 90.0, "steps": {"1": {"median": 10.0}, "2": {"median": 20.0}}},
            "sections": {
                "overhead": {"ratio": 1.2, "labkit": reps(2.4, 2.4, 2.4),
                             "bare_trl": reps(2.0, 2.0, 2.0), "sample_callback_ratio": 1.1},
                "generation_teaching": {"prompts": 8, "max_new_tokens": 40, "speedup": 4.0,
                                        "outputs_identical": True,
                                        "batched_seconds": reps(1.0, 1.0, 1.0),
                                        "one_by_one_seconds": reps(4.0, 4.0, 4.0)},
                "gpt2_cpu": {"pairs": 8, "epochs": 3, "faster_mode": "precompute",
                             "precompute_speedup": 1.3,
                             "modes": {"deepcopy": mode, "precompute": mode}}},
            "gpu": {"name": "Card", "peak_bf16_flops": 1e15, "peak_source": "table",
                    "tokenizer": "gpt2", "flops_formula": "6N",
                    "variants": {"notebook": {"deepcopy": gpu_mode}}}}


def test_report_marks_targets_met_and_missed():
    from bench import report

    text = report.render_section(_full_results())
    overhead = next(line for line in text.splitlines() if "Training overhead" in line)
    assert "1.200" in overhead and "**no**" in overhead  # 1.2 > 1.05
    lab = next(line for line in text.splitlines() if "Whole lab" in line)
    assert "90.0 s" in lab and lab.rstrip().endswith("yes |")
    assert "| notebook | deepcopy | 2.10 | - | 1000 | 2000 | 1.00 % |" in text
    assert "(faster)" in text


def test_machine_slug_and_gpu_peak_table():
    from bench import gpu, machine

    assert machine.cpu_short("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13"
    assert machine.machine_slug(gpu="NVIDIA H200") == "gpu-nvidia-h200"
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert gpu.peak_flops("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert gpu.peak_flops("Some Card")[0] is None
    assert gpu.peak_flops("Some Card", override_tflops=100)[0] == 100e12


def test_gpu_tokenizer_falls_back_without_npm_files(tmp_path, monkeypatch):
    """On a bare GPU machine (no GPT-2 tokenizer files, no network) the GPU section still
    builds its 124M model, with the teaching tokenizer, and says so."""
    from bench import gpu

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    tokenizer, source = gpu._offline_tokenizer()
    assert source.startswith("teaching tokenizer (fallback")
    assert tokenizer.eos_token_id is not None and len(tokenizer) < 50257


def test_cache_rows_show_the_per_submission_ratio_and_skip_other_measurements(tmp_path):
    """The reference cache's per-submission figure is read from each record.json (the
    batch's start-up left out), rendered beside the batch ratio; repeated runs show as
    medians, with each run's ratio beside; a results folder's other JSON
    (bench.real_recipes') is not a bench run and gets no section."""
    from bench import report
    from bench.grading import per_submission_seconds

    out = tmp_path / "out"
    for name, seconds in (("a", 10.0), ("b", 14.0)):
        (out / name).mkdir(parents=True)
        (out / name / "record.json").write_text(json.dumps({"seconds": seconds}))
    assert per_submission_seconds(out) == 12.0
    with pytest.raises(RuntimeError, match="no record.json"):
        per_submission_seconds(tmp_path / "empty")

    data = _full_results()
    labels = ("full, cache off", "full, cache on", "notebook 3 only, cache off",
              "notebook 3 only, cache on (cold)", "notebook 3 only, cache on (warm)")
    data["sections"]["grading"] = {
        "submissions": 4, "bare_seconds": 30.0, "graded_seconds": {"1": 120.0, "2": 80.0},
        "submissions_per_minute": {"1": 2.0, "2": 3.0}, "grader_over_bare": 1.0,
        "reference_cache": {"submissions": 4, "submissions_per_minute": dict.fromkeys(labels, 2.0),
                            "seconds_per_submission": {**dict.fromkeys(labels, 10.0),
                                                       "notebook 3 only, cache off": 22.0},
                            "nb3_speedup_per_submission": 2.2, "nb3_speedup_warm": 1.8,
                            "nb3_speedup_cold": 1.5, "full_on_over_off": 1.0,
                            "load_average": 1.0}}
    text = report.render_section(data)
    row = next(line for line in text.splitlines() if "seconds per submission" in line)
    assert "2.20× (22.0 s vs 10.0 s)" in row
    batch = next(line for line in text.splitlines() if "warm cache ÷ no cache" in line)
    assert "1.80×" in batch and "**no**" in batch

    only_cache = {"reason": "only --cache-only ran",
                  "reference_cache": data["sections"]["grading"]["reference_cache"]}
    text = report.render_section({**data, "sections": {"grading": only_cache}})
    assert "only --cache-only ran" in text and "2.20× (22.0 s vs 10.0 s)" in text

    repeated = {**only_cache["reference_cache"], "reps": 3,
                "runs": {"nb3_speedup_warm": [1.7, 1.8, 2.1]}}
    text = report.render_section({**data, "sections": {"grading": {"reference_cache": repeated}}})
    batch = next(line for line in text.splitlines() if "warm cache ÷ no cache" in line)
    assert "each run: 1.70×, 1.80×, 2.10×" in batch
    assert text.count("median of 3 interleaved runs") == len(labels)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "m.json").write_text(json.dumps(data))
    (tmp_path / "results" / "recipes.json").write_text(json.dumps({"before": {}}))
    docs = report.write_docs(tmp_path / "results", tmp_path / "benchmarks.md").read_text()
    assert docs.count("\n## ") == 1 and "## ?" not in docs
