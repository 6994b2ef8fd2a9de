"""`python -m grading slurm SUBMISSION... --out DIR --tasks N [slurm options] [-- grading
options]`: grade a class on a Slurm cluster. Writes an `sbatch --array=1-N` script (each
task runs `python -m grading ... --shard K/N`; never more tasks than submissions), submits
it, waits for every task (saying how many parts have finished), and joins the parts with
`python -m grading merge` into DIR. When sbatch refuses the array, it says so and stops.

The work folder (default DIR.slurm/) holds the script (grade.sbatch: read it, or submit it
yourself with `sbatch grade.sbatch`), the submission list, one part per task (parts/K/)
and the tasks' logs (logs/K.log). The tasks share the labkit cache (LABKIT_CACHE, on shared
storage), so the reference steps are computed once for the class, not once per task.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from . import REPO
from .batch import MANIFEST

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
{exports}cd {repo}
mapfile -t submissions < {work}/submissions.txt
exec {python} -m grading "${{submissions[@]}}" --out {work}/parts/$SLURM_ARRAY_TASK_ID \\
    --shard $SLURM_ARRAY_TASK_ID/{tasks} {flags}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    ours, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m grading slurm", description=" ".join(
        __doc__.split("\n\n")[0].split()), epilog="Options after -- go to each task's "
        "`python -m grading` (e.g. -- --model teaching)")
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
    args, unknown = parser.parse_known_args(ours)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (options of `python -m "
                     "grading`, such as --model or --theme, go after --: ... -- --model gpt2)")
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    bad = [f for f in flags if f in {"--out", "--shard"} or f.startswith(("--out=", "--shard="))]
    if bad:
        parser.error(f"{bad[0]} is set by the slurm command for each task; leave it out")
    args.flags = absolute_paths(flags)
    args.out = args.out.resolve()
    args.work = (args.work or args.out.with_name(args.out.name + ".slurm")).resolve()
    if args.work == args.out or args.out in args.work.parents:
        parser.error(f"--work {args.work} is inside --out {args.out}, which the merge must "
                     "find empty: give a --work outside it")
    return args


# The tasks run in the repository (grade.sbatch cds there, so that `python -m grading` is
# this checkout's), not where the instructor typed the command: a relative path given to
# them, as an option or in the environment sbatch passes on, is made absolute here.
PATH_FLAGS = {"--theme", "--model", "--keep-work"}  # theme, model: a name unless it exists
PATH_ENV = ("LABKIT_THEME", "LABKIT_MODEL", "LABKIT_CACHE", "HF_HOME", "HF_HUB_CACHE")


def absolute_paths(flags: list[str]) -> list[str]:
    """The task's options with each relative path (`--theme my.toml`, `--model=./m`) made
    absolute; names (`--theme plain`, `--model gpt2`) are left as they are."""
    out = []
    for n, flag in enumerate(flags):
        name, eq, value = flag.partition("=")
        if eq and name in PATH_FLAGS:
            out.append(f"{name}={_absolute(name, value)}")
        elif n and flags[n - 1] in PATH_FLAGS:
            out.append(_absolute(flags[n - 1], flag))
        else:
            out.append(flag)
    return out


def tasks_environment(env) -> dict:
    """The environment sbatch passes to every task, its relative paths made absolute
    (grade.sbatch exports them too: a task resubmitted by hand from elsewhere sees them)."""
    return {**env, **{k: _absolute(k, env[k]) for k in PATH_ENV if env.get(k)}}


def _absolute(name: str, value: str) -> str:
    must_exist = name in {"--theme", "--model", "LABKIT_THEME", "LABKIT_MODEL"}
    path = Path(value).expanduser()
    if path.is_absolute() or (must_exist and not path.exists()):
        return value
    return str(path.resolve())


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
        tasks=args.tasks, work=shlex.quote(str(args.work)), name=f"grading-{args.out.name}",
        cpus=args.cpus_per_task, exports="".join(
            f"export {k}={shlex.quote(v)}\n" for k, v in tasks_environment(os.environ).items()
            if k in PATH_ENV),
        mem=args.mem, time=args.time, repo=shlex.quote(str(REPO)),
        python=shlex.quote(sys.executable), flags=" ".join(map(shlex.quote, args.flags)),
        extra="".join(f"#SBATCH {a}\n" for a in extra + args.sbatch_arg)), encoding="utf-8")
    return script


def earlier_run(out: Path, work: Path) -> str | None:
    """Why this run would mix with an earlier one's results, or None. Checked before the
    array is submitted: `merge` would refuse a used --out only after every task ran, and an
    earlier array (queued, running or done) writes the same parts and reads the same list."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return f"--out {out} exists and is not empty (an earlier merge?): give a new folder"
    parts = work / "parts"  # `job` is written once sbatch has taken the array
    if (work / "job").exists() or (parts.is_dir() and any(parts.iterdir())):
        job = (work / "job").read_text().strip() if (work / "job").is_file() else "?"
        return (f"{work} belongs to an earlier array (job {job}; `squeue --me` shows it while "
                f"it runs). When it is done, merge it: python -m grading merge "
                f"{shlex.quote(str(work / 'parts'))}/* --out {shlex.quote(str(out))}; to grade "
                f"the class again, give another --work (or remove {work} once it has ended)")
    return None


def main(argv: list[str], task_options) -> int:
    """`task_options`: `python -m grading`'s own argument parser (grading.__main__ passes
    it), which reads the options after -- here as each task will: a typo stops here, not in
    every task after a trip through the queue."""
    from labkit.themes import ThemeError, load_theme

    from .merge import merge_and_say

    args = parse_args(argv)
    clash = earlier_run(args.out, args.work)
    if clash:
        print(f"grading slurm: {clash}; nothing was submitted", file=sys.stderr)
        return 2
    try:  # options or a theme (--theme, else LABKIT_THEME) every task would stop on
        load_theme(task_options(["SUBMISSION", "--out", "OUT", *args.flags]).theme)
    except SystemExit:  # grading's parser said why, with its usage
        print("grading slurm: the options after -- are the tasks' `python -m grading` "
              "options (above); nothing was submitted", file=sys.stderr)
        return 2
    except ThemeError as exc:
        print(f"grading slurm: {exc}\n(the class's theme: -- --theme FILE.toml, or "
              "LABKIT_THEME); nothing was submitted", file=sys.stderr)
        return 2
    if shutil.which("sbatch") is None:
        print("grading slurm: sbatch not found: run this on the cluster's login node",
              file=sys.stderr)
        return 2
    if args.tasks > len(args.submissions):  # a task with no submission only starts up
        print(f"grading slurm: {args.tasks} tasks for {len(args.submissions)} submission(s): "
              f"using {len(args.submissions)}, one each", file=sys.stderr)
        args.tasks = len(args.submissions)
    try:
        script = write_script(args)
    except ValueError as exc:
        print(f"grading slurm: {exc}", file=sys.stderr)
        return 2
    parts = [args.work / "parts" / str(k) for k in range(1, args.tasks + 1)]
    merge_cmd = (f"python -m grading merge {' '.join(shlex.quote(str(p)) for p in parts)} "
                 f"--out {shlex.quote(str(args.out))}")
    print(f"submitting {script} ({args.tasks} tasks)", file=sys.stderr, flush=True)
    proc = subprocess.Popen(["sbatch", "--parsable", *([] if args.no_wait else ["--wait"]),
                             str(script)], text=True, stdout=subprocess.PIPE,
                            env=tasks_environment(dict(os.environ)))
    job = proc.stdout.readline().strip().split(";")[0]  # sbatch prints it on submitting
    if not job:
        proc.wait()
        print(f"grading slurm: sbatch did not submit the array (exit {proc.returncode}; its "
              f"message is above); nothing runs. The script: {script} (run the command "
              "again once that is fixed)", file=sys.stderr)
        return 2
    (args.work / "job").write_text(f"{job}\n")
    if args.no_wait:
        proc.wait()
        print(f"submitted array job {job}; when it is done: {merge_cmd}", file=sys.stderr)
        return 0
    print(f"submitted array job {job}; waiting for its {args.tasks} tasks (logs: "
          f"{args.work / 'logs'}; Ctrl-C stops waiting, not the job)", file=sys.stderr,
          flush=True)
    try:
        returncode = wait_saying_progress(proc, parts)
    except KeyboardInterrupt:
        proc.kill()
        print(f"\ngrading slurm: stopped waiting; job {job} still runs in Slurm (`scancel "
              f"{job}` stops it). When it is done: {merge_cmd}", file=sys.stderr)
        return 130
    if returncode != 0:
        print(f"grading slurm: job {job}: a task failed (sbatch exit {returncode}); see "
              f"{args.work / 'logs'}", file=sys.stderr)
    return merge_and_say(parts, args.out, "grading slurm")


def wait_saying_progress(proc: subprocess.Popen, parts: list[Path], every: float = 5.0) -> int:
    """Wait for `sbatch --wait`, saying how many parts have finished (a part writes its
    batch.json last) whenever that changes. Returns sbatch's exit status."""
    said = 0
    while True:
        try:
            returncode = proc.wait(timeout=every)
        except subprocess.TimeoutExpired:
            returncode = None
        done = sum((part / MANIFEST).is_file() for part in parts)
        if done != said:
            said = done
            print(f"{done}/{len(parts)} part(s) finished", file=sys.stderr, flush=True)
        if returncode is not None:
            return returncode
