"""`python -m grading SUBMISSION... --out DIR`: grade a class's submissions.
(`python -m grading gradescope --out autograder.zip`: the Gradescope autograder, see
grading.gradescope.)

A submission is a folder with the four notebooks, one notebook or a folder holding one
(graded alone; its earlier steps come from the reference solution), or, with --no-execute,
a run directory. Each is
executed in its own sandbox (grading.autograde) and graded in the grader's process; the
results go to DIR/<name>/results.json (Gradescope format) and feedback.md, and a line of
DIR/gradebook.csv. A broken submission is graded, never stops the batch. Exit status: 0 when
grading ran, 2 when the grader itself could not run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from .results import VISIBILITIES, feedback, gradebook_row, gradescope, write_gradebook


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m grading", description=__doc__.split("\n")[0])
    parser.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION")
    parser.add_argument("--out", required=True, type=Path, help="where results go")
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds for one submission's notebooks, all together")
    parser.add_argument("--cell-timeout", type=float, default=300, help="seconds per cell")
    parser.add_argument("--memory-gb", type=float, default=16,
                        help="address-space limit of each kernel (torch reserves a lot)")
    parser.add_argument("--disk-gb", type=float, default=10,
                        help="what one submission's work folder may hold (checked after each "
                             "notebook; each file is also limited to 4 GB)")
    parser.add_argument("--processes", type=int, default=512,
                        help="processes and threads one submission's kernel may run at once")
    parser.add_argument("--grading-timeout", type=float, default=900,
                        help="seconds for the grader's own checks and recomputation of one "
                             "submission (after its notebooks ran)")
    parser.add_argument("--no-execute", action="store_true",
                        help="grade existing run directories without running notebooks")
    parser.add_argument("--model", default=os.environ.get("LABKIT_MODEL") or "gpt2",
                        help="the model the class uses (LABKIT_MODEL)")
    parser.add_argument("--theme", default=os.environ.get("LABKIT_THEME") or None,
                        help="the class's preference theme: a shipped name or a .toml file "
                             "(LABKIT_THEME; default: labkit's default theme). Checked "
                             "against --model before the first submission")
    parser.add_argument("--no-namespaces", action="store_true",
                        help="run kernels without user namespaces even where they work (what "
                             "a container that forbids them gets; LABKIT_GRADER_NO_NAMESPACES=1)")
    parser.add_argument("--keep-work", type=Path, metavar="DIR",
                        help="put the sandboxes (work folders, executed run directories) in "
                             "DIR and keep them, for debugging")
    parser.add_argument("--integrity-visibility", default="visible", choices=VISIBILITIES,
                        help="Gradescope visibility of the auto-grader-only (integrity) items, "
                             "e.g. after_published to show them with the published grades")
    args = parser.parse_args(argv)
    if Path(args.model).exists():  # a local model: kernels run elsewhere, so make it absolute
        args.model = str(Path(args.model).resolve())
    if min(args.jobs, args.timeout, args.cell_timeout, args.disk_gb, args.processes,
           args.grading_timeout) <= 0:
        parser.error("--jobs, --timeout, --cell-timeout, --disk-gb, --processes and "
                     "--grading-timeout must be positive")
    return args


def names_for(paths: list[Path]) -> list[str]:
    """A unique, filesystem-safe folder name per submission."""
    names, seen = [], {}
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem if path.suffix == ".ipynb"
                      else path.name) or "submission"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gradescope"]:  # `python -m grading gradescope --out autograder.zip`
        from . import gradescope

        return gradescope.main(argv[1:])
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LABKIT_SKIP_OPTIONAL", "1")  # ungraded experiments: kernels skip them
    if args.no_namespaces:  # an env var, so that --jobs workers and the probe see it
        os.environ["LABKIT_GRADER_NO_NAMESPACES"] = "1"
    from labkit import runtime
    from labkit.themes import ThemeError, load_theme

    try:  # an unreadable or invalid theme stops the batch here, in the loader's words
        theme = load_theme(args.theme)
    except ThemeError as exc:
        print(f"grading: cannot start: {exc}", file=sys.stderr)
        return 2
    # absolute: the kernels (whose sandbox lets them read it), --jobs workers and the
    # grader's own checks all read the class's theme from here
    os.environ["LABKIT_THEME"] = str(theme.path.resolve())
    with runtime.quiet_libraries(), runtime.known_warnings_ignored():
        return _main(args)


def _main(args) -> int:
    from labkit.themes import ThemeError

    try:
        from . import autograde

        args.out.mkdir(parents=True, exist_ok=True)
        model = prepare_model(args.model, args.jobs)
        theme = fitted_theme(args.model)
    except ThemeError as exc:  # a pair too long for the class's model: the loader says which
        print(f"grading: cannot start: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the grader cannot run at all
        print(f"grading: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    opts = autograde.Options(
        model=args.model, execute=not args.no_execute,
        limits=autograde.Limits(args.cell_timeout, args.timeout, args.memory_gb,
                                disk_gb=args.disk_gb, processes=args.processes,
                                grading_timeout=args.grading_timeout),
        hide=tuple(p.resolve().parent for p in args.submissions), keep_work=bool(args.keep_work),
        threads=max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    print(f"grading {len(args.submissions)} submission(s) with {model!r}, theme "
          f"{theme.name!r} ({theme.path}), "
          f"{args.jobs} at a time; isolation: "
          f"{'namespaces' if autograde.namespaces_work() else 'environment only'}",
          file=sys.stderr)
    start = time.monotonic()
    rows = run_batch(args, opts)
    write_gradebook(args.out / "gradebook.csv", rows)
    print(f"graded {len(rows)} submission(s) in {time.monotonic() - start:.1f} s -> "
          f"{args.out / 'gradebook.csv'}", file=sys.stderr)
    return 0


def prepare_model(name: str, jobs: int) -> str:
    """Make sure the class's model is there before any job starts (the teaching model is
    built once, here, not by racing jobs). With one job the loaded model is reused; with
    several, each worker loads its own, so the teaching model is only built here."""
    if jobs > 1 and name == "teaching":
        from labkit import teaching

        teaching.ensure_teaching_model(progress=False)
        return name
    from .policy import base_model

    return base_model(name)[2].resolved


def fitted_theme(model: str):
    """The class's theme (LABKIT_THEME, set by main), every pair checked against the
    grader's copy of the class's model."""
    from labkit.themes.fit import fit_theme

    from .policy import base_model

    _, tokenizer, info = base_model(model)
    return fit_theme(None, tokenizer, info)


def run_batch(args, opts) -> list[dict]:
    from . import autograde

    subs = list(zip(args.submissions, names_for(args.submissions)))
    if args.keep_work:
        args.keep_work.mkdir(parents=True, exist_ok=True)
    batch_root = Path(tempfile.mkdtemp(prefix="grading-", dir=args.keep_work)).resolve()
    rows, total = [], len(subs)
    try:
        if args.jobs == 1:
            for n, (path, name) in enumerate(subs, 1):
                rows.append(finish(args.out, name, path, n, total, lambda: autograde.
                                   grade_submission(path, name, opts, batch_root, args.out,
                                                    f"[{n}/{total}]"),
                                   args.integrity_visibility))
            return rows
        import multiprocessing

        spawn = multiprocessing.get_context("spawn")  # no fork after torch was imported
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            futures = {}
            for n, (path, name) in enumerate(subs, 1):
                futures[pool.submit(autograde.grade_submission, path, name, opts, batch_root,
                                    args.out, f"[{n}/{total}]")] = (n, path, name)
            for future in as_completed(futures):
                n, path, name = futures[future]
                rows.append(finish(args.out, name, path, n, total, future.result,
                                   args.integrity_visibility))
        return sorted(rows, key=lambda r: [name for _, name in subs].index(r["submission"]))
    finally:
        if args.keep_work:
            print(f"sandboxes kept in {batch_root}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(batch_root, ignore_errors=True)


def finish(out: Path, name: str, path: Path, n: int, total: int, get,
           integrity_visibility: str = "visible") -> dict:
    """Write one submission's results; a grader failure on it becomes its result."""
    try:
        record = get()
    except Exception as exc:  # noqa: BLE001 - keep the batch going, say why
        record = {"name": name, "source": str(path), "steps": [], "runs": [],
                  "notes": [f"the grader failed on this submission: {type(exc).__name__}: {exc}"],
                  "isolation": "", "seconds": 0.0}
    results = gradescope(record, integrity_visibility)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (folder / "feedback.md").write_text(feedback(record), encoding="utf-8")
    row = gradebook_row(record, results)
    print(f"[{n}/{total}] done  {name}: {row['score']:g}/{row['max_score']:g} "
          f"({record['seconds']:.1f} s){' - ' + row['problems'] if row['problems'] else ''}",
          file=sys.stderr, flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
