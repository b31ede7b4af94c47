"""Making train/val/test splits: stratified ratios, grouped by patient, or stratified k folds.

Every function is deterministic from its seed. Items (or groups of items that must stay
together) are ordered by stratum (their class; ``-1`` for unlabeled is a stratum too) and at
random within a stratum, then dealt out one by one to the split that is furthest behind its
share. Each split thus receives its share of every class to within one unit, and the total
of each split is within one unit of ``ratio * N``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medzoo.core.fileio import atomic_path
from medzoo.core.names import unknown_name

SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}


def split_name(name: str, source: str = "split") -> str:
    """Canonical split name for ``name`` (``valid`` -> ``val``); raise for anything else."""
    key = str(name).lower()
    key = SPLIT_ALIASES.get(key, key)
    if key not in SPLIT_NAMES:
        raise ValueError(f"{source}: " + unknown_name("split", name, [*SPLIT_NAMES, *SPLIT_ALIASES], sort=False))
    return key


def check_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    """Validate ``{split: fraction}`` (positive, summing to 1) and return it in split order."""
    out = {split_name(k, "split ratios"): float(v) for k, v in ratios.items()}
    if not out or any(not v > 0 for v in out.values()) or abs(sum(out.values()) - 1) > 1e-6:
        raise ValueError(f"split ratios {dict(ratios)} must be positive fractions summing to 1, "
                         f"e.g. {{train = 0.75, val = 0.20, test = 0.05}}")
    return {k: out[k] for k in SPLIT_NAMES if k in out}


def _deal(strata: np.ndarray, weights: np.ndarray, ratios: np.ndarray, seed: int) -> np.ndarray:
    """Deal units to bins. strata, weights: ``[U]``; ratios: ``[S]`` -> bin index ``[U]``.

    Units are visited by stratum, shuffled within it; each goes to the bin whose share of
    the items dealt so far (this one included) is furthest above what it holds. Ties go to
    the lower bin index.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(len(strata)), strata))
    held = np.zeros(len(ratios))
    dealt = 0.0
    out = np.empty(len(strata), dtype=np.int64)
    for u in order:
        dealt += weights[u]
        b = int(np.argmax(ratios * dealt - held))
        held[b] += weights[u]
        out[u] = b
    return out


def _units(labels: np.ndarray, groups: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items -> units. Returns ``(unit_of_item [N], stratum [U], weight [U])``.

    Without groups each item is a unit. With groups, a unit is a group and its stratum is the
    group's most common label (ties to the smaller label).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if groups is None:
        return np.arange(len(labels)), labels, np.ones(len(labels))
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} group ids for {len(labels)} items")
    names, unit = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    shifted = labels + 1
    counts = np.zeros((len(names), int(shifted.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(counts, (unit, shifted), 1)
    return unit, counts.argmax(axis=1) - 1, counts.sum(axis=1).astype(float)


def stratified_split(labels: np.ndarray, ratios: Mapping[str, float], seed: int = 0,
                     groups: Sequence[str] | None = None) -> np.ndarray:
    """Assign each item to a split.

    Args:
        labels: ``[N]`` int class indices, ``-1`` for unlabeled (its own stratum).
        ratios: ``{split: fraction}`` summing to 1.
        seed: the same seed gives the same assignment.
        groups: optional ``[N]`` patient/lesion ids; a group never straddles two splits.

    Returns:
        ``[N]`` array of split names.
    """
    ratios = check_ratios(ratios)
    unit, strata, weights = _units(labels, groups)
    bins = _deal(strata, weights, np.array(list(ratios.values())), seed)
    return np.array(list(ratios), dtype=object)[bins[unit]]


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0,
                     groups: Sequence[str] | None = None) -> np.ndarray:
    """Stratified (optionally grouped) k folds: ``[N]`` labels -> ``[N]`` fold index in ``0..folds-1``."""
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds = {folds!r}; need an integer >= 2")
    unit, strata, weights = _units(labels, groups)
    return _deal(strata, weights, np.full(int(folds), 1.0 / folds), seed)[unit]


def write_split_csv(path: str | Path, ids: Sequence[str], splits: Sequence[str]) -> Path:
    """Write the assignment as CSV ``image_id,split`` (atomically), so a run can be reproduced."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "split"])
        w.writerows(zip(ids, splits))
    return path


def read_split_csv(path: str | Path) -> dict[str, str]:
    """Read an ``image_id,split`` CSV into ``{image_id: split}``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split assignment {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["image_id", "split"]:
        raise ValueError(f"{path}: header must be image_id,split (got {rows[0] if rows else 'an empty file'})")
    out: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise ValueError(f"{path} line {line}: expected 2 fields image_id,split, got {row}")
        if row[0] in out:
            raise ValueError(f"{path} line {line}: duplicate image_id {row[0]!r}; each image has one split")
        out[row[0]] = split_name(row[1], f"{path} line {line}")
    return out
