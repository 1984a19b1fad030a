"""One-line reasons: how every failure is written into the record (pure)."""

from __future__ import annotations

import traceback


def one_line(exc: BaseException, recipe_path: str | None = None) -> str:
    """Returns `Type: message` plus the recipe line it came from, on one line."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    where = ""
    if recipe_path:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == recipe_path]
        if frames:
            where = f" (recipe.py line {frames[-1].lineno}, in {frames[-1].name})"
    text = msg if getattr(exc, "one_line", False) else f"{type(exc).__name__}: {msg}"
    return (text[:400] + "...") if len(text) > 400 else text + where
