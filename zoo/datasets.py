"""Opening a dataset: its card loaded and checked, its images listed by the format's reader, its splits made.

:func:`open_dataset` reads the labels and lists the images (failing early, naming the file and
row, on anything wrong; see :mod:`medzoo.zoo.readers`) and makes the splits the card asks for
(:func:`medzoo.zoo.splits.make_splits`); :func:`load_arrays` gives a split as ``uint8`` arrays
at a training size, through the on-disk cache of :mod:`medzoo.zoo.cache`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from medzoo.core.names import unknown_name
from medzoo.zoo.cache import cached_images, load_images, resize_array
from medzoo.zoo.cards import SPLIT_NAMES, DatasetCard, card_source, check_card, check_views, resolve_data_root
from medzoo.zoo.readers import READERS, SplitRecords
from medzoo.zoo.splits import make_splits, write_split_csv
from medzoo.zoo.tomlfile import merge_tables

__all__ = ["Dataset", "SplitArrays", "load_card", "open_dataset", "load_arrays", "decode_all"]


def load_card(source, overrides: Mapping | None = None) -> DatasetCard:
    """Load a card from a name in ``data/``, a ``.toml`` path, a data path, a dict or a card.

    ``overrides`` is merged into the card's fields (nested tables merge), e.g.
    ``{"split": {"fold": 2}}``. The card's ``format`` must name a registered reader.
    """
    raw, path = card_source(source)
    if overrides:
        raw = merge_tables(raw, overrides)
    return check_card(raw, path, READERS.names())


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
    classes, records = READERS[card.format].target(card, root)
    if not card.classes:
        check_views(card, classes)
    records, made = make_splits(card, records, root)
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
