"""Reading the project's TOML files (zoo configs, dataset cards) with one set of error messages."""
from __future__ import annotations

import tomllib
from pathlib import Path


def read_toml(path: str | Path, what: str = "TOML file") -> dict:
    """The parsed TOML at ``path``; FileNotFoundError ``no <what> at <path>`` or ValueError naming the parse error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
