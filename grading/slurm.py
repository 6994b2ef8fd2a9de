"""`python -m grading slurm SUBMISSION... --out DIR --tasks N [slurm options] [-- grading
options]`: grade a class on a Slurm cluster. Writes an `sbatch --array=1-N` script (each
task runs `python -m grading ... --shard K/N`), submits it, waits for every task, and joins
the parts with `python -m grading merge` into DIR.

The work folder (default DIR.slurm/) holds the script (grade.sbatch: read it, or submit it
yourself with `sbatch grade.sbatch`), the submission list, one part per task (parts/K/)
and the tasks' logs (logs/K.log). The tasks share the labkit cache (LABKIT_CACHE, on shared
storage), so the reference steps are computed once for the class, not once per task.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from . import REPO

SCRIPT = """\
#!/bin/bash
# Grade part $SLURM_ARRAY_TASK_ID of {tasks} of the class listed in submissions.txt
# (written by `python -m grading slurm`; submit by hand with `sbatch {work}/grade.sbatch`).
#SBATCH --job-name={name}
#SBATCH --array=1-{tasks}
#SBATCH --output={work}/logs/%a.log
#SBATCH --cpus-per-task={cpus}
#SBATCH --mem={mem}
#SBATCH --time={time}
{extra}set -euo pipefail
cd {repo}
mapfile -t submissions < {work}/submissions.txt
exec {python} -m grading "${{submissions[@]}}" --out {work}/parts/$SLURM_ARRAY_TASK_ID \\
    --shard $SLURM_ARRAY_TASK_ID/{tasks} {flags}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    ours, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m grading slurm", description=__doc__
                                     .split("\n")[0], epilog="Options after -- go to each "
                                     "task's `python -m grading` (e.g. -- --model teaching)")
    parser.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION")
    parser.add_argument("--out", required=True, type=Path, help="the merged class folder")
    parser.add_argument("--tasks", required=True, type=int, help="array tasks (parts)")
    parser.add_argument("--work", type=Path, help="script, parts and logs (default DIR.slurm)")
    parser.add_argument("--cpus-per-task", type=int, default=2, help="(default 2)")
    parser.add_argument("--mem", default="16G", help="memory per task (default 16G)")
    parser.add_argument("--time", default="04:00:00", help="time per task (default 4 h)")
    parser.add_argument("--partition", help="the Slurm partition (default: the cluster's)")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                        help="one more #SBATCH line, e.g. --sbatch-arg=--account=cs123")
    parser.add_argument("--no-wait", action="store_true",
                        help="submit and return; merge later with `python -m grading merge`")
    args = parser.parse_args(ours)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    bad = [f for f in flags if f in {"--out", "--shard"} or f.startswith(("--out=", "--shard="))]
    if bad:
        parser.error(f"{bad[0]} is set by the slurm command for each task; leave it out")
    args.flags = flags
    args.work = (args.work or args.out.with_name(args.out.name + ".slurm")).resolve()
    return args


def write_script(args: argparse.Namespace) -> Path:
    """The submission list and the array script in the work folder; returns the script."""
    missing = [str(p) for p in args.submissions if not p.exists()]
    if missing:
        raise ValueError(f"no such submission: {', '.join(missing[:5])}")
    for folder in ("logs", "parts"):
        (args.work / folder).mkdir(parents=True, exist_ok=True)
    (args.work / "submissions.txt").write_text(
        "".join(f"{p.resolve()}\n" for p in args.submissions), encoding="utf-8")
    extra = [f"--partition={args.partition}"] if args.partition else []
    script = args.work / "grade.sbatch"
    script.write_text(SCRIPT.format(
        tasks=args.tasks, work=shlex.quote(str(args.work)), name="grading", cpus=args.cpus_per_task,
        mem=args.mem, time=args.time, repo=shlex.quote(str(REPO)),
        python=shlex.quote(sys.executable), flags=" ".join(map(shlex.quote, args.flags)),
        extra="".join(f"#SBATCH {a}\n" for a in extra + args.sbatch_arg)), encoding="utf-8")
    return script


def main(argv: list[str]) -> int:
    from .merge import merge_and_say

    args = parse_args(argv)
    if shutil.which("sbatch") is None:
        print("grading slurm: sbatch not found: run this on the cluster's login node",
              file=sys.stderr)
        return 2
    try:
        script = write_script(args)
    except ValueError as exc:
        print(f"grading slurm: {exc}", file=sys.stderr)
        return 2
    wait = [] if args.no_wait else ["--wait"]
    print(f"submitting {script} ({args.tasks} tasks)", file=sys.stderr, flush=True)
    proc = subprocess.run(["sbatch", "--parsable", *wait, str(script)], text=True,
                          stdout=subprocess.PIPE)
    parts = [args.work / "parts" / str(k) for k in range(1, args.tasks + 1)]
    merge_cmd = (f"python -m grading merge {' '.join(shlex.quote(str(p)) for p in parts)} "
                 f"--out {shlex.quote(str(args.out))}")
    if args.no_wait:
        print(f"job {proc.stdout.strip()}; when it is done: {merge_cmd}", file=sys.stderr)
        return proc.returncode
    if proc.returncode != 0:
        print(f"grading slurm: job {proc.stdout.strip()}: a task failed (sbatch exit "
              f"{proc.returncode}); see {args.work / 'logs'}", file=sys.stderr)
    return merge_and_say(parts, args.out, "grading slurm")
