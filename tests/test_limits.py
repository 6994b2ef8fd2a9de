"""A grader limit reached by a notebook is named to the student, with its value: the
feedback says "the grader allows at most 40 processes", not only a raw errno. Each case
runs a real one-cell notebook in a real sandbox (`execute_notebook` with a `Sandbox`)."""
from __future__ import annotations

import argparse
import os

import nbformat
import pytest

from grading.run.kernel import execute_notebook, limit_reached
from grading.run.limits import Limits
from grading.run.sandbox import Sandbox


def run_cell(tmp_path, code: str, limits: Limits):
    box = Sandbox(tmp_path / "box", "teaching", limits).create()
    path = box.lab / "01_baseline.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), str(path))
    try:
        return execute_notebook(path, 1, cell_timeout=120, box=box), box
    finally:
        box.release()


@pytest.mark.slow
def test_the_process_limit_is_named(tmp_path):
    swarm = ("import subprocess\nfor _ in range(200):\n"
             "    subprocess.Popen(['sleep', '30'])\n")
    run, box = run_cell(tmp_path, swarm, Limits(processes=40))
    if box.cgroup is False and os.geteuid() == 0 and not box.namespaces:
        pytest.skip("root without a pids cgroup or namespaces: no process limit binds here")
    assert run.status == "error", run
    assert "the grader allows at most 40 processes and threads per notebook" in run.message


@pytest.mark.slow
def test_the_memory_limit_is_named(tmp_path):
    run, _ = run_cell(tmp_path, "block = bytearray(3 * 2**30)\n", Limits(memory_gb=1.5))
    assert run.status in ("error", "died"), run
    assert "1.5 GB" in run.message and "memory" in run.message, run.message


@pytest.mark.slow
def test_the_file_size_limit_is_named(tmp_path):
    code = "open('big', 'wb').write(b'x' * 3_000_000)\n"
    run, _ = run_cell(tmp_path, code, Limits(file_gb=0.001))
    assert run.status == "error", run
    assert "the grader allows files of at most 0.001 GB" in run.message


def test_each_limit_is_recognised_from_its_error_line():
    limits = Limits(processes=7, memory_gb=2, disk_gb=3, file_gb=1)
    assert "at most 7 processes" in limit_reached(
        "BlockingIOError: [Errno 11] Resource temporarily unavailable", limits)
    assert "2 GB of memory" in limit_reached("MemoryError: ", limits)
    assert "3 GB in the work folder" in limit_reached(
        "OSError: [Errno 28] No space left on device", limits)
    assert "files of at most 1 GB" in limit_reached("OSError: [Errno 27] File too large", limits)
    assert limit_reached("ValueError: bad pairs", limits) is None


def test_cli_defaults_come_from_the_limits_record():
    parser = argparse.ArgumentParser()
    Limits.add_arguments(parser)
    args = parser.parse_args(["--processes", "9"])
    assert Limits.from_args(args) == Limits(processes=9)
    with pytest.raises(ValueError, match="--timeout must be positive"):
        Limits.from_args(parser.parse_args(["--timeout", "0"]))
