"""The lower package never imports the upper one: no module of labkit imports grading
(not even lazily inside a function), and test/bench-only helpers stay out of labkit."""
from __future__ import annotations

import ast
from pathlib import Path

LABKIT = Path(__file__).resolve().parents[1] / "labkit"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_labkit_never_imports_grading():
    offenders = {path.name: sorted(m for m in imported_modules(path)
                                   if m.split(".")[0] in {"grading", "bench", "tests"})
                 for path in sorted(LABKIT.glob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_an_import_of_grading(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from grading import checks\n")
    assert "grading" in imported_modules(module)
