"""`SubmissionResult`: everything the grader found about one submission, as one typed record,
and every way it is shown: Gradescope's results.json (the one writer), feedback.md, the
summary line, and the class gradebook's row. `merge` reads it back (`from_dict`).
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import rubric
from .gradescope_format import VISIBILITIES
from .results import CheckResult

# internal placeholders that must never reach a student (plain text wherever shown)
PLACEHOLDERS = {"<work>": "the submission's work folder"}
GRADEBOOK_FIELDS = ["submission", "score", "max_score", "step1", "step2", "step3", "step4",
                    "seconds", "problems", "source"]


@dataclass
class NotebookRun:
    """What happened when one notebook ran: status is ok, error, timeout, died, invalid,
    missing or skipped."""

    step: int
    notebook: str
    status: str
    message: str = ""
    seconds: float = 0.0


@dataclass
class SubmissionResult:
    name: str
    source: str
    steps: list[CheckResult] = field(default_factory=list)
    runs: list[NotebookRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    isolation: str = ""
    reflections: list[dict] = field(default_factory=list)  # written answers, for a person
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(s.score for s in self.steps)

    @property
    def max_score(self) -> float:
        """The graded steps' points (a single-step submission is out of that step's)."""
        return sum(rubric.max_points(s) for s in [s.step for s in self.steps] or [1, 2, 3, 4])

    @classmethod
    def failed(cls, name: str, source, why: str) -> "SubmissionResult":
        """The grader itself failed on this submission: 0 points, saying why."""
        return cls(name, str(source), notes=[f"the grader failed on this submission: {why}"])

    def to_dict(self) -> dict:
        return {**asdict(self), "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict) -> "SubmissionResult":
        return cls(**{**data, "steps": [CheckResult.from_dict(s) for s in data["steps"]],
                      "runs": [NotebookRun(**r) for r in data["runs"]]})

    # ------------------------------------------------------------------------- renderings
    def gradescope(self, integrity_visibility: str = "visible",
                   reflections_visibility: str = "hidden") -> dict:
        """Gradescope's results.json: one test per rubric item, plus the notebook runs and
        the written answers (0 points, for a person to grade). `integrity_visibility`
        ("after_published": shown with the published grades) applies to the
        auto-grader-only items. The total possible goes to extra_data (the format has no
        top-level max_score). All output is plain text."""
        for name, value in (("integrity_visibility", integrity_visibility),
                            ("reflections_visibility", reflections_visibility)):
            if value not in VISIBILITIES:
                raise ValueError(f"{name} must be one of {', '.join(VISIBILITIES)}, not "
                                 f"{value!r}")
        tests = [{"name": f"Step {s.step} ({rubric.STEP_TITLES[s.step]}): {i.name}",
                  "number": f"{s.step}.{n}", "score": i.earned, "max_score": i.points,
                  "output_format": "text", "status": "passed" if i.passed else "failed",
                  "visibility": integrity_visibility if i.integrity else "visible",
                  "output": plain(i.message)}
                 for s in self.steps for n, i in enumerate(s.items, 1)]
        tests += [{"name": f"Run {r.notebook}", "score": 0, "max_score": 0,
                   "visibility": "visible", "output_format": "text",
                   "status": "passed" if r.status == "ok" else "failed",
                   "output": plain(f"{r.status}: {r.message or 'ran to the end'} "
                                   f"({r.seconds:.1f} s)")} for r in self.runs]
        tests += [{"name": f"Written answer {row['id']} ({row.get('notebook', '')})"
                   .replace(" ()", ""), "number": f"5.{n}", "score": 0, "max_score": 0,
                   "visibility": reflections_visibility, "output_format": "text",
                   "output": row["question"] + "\n\n" + (row["answer"] if row["answered"]
                                                         else "(not answered)")}
                  for n, row in enumerate(self.reflections, 1)]
        return {"score": self.score, "execution_time": int(round(self.seconds)),
                "output": self.summary(shown_now=integrity_visibility == "visible"),
                "output_format": "text", "test_output_format": "text",
                "visibility": "visible", "stdout_visibility": "hidden",
                "extra_data": {"max_score": self.max_score}, "tests": tests}

    def summary(self, shown_now: bool = True) -> str:
        """Per-step scores; when the integrity items are shown later (`shown_now` False),
        only the points of the items shown now, so the summary does not give them away."""
        lines = []
        for s in self.steps:
            title = rubric.STEP_TITLES[s.step]
            if shown_now:
                lines.append(f"{title}: {s.status} ({s.score:g}/{s.max_score:g})")
                continue
            shown = [i for i in s.items if not i.integrity]
            lines.append(f"{title}: {sum(i.earned for i in shown):g}/"
                         f"{sum(i.points for i in shown):g} on the checks shown now")
        if not shown_now:
            lines.append("The auto-grader's integrity checks are shown when grades are "
                         "published.")
        lines += [f"{r.notebook}: {r.status} {r.message}".rstrip() for r in self.runs
                  if r.status != "ok"]
        return plain("\n".join(lines + self.notes))

    def feedback(self) -> str:
        """feedback.md: per step a table of items, the hints, the runs, the written
        answers, the notes and the isolation the notebooks ran under."""
        lines = [f"# Feedback: {self.name}", ""]
        for s in self.steps:
            lines += [f"## Step {s.step} - {rubric.STEP_TITLES[s.step]}: {s.status} "
                      f"({s.score:g}/{s.max_score:g})", "",
                      "| | check | points | details |", "|---|---|---|---|"]
            lines += [f"| {'pass' if i.passed else 'FAIL'} | {i.name} | {i.earned:g}/"
                      f"{i.points:g} | {_cell(i.message)} |" for i in s.items]
            lines += [""] + [f"Hint: {plain(h)}" for h in s.hints] + [""]
        if self.runs:
            lines += ["## Notebook runs", ""] + [
                f"- {r.notebook}: {r.status} ({r.seconds:.1f} s) {plain(r.message)}".rstrip()
                for r in self.runs] + [""]
        if self.reflections:
            from labkit.reflections import answers_markdown

            lines += ["## Written answers (read by your instructor; no automatic points)", "",
                      answers_markdown(self.reflections)]
        if self.notes:
            lines += ["## Notes", ""] + [f"- {plain(n)}" for n in self.notes] + [""]
        return "\n".join(lines + [f"Isolation: {self.isolation or 'n/a'}", ""])

    def gradebook_row(self) -> dict:
        steps = {s.step: s.score for s in self.steps}
        problems = [f"{r.notebook}: {r.status}" for r in self.runs if r.status != "ok"]
        problems += [n for n in self.notes if n.startswith(("the grader failed", "refused"))]
        return {"submission": self.name, "score": self.score, "max_score": self.max_score,
                **{f"step{k}": steps.get(k, "") for k in range(1, 5)},
                "seconds": round(self.seconds, 1), "problems": "; ".join(problems),
                "source": self.source}


def plain(text: str) -> str:
    """`text` without internal placeholders (a Markdown or HTML view would swallow them)."""
    for placeholder, words in PLACEHOLDERS.items():
        text = text.replace(placeholder, words)
    return text


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (or line), without placeholders."""
    return plain(text).replace("|", "\\|").replace("\n", " ")


def write_gradebook(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=GRADEBOOK_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
