"""The concept a lab prompt names ("Explain a mutex.\n" -> "a mutex"), and which of step 4's
evaluation concepts a training prompt touches in any wording ("Explain mutexes in Go." names
"a mutex"): training on one would make step 4's held-out measures read memorisation. The
theme loader checks its real-model pairs with it; the grader checks a student's pairs.
"""
from __future__ import annotations

import re

_ASK = re.compile(r"^(explain|describe|what is|tell me about) ")
_ARTICLE = re.compile(r"^(a|an|the) ")


def concept(prompt: str) -> str:
    """The concept a prompt asks about, case and spacing folded ('' when none)."""
    return _ASK.sub("", " ".join(prompt.casefold().split()).rstrip(".?!:"))


def concept_patterns(prompts) -> dict[str, re.Pattern]:
    """One word-bounded pattern per concept of `prompts` (article dropped, plural allowed)."""
    concepts = dict.fromkeys(c for c in map(concept, prompts) if c)
    return {c: re.compile(r"\b" + re.escape(_ARTICLE.sub("", c)) + r"s?\b") for c in concepts}


def named_concepts(prompt, patterns: dict[str, re.Pattern]) -> list[str]:
    """The concepts of `patterns` that `prompt` names (none for a prompt that is not text)."""
    text = " ".join(prompt.casefold().split()) if isinstance(prompt, str) else ""
    return [c for c, pattern in patterns.items() if pattern.search(text)]
