"""Cross-validated members (``[cv] folds = K``): the folds, each fold's data, and the member tables they make.

Train and val are pooled and dealt into K stratified folds (grouped when the dataset names
groups, so a patient never straddles two folds), the same for every member and repeat, and
saved with the run (``RunDir.folds_csv``). Fold unit k trains on the other K - 1 folds and
predicts fold k ("val") and test into its own folder. When every fold of a member is done,
:func:`assemble` writes the member's tables: ``val`` out-of-fold (every pooled image exactly
once, predicted by the one model that did not train on it), ``test`` the mean of the K fold
models' test tables (bagging) and ``test.fold<k>`` each fold model's own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from medzoo.core.fileio import write_text
from medzoo.core.rundir import RunDir
from medzoo.ensemble.table import ProbabilityTable, align
from medzoo.zoo.config import Unit, ZooConfig
from medzoo.zoo.datasets import Dataset, SplitArrays
from medzoo.zoo.splits import stratified_folds

POOLED = ("train", "val")


def fold_assignment(ds: Dataset, folds: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``(ids [N], fold [N])`` of the pooled train+val images (train first), folds numbered 1..K."""
    records = [ds.records(s) for s in POOLED]
    ids = [i for r in records for i in r.ids]
    labels = np.concatenate([r.labels for r in records])
    groups = [g for r in records for g in r.groups] if all(r.groups is not None for r in records) else None
    return ids, stratified_folds(labels, folds, seed, groups) + 1


def write_folds(path: Path, ids: list[str], folds: np.ndarray) -> Path:
    """Save the assignment as CSV ``image_id,fold`` (atomically)."""
    return write_text(path, pd.DataFrame({"image_id": ids, "fold": folds}).to_csv(index=False))


def read_folds(path: Path) -> dict[str, int]:
    """``{image_id: fold}`` from :func:`write_folds`'s file."""
    if not path.is_file():
        raise FileNotFoundError(f"no fold assignment at {path}: the run was not started with [cv] (medzoo train "
                                f"writes it before any fold trains)")
    frame = pd.read_csv(path, dtype={"image_id": str, "fold": int}, keep_default_na=False)
    if list(frame.columns) != ["image_id", "fold"] or frame["image_id"].duplicated().any():
        raise ValueError(f"{path}: expected columns image_id,fold with each image once")
    return dict(zip(frame["image_id"], frame["fold"].tolist()))


def check_same_folds(path: Path, ids: list[str], folds: np.ndarray) -> None:
    """Raise unless the folds dealt now are those saved at ``path`` when the run started."""
    saved = read_folds(path)
    now = dict(zip(ids, folds.tolist()))
    moved = sum(saved.get(k) != f for k, f in now.items())
    if moved or saved.keys() != now.keys():
        raise ValueError(f"{path}: the folds dealt now differ from those this run started with ({moved} image(s) "
                         f"moved or new, {len(saved.keys() - now.keys())} gone): the data or [cv] changed. "
                         f"Restore them, use another run name, or pass --extend")


def fold_data(data: dict[str, SplitArrays], folds: dict[str, int], k: int) -> dict[str, SplitArrays]:
    """Fold unit ``k``'s splits: train = the pooled images outside fold k, val = fold k, test unchanged."""
    pooled = [data[s] for s in POOLED]
    ids = [i for a in pooled for i in a.ids]
    missing = [i for i in ids if i not in folds]
    if missing or len(ids) != len(folds):
        raise ValueError(f"the fold assignment covers {len(folds)} images, train+val has {len(ids)} "
                         f"({len(missing)} without a fold, e.g. {missing[:3]}): the data changed since the run started")
    fold = np.array([folds[i] for i in ids])
    images = np.concatenate([a.images for a in pooled])
    labels = np.concatenate([a.labels for a in pooled])
    classes = pooled[0].classes

    def part(rows: np.ndarray) -> SplitArrays:
        return SplitArrays([ids[r] for r in rows], images[rows], labels[rows], classes)

    out = {"train": part(np.flatnonzero(fold != k)), "val": part(np.flatnonzero(fold == k))}
    if "test" in data:
        out["test"] = data["test"]
    return out


def assemble(cfg: ZooConfig, run: RunDir, units: list[Unit], log: Callable[[str], None] = print) -> list[str]:
    """Write the member tables of every member-and-seed whose fold units are all done; returns the entries written.

    ``units`` are the run's fold units (others are ignored). Groups with a fold not yet done are
    left for the job that finishes it.
    """
    groups: dict[tuple[str, int], list[Unit]] = {}
    for u in units:
        if u.fold is not None:
            groups.setdefault((u.member.id, u.seed), []).append(u)
    written = []
    for group in groups.values():
        if len(group) == cfg.cv.folds and all(run.member(u.name).done.exists() for u in group):
            for j, entry in enumerate(group[0].entries):
                _assemble_entry(run, group, j, entry)
                written.append(entry)
            log(f"{group[0].member.id} (seed {group[0].seed}): {cfg.cv.folds} folds assembled into "
                f"{', '.join(group[0].entries)} (out-of-fold val, bagged test)")
    return written


def _assemble_entry(run: RunDir, group: list[Unit], j: int, entry: str) -> None:
    """One member table from its K fold units (``entry`` is the j-th entry of each)."""
    vals = [ProbabilityTable.read(run.member(u.name).table(u.entries[j], "val")) for u in group]
    ids = [i for t in vals for i in t.ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{entry}: the held-out folds overlap ({len(ids) - len(set(ids))} image(s) in two folds)")
    units = [u.name for u in group]
    meta = {**{k: vals[0].meta[k] for k in ("model", "dataset", "size", "tta", "config") if k in vals[0].meta},
            "member": entry, "units": units, "folds": len(group)}
    oof = ProbabilityTable(ids, vals[0].classes, np.concatenate([t.probs for t in vals]),
                           np.concatenate([t.labels for t in vals]), {**meta, "split": "val", "out_of_fold": True})
    tests = [run.member(u.name).table(u.entries[j], "test") for u in group]
    if all(p.exists() for p in tests):
        folds = [ProbabilityTable.read(p) for p in tests]
        test_ids, classes, probs, labels = align(folds)
        for u, t in zip(group, folds):
            t.meta.update(member=entry, units=units, split="test", fold=u.fold)
            t.write(run.table("member", entry, f"test.fold{u.fold}"))
        ProbabilityTable(test_ids, classes, probs.mean(axis=0), labels,
                         {**meta, "split": "test", "bagged": len(group)}).write(run.table("member", entry, "test"))
    oof.write(run.table("member", entry, "val"))  # last: a val table means the member's tables are complete

