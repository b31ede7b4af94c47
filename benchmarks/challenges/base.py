"""What a challenge module is made of: the registry it joins and the parts its builder and scorer use.

A challenge module (``isic2017.py``, ...) declares its submission file with :func:`challenge` on its
builder and passes its scorer beside it, so a challenge's format and its scoring live in one place.
The machinery that reads the entries (check, build, validate, write, read, name, submit, score) is in
:mod:`medzoo.benchmarks.submission` and :mod:`medzoo.benchmarks.scoring`, which import this package:
the parts a challenge shares live here, below them, so that no import goes in a circle.

Class columns are always found by class *name*, never by position: each column lists the table class
names it accepts (compared case-insensitively, with spaces, hyphens and underscores alike), and the
option ``class_map={"table class": "column"}`` names any other spelling.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medzoo.benchmarks import metrics
from medzoo.core.names import unknown_name
from medzoo.core.registry import Entry, Registry
from medzoo.ensemble.table import ProbabilityTable

CHALLENGES = Registry("submission format")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".npy")
DEFAULT_FILE_NAME = "{format}-{entry}.csv"
ID_COLUMNS = ("image_name", "image_id", "image_path", "image", "index")


class SubmissionError(ValueError):
    """A submission cannot be built, fails validation, or a file is malformed."""


@dataclass
class Submission:
    """Rows of a submission file.

    Attributes:
        format: format name.
        header: the full header (id column then value columns), written only when ``has_header``.
        ids: ``[N]`` ids as written (challenge spelling).
        values: ``[N, K]`` float64 scores, one column per value column.
        has_header: whether the file has a header row.
    """

    format: str
    header: list[str]
    ids: list[str]
    values: np.ndarray
    has_header: bool = True

    def column(self, name: str) -> np.ndarray:
        """``[N]`` values of one value column."""
        return self.values[:, self.header.index(name) - 1]


def challenge(name: str, *, id_column: str, columns: Sequence[str] | None, score: Callable, description: str,
              header: bool = True, header_optional: bool = False, bare_ids: bool = False,
              aliases: dict[str, Sequence[str]] | None = None, options: dict | None = None,
              checks: dict[str, Callable] | None = None, spell: Callable | None = None,
              expected: Callable | None = None, parse_id: Callable | None = None, check_ids: Callable | None = None,
              file_name: str = DEFAULT_FILE_NAME, file_fields: Callable | None = None,
              score_options: Sequence[str] = ()) -> Callable:
    """Decorator registering a builder as challenge ``name`` in :data:`CHALLENGES`; a duplicate name is an error.

    The builder: ``build(fmt, table, **options) -> (ids [N], value columns [K], values [N, K])``, ``fmt``
    its entry. The entry's metadata (``CHALLENGES[name].get(key)``), every key always set:

    * ``id_column``: header of the first column; ``columns``: the value columns after it, in order,
      ``None`` when they follow the table's classes; ``header``: whether the file starts with a header
      row by default; ``header_optional``: whether the other variant is allowed too.
    * ``bare_ids``: ids are written without folder or image extension; ``aliases``: column -> the
      table class names that feed it (besides the column name itself).
    * ``options``: the format's own options and their defaults (``header`` is every format's);
      ``checks``: option -> ``check(fmt, value)`` for options no other format shares.
    * ``spell(ids, options) -> [N] str``: how the format writes ids, where not plain or bare;
      ``expected(options) -> ids | None``: the expected images when an option lists them;
      ``parse_id(text) -> str``: an id as read back from a file; ``check_ids(ids) -> [problem]``.
    * ``file_name``: :func:`~medzoo.benchmarks.submission.submit_run`'s file name, a ``str.format``
      template over ``format``, ``entry``, ``run``, ``split`` and what ``file_fields(dataset, data_file)
      -> dict`` adds.
    * ``score(sub, truth_path, **score_options) -> {metric: value}``: the challenge's scorer;
      ``score_options``: the keyword options it takes.
    """
    return CHALLENGES.register(
        name, description=description, id_column=id_column, columns=None if columns is None else tuple(columns),
        header=header, header_optional=header_optional, bare_ids=bare_ids,
        aliases={k: tuple(v) for k, v in (aliases or {}).items()}, options=dict(options or {}),
        checks=dict(checks or {}), spell=spell, expected=expected, parse_id=parse_id, check_ids=check_ids,
        file_name=file_name, file_fields=file_fields, score=score, score_options=tuple(score_options))


def expected_header(fmt: Entry, n_values: int | None = None) -> list[str]:
    """The full header: id column then value columns (``score_k`` for ``n_values`` unnamed ones)."""
    columns = fmt.get("columns")
    cols = columns if columns is not None else [f"score_{k}" for k in range(n_values or 0)]
    return [fmt.get("id_column"), *cols]


def bare_id(image_id: str) -> str:
    """``"dir/ISIC_0012086.jpg"`` -> ``"ISIC_0012086"``: no folder, no image extension."""
    name = re.split(r"[\\/]", str(image_id))[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and f".{ext.lower()}" in IMAGE_SUFFIXES else name


def spell_ids(fmt: Entry, ids: Sequence, options: dict | None = None) -> list[str]:
    """``[N]`` ids spelled as the format writes them: its ``spell``, else bare (``bare_ids``) or as they are."""
    spell = fmt.get("spell")
    if spell is not None:
        return spell(ids, options or {})
    return [bare_id(i) for i in ids] if fmt.get("bare_ids") else [str(i) for i in ids]


def is_names(value) -> bool:
    """Whether ``value`` is a non-empty list or tuple of strings."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def check_class_map(table: ProbabilityTable, class_map: dict | None) -> dict:
    """``class_map`` as a dict; a key that is not a table class raises with the closest one."""
    class_map = dict(class_map or {})
    for cls in class_map:
        if cls not in table.classes:
            raise SubmissionError("class_map: " + unknown_name("class", cls, table.classes, label="table classes",
                                                               sort=False))
    return class_map


def class_index(fmt: Entry, table: ProbabilityTable, column: str, class_map: dict | None,
                required: bool = True) -> int | None:
    """Index of the table class that feeds ``column``, found by name (``None`` if absent and not required)."""
    class_map = check_class_map(table, class_map)
    mapped = [table.classes.index(c) for c, col in class_map.items() if col == column]
    if mapped:
        return mapped[0]
    wanted = {_norm(column), *(_norm(a) for a in fmt.get("aliases").get(column, ()))}
    hits = [k for k, c in enumerate(table.classes) if _norm(c) in wanted and c not in class_map]
    if len(hits) > 1:
        raise SubmissionError(f"{fmt.name}: column {column!r} matches several table classes "
                              f"{[table.classes[k] for k in hits]}; pick one with class_map={{'<class>': {column!r}}}")
    if not hits and required:
        raise SubmissionError(f"{fmt.name}: no table class for column {column!r}; looked for "
                              f"{sorted(wanted)} in table classes {table.classes}; "
                              f"name it with class_map={{'<class>': {column!r}}}")
    return hits[0] if hits else None


def positive_scores(fmt: Entry, table: ProbabilityTable, column: str, positive, class_map) -> np.ndarray:
    """``[N]`` probability of the positive side: the named class(es), summed, or the class named like ``column``."""
    if positive is None:
        return table.probs[:, class_index(fmt, table, column, class_map)]
    names = [positive] if isinstance(positive, str) else list(positive)
    unknown = [c for c in names if c not in table.classes]
    if unknown:
        raise SubmissionError(f"{fmt.name}: positive class {unknown} not in table classes {table.classes}")
    return np.clip(table.probs[:, [table.classes.index(c) for c in names]].sum(axis=1), 0.0, 1.0)


def read_truth_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a ground-truth CSV (a BOM is ignored, blank lines skipped)."""
    if not path.exists():
        raise FileNotFoundError(f"no ground-truth file at {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if len(rows) < 2:
        raise SubmissionError(f"{path}: expected a header and at least one row")
    return [h.strip() for h in rows[0]], rows[1:]


def pick_column(header: list[str], names: Sequence[str], path: Path, what: str) -> int:
    """Index of the first of ``names`` in ``header`` (case-insensitive); raises naming ``what`` was looked for."""
    lower = [h.lower() for h in header]
    for n in names:
        if n.lower() in lower:
            return lower.index(n.lower())
    raise SubmissionError(f"{path}: no {what} column; looked for {list(names)} in header {header}")


def join_ids(sub_keys: list[str], truth_keys: list[str], truth_path: Path) -> np.ndarray:
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


def join_bare(sub: Submission, rows: list[list[str]], id_col: int, truth_path: Path) -> np.ndarray:
    """:func:`join_ids` on bare ids (no folder, no image extension) on both sides."""
    return join_ids([bare_id(i) for i in sub.ids], [bare_id(r[id_col]) for r in rows], truth_path)


def label_column(header: list[str], rows: list[list[str]], truth: Path) -> np.ndarray:
    """``[N]`` 0/1 labels of a binary truth CSV: its ``target`` or ``label`` column."""
    col = pick_column(header, ("target", "label"), truth, "label")
    return np.array([float(r[col]) for r in rows])


def score_binary(sub: Submission, truth: Path, id_column: str, labels: Callable = label_column) -> dict:
    """ROC-AUC and average precision of a one-column submission against a binary truth CSV.

    The truth's id column is ``id_column`` or one of :data:`ID_COLUMNS`; ``labels(header, rows, truth)
    -> [N]`` reads its 0/1 labels.
    """
    header, rows = read_truth_csv(truth)
    id_col = pick_column(header, (id_column, *ID_COLUMNS), truth, "id")
    y = labels(header, rows, truth)[join_bare(sub, rows, id_col, truth)]
    s = sub.values[:, 0]
    return {"auc": metrics.roc_auc(y, s), "average_precision": metrics.average_precision(y, s), "n": len(sub.ids)}
