"""A theme checked against the model it is used with: every pair that model trains or is
evaluated on (the real-model pairs too, unless it is the teaching model) must fit its context
and its training preset's max_length (TRL would otherwise cut or drop the row, or training
would stop with an IndexError, long after the theme was read).
"""
from __future__ import annotations

import os

from . import Theme, load_theme


def fit_theme(theme: Theme | str | os.PathLike | None, tokenizer, info) -> Theme:
    """`theme` (a Theme, a name, a .toml path, or None for the run's theme) reloaded with
    every pair's token length checked against `tokenizer` and `preset_for(info)`'s
    max_length, as load_model returned them. Raises ThemeError naming each pair too long."""
    from ..config import preset_for

    source = theme.path if isinstance(theme, Theme) else theme
    return load_theme(source, tokenizer=tokenizer, max_length=preset_for(info).max_length,
                      is_teaching=info.is_teaching)


def theme_for_model(theme: Theme | str | os.PathLike | None, model: str) -> Theme:
    """`fit_theme` for a model name or path (loaded here, quietly)."""
    from ..models import load_model

    _, tokenizer, info = load_model(model, quiet=True)
    return fit_theme(theme, tokenizer, info)
