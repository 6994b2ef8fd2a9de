"""Run the whole lab headless: the four notebooks in order, each in a fresh kernel, each
step checked as the notebook's own `grading.check(N)` would.

This is what `make run` and CI do (`python -m labkit run` hands over to
`python -m grading.runner`: labkit itself never imports grading), and what a student's
notebooks do by hand: same cells, same artifacts, same checks. Executed copies are kept in
the run directory for reading.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from labkit import artifacts, runtime
from labkit.__main__ import add_run_arguments
from labkit.release import NOTEBOOKS_DIR
from labkit.steps import Step1Baseline, Step2Meta, Step3Training, Step4Report
from labkit.config import LabConfig
from labkit.themes import ThemeError, load_theme
from labkit.themes.fit import theme_for_model

from .checks import check_step1, check_step2, check_step3, check_step4
from .run.kernel import execute_notebook


def notebook_paths(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    paths = sorted(Path(notebooks_dir).glob("0[1-4]_*.ipynb"))
    if len(paths) != 4:
        raise FileNotFoundError(f"expected the 4 lab notebooks in {notebooks_dir}, found "
                                f"{[p.name for p in paths]}")
    return paths


def key_figure(step: int, run_dir: Path) -> str:
    """One number per step that tells a reader whether it worked."""
    try:
        if step == 1:
            data = Step1Baseline.load(run_dir)
            return f"{len(data.prompts)} held prompts, model {data.model['resolved']}"
        if step == 2:
            return f"{Step2Meta.load(run_dir).n_pairs} pairs"
        if step == 3:
            data = Step3Training.load(run_dir)
            losses = [e["loss"] for e in data.log_history if "loss" in e]
            return f"{data.health['verdict']}, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
        report = Step4Report.load(run_dir)
        m, outcome = report.metrics, report.outcome
        text = f"{m['changed_outputs']}/{m['held_prompts']} held outputs changed"
        if outcome:
            d = outcome["difference"]
            text += (f", {outcome['judge']} {outcome['before']['value']:.2f} -> "
                     f"{outcome['after']['value']:.2f} (change [{d['low']:+.2f}, "
                     f"{d['high']:+.2f}]: {outcome['verdict']})")
        return text
    except (artifacts.ArtifactError, KeyError, IndexError, TypeError) as exc:
        return f"(no artifact: {exc})"[:80]


def run_lab(run_dir: Path, model: str | None = None, cell_timeout: int = 900,
            notebooks_dir: Path = NOTEBOOKS_DIR, theme: str | None = None) -> dict:
    """Execute the four notebooks, grade each step, write `run_dir/report.json`.
    `theme` (else `LABKIT_THEME`) is checked first, against the model too (every pair must
    fit it), then passed to the kernels in their environment; this process's own
    environment is left as it was."""
    model = model or LabConfig.from_env().model
    with runtime.progress_bars_off():  # the model loads here: one line per step, no bars
        theme_used = theme_for_model(load_theme(theme), model)  # before any notebook runs
    print(f"theme: {theme_used.name} - {theme_used.title}", flush=True)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LABKIT_RUN_DIR": str(run_dir), "LABKIT_THEME": theme_used.reference,
           "LABKIT_MODEL": model, "LABKIT_STATIC_WIDGETS": "1",  # static: no browser
           "OMP_WAIT_POLICY": runtime.kernel_wait_policy()}
    checks = {1: check_step1, 2: lambda r: check_step2(r, theme=theme_used), 3: check_step3,
              4: lambda r: check_step4(r, theme=theme_used)}
    steps, start = [], time.perf_counter()
    with runtime.progress_bars_off():  # the checks load models here: one line per step
        for step, path in enumerate(notebook_paths(notebooks_dir), start=1):
            print(f"[{step}/4] {path.name} ...", flush=True)
            began = time.perf_counter()
            run = execute_notebook(path, step, cell_timeout=cell_timeout,
                                   save_to=run_dir / "executed", env=env)
            error = None if run.status == "ok" else f"{run.status}: {run.message}"
            seconds = time.perf_counter() - began
            result = checks[step](run_dir)
            steps.append({"step": step, "notebook": path.name, "passed": bool(result.passed),
                          "score": result.score, "max_score": result.max_score,
                          "seconds": round(seconds, 1), "error": error,
                          "key_figure": key_figure(step, run_dir)})
            print(f"      {'PASS' if result.passed else 'FAIL'} {result.score}/"
                  f"{result.max_score} in {seconds:.1f} s - {steps[-1]['key_figure']}"
                  + (f"\n      error: {error}" if error else ""), flush=True)
    report = _report(run_dir, steps, time.perf_counter() - start)
    report["theme"] = theme_used.name
    artifacts.save_json(run_dir / "report.json", report, kind="lab_report")
    print(f"\nmetrics and per-step details: {run_dir / 'report.json'}")
    print_summary(report)
    return report


def _report(run_dir: Path, steps: list[dict], seconds: float) -> dict:
    model, metrics = {}, None
    try:
        info = Step1Baseline.load(run_dir).model
        model = {k: info[k] for k in ("requested", "resolved", "fell_back", "reason", "device")}
    except artifacts.ArtifactError:
        pass
    try:
        metrics = Step4Report.load(run_dir).metrics
    except artifacts.ArtifactError:
        pass
    return {"model": model, "steps": steps, "metrics": metrics, "total_seconds": round(seconds, 1),
            "passed": all(s["passed"] for s in steps)}


def print_summary(report: dict) -> None:
    print("\nstep  check  score   seconds  key figure")
    for s in report["steps"]:
        print(f"{s['step']:>4}  {'PASS' if s['passed'] else 'FAIL':<5}  "
              f"{s['score']:>2}/{s['max_score']:<3} {s['seconds']:>8.1f}  {s['key_figure']}")
    model = report["model"]
    if model:
        note = " (offline fallback)" if model.get("fell_back") else ""
        print(f"model: {model.get('resolved')}{note}")
    if report.get("theme"):
        print(f"theme: {report['theme']}")
    print(f"total: {report['total_seconds']:.1f} s - "
          f"{'all four checks pass' if report['passed'] else 'some checks FAILED'}")


def main(argv=None) -> int:
    """`python -m grading.runner` (what `python -m labkit run` runs)."""
    runtime.skip_iri_grammar()  # before nbformat: ~1 s of start-up
    runtime.preload_stack()     # torch, transformers, datasets: ~0.6 s cheaper
    parser = argparse.ArgumentParser(prog="python -m labkit run", description=" ".join(
        __doc__.split("\n\n")[0].split()))
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = run_lab(artifacts.run_dir(args.run_dir), model=args.model,
                         cell_timeout=args.cell_timeout, theme=args.theme)
    except ThemeError as exc:  # the loader's message says what to fix: no traceback
        print(f"labkit run: {exc}", file=sys.stderr)
        return 2
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
