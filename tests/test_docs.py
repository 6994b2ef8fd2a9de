"""The docs cannot drift from the code: the generated ones (docs/rubric.md, docs/cli.md) equal
what `python -m grading.docs` makes now, docs/architecture.md names every module, the limits
the docs quote are the grader's defaults, links resolve, and README stays short."""
from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import pytest

from grading import docs
from grading.checks import rubric
from grading.run.limits import Limits

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGES = ("labkit", "grading", "bench")
MODULE_PATH = re.compile(r"`((?:labkit|grading|bench)/[\w/]+\.(?:py|sh))`")


def _committed(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


def _stale_message(rel: str) -> str:
    return f"{rel} is out of date: run `{docs.REGENERATE}` and commit it"


def test_rubric_doc_is_generated_from_the_rubric():
    assert _committed("docs/rubric.md") == docs.rubric_doc(), _stale_message("docs/rubric.md")
    assert rubric.as_markdown() in _committed("docs/rubric.md")


def test_rubric_doc_goes_stale_when_the_rubric_changes(monkeypatch):
    changed = tuple(replace(i, points=i.points + 1) if i.name == "outputs" else i
                    for i in rubric.RUBRIC)
    monkeypatch.setattr(rubric, "RUBRIC", changed)
    text = docs.rubric_doc()
    assert text != _committed("docs/rubric.md")
    assert "| 1 | outputs | 6 |" in text and text.startswith("# Rubric (101 points, by step)")


def test_cli_doc_is_every_commands_help():
    text = docs.cli_doc()
    assert _committed("docs/cli.md") == text, _stale_message("docs/cli.md")
    for command in docs.COMMANDS:
        assert f"## `python -m {' '.join(command)}`" in text
    words = " ".join(text.split())  # argparse wraps lines anywhere
    for f in fields(Limits):  # every limit flag, with the default Limits holds
        if f.metadata["flag"]:
            assert f.metadata["flag"] in words and f"(default {f.default:g})" in words


def test_stale_names_a_generated_file_that_differs(tmp_path, monkeypatch):
    monkeypatch.setattr(docs, "GENERATED", {"docs/a.md": lambda: "A\n", "docs/b.md": lambda: "B\n"})
    (tmp_path / "docs").mkdir()
    assert docs.write(tmp_path) == ["docs/a.md", "docs/b.md"]
    assert docs.stale(tmp_path) == []
    (tmp_path / "docs" / "a.md").write_text("A, edited by hand\n")
    (tmp_path / "docs" / "b.md").unlink()
    assert docs.stale(tmp_path) == ["docs/a.md", "docs/b.md"]


def _modules() -> list[str]:
    paths = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix in {".py", ".sh"} and "__pycache__" not in path.parts:
                paths.append(path.relative_to(ROOT).as_posix())
    return paths


def test_architecture_lists_every_module():
    listed = set(MODULE_PATH.findall(ARCHITECTURE.read_text(encoding="utf-8")))
    missing = [m for m in _modules() if m not in listed]
    assert not missing, f"docs/architecture.md: add each with its one job: {missing}"


def test_architecture_lists_no_module_that_is_gone():
    listed = set(MODULE_PATH.findall(ARCHITECTURE.read_text(encoding="utf-8")))
    assert sorted(m for m in listed if not (ROOT / m).exists()) == []


def test_the_module_check_sees_a_module_missing_from_the_doc():
    assert "grading/run/sandbox.sh" in _modules() and "labkit/themes/__init__.py" in _modules()
    assert "`grading/docs.py`" in ARCHITECTURE.read_text(encoding="utf-8")
    assert MODULE_PATH.findall("| `grading/run/new.py` | a job |") == ["grading/run/new.py"]


def _docs_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_limits_the_docs_quote_are_the_graders_defaults():
    defaults = {f.metadata["flag"]: f.default for f in fields(Limits) if f.metadata["flag"]}
    quoted = 0
    for page in _docs_pages():
        for flag, value in re.findall(r"(--[a-z-]+)\W{0,4}\(default ([0-9.]+)",
                                      page.read_text(encoding="utf-8")):
            if flag in defaults:
                quoted += 1
                assert float(value) == defaults[flag], f"{page.name}: {flag} default {value}"
    assert quoted >= 5  # instructors.md and security.md quote them


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", _docs_pages(), ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an external link
        rel, _, anchor = target.partition("#")
        dest = (page.parent / rel).resolve() if rel else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: {target}: no heading"


def test_readme_is_short_and_points_to_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README's Docs table: add docs/{page.name}"


def test_no_reference_to_the_old_corpus_page():
    for package in (*PACKAGES, "tests", "docs"):
        for path in (ROOT / package).rglob("*"):
            if path.suffix in {".py", ".md", ".toml"} and path.name != "test_docs.py":
                assert "docs/grading.md" not in path.read_text(encoding="utf-8"), path
