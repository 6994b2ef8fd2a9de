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


# ----------------------------------------------------------------------------- structure
ROOT = LABKIT.parent
PACKAGES = ("labkit", "grading")


def module_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at the top or inside a function). A
    `from . import x` of a submodule depends on x, not on the package's __init__."""
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {name: set() for name in mods}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                found = subs if len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {m for m in found if m in mods and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(module_graph()) == []


def test_the_circle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    assert long == {}


def test_the_checks_never_import_the_runners():
    """grading.checks is what a notebook imports: pure checks, nothing that runs untrusted
    code (grading.run imports the checks, never the other way round)."""
    graph = module_graph()
    offenders = {name: sorted(m for m in deps if m.startswith("grading.run"))
                 for name, deps in graph.items() if name.startswith("grading.checks")}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert any(m.startswith("grading.checks") for m in graph["grading.run.student_code"])
