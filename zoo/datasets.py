"""Dataset cards, readers for folder trees, CSV label files and MedMNIST ``.npz``, and splits.

A card (``data/<name>.toml``, see ``data/README.md``) says where the files are, relative to
the data root (``$MEDZOO_DATA``, default ``~/.cache/medzoo/data``), which classes there
are and how splits are made. :func:`open_dataset` reads the labels and lists the images
(failing early, naming the file and row, on anything wrong); :func:`load_arrays` gives a
split as ``uint8`` arrays at a training size, through the on-disk cache of :mod:`zoo.cache`.
"""
from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
import re
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medzoo.core.fileio import atomic_path
from medzoo.core.names import unknown_name
from medzoo.data import CARD_DIR
from medzoo.zoo.cache import IMAGE_EXTENSIONS, cached_images, load_images, resize_array, user_cache_dir
from medzoo.zoo.splits import (SPLIT_ALIASES, SPLIT_NAMES, check_ratios, read_split_csv, split_name, stratified_folds,
                        stratified_split, write_split_csv)
from medzoo.zoo.tomlfile import read_toml

__all__ = ["DatasetCard", "Dataset", "SplitRecords", "SplitArrays", "load_card", "open_dataset",
           "load_arrays", "decode_all", "load_images", "known_cards", "resolve_data_root", "card_for_path",
           "ensure_file", "read_folder", "read_csv", "read_npz", "CARD_DIR", "DUPLICATE_POLICIES"]

FORMATS = ("folder", "csv", "npz")
CARD_KEYS = {"name", "format", "description", "citation", "license", "source", "classes", "submission",
             "views", "root", "file", "url", "md5", "sha256", "labels", "images", "id_column",
             "label_column", "onehot", "negative_class", "exclude", "splits", "split", "duplicates"}
SPLIT_KEYS = {"seed", "ratios", "folds", "fold", "group_column", "group_pattern", "group_file", "pool",
              "assignment", "val_fraction"}
CARVE_KEYS = {"seed", "val_fraction", "group_column", "group_pattern", "group_file"}
ENTRY_KEYS = {"root", "labels", "images"}
ID_COLUMNS = ("image_id", "image", "id", "image_name", "filename", "file", "path", "name")
LABEL_COLUMNS = ("label", "labels", "class", "diagnosis", "dx", "target")
DEFAULT_RATIOS = {"train": 0.75, "val": 0.20, "test": 0.05}
DEFAULT_VAL_FRACTION = 0.2
DUPLICATE_POLICIES = ("error", "warn", "allow")


def resolve_data_root(path: str | Path | None = None) -> Path:
    """``path``, else ``$MEDZOO_DATA``, else ``<user cache>/data`` (``~/.cache/medzoo/data``)."""
    return Path(path or os.environ.get("MEDZOO_DATA") or user_cache_dir() / "data")


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


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


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


def load_card(source, overrides: Mapping | None = None) -> DatasetCard:
    """Load a card from a name in ``data/``, a ``.toml`` path, a data path, a dict or a card.

    ``overrides`` is merged into the card's fields (nested tables merge), e.g.
    ``{"split": {"fold": 2}}``.
    """
    path = None
    if isinstance(source, DatasetCard):
        raw, path = source.raw, source.path
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        p, text = Path(source), str(source)
        shipped = CARD_DIR / f"{text}.toml"
        if p.suffix == ".toml" or (shipped.is_file() and os.sep not in text):
            path = p if p.suffix == ".toml" else shipped
            raw = read_toml(path, "dataset card")
            raw.setdefault("name", path.stem)
        elif p.exists():
            raw = card_for_path(p)
        else:
            raise FileNotFoundError(_missing_dataset(p))
    if overrides:
        raw = _merge(raw, overrides)
    return _check_card(raw, path)


def _missing_dataset(p: Path) -> str:
    """The error for a dataset that is neither a shipped card nor an existing path, with the closest of both."""
    folder = p.parent
    nearby = sorted(e.name for e in folder.iterdir() if _visible(e)) if folder.is_dir() else []
    close = difflib.get_close_matches(p.name, nearby + known_cards(), n=1)
    hint = f"; did you mean {str(folder / close[0]) if close[0] in nearby else close[0]!r}?" if close else ""
    return (f"dataset {str(p)!r} is neither a shipped card ({', '.join(known_cards())}) nor an existing path "
            f"(relative paths start at {Path.cwd()}){hint} A card .toml, an image folder, a label .csv or a "
            f".npz works")


def _check_card(raw: dict, path: Path | None) -> DatasetCard:
    where = f"{path or 'card'}: "
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
    if raw.get("duplicates", "error") not in DUPLICATE_POLICIES:
        raise ValueError(where + unknown_name("duplicates value", raw["duplicates"], DUPLICATE_POLICIES,
                                              label="allowed", sort=False))
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise ValueError(where + unknown_name("format", fmt, FORMATS, sort=False) if fmt
                         else f"{where}missing 'format' (one of {', '.join(FORMATS)})")
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
        _check_views(card, classes)
    return card


def _check_views(card: DatasetCard, classes: list[str]) -> None:
    for v in card.views:
        for c in v["positive"]:
            if c not in classes:
                raise ValueError(f"{card.path or card.name}: view {v['name']!r}: "
                                 + unknown_name("class", c, classes, sort=False))


@dataclass
class SplitRecords:
    """The images of one split, before decoding.

    Attributes:
        ids: ``[N]`` image ids.
        labels: int64 ``[N]`` class indices, ``-1`` where unknown.
        paths: ``[N]`` image files (file-based datasets), else None.
        array: ``(npz file, key)`` (array datasets), else None.
        index: int64 ``[N]`` rows of that array.
        origins: ``[N]`` where each record came from ("labels.csv line 7"), for error messages.
        groups: ``[N]`` patient/lesion ids when the card names them.
    """

    ids: list[str]
    labels: np.ndarray
    paths: list[Path] | None = None
    array: tuple[Path, str] | None = None
    index: np.ndarray | None = None
    origins: list[str] | None = None
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> "SplitRecords":
        """Records at ``rows`` (int ``[K]``), in that order."""
        pick = lambda xs: None if xs is None else [xs[i] for i in rows]  # noqa: E731
        index = None if self.index is None else self.index[rows]
        return SplitRecords(pick(self.ids), self.labels[rows], pick(self.paths), self.array, index,
                            pick(self.origins), pick(self.groups))


def _concat(parts: Sequence[SplitRecords]) -> SplitRecords:
    cat = lambda name: None if getattr(parts[0], name) is None else [x for p in parts for x in getattr(p, name)]  # noqa: E731
    if len({p.array for p in parts}) > 1:
        raise ValueError("cannot pool splits stored in different arrays")
    index = None if parts[0].index is None else np.concatenate([p.index for p in parts])
    return SplitRecords(cat("ids"), np.concatenate([p.labels for p in parts]), cat("paths"),
                        parts[0].array, index, cat("origins"), cat("groups"))


@dataclass
class SplitArrays:
    """One split decoded: ``images`` uint8 ``[N, size, size, 3]`` RGB, ``labels`` int64 ``[N]`` (-1 unknown)."""

    ids: list[str]
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


@dataclass
class Dataset:
    """An opened dataset: its classes and, per split, the records of its images.

    ``made`` describes how splits were made (None when they were given by the data).
    """

    card: DatasetCard
    classes: list[str]
    root: Path
    split_records: dict[str, SplitRecords]
    made: dict | None = None

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLIT_NAMES if s in self.split_records)

    def records(self, split: str) -> SplitRecords:
        if split not in self.split_records:
            raise KeyError(f"dataset {self.name!r}: " + unknown_name("split", split, self.splits, sort=False))
        return self.split_records[split]

    def class_counts(self, split: str) -> np.ndarray:
        """int64 ``[C + 1]``: images per class, then the number of unlabeled images."""
        labels = self.records(split).labels
        return np.bincount(np.where(labels < 0, len(self.classes), labels), minlength=len(self.classes) + 1)

    def assignment(self) -> tuple[list[str], list[str]]:
        """``(ids, split names)`` over all splits, in split order."""
        ids, names = [], []
        for s in self.splits:
            ids += self.split_records[s].ids
            names += [s] * len(self.split_records[s])
        return ids, names

    def describe_made(self) -> str | None:
        """One line saying how the splits were made, e.g. "dataset 'chest_xray' has no val split: carved
        20% of train (104 of 520 images) as val, stratified, seed 0"; None when the data gave them."""
        m = self.made
        if m is None:
            return None
        how = "stratified" + (f", grouped by {m['group']}" if m.get("group") else "") + f", seed {m['seed']}"
        sizes = " / ".join(f"{s} {len(self.split_records[s])}" for s in self.splits)
        if m["mode"] == "val_carve":
            n_val = len(self.split_records["val"])
            n = n_val + len(self.split_records["train"])
            return (f"dataset {self.name!r} has no val split: carved {m['fraction'] * 100:g}% of train "
                    f"({n_val} of {n} images) as val, {how}")
        pool = " + ".join(m["pool"])
        if m["mode"] == "assignment":
            return f"dataset {self.name!r}: splits of {pool} read from {m['assignment']}: {sizes}"
        if m["mode"] == "folds":
            held = f", test {m['ratios']['test']:.0%} held out first" if m["ratios"] else ""
            return (f"dataset {self.name!r}: split {pool} into {m['folds']} folds{held}, fold {m['fold']} "
                    f"as val: {sizes}, {how}")
        ratios = ", ".join(f"{s} {r:g}" for s, r in m["ratios"].items())
        return f"dataset {self.name!r}: split {pool} by ratios {ratios}: {sizes}, {how}"

    def write_splits(self, path: str | Path) -> Path:
        """Write ``image_id,split`` for every image (atomically); see card field ``split.assignment``."""
        return write_split_csv(path, *self.assignment())


def open_dataset(card_or_name, data_root: str | Path | None = None,
                 overrides: Mapping | None = None) -> Dataset:
    """Read a dataset's labels and image list, and make its splits when the card asks for it."""
    card = load_card(card_or_name, overrides)
    root = resolve_data_root(data_root)
    classes, records = READERS[card.format](card, root)
    if not card.classes:
        _check_views(card, classes)
    records, made = _make_splits(card, records, root)
    labeled = np.concatenate([r.labels for r in records.values()])
    if (labeled >= 0).any():
        empty = [c for c, n in zip(classes, np.bincount(labeled[labeled >= 0], minlength=len(classes))) if n == 0]
        if empty:
            warnings.warn(f"dataset {card.name!r}: class(es) {empty} have no labeled image in any split; "
                          f"kept in the class list and carried through to probabilities and submissions",
                          stacklevel=2)
    return Dataset(card, classes, root, records, made)


def load_arrays(dataset: Dataset, split: str, size: int) -> SplitArrays:
    """A split as arrays: images uint8 ``[N, size, size, 3]`` (cached on disk for image files;
    ``.npz`` sources are resized in one vectorised pass)."""
    rec = dataset.records(split)
    if rec.array is not None:
        file, key = rec.array
        with np.load(file) as z:
            images = resize_array(z[key][rec.index], size)
    else:
        images = cached_images(dataset.name, split, rec.paths, size, rec.origins)
    return SplitArrays(list(rec.ids), images, rec.labels.copy(), list(dataset.classes))


def decode_all(dataset: Dataset, size: int) -> tuple[dict[str, SplitArrays], dict[str, dict[int, str]]]:
    """Every split decoded at ``size`` through :func:`load_arrays`, which fills the on-disk cache.

    An unreadable image file does not stop it: its split is decoded file by file (and not
    cached), the image's rows are left all zero, and its message (naming the file) is returned.

    Returns:
        ``({split: SplitArrays}, {split: {row: message}})``, images uint8 ``[N, size, size, 3]``.
    """
    arrays, unreadable = {}, {}
    for split in dataset.splits:
        try:
            arrays[split] = load_arrays(dataset, split, size)
        except ValueError:
            rec = dataset.records(split)
            if rec.paths is None:
                raise
            errors: dict[int, str] = {}
            images = load_images(rec.paths, size, rec.origins, desc=f"checking {dataset.name}/{split}",
                                 errors=errors)
            arrays[split] = SplitArrays(list(rec.ids), images, rec.labels.copy(), list(dataset.classes))
            unreadable[split] = errors
    return arrays, unreadable


def _resolve(root: Path, rel) -> Path:
    return root / Path(str(rel)).expanduser()


def _check_unique(ids: Sequence[str], origins: Sequence[str], what: str) -> None:
    first: dict[str, int] = {}
    for i, k in enumerate(ids):
        if k in first:
            raise ValueError(f"{origins[i]}: duplicate image id {k!r} in {what} (also at {origins[first[k]]}); "
                             f"ids must be unique: remove or rename one")
        first[k] = i


def _finish(card: DatasetCard, raws: dict[str, dict], hint: list[str] | None = None
            ) -> tuple[list[str], dict[str, SplitRecords]]:
    """Turn per-split raw label names (str, or None for unlabeled) into class indices."""
    values = [v for r in raws.values() for v in r["names"] if v is not None]
    classes = card.classes or hint or _infer_classes(values)
    lookup = {c: k for k, c in enumerate(classes)}
    out = {}
    for split, r in raws.items():
        labels = np.empty(len(r["ids"]), dtype=np.int64)
        for i, v in enumerate(r["names"]):
            if v is None:
                labels[i] = -1
            elif v in lookup:
                labels[i] = lookup[v]
            elif v.isdigit() and int(v) < len(classes):
                labels[i] = int(v)
            else:
                raise ValueError(f"{r['origins'][i]}: " + unknown_name("class", v, classes, sort=False) +
                                 f"; fix the label or add the class to the card's classes")
        known = labels >= 0
        if known.any() and not known.all():
            i = int(np.flatnonzero(~known)[0])
            raise ValueError(f"{r['origins'][i]}: image {r['ids'][i]!r} has no label while other images of "
                             f"split {split!r} do; label it or remove it")
        out[split] = SplitRecords(r["ids"], labels, r["paths"], origins=r["origins"], groups=r.get("groups"))
    return list(classes), out


def _infer_classes(values: list[str]) -> list[str]:
    if values and all(v.isdigit() for v in values):
        return [str(k) for k in range(max(int(v) for v in values) + 1)]
    return sorted(set(values))


def _entries(card: DatasetCard, keys: Sequence[str]) -> dict[str, dict]:
    """``{split: {key: value}}`` from ``[splits.<name>]`` tables, or ``{"all": ...}`` from top-level keys."""
    given = card.raw.get("splits")
    if given:
        return {split_name(k): dict(v) for k, v in given.items()}
    top = {k: card.raw[k] for k in keys if k in card.raw}
    if not top:
        raise ValueError(f"card {card.name!r}: say where the data is: {' or '.join(keys)} "
                         f"(or [splits.<train|val|test>] tables)")
    return {"all": top}


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "__"))


def _image_files(folder: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """Image files in ``folder``, sorted, without those matching an ``exclude`` glob; warns about others."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p)
                   and not any(fnmatch.fnmatch(p.name, pat) for pat in exclude))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if len(images) < len(files):
        other = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        warnings.warn(f"{folder}: ignoring {len(other)} non-image file(s) such as {other[0]!r} "
                      f"(images end in {', '.join(IMAGE_EXTENSIONS)})", stacklevel=3)
    return images


def _folder_split(folder: Path, split: str, exclude: Sequence[str] = ()) -> dict:
    """Raw records of one split folder: class subfolders, or loose images (unlabeled)."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))
    loose = _image_files(folder, exclude)
    if subdirs and loose:
        raise ValueError(f"{folder} holds both class folders ({subdirs[0].name}, ...) and loose images "
                         f"({loose[0].name}, ...); put every image in a class folder, or none for an unlabeled split")
    files, names = (loose, [None] * len(loose))
    if subdirs:
        files, names = [], []
        for d in subdirs:
            found = _image_files(d, exclude)
            files += found
            names += [d.name] * len(found)
    if not files:
        raise ValueError(f"split {split!r}: no images in {folder} (looked for *{', *'.join(IMAGE_EXTENSIONS)})")
    ids = [p.stem for p in files]
    origins = [str(p) for p in files]
    _check_unique(ids, origins, f"split {split!r}")
    return {"ids": ids, "names": names, "paths": files, "origins": origins}


def read_folder(card: DatasetCard, root: Path) -> tuple[list[str], dict[str, SplitRecords]]:
    """``root/<split>/<class>/*.jpg`` (split folders train/val/test or aliases) or ``root/<class>/*``."""
    raws, exclude = {}, card.raw.get("exclude", [])
    for split, entry in _entries(card, ["root"]).items():
        if "root" not in entry:
            raise ValueError(f"card {card.name!r}: split {split!r} needs root = \"<image folder>\"")
        top = _resolve(root, entry["root"])
        if not top.is_dir():
            raise FileNotFoundError(f"card {card.name!r}: image folder {top} does not exist; put the images "
                                    f"there or set MEDZOO_DATA / --data-root to the folder that holds {entry.get('root')}")
        if split != "all":
            raws[split] = _folder_split(top, split, exclude)
            continue
        subdirs = [p for p in sorted(top.iterdir()) if p.is_dir() and _visible(p)]
        names = {p: p.name.lower() for p in subdirs}
        split_dirs = [p for p in subdirs if names[p] in SPLIT_NAMES or names[p] in SPLIT_ALIASES]
        if not split_dirs:
            raws["all"] = _folder_split(top, "all", exclude)
            continue
        others = [p.name for p in subdirs if p not in split_dirs]
        if others:
            raise ValueError(f"{top} has split folders ({', '.join(p.name for p in split_dirs)}) and also "
                             f"{others}; move those away or describe the splits in a card")
        for p in split_dirs:
            s = split_name(p.name)
            if s in raws:
                raise ValueError(f"{top}: two folders for split {s!r}; keep one")
            raws[s] = _folder_split(p, s, exclude)
    return _finish(card, raws)


def _list_dirs(folders: Sequence[Path]) -> dict[str, list[Path]]:
    """``{file name or stem: [image files]}`` over the image files in ``folders``."""
    out: dict[str, list[Path]] = {}
    for folder in folders:
        with os.scandir(folder) as it:
            for e in it:
                stem, ext = os.path.splitext(e.name)
                if ext.lower() in IMAGE_EXTENSIONS and e.is_file():
                    out.setdefault(stem, []).append(folder / e.name)
                    out.setdefault(e.name, []).append(folder / e.name)
    return out


def _find_image_dirs(csv_path: Path, ids: Sequence[str]) -> list[Path]:
    """The folders beside ``csv_path`` (itself, or up to two levels of subfolders) holding any of ``ids``."""
    base = csv_path.parent
    candidates = [base] + sorted(p for p in base.glob("*") if p.is_dir() and _visible(p))
    candidates += sorted(p for c in candidates[1:] for p in c.glob("*") if p.is_dir() and _visible(p))
    found = [c for c in candidates if any(k in _list_dirs([c]) for k in ids)]
    if not found:
        raise FileNotFoundError(f"{csv_path}: no folder beside it holds images named like {ids[0]!r} "
                                f"(+ {', '.join(IMAGE_EXTENSIONS)}); set images = \"<folder>\" in the card")
    return found


def _image_paths(folders: Sequence[Path], ids: Sequence[str], origins: Sequence[str]) -> list[Path]:
    """The image file of each id: ``<folder>/<id>`` or ``<folder>/<id>.<image extension>``."""
    listing = _list_dirs(folders)
    where = ", ".join(map(str, folders))
    paths = []
    for k, origin in zip(ids, origins):
        found = listing.get(k) or [f / k for f in folders if (f / k).is_file()]
        if len(found) > 1:
            raise ValueError(f"{origin}: image id {k!r} matches {[str(p) for p in found]}; keep one file per id")
        if not found:
            raise FileNotFoundError(f"{origin}: no image for id {k!r} in {where} (looked for {k}"
                                    f"{{{','.join(IMAGE_EXTENSIONS)}}}); add the file or delete the row")
        paths.append(found[0])
    return paths


def _id_column(columns: list[str], col: str | None, where: Path) -> str:
    """The id column: ``col`` when given, else the first of :data:`ID_COLUMNS` present."""
    if col:
        if col not in columns:
            raise ValueError(f"{where}: " + unknown_name("id column", col, columns, sort=False))
        return col
    lower = {c.lower(): c for c in columns}
    for c in ID_COLUMNS:
        if c in lower:
            return lower[c]
    raise ValueError(f"{where}: no usable id column among {columns}; name it one of {list(ID_COLUMNS)} "
                     f"or set id_column = \"<column>\" in the card")


def _label_names(df, card: DatasetCard, where: Path, skip: set[str]) -> tuple[list, list[str] | None]:
    """Label names per row (None where unlabeled) and, for one-hot files, the class order."""
    import pandas as pd

    raw = card.raw
    cols = [c for c in df.columns if c not in skip]
    neg = raw.get("negative_class")
    label_col = raw.get("label_column")
    onehot = raw.get("onehot")
    if not label_col and onehot is None:
        have = [c for c in card.classes if c in cols]
        if have and set(card.classes) - set(have) <= {neg}:
            onehot = have
        elif not cols:
            return [None] * len(df), None
        elif any(c.lower() in LABEL_COLUMNS for c in cols) or len(cols) == 1:
            label_col = next((c for c in cols if c.lower() in LABEL_COLUMNS), cols[0])
        elif df[cols].isin(["0", "1", "0.0", "1.0", ""]).all().all():
            onehot = cols
        else:
            raise ValueError(f"{where}: cannot tell the label column among {cols}; set label_column = "
                             f"\"<column>\" or onehot = [<class columns>] in the card")
    if label_col:
        if label_col not in df.columns:
            raise ValueError(f"{where}: " + unknown_name("label column", label_col, df.columns, sort=False))
        return [v.strip() or None for v in df[label_col]], None
    missing = [c for c in onehot if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: one-hot class column(s) {missing} not in the file (columns: {list(df.columns)})")
    text = df[onehot].apply(lambda col: col.str.strip())
    m = text.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    empty = (text == "").all(axis=1).to_numpy()
    bad = ~empty & (np.isnan(m) | ((m != 0) & (m != 1))).any(axis=1)
    hits = np.nan_to_num(m).sum(axis=1)
    problem = (bad, "one-hot class columns hold 0 or 1"), \
        (~bad & (hits > 1), "more than one class is marked; one-hot rows need exactly one 1"), \
        (~empty & (hits == 0) & (not neg), "all class columns are 0 and the card names no negative_class; "
         "set negative_class = \"<name>\" (e.g. \"nevus\" for ISIC 2017)")
    for rows, why in problem:
        if rows.any():
            i = int(np.flatnonzero(rows)[0])
            raise ValueError(f"{where} line {i + 2}: {why}; got {dict(text.iloc[i])}")
    pick = np.nan_to_num(m).argmax(axis=1)
    names = [None if e else (onehot[k] if h else neg) for e, h, k in zip(empty, hits, pick)]
    return names, list(onehot) + ([neg] if neg and neg not in onehot else [])


def _read_label_csv(path: Path, card: DatasetCard, split: str, folders: list[Path]) -> tuple[dict, list | None]:
    """One label CSV -> raw records (label names) and, for one-hot files, the class order."""
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"card {card.name!r}: label file {path} does not exist; put it there or set "
                                f"MEDZOO_DATA / --data-root to the folder that holds it")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise ValueError(f"split {split!r}: {path} has no rows; add images or remove the split from the card")
    idcol = _id_column(list(df.columns), card.raw.get("id_column"), path)
    ids = [v.strip() for v in df[idcol]]
    origins = [f"{path} line {i + 2}" for i in range(len(df))]
    for i, k in enumerate(ids):
        if not k:
            raise ValueError(f"{origins[i]}: empty {idcol!r}; every row needs an image id")
    _check_unique(ids, origins, str(path))
    group_col = card.raw.get("split", {}).get("group_column")
    skip = {idcol, group_col}
    names, hint = _label_names(df, card, path, skip)
    folders = folders or _find_image_dirs(path, ids)
    groups = [v.strip() for v in df[group_col]] if group_col in df.columns else None
    return {"ids": ids, "names": names, "paths": _image_paths(folders, ids, origins), "origins": origins,
            "groups": groups}, hint


def read_csv(card: DatasetCard, root: Path) -> tuple[list[str], dict[str, SplitRecords]]:
    """A label CSV (id column + label column or one-hot class columns) per split, or one to be split.

    An entry with ``images`` but no ``labels`` is an unlabeled split of every image in that folder.
    """
    raws, hint = {}, None
    for split, entry in _entries(card, ["labels", "images"]).items():
        images = entry.get("images", [])
        folders = [_resolve(root, f) for f in ([images] if isinstance(images, str) else images)]
        for f in folders:
            if not f.is_dir():
                raise FileNotFoundError(f"card {card.name!r}: image folder {f} does not exist")
        if "labels" in entry:
            raws[split], h = _read_label_csv(_resolve(root, entry["labels"]), card, split, folders)
            hint = hint or h
        elif folders:
            parts = [_folder_split(f, split, card.raw.get("exclude", [])) for f in folders]
            raws[split] = {k: [x for p in parts for x in p[k]] for k in ("ids", "names", "paths", "origins")}
            _check_unique(raws[split]["ids"], raws[split]["origins"], f"split {split!r}")
            if any(n is not None for n in raws[split]["names"]):
                raise ValueError(f"{folders[0]} has class folders; use format = \"folder\" for it")
        else:
            raise ValueError(f"card {card.name!r}: split {split!r} needs labels = \"<csv>\" and/or images = \"<folder>\"")
    return _finish(card, raws, hint)


_VERIFIED: dict[tuple, bool] = {}


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_ok(path: Path, card: DatasetCard) -> bool:
    """True when ``path`` matches the card's md5/sha256 (or the card gives none)."""
    algo = "sha256" if "sha256" in card.raw else "md5" if "md5" in card.raw else None
    if algo is None:
        return True
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _digest(path, algo) == str(card.raw[algo]).lower()
    return _VERIFIED[key]


def ensure_file(card: DatasetCard, root: Path) -> Path:
    """The card's ``file`` under ``root``: downloaded from ``url`` when absent, checksum checked."""
    path = _resolve(root, card.raw["file"])
    if path.is_file():
        if not _checksum_ok(path, card):
            warnings.warn(f"{path}: checksum differs from the official one in the card {card.name!r}; "
                          f"using the file as it is (re-saved copies differ)", stacklevel=4)
        return path
    url = card.raw.get("url")
    why = "the card gives no download url"
    if url:
        try:
            with urllib.request.urlopen(url, timeout=20) as r, atomic_path(path) as tmp:
                tmp.write_bytes(r.read())
                if not _checksum_ok(tmp, card):
                    raise ValueError(f"downloaded {url} but its checksum does not match the card {card.name!r}; "
                                     f"try again or download it by hand to {path}")
            return path
        except OSError as e:
            why = f"downloading {url} failed ({e})"
    raise FileNotFoundError(f"dataset {card.name!r} needs {path} and it is absent; {why}. Download "
                            f"{url or 'the file'} and put it at {path}, or point MEDZOO_DATA / --data-root at "
                            f"the folder that holds {card.raw['file']}")


def _npy_shape(npz: Path, key: str) -> tuple[int, ...]:
    """Shape of one array in an ``.npz`` without loading it."""
    with zipfile.ZipFile(npz) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(reader(f)[0])


def read_npz(card: DatasetCard, root: Path) -> tuple[list[str], dict[str, SplitRecords]]:
    """MedMNIST-style ``.npz``: ``<split>_images`` / ``<split>_labels`` (labels ``(N,)`` or ``(N, 1)``;
    images ``(N, H, W)`` or ``(N, H, W, 3)``), or ``images`` / ``labels`` to be split."""
    if "file" not in card.raw:
        raise ValueError(f"card {card.name!r}: format npz needs file = \"<path>.npz\"")
    path = ensure_file(card, root)
    with np.load(path) as z:
        keys = set(z.files)
        prefixes = [s for s in SPLIT_NAMES if f"{s}_images" in keys] or (["all"] if "images" in keys else [])
        if not prefixes:
            raise ValueError(f"{path}: no images arrays; expected keys train_images, val_images, test_images "
                             f"(with *_labels) or images/labels, found {sorted(keys)}")
        labels = {}
        for s in prefixes:
            key = "images" if s == "all" else f"{s}_images"
            shape = _npy_shape(path, key)
            lab_key = key.replace("images", "labels")
            lab = z[lab_key] if lab_key in keys else np.full(shape[0], -1)
            if lab.ndim == 2 and lab.shape[1] == 1:
                lab = lab[:, 0]
            if lab.ndim != 1 or len(lab) != shape[0] or len(shape) not in (3, 4):
                raise ValueError(f"{path}: {key} has shape {shape} and {lab_key} {lab.shape}; expected images "
                                 f"(N, H, W) or (N, H, W, 3) and single labels (N,) or (N, 1)")
            if shape[0] == 0:
                raise ValueError(f"{path}: split {s!r} is empty ({key} has shape {shape})")
            labels[s] = lab.astype(np.int64)
    top = max(int(lab.max()) for lab in labels.values())
    classes = card.classes or [str(k) for k in range(top + 1)]
    records = {}
    for s, lab in labels.items():
        bad = (lab < -1) | (lab >= len(classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: {s}_labels[{i}] = {lab[i]}, allowed 0..{len(classes) - 1} for classes "
                             f"{classes}; fix the file or the card's classes")
        prefix = "image" if s == "all" else s
        ids = [f"{prefix}_{i:05d}" for i in range(len(lab))]
        key = "images" if s == "all" else f"{s}_images"
        records[s] = SplitRecords(ids, lab, array=(path, key), index=np.arange(len(lab)),
                                  origins=[f"{path} {key}[{i}]" for i in range(len(lab))])
    return classes, records


READERS = {"folder": read_folder, "csv": read_csv, "npz": read_npz}


def _groups(cfg: dict, pool: SplitRecords, root: Path) -> list[str] | None:
    if "group_pattern" in cfg:
        rx = re.compile(cfg["group_pattern"])
        out = []
        for k, origin in zip(pool.ids, pool.origins):
            m = rx.search(k)
            if not m:
                raise ValueError(f"{origin}: id {k!r} does not match group_pattern {cfg['group_pattern']!r}")
            out.append(m.group(1) if m.groups() else m.group(0))
        return out
    col = cfg.get("group_column")
    if not col:
        return None
    if "group_file" in cfg:
        import pandas as pd

        path = _resolve(root, cfg["group_file"])
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        idcol = _id_column(list(df.columns), None, path)
        if col not in df.columns:
            raise ValueError(f"{path}: " + unknown_name("group column", col, df.columns, sort=False))
        table = dict(zip(df[idcol].str.strip(), df[col].str.strip()))
        lost = [k for k in pool.ids if k not in table]
        if lost:
            raise ValueError(f"{path}: no {col!r} for {len(lost)} image(s), e.g. {lost[:3]}; add rows for them")
        return [table[k] for k in pool.ids]
    if pool.groups is None:
        raise ValueError(f"group_column {col!r} is not in the label file; add it there, or name a "
                         f"group_file = \"<csv>\" with image ids and {col!r}")
    return pool.groups


def _make_splits(card: DatasetCard, records: dict[str, SplitRecords], root: Path
                 ) -> tuple[dict[str, SplitRecords], dict | None]:
    """Given splits as they are (with val carved out of train when only val is missing); the pooled
    images (or ``split.pool``) split as the card says."""
    cfg = dict(card.raw.get("split", {}))
    carve = "all" not in records and "pool" not in cfg and "train" in records and "val" not in records
    if "val_fraction" in cfg and not (carve and set(cfg) <= CARVE_KEYS):
        given = "no splits (use split.ratios)" if "all" in records else f"splits {list(records)}"
        raise ValueError(f"card {card.name!r}: split.val_fraction carves val out of a given train split when "
                         f"the data gives no val, and goes with none of ratios, folds, assignment, pool; "
                         f"here the data gives {given} and [split] holds {sorted(cfg)}")
    if carve and set(cfg) <= CARVE_KEYS:
        return _carve_val(card, records, cfg, root)
    if "all" in records:
        pool_names = ["all"]
    elif "pool" in cfg:
        pool_names = [split_name(p, f"card {card.name!r} split.pool") for p in cfg["pool"]]
        for p in pool_names:
            if p not in records:
                raise ValueError(f"card {card.name!r} split.pool: " + unknown_name("split", p, records, sort=False))
    elif cfg:
        raise ValueError(f"card {card.name!r}: the data has given splits {list(records)}; to re-split some "
                         f"of them set split.pool = [...] (e.g. [\"train\", \"val\"])")
    else:
        return records, None
    pool = _concat([records[p] for p in pool_names])
    _check_unique(pool.ids, pool.origins, f"splits {pool_names}")
    seed = int(cfg.get("seed", 0))
    groups = _groups(cfg, pool, root)
    made = {"pool": pool_names, "seed": seed, "group": cfg.get("group_column") or cfg.get("group_pattern")}
    if "assignment" in cfg:
        path = Path(cfg["assignment"])
        table = read_split_csv(path)
        lost = [k for k in pool.ids if k not in table]
        if lost:
            raise ValueError(f"{path}: no split for {len(lost)} image(s), e.g. {lost[:3]}")
        assign = np.array([table[k] for k in pool.ids], dtype=object)
        made |= {"mode": "assignment", "assignment": str(path)}
    elif "folds" in cfg:
        folds, fold = int(cfg["folds"]), int(cfg.get("fold", 0))
        if not 0 <= fold < folds:
            raise ValueError(f"card {card.name!r}: split.fold = {fold}, allowed 0..{folds - 1}")
        ratios = dict(cfg.get("ratios", {}))
        if set(ratios) - {"test"}:
            raise ValueError(f"card {card.name!r}: with split.folds, ratios may only hold test (held out "
                             f"before folding); got {ratios}")
        assign = np.full(len(pool), "train", dtype=object)
        if ratios:
            assign = stratified_split(pool.labels, {"train": 1 - ratios["test"], "test": ratios["test"]}, seed, groups)
        rest = np.flatnonzero(assign == "train")
        f = stratified_folds(pool.labels[rest], folds, seed, None if groups is None else [groups[i] for i in rest])
        assign[rest[f == fold]] = "val"
        made |= {"mode": "folds", "folds": folds, "fold": fold, "ratios": ratios}
    else:
        ratios = check_ratios(cfg.get("ratios", DEFAULT_RATIOS))
        assign = stratified_split(pool.labels, ratios, seed, groups)
        made |= {"mode": "ratios", "ratios": ratios}
    out = {k: v for k, v in records.items() if k not in pool_names}
    for s in SPLIT_NAMES:
        rows = np.flatnonzero(assign == s)
        if len(rows):
            if s in out:
                raise ValueError(f"card {card.name!r}: split {s!r} is given by the data and also made from "
                                 f"{pool_names}; add it to split.pool or drop it from the ratios")
            out[s] = replace(pool.subset(rows), groups=None if groups is None else [groups[i] for i in rows])
    wanted = [s for s in made.get("ratios", {}) if s not in out] + (["val"] if "val" not in out and "folds" in made else [])
    if wanted or not out:
        raise ValueError(f"card {card.name!r}: split(s) {wanted} came out empty from {len(pool)} images "
                         f"({made}); raise their ratio or use more images")
    return out, made


def _carve_val(card: DatasetCard, records: dict[str, SplitRecords], cfg: dict, root: Path
               ) -> tuple[dict[str, SplitRecords], dict | None]:
    """Given splits with a val split carved out of train: ``split.val_fraction`` (default 0.2) of it,
    stratified by class, grouped when the card names a group, seeded by ``split.seed``.

    When train or val would come out empty, that is an error if the card sets ``val_fraction``;
    otherwise the splits stay as given (nothing made) with a warning.
    """
    fraction = cfg.get("val_fraction", DEFAULT_VAL_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"card {card.name!r}: split.val_fraction = {fraction!r}; allowed: a fraction between "
                         f"0 and 1 (exclusive), e.g. 0.2 for a fifth of train")
    fraction, seed = float(fraction), int(cfg.get("seed", 0))
    train = records["train"]
    groups = _groups(cfg, train, root)
    assign = stratified_split(train.labels, {"train": 1 - fraction, "val": fraction}, seed, groups)
    made = {"mode": "val_carve", "fraction": fraction, "seed": seed,
            "group": cfg.get("group_column") or cfg.get("group_pattern"), "pool": ["train"]}
    parts = {s: np.flatnonzero(assign == s) for s in ("train", "val")}
    empty = [s for s, rows in parts.items() if not len(rows)]
    if empty:
        why = (f"card {card.name!r}: the data gives no val split, and carving {fraction * 100:g}% of train's "
               f"{len(train)} images as val leaves {empty[0]} empty")
        if "val_fraction" in cfg:
            raise ValueError(f"{why}; change split.val_fraction, add images, or give a val split")
        warnings.warn(f"{why}, so none is carved; training needs a val split: add images, set "
                      f"split.val_fraction, or give a val split", stacklevel=4)
        return records, None
    out = {s: replace(train.subset(rows), groups=None if groups is None else [groups[i] for i in rows])
           for s, rows in parts.items()}
    if "test" in records:
        out["test"] = records["test"]
    return out, made
