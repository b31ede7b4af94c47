"""Score a submission file against a challenge's ground truth, as the challenge did.

Rows are joined on ids (spelled the same way on both sides: bare ISIC ids, object-cxr file
names without folder or extension, MedMNIST integer indices), never on row order; an id on
one side only is an error that lists it.

Truth files per format:

``isic2017``  the ISIC GroundTruth CSV ``image_id,melanoma,seborrheic_keratosis`` (0/1).
    Scores per task: ROC-AUC, average precision, specificity at 95% sensitivity; and the
    mean of the two AUCs (the challenge's ranking number).
``isic2019``  the one-hot GroundTruth CSV ``image,MEL,...`` (``UNK`` optional). Balanced
    multiclass accuracy (mean recall over classes present in the truth) where a row whose
    maximum score is shared by several columns counts as undecided, i.e. wrong, as the ISIC
    scorer does; per-class ROC-AUC and their mean.
``isic2020`` / ``object-cxr`` / any binary format: a CSV with an id column (the format's id
    column, ``image_name``, ``image_id``, ``image_path`` or ``image``) and a 0/1 label column
    (``target`` or ``label``; for object-cxr also ``annotation``: non-empty = foreign object).
    ROC-AUC and average precision.
``medmnist``  the dataset ``.npz`` (``<split>_labels``, ``split="test"``) or a CSV
    ``index,label``. AUC and accuracy as MedMNIST's evaluator computes them: binary tasks use
    the last score column (accuracy at 0.5), multi-class ones the mean one-vs-rest AUC and argmax.
``generic``  a CSV with an ``image_id`` column and a ``label`` column holding class names or
    indices (a medmnist probability table qualifies). Per-class AUC, their mean, accuracy.
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.metrics import roc_curve

from medzoo.benchmarks.metrics import average_precision, macro_mean, roc_auc
from medzoo.benchmarks.submission import SubmissionError, bare_id, get_format, read_submission
from medzoo.core.names import unknown_name

SCORERS: dict[str, Callable] = {}
ID_COLUMNS = ("image_name", "image_id", "image_path", "image", "index")


def scorer(*names: str):
    """Decorator registering ``score(sub, truth_path, **options) -> dict`` for formats ``names``."""
    def deco(fn):
        for name in names:
            if name in SCORERS:
                raise ValueError(f"scorer for format {name!r} is already registered")
            SCORERS[name] = fn
        return fn
    return deco


def specificity_at_sensitivity(y: np.ndarray, s: np.ndarray, sensitivity: float = 0.95) -> float:
    """Best specificity over thresholds ``s >= t`` whose sensitivity is at least ``sensitivity``."""
    y = np.asarray(y)
    if not 0 < y.sum() < len(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float((1.0 - fpr[tpr >= sensitivity - 1e-12]).max())


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.exists():
        raise FileNotFoundError(f"no ground-truth file at {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if len(rows) < 2:
        raise SubmissionError(f"{path}: expected a header and at least one row")
    return [h.strip() for h in rows[0]], rows[1:]


def _pick(header: list[str], names, path: Path, what: str) -> int:
    lower = [h.lower() for h in header]
    for n in names:
        if n.lower() in lower:
            return lower.index(n.lower())
    raise SubmissionError(f"{path}: no {what} column; looked for {list(names)} in header {header}")


def _join(sub_keys: list[str], truth_keys: list[str], truth_path: Path) -> np.ndarray:
    """``[N]`` index into the truth rows for each submission row; mismatched ids raise."""
    index = {k: i for i, k in enumerate(truth_keys)}
    if len(index) != len(truth_keys):
        dup = sorted(k for k, c in Counter(truth_keys).items() if c > 1)
        raise SubmissionError(f"{truth_path}: duplicate ids {dup[:10]}")
    missing = sorted(set(truth_keys) - set(sub_keys))
    extra = sorted(set(sub_keys) - set(truth_keys))
    if missing or extra:
        raise SubmissionError(f"submission and truth {truth_path} cover different images: "
                              f"{len(missing)} truth ids missing from the submission {missing[:10]}, "
                              f"{len(extra)} submission ids not in the truth {extra[:10]}")
    return np.array([index[k] for k in sub_keys], dtype=np.int64)


def _binary(y, s) -> dict:
    return {"auc": roc_auc(y, s), "average_precision": average_precision(y, s)}


@scorer("isic2017")
def _score_isic2017(sub, truth: Path) -> dict:
    header, rows = _read_csv(truth)
    cols = [_pick(header, [c], truth, c) for c in ("melanoma", "seborrheic_keratosis")]
    id_col = _pick(header, ID_COLUMNS, truth, "id")
    y = np.array([[float(r[c]) for c in cols] for r in rows])
    y = y[_join([bare_id(i) for i in sub.ids], [bare_id(r[id_col]) for r in rows], truth)]
    out = {}
    for j, task in enumerate(("melanoma", "seborrheic_keratosis")):
        s = sub.column(task)
        out[f"{task}_auc"] = roc_auc(y[:, j], s)
        out[f"{task}_average_precision"] = average_precision(y[:, j], s)
        out[f"{task}_specificity_at_95_sensitivity"] = specificity_at_sensitivity(y[:, j], s, 0.95)
    out["mean_auc"] = (out["melanoma_auc"] + out["seborrheic_keratosis_auc"]) / 2
    out["n"] = len(sub.ids)
    return out


@scorer("isic2019")
def _score_isic2019(sub, truth: Path) -> dict:
    header, rows = _read_csv(truth)
    classes = sub.header[1:]
    cols = [header.index(c) if c in header else None for c in classes]
    if any(c is None for c, name in zip(cols, classes) if name != "UNK"):
        raise SubmissionError(f"{truth}: header {header} lacks class columns "
                              f"{[n for c, n in zip(cols, classes) if c is None]}")
    onehot = np.array([[float(r[c]) if c is not None else 0.0 for c in cols] for r in rows])
    if not (onehot.sum(axis=1) == 1).all():
        bad = int(np.flatnonzero(onehot.sum(axis=1) != 1)[0])
        raise SubmissionError(f"{truth}: row {bad + 2} is not one-hot over {classes}: {onehot[bad].tolist()}")
    id_col = _pick(header, ID_COLUMNS, truth, "id")
    onehot = onehot[_join([bare_id(i) for i in sub.ids], [bare_id(r[id_col]) for r in rows], truth)]
    y = onehot.argmax(axis=1)
    top = sub.values.max(axis=1, keepdims=True)
    undecided = (sub.values == top).sum(axis=1) > 1
    pred = np.where(undecided, -1, sub.values.argmax(axis=1))
    present = [k for k in range(len(classes)) if (y == k).any()]
    out = {"balanced_accuracy": float(np.mean([(pred[y == k] == k).mean() for k in present])),
           "undecided": int(undecided.sum())}
    aucs = {f"auc_{classes[k]}": roc_auc(onehot[:, k], sub.values[:, k]) for k in range(len(classes))}
    out.update(aucs)
    out["mean_auc"] = macro_mean(list(aucs.values()))
    out["n"] = len(sub.ids)
    return out


@scorer("isic2020", "object-cxr")
def _score_binary(sub, truth: Path) -> dict:
    fmt = get_format(sub.format)
    header, rows = _read_csv(truth)
    id_col = _pick(header, (fmt.id_column, *ID_COLUMNS), truth, "id")
    lower = [h.lower() for h in header]
    if fmt.name == "object-cxr" and "annotation" in lower and "label" not in lower:
        col = lower.index("annotation")
        labels = np.array([float(r[col].strip() != "") for r in rows])
    else:
        col = _pick(header, ("target", "label"), truth, "label")
        labels = np.array([float(r[col]) for r in rows])
    y = labels[_join([bare_id(i) for i in sub.ids], [bare_id(r[id_col]) for r in rows], truth)]
    return {**_binary(y, sub.values[:, 0]), "n": len(sub.ids)}


@scorer("medmnist")
def _score_medmnist(sub, truth: Path, split: str = "test") -> dict:
    if not truth.exists():
        raise FileNotFoundError(f"no ground-truth file at {truth}")
    if truth.suffix == ".npz":
        with np.load(truth) as z:
            key = f"{split}_labels"
            if key not in z:
                raise SubmissionError(f"{truth}: no array {key!r}; arrays: {sorted(z.files)}")
            labels = np.asarray(z[key]).reshape(-1).astype(np.int64)
        keys = [str(i) for i in range(len(labels))]
    else:
        with open(truth, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if rows and not rows[0][0].strip().isdigit():
            rows = rows[1:]
        keys = [str(int(r[0])) for r in rows]
        labels = np.array([int(float(r[1])) for r in rows], dtype=np.int64)
    y = labels[_join(sub.ids, keys, truth)]
    s = sub.values
    if s.shape[1] == 2:
        return {"auc": roc_auc(y, s[:, -1]), "acc": float(((s[:, -1] > 0.5) == y).mean()), "n": len(y)}
    aucs = [roc_auc(y == k, s[:, k]) for k in range(s.shape[1])]
    return {"auc": macro_mean(aucs), "acc": float((s.argmax(axis=1) == y).mean()), "n": len(y)}


@scorer("generic")
def _score_generic(sub, truth: Path) -> dict:
    header, rows = _read_csv(truth)
    classes = sub.header[1:]
    id_col = _pick(header, ID_COLUMNS, truth, "id")
    col = _pick(header, ("label",), truth, "label")
    names = [r[col].strip() for r in rows]
    lookup = {c: k for k, c in enumerate(classes)}
    bad = [v for v in names if v not in lookup and not (v.isdigit() and int(v) < len(classes))]
    if bad:
        raise SubmissionError(f"{truth}: labels {sorted(set(bad))[:5]} are neither classes {classes} nor indices")
    labels = np.array([lookup.get(v, int(v) if v.isdigit() else -1) for v in names], dtype=np.int64)
    y = labels[_join(sub.ids, [r[id_col] for r in rows], truth)]
    aucs = {f"auc_{c}": roc_auc(y == k, sub.values[:, k]) for k, c in enumerate(classes)}
    return {**aucs, "mean_auc": macro_mean(list(aucs.values())),
            "accuracy": float((sub.values.argmax(axis=1) == y).mean()), "n": len(y)}


def score_submission(path: str | Path, truth: str | Path, format: str, **options) -> dict:
    """Read, validate and score submission ``path`` against ``truth``; returns metric -> value.

    ``options``: ``split`` for a MedMNIST ``.npz`` truth. Keys per format are listed in the module doc.
    """
    fmt = get_format(format)
    if fmt.name not in SCORERS:
        raise SubmissionError(f"no scorer for format {fmt.name!r}; scorers: {', '.join(sorted(SCORERS))}")
    if options and fmt.name != "medmnist":
        raise SubmissionError(f"format {fmt.name!r} takes no scoring options, got {sorted(options)}")
    allowed = {"split"}
    for key in options:
        if key not in allowed:
            raise SubmissionError(unknown_name("scoring option", key, allowed, label="allowed"))
    return SCORERS[fmt.name](read_submission(path, fmt.name), Path(truth), **options)
