"""`python -m grading merge DIR... --out DIR`: join the parts of a class graded on several
machines (`python -m grading ... --shard K/N`) into one gradebook.csv and one set of
per-student folders.

It refuses, saying which parts and which students: parts of different classes, parts
graded with another model, theme or rubric, a student graded in two parts, and students
no part graded (naming the parts K/N that are missing). Nothing is written unless every
part is sound: the result is assembled in a temporary folder and renamed to DIR.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from .batch import MANIFEST, PartManifest


class MergeRefused(ValueError):
    """The parts cannot be joined into one gradebook; the message says why."""


def check_parts(parts: dict[Path, PartManifest]) -> list[str]:
    """The class's submissions, in order, once the parts agree and cover it exactly."""
    (first, ref), *others = parts.items()
    for folder, part in others:
        for what in ("model", "theme", "rubric"):
            if getattr(part, what) != getattr(ref, what):
                raise MergeRefused(
                    f"{folder} was graded with {what} {getattr(part, what)!r} but {first} with "
                    f"{getattr(ref, what)!r}: grade every part with the same {what}"
                    + (" (the rubric is grading/checks/rubric.py's points table)"
                       if what == "rubric" else ""))
        if part.submissions != ref.submissions:
            extra = sorted(set(part.submissions) ^ set(ref.submissions))[:5]
            raise MergeRefused(f"{folder} and {first} are parts of different classes (their "
                               f"submission lists differ, e.g. {', '.join(extra)}): give every "
                               "part the same SUBMISSION list")
    owner: dict[str, Path] = {}
    for folder, part in parts.items():
        for name in part.graded:
            if name in owner:
                raise MergeRefused(f"student {name!r} was graded in two parts, {owner[name]} "
                                   f"and {folder}: give each part once")
            owner[name] = folder
    missing = [n for n in ref.submissions if n not in owner]
    if missing:
        shards = {p.shard for p in parts.values()}
        total = ref.shard[1]
        absent = [f"{k}/{total}" for k in range(1, total + 1) if (k, total) not in shards]
        raise MergeRefused(f"{len(missing)} student(s) graded in no part given: "
                           f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
                           + (f" (parts not given: {', '.join(absent)})" if absent else ""))
    return list(ref.submissions)


def merge(folders: list[Path], out: Path) -> list[dict]:
    """Join the parts in `folders` into `out` (which must not exist yet, or be empty);
    returns the gradebook rows. MergeRefused says why it will not."""
    from .checks.report import SubmissionResult, write_gradebook

    if not folders:
        raise MergeRefused("no parts given")
    parts = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise MergeRefused(f"{folder}: no such folder (a typo, or a pattern that matched "
                               "nothing?)")
        try:
            parts[Path(folder)] = PartManifest.read(Path(folder))
        except ValueError as exc:
            raise MergeRefused(str(exc)) from exc
    if len({p.resolve() for p in parts}) < len(folders):
        raise MergeRefused("a part was given twice: give each part once")
    if any(out.resolve() == p.resolve() for p in parts):
        raise MergeRefused(f"--out {out} is one of the parts: merge into a new folder")
    inside = next((p for p in parts if p.resolve() in out.resolve().parents), None)
    if inside:
        raise MergeRefused(f"--out {out} is inside the part {inside}: merge into a new "
                           "folder outside the parts")
    if out.exists() and not out.is_dir():
        raise MergeRefused(f"--out {out} exists and is not a folder: merge into a new folder")
    if out.exists() and any(out.iterdir()):
        raise MergeRefused(f"--out {out} exists and is not empty: merge into a new folder")
    names = check_parts(parts)
    owner = {n: f for f, p in parts.items() for n in p.graded}
    for name in names:
        if not (owner[name] / name / "record.json").is_file():
            raise MergeRefused(f"{owner[name]}: {name}/record.json is missing: that part did "
                               "not finish grading this student; grade it again")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        rows = []
        for name in names:
            shutil.copytree(owner[name] / name, tmp / name)
            record = (tmp / name / "record.json").read_text(encoding="utf-8")
            rows.append(SubmissionResult.from_dict(json.loads(record)).gradebook_row())
        write_gradebook(tmp / "gradebook.csv", rows)
        ref = next(iter(parts.values()))
        PartManifest(ref.model, ref.theme, ref.rubric, (1, 1), ref.submissions,
                     tuple(names)).write(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading merge",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("parts", nargs="+", type=Path, metavar="DIR",
                        help=f"a part's --out folder (with its {MANIFEST})")
    parser.add_argument("--out", required=True, type=Path, help="the merged class folder")
    args = parser.parse_args(argv)
    return merge_and_say(args.parts, args.out, "grading merge")


def merge_and_say(parts: list[Path], out: Path, prog: str) -> int:
    """merge(), said on stderr: 0 when merged, 2 when refused (with the reason)."""
    try:
        rows = merge(parts, out)
    except MergeRefused as exc:
        print(f"{prog}: refused to merge: {exc}", file=sys.stderr)
        return 2
    print(f"merged {len(parts)} part(s), {len(rows)} submission(s) -> "
          f"{out / 'gradebook.csv'}", file=sys.stderr)
    return 0
