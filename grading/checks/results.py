"""A step's scored result (CheckItem, CheckResult), built from the rubric, and shown in a
notebook (text and HTML). A whole submission's result and its renderings: `report`.

Points and integrity flags come from the rubric (`scored`), so a result can only hold the
items the rubric defines.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

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

    @classmethod
    def from_dict(cls, data: dict) -> "CheckResult":
        """The result `to_dict` wrote (a graded part read back to be merged)."""
        items = [CheckItem(i["name"], i["points"], i["passed"], i["message"], i["integrity"])
                 for i in data["items"]]
        return cls(data["step"], items, list(data["hints"]), data["status"],
                   list(data["pending"]))

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
