"""Packaging stays consistent: conda and pip list the same packages, the README starts with
`make run` and `make test`, and CI installs the CPU torch before anything else."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONDA_ONLY = {"python", "pip"}  # the interpreter and installer, not project packages


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pyproject_requirements() -> dict[str, Requirement]:
    project = pyproject()["project"]
    specs = list(project["dependencies"])
    for group in project.get("optional-dependencies", {}).values():
        specs.extend(group)
    reqs = [Requirement(s) for s in specs]
    return {canonicalize_name(r.name): r for r in reqs}


def conda_requirements() -> dict[str, Requirement]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    found: dict[str, Requirement] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                if spec.startswith("-"):       # "-e .", "--index-url ..." are options
                    continue
                req = Requirement(spec)
                found[canonicalize_name(req.name)] = req
        else:
            name = re.split(r"[=<>!~ ]", dep, maxsplit=1)[0]
            if canonicalize_name(name) not in CONDA_ONLY:
                found[canonicalize_name(name)] = Requirement(name)
    return found


def test_environment_yml_and_pyproject_list_the_same_packages():
    pip, conda = pyproject_requirements(), conda_requirements()
    assert "pytest" in pip and "torch" in pip  # the test extra is included
    assert set(conda) == set(pip), (
        f"only in environment.yml: {sorted(set(conda) - set(pip))}; "
        f"only in pyproject.toml: {sorted(set(pip) - set(conda))}")


def test_environment_yml_and_pyproject_agree_on_versions():
    pip, conda = pyproject_requirements(), conda_requirements()
    differ = {name: (str(conda[name].specifier), str(pip[name].specifier))
              for name in set(pip) & set(conda) if conda[name].specifier != pip[name].specifier}
    assert not differ, f"version ranges differ (environment.yml, pyproject.toml): {differ}"


def test_environment_yml_installs_the_project_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_lists and "-e ." in pip_lists[0]


def test_pytest_markers_are_declared():
    markers = pyproject()["tool"]["pytest"]["ini_options"]["markers"]
    declared = {m.split(":", 1)[0].strip() for m in markers}
    assert {"slow", "gpu"} <= declared


def _code_block_commands(markdown: str) -> list[str]:
    """Command lines of the fenced code blocks, in order (comments and prompts removed)."""
    commands, in_block = [], False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            command = line.split(" #", 1)[0].strip()
            command = command[2:] if command.startswith("$ ") else command
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_readme_starts_with_make_run_and_make_test():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    commands = _code_block_commands(readme.read_text(encoding="utf-8"))
    assert commands[:2] == ["make run", "make test"], commands[:4]


def test_makefile_has_the_readme_targets():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


def _ci_commands() -> list[list[str]]:
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(shlex.split(line))
    return commands


def _installed_packages(argv: list[str]) -> list[str]:
    """Packages a `... pip install ...` command line installs (options dropped)."""
    if "pip" not in argv or "install" not in argv[argv.index("pip"):]:
        return []
    args = argv[argv.index("install", argv.index("pip")) + 1:]
    return [a for a in args if not a.startswith("-")]


def test_ci_installs_cpu_torch_first_then_runs_make_test():
    commands = _ci_commands()
    installs = [(i, pkgs) for i, argv in enumerate(commands)
                for pkgs in [_installed_packages(argv)] if pkgs and pkgs != ["pip"]]
    assert installs, "CI installs nothing with pip"
    first_index, first_packages = installs[0]
    assert first_packages == ["torch==2.13.0"], (
        f"the first package install in .ci/run must be torch==2.13.0, got {first_packages}")
    make_test = [i for i, argv in enumerate(commands) if argv[:2] == ["make", "test"]]
    assert make_test, ".ci/run must call `make test`"
    assert first_index < make_test[0]
    # and the Makefile installs the very same torch build, before the project
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^TORCH_CPU\s*:?=\s*torch==2\.13\.0\s*$", makefile, re.MULTILINE)


def test_ci_script_is_executable_and_strict():
    script = ROOT / ".ci" / "run"
    assert script.stat().st_mode & 0o111, ".ci/run must be executable"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!") and "set -euo pipefail" in text
    assert re.search(r"HF_HUB_OFFLINE=1", text)
