"""Reading a run directory's resolved config (``RUN_DIR/config.json``, written by ``medzoo train``)."""
from __future__ import annotations

import json
from pathlib import Path


def read_run_config(run_dir: str | Path) -> dict:
    """``RUN_DIR/config.json`` as a dict; ``{}`` when the run has none. Invalid JSON raises naming the file."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config
