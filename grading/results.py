"""A step's scored result (CheckItem, CheckResult) and every way it is shown: text and HTML
in a notebook, Gradescope's results.json, feedback.md and the class gradebook CSV.

Points and integrity flags come from the rubric (`scored`), so a result can only hold the
items the rubric defines.
"""
from __future__ import annotations

import csv
import html
from dataclasses import dataclass, field
from pathlib import Path

from . import rubric
from .rubric import NOT_DONE, STEP_TITLES


@dataclass
class CheckItem:
    name: str
    points: float
    passed: bool
    message: str
    integrity: bool = False

    @property
    def earned(self) -> float:
        return self.points if self.passed else 0.0


@dataclass
class CheckResult:
    """One step's grade. `status` is 'passed', 'failed' or 'not done yet'; `pending` names
    the integrity items only the auto-grader runs (not scored here)."""

    step: int
    items: list[CheckItem]
    hints: list[str] = field(default_factory=list)
    status: str = ""
    pending: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.status = self.status or ("passed" if self.passed else "failed")

    @property
    def passed(self) -> bool:
        return all(i.passed for i in self.items)

    @property
    def score(self) -> float:
        return sum(i.earned for i in self.items)

    @property
    def max_score(self) -> float:
        return sum(i.points for i in self.items)

    def add(self, items: list[CheckItem]) -> None:
        """Add (integrity) items; the status follows unless the step was not done at all."""
        self.items.extend(items)
        self.pending = [p for p in self.pending if p not in {i.name for i in items}]
        if self.status != NOT_DONE:
            self.status = "passed" if self.passed else "failed"

    def to_dict(self) -> dict:
        return {"step": self.step, "title": STEP_TITLES[self.step], "status": self.status,
                "passed": self.passed, "score": self.score, "max_score": self.max_score,
                "items": [{**i.__dict__, "earned": i.earned} for i in self.items],
                "hints": self.hints, "pending": self.pending}

    def __str__(self) -> str:
        head = (f"Step {self.step} - {STEP_TITLES[self.step]}: {self.status.upper()} "
                f"({self.score:g}/{self.max_score:g} points)")
        lines = [head] + [f"  [{'x' if i.passed else ' '}] {i.name} ({i.earned:g}/{i.points:g})"
                          f": {i.message}" for i in self.items]
        lines += [f"  Hint: {h}" for h in self.hints]
        if self.pending:
            lines.append(f"  The auto-grader also checks: {', '.join(self.pending)}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = {"passed": "#1a7f37", "failed": "#cf222e"}.get(self.status, "#9a6700")
        rows = "".join(
            f"<tr><td>{'&#10004;' if i.passed else '&#10008;'}</td><td><code>{i.name}</code>"
            f"</td><td>{i.earned:g}/{i.points:g}</td><td>{html.escape(i.message)}</td></tr>"
            for i in self.items)
        hints = "".join(f"<li>{html.escape(h)}</li>" for h in self.hints)
        pending = (f"<p><i>The auto-grader also checks: {html.escape(', '.join(self.pending))}"
                   "</i></p>" if self.pending else "")
        return (f"<div><h4 style='color:{colour}'>Step {self.step} &mdash; "
                f"{html.escape(STEP_TITLES[self.step])}: {self.status} "
                f"({self.score:g}/{self.max_score:g} points)</h4><table><tr><th></th>"
                f"<th>check</th><th>points</th><th>details</th></tr>{rows}</table>"
                f"{'<ul>' + hints + '</ul>' if hints else ''}{pending}</div>")

    def _ipython_display_(self):
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        count = getattr(shell, "execution_count", None)
        if count is not None and getattr(self, "_shown_in", None) == count:
            return  # grading.check already displayed it in this cell
        self._shown_in = count
        display({"text/html": self._repr_html_(), "text/plain": str(self)}, raw=True)


# ----------------------------------------------------------------------------- building
def scored(step: int, name: str, passed: bool, message: str) -> CheckItem:
    """A rubric item's result: points and integrity flag come from the rubric."""
    spec = rubric.item(step, name)
    return CheckItem(name, spec.points, bool(passed), message, spec.integrity)


def step_result(step: int, items: list[CheckItem], status: str = "") -> CheckResult:
    """A step's result with the rubric's hint when something failed and its integrity
    items listed as pending (the auto-grader adds them)."""
    hints = [] if all(i.passed for i in items) else [rubric.NOT_DONE_HINTS[step]]
    return CheckResult(step, items, hints, status,
                       [i.name for i in rubric.items_for(step, integrity=True)])


def all_failed(step: int, message: str, status: str = "") -> CheckResult:
    return step_result(step, [scored(step, i.name, False, message)
                              for i in rubric.items_for(step, integrity=False)], status)


def not_done(step: int, missing: str) -> CheckResult:
    return all_failed(step, f"{NOT_DONE}: {missing} is missing", NOT_DONE)


# ----------------------------------------------------------------------------- rendering
VISIBILITIES = ("visible", "after_published", "after_due_date", "hidden")  # Gradescope's
# internal placeholders that must never reach a student (plain text wherever shown)
PLACEHOLDERS = {"<work>": "the submission's work folder"}


def plain(text: str) -> str:
    """`text` without internal placeholders (a Markdown or HTML view would swallow them)."""
    for placeholder, words in PLACEHOLDERS.items():
        text = text.replace(placeholder, words)
    return text


def gradescope(record: dict, integrity_visibility: str = "visible",
               reflections_visibility: str = "hidden") -> dict:
    """Gradescope's results.json: one test per rubric item, plus the notebook runs and the
    written answers (0 points, for a person to grade). `integrity_visibility`
    ("after_published": shown with the published grades) applies to the auto-grader-only
    items; all output is plain text."""
    for name, value in (("integrity_visibility", integrity_visibility),
                        ("reflections_visibility", reflections_visibility)):
        if value not in VISIBILITIES:
            raise ValueError(f"{name} must be one of {', '.join(VISIBILITIES)}, not {value!r}")
    tests = []
    for step in record["steps"]:
        for n, item in enumerate(step["items"], 1):
            tests.append({"name": f"Step {step['step']} ({step['title']}): {item['name']}",
                          "number": f"{step['step']}.{n}", "score": item["earned"],
                          "max_score": item["points"], "output_format": "text",
                          "visibility": (integrity_visibility if item.get("integrity")
                                         else "visible"),
                          "status": "passed" if item["passed"] else "failed",
                          "output": plain(item["message"])})
    for run in record["runs"]:
        tests.append({"name": f"Run {run['notebook']}", "score": 0, "max_score": 0,
                      "visibility": "visible", "output_format": "text",
                      "status": "passed" if run["status"] == "ok" else "failed",
                      "output": plain(f"{run['status']}: {run['message'] or 'ran to the end'} "
                                      f"({run['seconds']:.1f} s)")})
    tests += [{**t, "number": f"5.{n}", "output_format": "text"} for n, t in
              enumerate(_reflection_tests(record, reflections_visibility), 1)]
    graded = [s["step"] for s in record["steps"]] or [1, 2, 3, 4]
    return {"score": sum(s["score"] for s in record["steps"]),
            "max_score": sum(rubric.max_points(s) for s in graded),
            "execution_time": round(record["seconds"], 1),
            "output": summary(record, shown_now=integrity_visibility == "visible"),
            "output_format": "text", "test_output_format": "text",
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}


def _reflection_tests(record: dict, visibility: str) -> list[dict]:
    from labkit.reflections import gradescope_tests

    return gradescope_tests(record.get("reflections") or [], visibility)


def summary(record: dict, shown_now: bool = True) -> str:
    """Per-step scores; when the integrity items are shown later (`shown_now` False), only
    the points of the items shown now, so the summary does not give them away."""
    lines = []
    for s in record["steps"]:
        if shown_now:
            lines.append(f"{s['title']}: {s['status']} ({s['score']:g}/{s['max_score']:g})")
            continue
        shown = [i for i in s["items"] if not i.get("integrity")]
        lines.append(f"{s['title']}: {sum(i['earned'] for i in shown):g}/"
                     f"{sum(i['points'] for i in shown):g} on the checks shown now")
    if not shown_now:
        lines.append("The auto-grader's integrity checks are shown when grades are published.")
    lines += [f"{r['notebook']}: {r['status']} {r['message']}".rstrip() for r in record["runs"]
              if r["status"] != "ok"]
    return plain("\n".join(lines + record["notes"]))


def feedback(record: dict) -> str:
    lines = [f"# Feedback: {record['name']}", ""]
    for step in record["steps"]:
        lines += [f"## Step {step['step']} - {step['title']}: {step['status']} "
                  f"({step['score']:g}/{step['max_score']:g})", "",
                  "| | check | points | details |", "|---|---|---|---|"]
        lines += [f"| {'pass' if i['passed'] else 'FAIL'} | {i['name']} | {i['earned']:g}/"
                  f"{i['points']:g} | {_cell(i['message'])} |" for i in step["items"]]
        lines += [""] + [f"Hint: {plain(h)}" for h in step["hints"]] + [""]
    if record["runs"]:
        lines += ["## Notebook runs", ""] + [
            f"- {r['notebook']}: {r['status']} ({r['seconds']:.1f} s) {plain(r['message'])}"
            .rstrip() for r in record["runs"]] + [""]
    if record.get("reflections"):
        from labkit.reflections import answers_markdown

        lines += ["## Written answers (read by your instructor; no automatic points)", "",
                  answers_markdown(record["reflections"])]
    if record["notes"]:
        lines += ["## Notes", ""] + [f"- {plain(n)}" for n in record["notes"]] + [""]
    lines += [f"Isolation: {record['isolation'] or 'n/a'}", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (or line), without placeholders."""
    return plain(text).replace("|", "\\|").replace("\n", " ")


def gradebook_row(record: dict, results: dict) -> dict:
    steps = {s["step"]: s["score"] for s in record["steps"]}
    problems = [f"{r['notebook']}: {r['status']}" for r in record["runs"] if r["status"] != "ok"]
    problems += [n for n in record["notes"] if n.startswith(("the grader failed", "refused"))]
    return {"submission": record["name"], "score": results["score"],
            "max_score": results["max_score"],
            **{f"step{k}": steps.get(k, "") for k in range(1, 5)},
            "seconds": round(record["seconds"], 1), "problems": "; ".join(problems),
            "source": record["source"]}


def write_gradebook(path: Path, rows: list[dict]) -> None:
    fields = ["submission", "score", "max_score", "step1", "step2", "step3", "step4",
              "seconds", "problems", "source"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
