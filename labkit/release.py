"""Make the student version of the notebooks from the solution version.

One source, two versions: code between `### BEGIN SOLUTION` and `### END SOLUTION` is
replaced by `# YOUR CODE HERE` and a `NotImplementedError` naming the exercise (taken from
the `# Exercise N.M: ...` comment above the block), so a student running top to bottom stops
at the first unfinished exercise with a message that says which one. Written-answer cells
(`**Your answer:**`, see labkit.reflections) keep their question; the sample answer becomes
the placeholder.
"""
from __future__ import annotations

import re
from pathlib import Path

from .bundle import INSTALL_CELL
from .reflections import MARKER, blank_answer

# the solution notebooks: inside the package when installed from the wheel, else the
# checkout's notebooks/ (pyproject.toml maps one onto the other)
_PACKAGED = Path(__file__).resolve().parent / "notebooks"
NOTEBOOKS_DIR = _PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent / "notebooks"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
EXERCISE = re.compile(r"#\s*(Exercise\s+\d+\.\d+)\s*:?\s*(.*)")


class ReleaseError(ValueError):
    """A notebook's solution markers are malformed."""


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace each solution block in one cell's source, keeping its indentation."""
    lines, out, exercise, inside = source.split("\n"), [], "This exercise is not done yet", False
    for number, line in enumerate(lines, start=1):
        match = EXERCISE.search(line)
        if match and not inside:
            exercise = match.group(1) + " is not done yet" + (
                f": {match.group(2).strip()}" if match.group(2).strip() else "")
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ReleaseError(f"{where}, line {number}: nested {BEGIN}")
            inside, indent = True, line[:len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE",
                    f"{indent}raise NotImplementedError({exercise!r})"]
        elif stripped == END:
            if not inside:
                raise ReleaseError(f"{where}, line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ReleaseError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out)


def release_notebook(source: Path, target: Path) -> int:
    """Write the student version of one notebook; returns the number of exercises."""
    import nbformat  # here, not at the top: `python -m grading` imports this module first

    nb = nbformat.read(source, as_version=4)
    count = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and BEGIN in cell.source:
            count += cell.source.count(BEGIN)
            cell.source = strip_solutions(cell.source, f"{source.name} cell {index}")
        if cell.cell_type == "markdown" and MARKER in cell.source:   # sample answers out
            cell.source = blank_answer(cell.source)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells.insert(0, nbformat.v4.new_code_cell(INSTALL_CELL))  # the lab, where it is missing
    nb.metadata.pop("widgets", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return count


def release(source_dir: Path, out_dir: Path) -> dict[str, int]:
    """Student versions of every notebook in `source_dir` -> `out_dir`."""
    notebooks = sorted(Path(source_dir).glob("[0-9]*.ipynb"))
    if not notebooks:
        raise ReleaseError(f"no numbered notebooks in {source_dir}")
    return {nb.name: release_notebook(nb, Path(out_dir) / nb.name) for nb in notebooks}
