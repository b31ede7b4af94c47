"""Generic: ``image_id,<class_1>,...`` with every table class, in table order.

The default format when neither the run config's ``[submission]`` nor the dataset card names one.
Option ``class_map={"table class": "column"}`` renames columns.

Truth: a CSV with an ``image_id`` (or other id) column and a ``label`` column holding class names or
indices (a medmnist probability table qualifies). Per-class AUC, their mean, accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medzoo.benchmarks import metrics
from medzoo.benchmarks.challenges.base import (ID_COLUMNS, Submission, SubmissionError, challenge, check_class_map,
                                               join_ids, pick_column, read_truth_csv)


def score(sub: Submission, truth: Path) -> dict:
    """Per-class one-vs-rest AUC, their mean, and argmax accuracy."""
    header, rows = read_truth_csv(truth)
    classes = sub.header[1:]
    id_col = pick_column(header, ID_COLUMNS, truth, "id")
    col = pick_column(header, ("label",), truth, "label")
    names = [r[col].strip() for r in rows]
    lookup = {c: k for k, c in enumerate(classes)}
    bad = [v for v in names if v not in lookup and not (v.isdigit() and int(v) < len(classes))]
    if bad:
        raise SubmissionError(f"{truth}: labels {sorted(set(bad))[:5]} are neither classes {classes} nor indices")
    labels = np.array([lookup.get(v, int(v) if v.isdigit() else -1) for v in names], dtype=np.int64)
    y = labels[join_ids(sub.ids, [r[id_col] for r in rows], truth)]
    aucs = {f"auc_{c}": metrics.roc_auc(y == k, sub.values[:, k]) for k, c in enumerate(classes)}
    return {**aucs, "mean_auc": metrics.macro_mean(list(aucs.values())),
            "accuracy": float((sub.values.argmax(axis=1) == y).mean()), "n": len(y)}


@challenge("generic", id_column="image_id", columns=None, options={"class_map": None}, score=score,
           description="image_id plus one column per table class, in table order")
def build(fmt, table, *, class_map=None):
    """Every table class, renamed by ``class_map``."""
    class_map = check_class_map(table, class_map)
    return list(table.ids), [class_map.get(c, c) for c in table.classes], table.probs
