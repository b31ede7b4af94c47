"""Making train/val/test splits: stratified ratios, grouped by patient, or stratified k folds, as a card says.

Every function is deterministic from its seed. Items (or groups of items that must stay
together) are ordered by stratum (their class; ``-1`` for unlabeled is a stratum too) and at
random within a stratum, then dealt out one by one to the split that is furthest behind its
share. Each split thus receives its share of every class to within one unit, and the total
of each split is within one unit of ``ratio * N``.

:func:`make_splits` applies a card's ``[split]`` table to the records a reader gave: the
pooled images (or ``split.pool``) split by ratios, folds or an assignment file, or a val split
carved out of a given train split when the data gives none.
"""
from __future__ import annotations

import csv
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from medzoo.core.fileio import atomic_path
from medzoo.core.names import unknown_name
from medzoo.zoo.cards import SPLIT_NAMES, DatasetCard, data_path, split_name
from medzoo.zoo.readers import SplitRecords, check_unique, concat_records, id_column

CARVE_KEYS = {"seed", "val_fraction", "group_column", "group_pattern", "group_file"}
DEFAULT_RATIOS = {"train": 0.75, "val": 0.20, "test": 0.05}
DEFAULT_VAL_FRACTION = 0.2


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


def make_splits(card: DatasetCard, records: dict[str, SplitRecords], root: Path
                ) -> tuple[dict[str, SplitRecords], dict | None]:
    """The splits a card's ``[split]`` table asks for, and how they were made (None: as given).

    Given splits stay as they are, with val carved out of train when only val is missing
    (:func:`_carve_val`); the pooled images (``all``, or ``split.pool``) are split by an
    assignment file, folds or ratios. ``root`` is the data root (for ``group_file``).
    """
    cfg = dict(card.raw.get("split", {}))
    carve = "all" not in records and "pool" not in cfg and "train" in records and "val" not in records
    if "val_fraction" in cfg and not (carve and set(cfg) <= CARVE_KEYS):
        given = "no splits (use split.ratios)" if "all" in records else f"splits {list(records)}"
        raise ValueError(f"card {card.name!r}: split.val_fraction carves val out of a given train split when "
                         f"the data gives no val, and goes with none of ratios, folds, assignment, pool; "
                         f"here the data gives {given} and [split] holds {sorted(cfg)}")
    if carve and set(cfg) <= CARVE_KEYS:
        return _carve_val(card, records, cfg, root)
    pool_names = _pool_names(card, records, cfg)
    if pool_names is None:
        return records, None
    pool = concat_records([records[p] for p in pool_names])
    check_unique(pool.ids, pool.origins, f"splits {pool_names}")
    seed = int(cfg.get("seed", 0))
    groups = _groups(cfg, pool, root)
    made = {"pool": pool_names, "seed": seed, "group": cfg.get("group_column") or cfg.get("group_pattern")}
    assign, how = _assign(card, cfg, pool, seed, groups)
    made |= how
    return _split_pool(card, records, pool_names, pool, assign, groups, made), made


def _pool_names(card: DatasetCard, records: dict[str, SplitRecords], cfg: dict) -> list[str] | None:
    """The splits to pool and re-split: ``all``, or ``split.pool``; None when the given splits stay."""
    if "all" in records:
        return ["all"]
    if "pool" in cfg:
        pool_names = [split_name(p, f"card {card.name!r} split.pool") for p in cfg["pool"]]
        for p in pool_names:
            if p not in records:
                raise ValueError(f"card {card.name!r} split.pool: " + unknown_name("split", p, records, sort=False))
        return pool_names
    if cfg:
        raise ValueError(f"card {card.name!r}: the data has given splits {list(records)}; to re-split some "
                         f"of them set split.pool = [...] (e.g. [\"train\", \"val\"])")
    return None


def _assign(card: DatasetCard, cfg: dict, pool: SplitRecords, seed: int, groups: list[str] | None
            ) -> tuple[np.ndarray, dict]:
    """Split names ``[N]`` of the pooled images, and the ``mode`` (with its settings) that made them."""
    if "assignment" in cfg:
        path = Path(cfg["assignment"])
        table = read_split_csv(path)
        lost = [k for k in pool.ids if k not in table]
        if lost:
            raise ValueError(f"{path}: no split for {len(lost)} image(s), e.g. {lost[:3]}")
        return np.array([table[k] for k in pool.ids], dtype=object), {"mode": "assignment", "assignment": str(path)}
    if "folds" in cfg:
        return _assign_folds(card, cfg, pool, seed, groups)
    ratios = check_ratios(cfg.get("ratios", DEFAULT_RATIOS))
    return stratified_split(pool.labels, ratios, seed, groups), {"mode": "ratios", "ratios": ratios}


def _assign_folds(card: DatasetCard, cfg: dict, pool: SplitRecords, seed: int, groups: list[str] | None
                  ) -> tuple[np.ndarray, dict]:
    """Fold ``split.fold`` of ``split.folds`` as val, the rest train, after holding out ``ratios.test`` if set."""
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
    return assign, {"mode": "folds", "folds": folds, "fold": fold, "ratios": ratios}


def _split_pool(card: DatasetCard, records: dict[str, SplitRecords], pool_names: list[str], pool: SplitRecords,
                assign: np.ndarray, groups: list[str] | None, made: dict) -> dict[str, SplitRecords]:
    """The splits that were not pooled, plus the pool cut by ``assign`` (split names ``[N]``).

    A split the ratios (or folds) ask for must not come out empty.
    """
    out = {k: v for k, v in records.items() if k not in pool_names}
    for s in SPLIT_NAMES:
        rows = np.flatnonzero(assign == s)
        if len(rows):
            if s in out:
                raise ValueError(f"card {card.name!r}: split {s!r} is given by the data and also made from "
                                 f"{pool_names}; add it to split.pool or drop it from the ratios")
            out[s] = replace(pool.subset(rows), groups=None if groups is None else [groups[i] for i in rows])
    wanted = [s for s in made.get("ratios", {}) if s not in out]
    wanted += ["val"] if "val" not in out and "folds" in made else []
    if wanted or not out:
        raise ValueError(f"card {card.name!r}: split(s) {wanted} came out empty from {len(pool)} images "
                         f"({made}); raise their ratio or use more images")
    return out


def _groups(cfg: dict, pool: SplitRecords, root: Path) -> list[str] | None:
    """The group (patient, lesion) of every pooled image, as ``[split]`` says; None when it names none.

    ``group_pattern``: a regex on the id (its first group, else the match); ``group_column``: a
    column of ``group_file`` (a CSV with image ids) or, without one, of the label file.
    """
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
        return _file_groups(data_path(root, cfg["group_file"]), col, pool.ids)
    if pool.groups is None:
        raise ValueError(f"group_column {col!r} is not in the label file; add it there, or name a "
                         f"group_file = \"<csv>\" with image ids and {col!r}")
    return pool.groups


def _file_groups(path: Path, col: str, ids: Sequence[str]) -> list[str]:
    """Column ``col`` of the CSV at ``path`` for each of ``ids`` (looked up by the CSV's id column)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    idcol = id_column(list(df.columns), None, path)
    if col not in df.columns:
        raise ValueError(f"{path}: " + unknown_name("group column", col, df.columns, sort=False))
    table = dict(zip(df[idcol].str.strip(), df[col].str.strip()))
    lost = [k for k in ids if k not in table]
    if lost:
        raise ValueError(f"{path}: no {col!r} for {len(lost)} image(s), e.g. {lost[:3]}; add rows for them")
    return [table[k] for k in ids]


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
