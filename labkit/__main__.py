"""Command line: `python -m labkit run | teaching-model | release` (stable: CI calls it)."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tm = sub.add_parser("teaching-model", help="build (or rebuild) the offline teaching model")
    tm.add_argument("--out", help="output directory (default: the labkit cache)")
    tm.set_defaults(func=_teaching_model)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
