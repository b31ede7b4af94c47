"""Reading the project's TOML files (zoo configs, dataset cards) with one set of error messages, and
merging overrides over what was read."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Mapping


def read_toml(path: str | Path, what: str = "TOML file") -> dict:
    """The parsed TOML at ``path``; FileNotFoundError ``no <what> at <path>`` or ValueError naming the parse error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None


def merge_tables(base: dict, over: Mapping) -> dict:
    """Deep merge of nested tables: a new dict with ``over``'s values over ``base``'s (tables merge, ``over`` wins)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_tables(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out
