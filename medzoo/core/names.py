"""The one "unknown name" error message, shared by every registry and option check (torch-free)."""
from __future__ import annotations

import difflib
from typing import Iterable


def unknown_name(kind: str, name, known: Iterable, *, label: str = "known", sort: bool = True) -> str:
    """``unknown <kind> 'x'; did you mean 'y'? <label>: a, b, c``.

    The closest of ``known`` (difflib) is suggested when there is one; ``known`` is listed
    sorted unless ``sort=False`` (keep an order that means something, e.g. class order).
    Callers add their own context as a prefix (``f"{path}: " + unknown_name(...)``).
    """
    known = [str(k) for k in known]
    if sort:
        known.sort()
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown {kind} {name!r}{hint} {label}: {', '.join(known) or 'none'}"
