"""Which of a student's pairs are their own: pairs copied from the theme's example pairs
(notebook 2's example, after `labkit.data.normalised`: case, spacing, Unicode forms) are
flagged and do not count toward the pairs exercise 2.1 asks for. The theme's real-model
pairs (which notebook 2 adds on a real model) are the instructor's data: neither counted as
the student's nor flagged."""
from __future__ import annotations

from labkit.data import MIN_PAIRS, normalised


def _theme(theme):
    from labkit.themes import load_theme

    return theme or load_theme()


def copied_rows(rows, theme=None) -> list[int]:
    """1-based rows whose chosen or rejected answer is one of the theme's example answers
    (either way round: a swapped copy is still a copy); the theme's real-model pairs are
    not copies."""
    theme = _theme(theme)
    answers = {normalised(p[k]) for p in theme.example_pairs for k in ("chosen", "rejected")}
    provided = set(theme.provided_rows(rows))
    return [i for i, row in enumerate(rows, start=1) if isinstance(row, dict) and any(
        isinstance(row.get(k), str) and normalised(row[k]) in answers
        for k in ("chosen", "rejected")) and i not in provided]


def copied_note(rows, theme=None) -> tuple[bool, str]:
    """(enough own pairs, a note naming the copied rows and counting the theme's real-model
    pairs; '' when there are neither)."""
    theme = _theme(theme)
    copied, provided = copied_rows(rows, theme), theme.provided_rows(rows)
    if not copied and not provided:
        return True, ""
    own = len(rows) - len(copied) - len(provided)
    notes = [f"{len(provided)} rows are the theme's real-model pairs (your instructor's, added "
             "on a real model), not counted as yours"] if provided else []
    if copied:
        shown = ", ".join(map(str, copied[:8])) + (" ..." if len(copied) > 8 else "")
        notes.append(f"rows {shown} are copied from the theme's example pairs (notebook 2's "
                     "example), so they do not count as your own")
    tail = f"{own} own pair(s)" + ("" if own >= MIN_PAIRS else f", at least {MIN_PAIRS} are "
                                   "needed" + (": write your own in their form" if copied else ""))
    return own >= MIN_PAIRS, "; ".join(notes) + ": " + tail
