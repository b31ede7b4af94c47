"""ISIC 2019: ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, scored by balanced multiclass accuracy.

Submission: every class column except ``UNK`` must be found in the table. ``UNK`` is taken from a
table class named unknown/UNK when there is one, else option ``unk``: ``"zero"`` (default) or
``"uncertainty"`` = 1 - max probability of the row. Ids are bare.

Truth: the one-hot GroundTruth CSV ``image,MEL,...`` (``UNK`` optional). Balanced multiclass accuracy
(mean recall over classes present in the truth) where a row whose maximum score is shared by several
columns counts as undecided, i.e. wrong, as the ISIC scorer does; per-class ROC-AUC and their mean.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medzoo.benchmarks import metrics
from medzoo.benchmarks.challenges.base import (ID_COLUMNS, Submission, SubmissionError, challenge, class_index,
                                               join_bare, pick_column, read_truth_csv, spell_ids)

ALIASES = {
    "MEL": ("melanoma",), "NV": ("nevus", "melanocytic nevus", "naevus"),
    "BCC": ("basal cell carcinoma",), "AK": ("actinic keratosis",),
    "BKL": ("benign keratosis", "benign keratosis-like lesion", "benign keratosis like lesions"),
    "DF": ("dermatofibroma",), "VASC": ("vascular lesion", "vascular"),
    "SCC": ("squamous cell carcinoma",), "UNK": ("unknown", "none of the others"),
}
UNK_CHOICES = ("zero", "uncertainty")


def check_unk(fmt, value) -> None:
    """Option ``unk``: one of :data:`UNK_CHOICES`."""
    if value not in UNK_CHOICES:
        raise SubmissionError(f"isic2019: unk={value!r}; allowed 'zero' or 'uncertainty' (1 - max probability)")


def _truth_onehot(header: list[str], rows: list[list[str]], classes: list[str], truth: Path) -> np.ndarray:
    """``[N, K]`` one-hot truth over the submission's ``classes`` (``UNK`` may be absent: zeros)."""
    cols = [header.index(c) if c in header else None for c in classes]
    if any(c is None for c, name in zip(cols, classes) if name != "UNK"):
        raise SubmissionError(f"{truth}: header {header} lacks class columns "
                              f"{[n for c, n in zip(cols, classes) if c is None]}")
    onehot = np.array([[float(r[c]) if c is not None else 0.0 for c in cols] for r in rows])
    if not (onehot.sum(axis=1) == 1).all():
        bad = int(np.flatnonzero(onehot.sum(axis=1) != 1)[0])
        raise SubmissionError(f"{truth}: row {bad + 2} is not one-hot over {classes}: {onehot[bad].tolist()}")
    return onehot


def score(sub: Submission, truth: Path) -> dict:
    """Balanced accuracy (ties between top scores count as wrong), per-class AUC and their mean."""
    header, rows = read_truth_csv(truth)
    classes = sub.header[1:]
    onehot = _truth_onehot(header, rows, classes, truth)
    id_col = pick_column(header, ID_COLUMNS, truth, "id")
    onehot = onehot[join_bare(sub, rows, id_col, truth)]
    y = onehot.argmax(axis=1)
    top = sub.values.max(axis=1, keepdims=True)
    undecided = (sub.values == top).sum(axis=1) > 1
    pred = np.where(undecided, -1, sub.values.argmax(axis=1))
    present = [k for k in range(len(classes)) if (y == k).any()]
    out = {"balanced_accuracy": float(np.mean([(pred[y == k] == k).mean() for k in present])),
           "undecided": int(undecided.sum())}
    aucs = {f"auc_{classes[k]}": metrics.roc_auc(onehot[:, k], sub.values[:, k]) for k in range(len(classes))}
    out.update(aucs)
    out["mean_auc"] = metrics.macro_mean(list(aucs.values()))
    out["n"] = len(sub.ids)
    return out


@challenge("isic2019", id_column="image", columns=tuple(ALIASES), bare_ids=True, aliases=ALIASES,
           options={"unk": "zero", "class_map": None}, checks={"unk": check_unk}, score=score,
           description="ISIC 2019: image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (UNK zero or 1 - max prob)")
def build(fmt, table, *, class_map=None, unk="zero"):
    """One column per diagnosis, found by name; ``UNK`` from a class named so, else zero or 1 - max probability."""
    columns = fmt.get("columns")
    values = np.zeros((len(table.ids), len(columns)))
    for j, col in enumerate(columns):
        k = class_index(fmt, table, col, class_map, required=col != "UNK")
        if k is not None:
            values[:, j] = table.probs[:, k]
        elif unk == "uncertainty":
            values[:, j] = 1.0 - table.probs.max(axis=1)
    return spell_ids(fmt, table.ids), list(columns), values
