"""Judges: how a theme's preference is read from generated text, on any model.

Why: "did alignment work?" needs a measure of what the model *writes*, not only of the pairs
it trained on. A judge scores one text (higher = more like the preference) from plain text
statistics (`textstat` readability for *plain over jargon*, word counts for *concise*), or,
on the offline teaching model, from its own marker-word judge (`teaching.judge_style`: 1 when
the text reads as the preferred style, else 0). A theme's `[judge]` table names them:

    [judge]
    function = "reading_ease"    # any model's text
    teaching = "judge_style"     # optional: used instead while the teaching model is in use
    preferred = "plain"          # what the preference is called (a label judge's label)
    rejected = "jargon"          # optional: the other label
    prompts = [...]              # optional: step 4 samples these (default: theme prompts)

A judge is only trusted when it prefers `chosen` on at least MIN_AGREEMENT of the theme's own
example and held-out pairs, and its real-model pairs for the any-model `function`
(`agreement`); the theme loader refuses it otherwise.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import asdict, dataclass, replace

MIN_AGREEMENT = 0.9
READING_EASE_RANGE = (0.0, 100.0)   # Flesch's scale: 0 = very hard, 100 = very easy
_WORD = re.compile(r"[A-Za-z0-9'\-]+")


def reading_ease(text: str) -> float:
    """Flesch reading ease (textstat), clipped to its nominal 0-100: short words and
    sentences score higher. Unclipped, one unpunctuated 40-token sample scores -300 and
    swings its prompt's mean by 40 points; clipped, the verdicts stay and the intervals
    halve (docs/models.md)."""
    import textstat

    if not _WORD.search(text):
        return 0.0
    return min(READING_EASE_RANGE[1], max(READING_EASE_RANGE[0],
                                          float(textstat.flesch_reading_ease(text))))


def fewer_words(text: str) -> float:
    """Minus the number of words: a shorter answer scores higher."""
    return -float(len(_WORD.findall(text)))


def fewer_sentences(text: str) -> float:
    """Minus the number of sentences (textstat): fewer scores higher."""
    import textstat

    return -float(textstat.sentence_count(text)) if _WORD.search(text) else 0.0


# name -> (module, function, kind, what the score is). "label" judges return a label (the
# score is 1 for the preferred label, else 0); "score" judges return a number.
JUDGES = {
    "judge_style": ("labkit.teaching", "judge_style", "label",
                    "share of answers read as the preferred style (teaching model's markers)"),
    "reading_ease": ("labkit.judges", "reading_ease", "score",
                     "Flesch reading ease (higher = plainer)"),
    "word_count": ("labkit.judges", "fewer_words", "score",
                   "minus the word count (higher = shorter)"),
    "sentence_count": ("labkit.judges", "fewer_sentences", "score",
                       "minus the sentence count (higher = fewer)"),
}
KEYS = {"function", "teaching", "preferred", "rejected", "prompts"}


def _function(name: str):
    module, attr, _, _ = JUDGES[name]
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Agreement:
    """How often a judge prefers chosen on a theme's pairs; `disagree` names the others
    as (table, 1-based row)."""

    function: str
    agree: int
    n: int
    disagree: tuple[tuple[str, int], ...]

    @property
    def share(self) -> float:
        return self.agree / self.n if self.n else 0.0

    @property
    def valid(self) -> bool:
        return self.n > 0 and self.share >= MIN_AGREEMENT

    def __str__(self) -> str:
        return f"{self.function} prefers chosen on {self.agree}/{self.n} pairs ({self.share:.0%})"


@dataclass(frozen=True)
class Judge:
    """A theme's judge: `function` for any model's text, `teaching` (if set) instead on the
    teaching model; `for_model` picks one. Scores are higher for the preferred text."""

    function: str
    preferred: str
    rejected: str | None = None
    prompts: tuple[str, ...] = ()   # sampled before/after in step 4
    teaching: str | None = None

    def for_model(self, is_teaching: bool) -> "Judge":
        """The judge to use on that model (a judge with no `teaching` alternative)."""
        function = self.teaching if is_teaching and self.teaching else self.function
        return replace(self, function=function, teaching=None)

    @property
    def kind(self) -> str:
        return JUDGES[self.function][2]

    @property
    def unit(self) -> str:
        return JUDGES[self.function][3]

    @property
    def label_function(self) -> str | None:
        """The first label judge among `teaching` and `function` (None: scores only)."""
        return next((f for f in (self.teaching, self.function)
                     if f and JUDGES[f][2] == "label"), None)

    def score(self, text: str) -> float:
        value = _function(self.function)(text)
        return float(value == self.preferred) if self.kind == "label" else float(value)

    def __call__(self, text: str) -> str:
        """A label to show: the label judge's reading, else the score, rounded."""
        if self.label_function:
            return _function(self.label_function)(text)
        return f"{self.score(text):.0f}"

    def prefers(self, chosen: str, rejected: str) -> bool:
        return self.score(chosen) > self.score(rejected)

    def rate(self, texts) -> float:
        """Mean score of `texts`: for a label judge, the share read as preferred."""
        texts = list(texts)
        if not texts:
            raise ValueError("a judge's rate needs at least one text")
        return sum(self.score(t) for t in texts) / len(texts)

    def agreement(self, tables: dict[str, list]) -> Agreement:
        """How often this judge prefers chosen over rejected, over `tables`' pairs
        ({"example_pairs": rows, ...})."""
        agree, disagree = 0, []
        for table, rows in tables.items():
            for i, row in enumerate(rows, start=1):
                if self.prefers(row["chosen"], row["rejected"]):
                    agree += 1
                else:
                    disagree.append((table, i))
        return Agreement(self.function, agree, agree + len(disagree), tuple(disagree))

    def agreements(self, tables: dict[str, list], any_model_only=()) -> list[Agreement]:
        """`agreement` for each function this judge names (any model, then teaching); the
        tables named in `any_model_only` (pairs only a real model trains on) are read by
        `function` alone."""
        names = dict.fromkeys(f for f in (self.function, self.teaching) if f)
        return [_cached_agreement(replace(self, function=f, teaching=None), tables if
                                  f == self.function else {t: rows for t, rows in
                                                           tables.items() if t not in
                                                           any_model_only})
                for f in names]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.preferred, self.rejected or "other", "unclear"]))

    def swapped_checks(self) -> dict:
        """`judge`/`preferred` for labkit.data's swapped-pair check: a label judge reads
        one row; a score judge needs a whole theme's pairs ({} then)."""
        if not self.label_function:
            return {}
        return dict(judge=_function(self.label_function), preferred=self.preferred)


def _cached_agreement(judge: Judge, tables: dict) -> Agreement:
    """`judge.agreement(tables)`, kept in the labkit cache: a textstat judge loads its
    pronunciation dictionary (~3 s) in every process that scores a text, and every notebook
    loads its theme. Keyed by the judge (its code too), the textstat version and the pairs."""
    if judge.kind == "label":          # the teaching model's marker judge is instant
        return judge.agreement(tables)
    from importlib.metadata import version

    from .artifacts import atomic_write_text
    from .config import cache_dir

    code = _function(judge.function).__code__
    key = json.dumps([judge.function, judge.preferred, version("textstat"), tables,
                      code.co_code.hex(), repr(code.co_consts), repr(READING_EASE_RANGE)],
                     sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = cache_dir() / "judge-agreements" / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Agreement(data["function"], data["agree"], data["n"],
                         tuple(tuple(d) for d in data["disagree"]))
    except (OSError, ValueError, KeyError, TypeError):
        agreement = judge.agreement(tables)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(agreement)))
    except OSError:                    # a read-only cache (a sandbox): computed each time
        pass
    return agreement


def parse_judge(table) -> tuple[Judge | None, list[tuple[str | None, str]]]:
    """A Judge from a theme's [judge] table, or None and its problems as (field, message)."""
    if not isinstance(table, dict):
        return None, [(None, "must be a table: [judge] with function and preferred (or leave "
                       "it out: step 4 then reports no measured outcome)")]
    problems = [(k, "unknown key; a [judge] has " + ", ".join(sorted(KEYS)))
                for k in table if k not in KEYS]
    for key in ("function", "teaching"):
        name = table.get(key)
        if (key == "function" or name is not None) and name not in JUDGES:
            problems.append((key, f"{name!r} is not a labkit judge; known: {', '.join(JUDGES)}"))
    for key in ("preferred", "rejected"):
        value = table.get(key)
        if (key == "preferred" or value is not None) and not (isinstance(value, str) and value):
            problems.append((key, "must be a non-empty string (a label judge's label, or the "
                             "preference's name)"))
    prompts = table.get("prompts")
    if prompts is not None and not (isinstance(prompts, list) and prompts):
        problems.append(("prompts", "must be a non-empty list of prompts"))
    if problems:
        return None, problems
    return Judge(table["function"], table["preferred"], table.get("rejected"),
                 tuple(prompts or ()), table.get("teaching")), []
