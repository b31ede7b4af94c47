"""MedMNIST: header-less ``index,score_0,...,score_{C-1}``, as MedMNIST's ``Evaluator`` reads and scores it.

Submission: read as ``pd.read_csv(f, header=None, index_col=0).sort_index()``. The index is the
integer position in the official split: the trailing digits of the id (``"test_00012"`` -> 12,
``"12"`` -> 12). Indices must be exactly 0..N-1. Scores are in the table's class order, which for
MedMNIST cards is the label order; option ``classes=[...]`` (the label order) reorders the columns
by name. The file is named as ``Evaluator.parse_and_evaluate`` reads it:
``{flag}{size_flag}_{split}_<entry>@{run}.csv`` (flag and size from the dataset's ``.npz`` name,
``size_flag`` empty for 28 px, ``_64`` for 64 px).

Truth: the dataset ``.npz`` (``<split>_labels``, scoring option ``split``, default ``"test"``) or a
CSV ``index,label``. AUC and accuracy as MedMNIST's evaluator computes them: binary tasks use the last
score column (accuracy at 0.5), multi-class ones the mean one-vs-rest AUC and argmax.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from medzoo.benchmarks import metrics
from medzoo.benchmarks.challenges.base import Submission, SubmissionError, bare_id, challenge, is_names, join_ids

FILE_NAME = "{flag}{size_flag}_{split}_{entry}@{run}.csv"


def medmnist_index(image_id) -> int:
    """The integer position in a MedMNIST split: trailing digits of the id (``"test_00012"`` -> 12)."""
    m = re.search(r"(\d+)$", bare_id(str(image_id)))
    if not m:
        raise SubmissionError(f"medmnist: cannot read an integer index from id {image_id!r}; "
                              f"ids must be integers or end in digits, e.g. '12' or 'test_00012'")
    return int(m.group(1))


def medmnist_flag(data_file: str | Path) -> tuple[str, str]:
    """``(flag, size_flag)`` from a MedMNIST ``.npz`` name, as MedMNIST's ``Evaluator`` spells them.

    ``pneumoniamnist.npz`` -> ``("pneumoniamnist", "")``; ``pneumoniamnist_64.npz`` ->
    ``("pneumoniamnist", "_64")``. The 28 px files carry no size, and ``_28`` is written as none.
    """
    m = re.fullmatch(r"(?P<flag>[^_]+?)(?:_(?P<size>\d+))?", Path(data_file).name.removesuffix(".npz"))
    if not m:
        raise SubmissionError(f"medmnist: cannot read a MedMNIST flag from {Path(data_file).name!r}; expected "
                              f"<flag>.npz or <flag>_<size>.npz, e.g. pneumoniamnist.npz")
    size = m.group("size")
    return m.group("flag"), "" if size in (None, "28") else f"_{size}"


def file_fields(dataset: str | None, data_file: str | Path | None) -> dict:
    """``flag`` and ``size_flag`` of the file name: from ``data_file`` (the ``.npz``), else ``dataset`` with no size."""
    if data_file is None and dataset is None:
        raise SubmissionError(f"medmnist: the file name {FILE_NAME} starts with the dataset's flag, and "
                              f"the run names no dataset; give the output path (--out)")
    flag, size_flag = medmnist_flag(data_file) if data_file is not None else (dataset, "")
    return {"flag": flag, "size_flag": size_flag}


def check_classes(fmt, value) -> None:
    """Option ``classes``: the list of class names in label order."""
    if not is_names(value):
        raise SubmissionError(f"classes = {value!r}; expected the list of class names in label order")


def spell(ids: Sequence, options: dict) -> list[str]:
    """Each id as its index (:func:`medmnist_index`)."""
    return [str(medmnist_index(i)) for i in ids]


def parse_id(text: str) -> str:
    """An index as read back: ``"12"`` or ``"12.0"`` -> ``"12"``; anything else as it is."""
    return str(int(float(text))) if re.fullmatch(r"\d+(\.0*)?", text) else text


def check_ids(ids: list[str]) -> list[str]:
    """The index column must hold the integers 0..N-1 (the evaluator sorts by index and compares with labels)."""
    try:
        index = sorted(int(i) for i in ids)
    except ValueError:
        return [f"medmnist index column must hold integers, got e.g. {ids[:3]}"]
    if index != list(range(len(ids))):
        return [f"medmnist indices must be exactly 0..{len(ids) - 1} (the evaluator sorts by index and "
                f"compares with the split's labels); got {index[:3]}...{index[-3:]}"]
    return []


def _truth_labels(truth: Path, split: str) -> tuple[list[str], np.ndarray]:
    """``(index keys [N], labels [N])`` from the ``.npz``'s ``<split>_labels`` or an ``index,label`` CSV."""
    if not truth.exists():
        raise FileNotFoundError(f"no ground-truth file at {truth}")
    if truth.suffix == ".npz":
        with np.load(truth) as z:
            key = f"{split}_labels"
            if key not in z:
                raise SubmissionError(f"{truth}: no array {key!r}; arrays: {sorted(z.files)}")
            labels = np.asarray(z[key]).reshape(-1).astype(np.int64)
        return [str(i) for i in range(len(labels))], labels
    with open(truth, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]
    return [str(int(r[0])) for r in rows], np.array([int(float(r[1])) for r in rows], dtype=np.int64)


def score(sub: Submission, truth: Path, split: str = "test") -> dict:
    """MedMNIST's AUC and accuracy: binary on the last column (accuracy at 0.5), else macro AUC and argmax."""
    keys, labels = _truth_labels(truth, split)
    y = labels[join_ids(sub.ids, keys, truth)]
    s = sub.values
    if s.shape[1] == 2:
        return {"auc": metrics.roc_auc(y, s[:, -1]), "acc": float(((s[:, -1] > 0.5) == y).mean()), "n": len(y)}
    aucs = [metrics.roc_auc(y == k, s[:, k]) for k in range(s.shape[1])]
    return {"auc": metrics.macro_mean(aucs), "acc": float((s.argmax(axis=1) == y).mean()), "n": len(y)}


@challenge("medmnist", id_column="index", columns=None, header=False, options={"classes": None},
           checks={"classes": check_classes}, spell=spell, parse_id=parse_id, check_ids=check_ids,
           file_name=FILE_NAME, file_fields=file_fields, score=score, score_options=("split",),
           description="MedMNIST evaluator: header-less index,score_0,...,score_{C-1}")
def build(fmt, table, *, classes=None):
    """Rows sorted by index; scores in table class order, or in ``classes`` order."""
    cols = list(range(len(table.classes)))
    if classes is not None:
        missing = [c for c in classes if c not in table.classes]
        if missing or len(classes) != len(table.classes):
            raise SubmissionError(f"medmnist: classes {list(classes)} must name each table class {table.classes} once")
        cols = [table.classes.index(c) for c in classes]
    index = np.array([medmnist_index(i) for i in table.ids], dtype=np.int64)
    order = np.argsort(index, kind="stable")
    return [str(i) for i in index[order]], [f"score_{k}" for k in range(len(cols))], table.probs[order][:, cols]
