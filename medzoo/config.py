"""The whole-config check: a zoo config TOML read and every section validated before any work.

``medzoo.zoo.config`` owns the run, dataset, ``[train]`` and ``[[members]]`` part; each later
stage owns its section's schema (``[ensemble]``: :func:`medzoo.ensemble.run.check_ensemble_config`,
``[leaderboard]``: :func:`medzoo.benchmarks.leaderboard.check_options`, ``[submission]``:
:func:`medzoo.benchmarks.submission.check_options`). :func:`load_config` runs them all, so a
typo anywhere fails in the first seconds of ``medzoo train``, ``check`` or ``bench``, not after
the members have trained.
"""
from __future__ import annotations

from pathlib import Path

import medzoo.benchmarks
from medzoo.benchmarks import leaderboard, submission
from medzoo.ensemble import run as ensemble_run
from medzoo.core.names import unknown_name
from medzoo.zoo.config import ZooConfig, parse_config
from medzoo.zoo.tomlfile import read_toml

CONFIG_DIR = Path(medzoo.benchmarks.__file__).resolve().parent
SECTION_CHECKS = {
    "ensemble": ensemble_run.check_ensemble_config,
    "leaderboard": leaderboard.check_options,
    "submission": submission.check_options,
}


def load_config(path: str | Path, overrides: dict | None = None) -> ZooConfig:
    """Read a zoo config TOML and check it whole: every key, every option value, every section.

    ``path`` is a file or the name of a shipped config. ``overrides`` is a nested dict merged over
    the file (see :func:`medzoo.zoo.config.parse_config`). The later stages' sections are checked
    first, as they need no model registry (and so no torch). Errors name the file, the section and
    the key, with the closest allowed name.
    """
    path = config_path(path)
    raw = read_toml(path, "config file")
    check_sections(raw, source=str(path))
    cfg = parse_config(raw, overrides=overrides, source=str(path))
    check_member_options(raw.get("ensemble", {}), cfg, source=str(path))
    return cfg


def check_member_options(section: dict, cfg: ZooConfig, source: str | None = None) -> None:
    """Check the ``[ensemble]`` options given per member (``weights``, ``threshold``) against the zoo's member
    tables (``<id>`` or ``<id>.snap<j>``, each standing for all its repeats), so that a missing or misspelt member
    stops the run before training rather than at the ensemble stage. ``[ensemble] members``, when given, is
    what they are checked against already."""
    if "members" in section:
        return
    entries = [e for m in cfg.members for e in m.entries]
    try:
        ensemble_run.check_ensemble_config({**section, "members": entries})
    except ValueError as e:
        raise ValueError(f"{source or 'config'}: {e}") from None


def check_sections(raw: dict, source: str | None = None) -> None:
    """Check a config's ``[ensemble]``, ``[leaderboard]`` and ``[submission]`` sections (absent ones pass)."""
    for name, check in SECTION_CHECKS.items():
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise ValueError(f"{source or 'config'}: [{name}] must be a table, got {section!r}")
        try:
            check(section)
        except ValueError as e:
            raise ValueError(f"{source or 'config'}: {e}") from None


def shipped_configs() -> list[str]:
    """Names of the benchmark configs shipped with medzoo (``medzoo bench pneumoniamnist``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def config_path(path: str | Path) -> Path:
    """``path`` when it is a file, else the shipped config of that name; otherwise FileNotFoundError."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / f"{p.name}.toml"
    if p.suffix in ("", ".toml") and len(p.parts) == 1 and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no config file at {path}; " + unknown_name("shipped config", p.stem, shipped_configs()))
