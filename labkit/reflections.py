"""Collect the written (reflection) answers from the notebooks, for the step-4 report and
the feedback a person grades (0 automatic points).

An answer cell is a markdown cell holding the question, then the line `**Your answer:**`
and the student's text after it. A cell still holding the placeholder counts as unanswered.
"""
from __future__ import annotations

import re
from pathlib import Path

MARKER = "**Your answer:**"
PLACEHOLDER = "_Double-click this cell and write your answer here._"
QUESTION_ID = re.compile(r"\*\*(R\d+\.\d+)\*\*")


def collect_answers(notebook_path: str | Path) -> list[dict]:
    """[{"id", "question", "answer", "answered"}] for every answer cell, in order. A notebook
    that cannot be read gives a ValueError naming it."""
    import nbformat

    try:
        nb = nbformat.read(str(notebook_path), as_version=4)
    except Exception as exc:  # nbformat raises several kinds on a damaged file
        raise ValueError(f"{Path(notebook_path).name} cannot be read: {exc}") from exc
    found = []
    for number, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or MARKER not in cell.source:
            continue
        question, _, answer = cell.source.partition(MARKER)
        answer = answer.replace(PLACEHOLDER, "").strip()
        match = QUESTION_ID.search(question)
        found.append({"id": match.group(1) if match else f"cell {number}",
                      "question": QUESTION_ID.sub("", question).strip(),
                      "answer": answer, "answered": bool(answer)})
    return found


def collect_all(notebooks) -> list[dict]:
    """Answers from several notebooks (paths), each row tagged with its notebook's name."""
    return [{"notebook": Path(path).name, **row} for path in notebooks
            for row in collect_answers(path)]


def answers_markdown(rows) -> str:
    """The answers as markdown, for feedback.md: question, then the answer or a note."""
    if not rows:
        return "_No written answers found._\n"
    parts = []
    for row in rows:
        text = row["answer"] if row["answered"] else "_(not answered)_"
        parts.append(f"**{row['id']}** {row['question']}\n\n> " + text.replace("\n", "\n> "))
    return "\n\n".join(parts) + "\n"


def blank_answer(source: str) -> str:
    """An answer cell with its answer replaced by the placeholder (the student release)."""
    question, found, _ = source.partition(MARKER)
    return f"{question}{MARKER} {PLACEHOLDER}" if found else source
