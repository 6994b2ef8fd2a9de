"""`python -m grading SUBMISSION... --out DIR`: grade a class's submissions.
(`python -m grading gradescope --out autograder.zip`: the Gradescope autograder, see
grading.gradescope.)

A submission is a folder with the four notebooks, one notebook (graded alone; its earlier
steps come from the reference solution), or, with --no-execute, a run directory. Each is
executed in its own sandbox (grading.autograde) and graded in the grader's process; the
results go to DIR/<name>/results.json (Gradescope format) and feedback.md, and a line of
DIR/gradebook.csv. A broken submission is graded, never stops the batch. Exit status: 0 when
grading ran, 2 when the grader itself could not run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from .autograde import Options, grade_submission, render
from .batch import (PartManifest, class_order, names_for, parse_shard, rubric_version,
                    theme_id)
from .checks.gradescope_format import VISIBILITIES
from .checks.report import SubmissionResult, write_gradebook
from .run import unprivileged
from .run.limits import Limits


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m grading", description=__doc__.split("\n")[0])
    parser.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION")
    parser.add_argument("--out", required=True, type=Path, help="where results go")
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel")
    Limits.add_arguments(parser)
    parser.add_argument("--no-execute", action="store_true",
                        help="grade existing run directories without running notebooks")
    parser.add_argument("--model", default=os.environ.get("LABKIT_MODEL") or "gpt2",
                        help="the model the class uses (LABKIT_MODEL)")
    parser.add_argument("--theme", default=os.environ.get("LABKIT_THEME") or None,
                        help="the class's preference theme: a shipped name or a .toml file "
                             "(LABKIT_THEME; default: labkit's default theme). Checked "
                             "against --model before the first submission")
    parser.add_argument("--shard", metavar="K/N", help="grade only part K of N of the "
                        "submissions (sorted by name; every N-th from the K-th), for one "
                        "machine of many; join the parts with `python -m grading merge`")
    parser.add_argument("--no-reference-cache", action="store_true",
                        help="run the reference steps a single-notebook submission lacks in "
                             "each submission's sandbox, instead of once per batch (kept "
                             "under LABKIT_CACHE/reference-runs)")
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
    try:
        args.limits = Limits.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.jobs <= 0:
        parser.error("--jobs must be positive")
    try:
        args.shard = parse_shard(args.shard) if args.shard else None
    except ValueError as exc:
        parser.error(str(exc))
    return args


def options(args) -> Options:
    """The batch's options record, from the parsed command line."""
    theme = args.theme
    if theme and Path(theme).is_file():  # the kernels run elsewhere: an absolute path
        theme = str(Path(theme).resolve())
    return Options(model=args.model, theme=theme, execute=not args.no_execute,
                   limits=args.limits, keep_work=bool(args.keep_work),
                   threads=max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None,
                   namespaces=not args.no_namespaces,
                   integrity_visibility=args.integrity_visibility, out=args.out,
                   reference_cache=not args.no_reference_cache)


def main(argv=None) -> int:
    from labkit.runtime import skip_iri_grammar

    skip_iri_grammar()  # before anything reads a notebook: ~1 s of every grader's start-up
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gradescope"]:  # `python -m grading gradescope --out autograder.zip`
        from . import gradescope

        return gradescope.main(argv[1:])
    if argv[:1] == ["merge"]:  # join the parts of a class
        from . import merge

        return merge.main(argv[1:])
    if argv[:1] == ["slurm"]:  # a class through Slurm: its tasks' options parse as here
        from . import slurm

        return slurm.main(argv[1:], task_options=parse_args)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the entry point owns its process
    from labkit import runtime

    runtime.preload_stack()  # torch, transformers, datasets: ~0.6 s cheaper (see there)
    with runtime.quiet_libraries(), runtime.known_warnings_ignored():
        return _main(args)


def _main(args) -> int:
    from labkit.themes import ThemeError, load_theme

    try:  # an unreadable or invalid theme stops the batch here, in the loader's words
        opts = options(args)
        theme = load_theme(opts.theme)
        args.out.mkdir(parents=True, exist_ok=True, mode=0o750)  # never others'
        model = prepare_model(args.model, args.jobs)
        if model != args.model:  # offline, or a typo: said, and the manifest records it
            from .checks.policy import base_model

            print(f"grading: warning: the model {args.model!r} could not be loaded "
                  f"({base_model(args.model)[2].reason}); grading with {model!r} instead. "
                  "Parts graded on another model do not merge with this one",
                  file=sys.stderr)
        theme = fitted_theme(theme, args.model)  # every pair fits the class's model
    except ThemeError as exc:
        print(f"grading: cannot start: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the grader cannot run at all
        print(f"grading: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.shard:
        whole = class_order(args.submissions)
        subs = whole[args.shard[0] - 1::args.shard[1]]
        print(f"part {args.shard[0]}/{args.shard[1]}: {len(subs)} of {len(whole)} "
              "submission(s)", file=sys.stderr)
    else:
        whole = subs = list(zip(args.submissions, names_for(args.submissions)))
    print(f"grading {len(subs)} submission(s) with {model!r}, theme "
          f"{theme.name!r} ({theme.path}), {args.jobs} at a time; isolation: "
          f"{unprivileged.mode(opts.namespaces)}",
          file=sys.stderr)
    try:
        opts = replace(opts, stage=unprivileged.stage_for_batch(
            args.model, [opts.reference, *args.submissions], args.out, args.keep_work,
            opts.namespaces, opts.theme))
    except (RuntimeError, OSError) as exc:
        print(f"grading: cannot start: {exc}", file=sys.stderr)
        return 2
    PartManifest.withdraw(args.out)  # not a finished part again until this run ends
    start = time.monotonic()
    try:
        rows = run_batch(args, opts, subs)
    finally:
        if opts.stage is not None:
            opts.stage.remove()
    write_gradebook(args.out / "gradebook.csv", rows)
    PartManifest(model, theme_id(opts.theme), rubric_version(), args.shard or (1, 1),
                 tuple(sorted(n for _, n in whole)), tuple(n for _, n in subs)).write(args.out)
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
    from .checks.policy import base_model

    return base_model(name)[2].resolved


def fitted_theme(theme, model: str):
    """The class's theme with every pair checked against the grader's copy of the class's
    model (ThemeError names each pair too long for it)."""
    from labkit.themes.fit import fit_theme

    from .checks.policy import base_model

    _, tokenizer, info = base_model(model)
    return fit_theme(theme, tokenizer, info)


def run_batch(args, opts: Options, subs: list[tuple[Path, str]]) -> list[dict]:
    """Grade `subs` (path, name), --jobs at a time; the gradebook rows, in their order."""
    if args.keep_work:
        args.keep_work.mkdir(parents=True, exist_ok=True)
    batch_root = Path(tempfile.mkdtemp(prefix="grading-", dir=args.keep_work)).resolve()
    if opts.stage is not None:  # each submission's user passes through to its own folder
        batch_root.chmod(0o711)
    rows, total = [], len(subs)
    try:
        if args.jobs == 1:
            for n, (path, name) in enumerate(subs, 1):
                rows.append(finish(opts, name, path, n, total, lambda: grade_submission(
                    path, name, opts, batch_root, f"[{n}/{total}]")))
            return rows
        import multiprocessing

        spawn = multiprocessing.get_context("spawn")  # no fork after torch was imported
        from labkit.runtime import preload_stack

        with ProcessPoolExecutor(args.jobs, mp_context=spawn, initializer=preload_stack) as pool:
            futures = {pool.submit(grade_submission, path, name, opts, batch_root,
                                   f"[{n}/{total}]"): (n, path, name)
                       for n, (path, name) in enumerate(subs, 1)}
            for future in as_completed(futures):
                n, path, name = futures[future]
                rows.append(finish(opts, name, path, n, total, future.result))
        return sorted(rows, key=lambda r: [name for _, name in subs].index(r["submission"]))
    finally:
        if args.keep_work:
            print(f"sandboxes kept in {batch_root}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(batch_root, ignore_errors=True)


def finish(opts: Options, name: str, path: Path, n: int, total: int, get) -> dict:
    """Write one submission's results; a grader failure on it becomes its result."""
    try:
        result = get()
    except Exception as exc:  # noqa: BLE001 - keep the batch going, say why
        result = SubmissionResult.failed(name, path, f"{type(exc).__name__}: {exc}")
    row = render(result, opts)
    print(f"[{n}/{total}] done  {name}: {row['score']:g}/{row['max_score']:g} "
          f"({result.seconds:.1f} s){' - ' + row['problems'] if row['problems'] else ''}",
          file=sys.stderr, flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
