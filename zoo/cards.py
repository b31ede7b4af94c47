"""Dataset cards: where a card comes from, the fields it may hold, and the split names it may use.

A card (``data/<name>.toml``, see ``data/README.md``) says where the files are, relative to
the data root (``$MEDZOO_DATA``, default ``~/.cache/medzoo/data``), which classes there
are and how splits are made. :func:`card_source` finds a card's fields (a shipped name, a
``.toml``, a data path given directly, a dict) and :func:`check_card` validates them;
:func:`medzoo.zoo.datasets.load_card` does both, checking the format against the readers.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from medzoo.core.names import unknown_name
from medzoo.data import CARD_DIR
from medzoo.zoo.cache import user_cache_dir
from medzoo.zoo.tomlfile import read_toml

CARD_KEYS = {"name", "format", "description", "citation", "license", "source", "classes", "submission",
             "views", "root", "file", "url", "md5", "sha256", "labels", "images", "id_column",
             "label_column", "onehot", "negative_class", "exclude", "splits", "split", "duplicates"}
SPLIT_KEYS = {"seed", "ratios", "folds", "fold", "group_column", "group_pattern", "group_file", "pool",
              "assignment", "val_fraction"}
ENTRY_KEYS = {"root", "labels", "images"}
DUPLICATE_POLICIES = ("error", "warn", "allow")
SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}


def split_name(name: str, source: str = "split") -> str:
    """Canonical split name for ``name`` (``valid`` -> ``val``); raise for anything else."""
    key = str(name).lower()
    key = SPLIT_ALIASES.get(key, key)
    if key not in SPLIT_NAMES:
        raise ValueError(f"{source}: " + unknown_name("split", name, [*SPLIT_NAMES, *SPLIT_ALIASES], sort=False))
    return key


def resolve_data_root(path: str | Path | None = None) -> Path:
    """``path``, else ``$MEDZOO_DATA``, else ``<user cache>/data`` (``~/.cache/medzoo/data``)."""
    return Path(path or os.environ.get("MEDZOO_DATA") or user_cache_dir() / "data")


def data_path(root: Path, rel) -> Path:
    """A path a card names, under the data root ``root`` (``~`` expanded; an absolute path stays as it is)."""
    return root / Path(str(rel)).expanduser()


def visible(p: Path) -> bool:
    """False for hidden and dunder entries (``.DS_Store``, ``__MACOSX``), which never hold data."""
    return not p.name.startswith((".", "__"))


@dataclass
class DatasetCard:
    """A validated dataset card. ``classes`` may be empty when they come from the data."""

    name: str
    format: str
    classes: list[str]
    submission: str | None
    views: list[dict]
    raw: dict
    path: Path | None = None


def known_cards() -> list[str]:
    """Names of the cards shipped in ``data/``."""
    return sorted(p.stem for p in CARD_DIR.glob("*.toml"))


def card_for_path(path: str | Path) -> dict:
    """A minimal card for a data folder, label CSV or ``.npz`` given directly."""
    p = Path(path).resolve()
    if p.is_dir():
        return {"name": p.name, "format": "folder", "root": str(p)}
    fmt = {".npz": "npz", ".csv": "csv"}.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the dataset format; pass a card (.toml), an image folder, "
                         f"a label .csv or a .npz")
    return {"name": p.stem, "format": fmt, ("file" if fmt == "npz" else "labels"): str(p)}


def card_source(source) -> tuple[dict, Path | None]:
    """``(fields, card file or None)`` of a shipped card name, a ``.toml`` path, a data path, a dict or a card."""
    if isinstance(source, DatasetCard):
        return source.raw, source.path
    if isinstance(source, Mapping):
        return dict(source), None
    p, text = Path(source), str(source)
    shipped = CARD_DIR / f"{text}.toml"
    if p.suffix == ".toml" or (shipped.is_file() and os.sep not in text):
        path = p if p.suffix == ".toml" else shipped
        raw = read_toml(path, "dataset card")
        raw.setdefault("name", path.stem)
        return raw, path
    if p.exists():
        return card_for_path(p), None
    raise FileNotFoundError(_missing_dataset(p))


def _missing_dataset(p: Path) -> str:
    """The error for a dataset that is neither a shipped card nor an existing path, with the closest of both."""
    folder = p.parent
    nearby = sorted(e.name for e in folder.iterdir() if visible(e)) if folder.is_dir() else []
    close = difflib.get_close_matches(p.name, nearby + known_cards(), n=1)
    hint = f"; did you mean {str(folder / close[0]) if close[0] in nearby else close[0]!r}?" if close else ""
    return (f"dataset {str(p)!r} is neither a shipped card ({', '.join(known_cards())}) nor an existing path "
            f"(relative paths start at {Path.cwd()}){hint} A card .toml, an image folder, a label .csv or a "
            f".npz works")


def check_card(raw: dict, path: Path | None, formats: Sequence[str]) -> DatasetCard:
    """Validate a card's fields (``formats``: the dataset formats there are readers for, in order)."""
    where = f"{path or 'card'}: "
    _check_fields(raw, where)
    if raw.get("duplicates", "error") not in DUPLICATE_POLICIES:
        raise ValueError(where + unknown_name("duplicates value", raw["duplicates"], DUPLICATE_POLICIES,
                                              label="allowed", sort=False))
    fmt = raw.get("format")
    if fmt not in formats:
        raise ValueError(where + unknown_name("format", fmt, formats, sort=False) if fmt
                         else f"{where}missing 'format' (one of {', '.join(formats)})")
    classes = [str(c) for c in raw.get("classes", [])]
    if len(set(classes)) != len(classes):
        raise ValueError(f"{where}duplicate class names in {classes}")
    views = []
    for v in raw.get("views", []):
        pos = v.get("positive", [])
        pos = [pos] if isinstance(pos, str) else list(pos)
        if "name" not in v or not pos:
            raise ValueError(f"{where}each [[views]] needs a name and positive = [class names]; got {v}")
        views.append({"name": str(v["name"]), "positive": pos})
    card = DatasetCard(str(raw["name"]), fmt, classes, raw.get("submission"), views, raw, path)
    if classes:
        check_views(card, classes)
    return card


def _check_fields(raw: dict, where: str) -> None:
    """Every field, ``[split]`` field and ``[splits.<name>]`` table known; ``name`` present."""
    for key in raw:
        if key not in CARD_KEYS:
            raise ValueError(where + unknown_name("card field", key, CARD_KEYS))
    for key in raw.get("split", {}):
        if key not in SPLIT_KEYS:
            raise ValueError(where + unknown_name("[split] field", key, SPLIT_KEYS))
    for name, entry in raw.get("splits", {}).items():
        split_name(name, f"{where}[splits.{name}]")
        for key in entry:
            if key not in ENTRY_KEYS:
                raise ValueError(where + unknown_name(f"[splits.{name}] field", key, ENTRY_KEYS))
    if "name" not in raw:
        raise ValueError(f"{where}missing 'name'")


def check_views(card: DatasetCard, classes: list[str]) -> None:
    """Every class a ``[[views]]`` entry names is one of ``classes``."""
    for v in card.views:
        for c in v["positive"]:
            if c not in classes:
                raise ValueError(f"{card.path or card.name}: view {v['name']!r}: "
                                 + unknown_name("class", c, classes, sort=False))
