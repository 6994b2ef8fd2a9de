"""Which of a student's pairs are their own: pairs copied from the theme's example pairs
(notebook 2's example, after `labkit.data.normalised`: case, spacing, Unicode forms) are
flagged and do not count toward the pairs exercise 2.1 asks for."""
from __future__ import annotations

from labkit.data import MIN_PAIRS, normalised


def copied_rows(rows, theme=None) -> list[int]:
    """1-based rows whose chosen or rejected answer is one of the theme's example answers
    (either way round: a swapped copy is still a copy)."""
    from labkit.themes import load_theme

    theme = theme or load_theme()
    answers = {normalised(p[k]) for p in theme.example_pairs for k in ("chosen", "rejected")}
    return [i for i, row in enumerate(rows, start=1) if isinstance(row, dict) and any(
        isinstance(row.get(k), str) and normalised(row[k]) in answers
        for k in ("chosen", "rejected"))]


def copied_note(rows, theme=None) -> tuple[bool, str]:
    """(enough own pairs, a note naming the copied rows; '' when none is copied)."""
    copied = copied_rows(rows, theme)
    if not copied:
        return True, ""
    own = len(rows) - len(copied)
    shown = ", ".join(map(str, copied[:8])) + (" ..." if len(copied) > 8 else "")
    note = (f"rows {shown} are copied from the theme's example pairs (notebook 2's example), "
            f"so they do not count as your own: {own} own pair(s)")
    return own >= MIN_PAIRS, note + ("" if own >= MIN_PAIRS else f", at least {MIN_PAIRS} "
                                     "are needed: write your own in their form")
