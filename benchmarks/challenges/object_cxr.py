"""Object-CXR: ``image_path,prediction``, prediction = p(foreign object); scored by ROC-AUC.

Submission: the positive column comes from a class with a matching name; option ``positive="class"``
(or a list of classes, whose probabilities are summed) overrides it. Option ``image_paths`` (a file
with one path per line, optional ``image_path`` header, or a list) spells each id as the challenge's
list does: the path whose file name (without extension) is the id; the list then is also the
expected set of images. Without it, ids are written as they are.

Truth: a CSV with an id column (``image_path``, ``image_name``, ``image_id``, ``image`` or ``index``)
and a 0/1 ``target`` or ``label`` column, or the challenge's ``annotation`` column (non-empty =
foreign object). ROC-AUC and average precision.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from medzoo.benchmarks.challenges.base import (Submission, SubmissionError, bare_id, challenge, is_names, label_column,
                                               positive_scores, score_binary)

ID_COLUMN = "image_path"
LIST_HEADERS = ("image_path", "image_name", "path", "image")


def read_image_list(source) -> list[str]:
    """Image paths from a file (one per line, optional ``image_path``/``image_name`` header) or a list."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"object-cxr: no image list at {path}")
        with open(path, newline="") as f:
            rows = [r[0].strip() for r in csv.reader(f) if r and r[0].strip()]
        if rows and rows[0].lower() in LIST_HEADERS:
            rows = rows[1:]
        return rows
    return [str(p) for p in source]


def check_image_paths(fmt, value) -> None:
    """Option ``image_paths``: a file of image paths or a list of paths."""
    if not isinstance(value, (str, Path)) and not is_names(value):
        raise SubmissionError(f"image_paths = {value!r}; expected a file of image paths or a list of paths")


def spell(ids: Sequence, options: dict) -> list[str]:
    """Each id as the path of option ``image_paths`` whose file name is the id; as it is without the option."""
    if options.get("image_paths") is None:
        return [str(i) for i in ids]
    by_stem = {bare_id(p): p for p in read_image_list(options["image_paths"])}
    return [by_stem.get(bare_id(i), str(i)) for i in ids]


def expected(options: dict) -> list[str] | None:
    """The challenge's image list (option ``image_paths``) is the expected set of images."""
    return None if options.get("image_paths") is None else read_image_list(options["image_paths"])


def _labels(header: list[str], rows: list[list[str]], truth: Path) -> np.ndarray:
    """``[N]`` 0/1: ``annotation`` non-empty when the truth has that column and no ``label``, else its label column."""
    lower = [h.lower() for h in header]
    if "annotation" in lower and "label" not in lower:
        col = lower.index("annotation")
        return np.array([float(r[col].strip() != "") for r in rows])
    return label_column(header, rows, truth)


def score(sub: Submission, truth: Path) -> dict:
    """ROC-AUC and average precision of ``prediction``."""
    return score_binary(sub, truth, ID_COLUMN, _labels)


@challenge("object-cxr", id_column=ID_COLUMN, columns=("prediction",),
           aliases={"prediction": ("foreign object", "foreign_objects", "object", "positive", "present")},
           options={"positive": None, "image_paths": None, "class_map": None},
           checks={"image_paths": check_image_paths}, spell=spell, expected=expected, score=score,
           description="Object-CXR: image_path,prediction (probability of a foreign object)")
def build(fmt, table, *, class_map=None, positive=None, image_paths=None):
    """``prediction`` = the probability of the positive class(es); ids spelled from ``image_paths``."""
    ids = spell(table.ids, {"image_paths": image_paths})
    return ids, list(fmt.get("columns")), positive_scores(fmt, table, "prediction", positive, class_map)[:, None]
