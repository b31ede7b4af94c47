"""The probability table: the one file format every layer of medzoo reads and writes.

A table holds image ids, class names in order, an ``[N, C]`` array of probabilities,
optional true labels and a metadata sidecar. On disk it is a CSV with the fixed header
``image_id,label,<class_1>,...,<class_C>`` (``label`` is the true class name, empty where
unknown) and a JSON sidecar beside it (``val.csv`` -> ``val.json``). The sidecar is
optional on reading, so tables made by other tools work too.

Rows hold class probabilities, so reading warns when a row does not sum to 1 (within
:data:`ROW_SUM_TOLERANCE`), unless the sidecar says ``"rows_sum_to_one": false``: what an
ensemble whose rows are scores writes (``median`` and ``rank_mean`` over more than two
classes, per-class member weights).

This module imports neither torch nor ``zoo``: both sides of the toolkit share it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medzoo.core.fileio import atomic_path, write_json

FIXED_COLUMNS = ("image_id", "label")
ROW_SUM_TOLERANCE = 1e-3


class TableError(ValueError):
    """A probability table, or a set of them, is malformed or inconsistent."""


@dataclass
class ProbabilityTable:
    """Per-image class probabilities.

    Attributes:
        ids: ``[N]`` unique image ids.
        classes: ``[C]`` class names, in column order.
        probs: ``[N, C]`` float64 probabilities in [0, 1].
        labels: ``[N]`` int64 true class indices, ``-1`` where unknown.
        meta: sidecar metadata (member, split, dataset, checkpoint, config, ...).
    """

    ids: list[str]
    classes: list[str]
    probs: np.ndarray
    labels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        self.classes = [str(c) for c in self.classes]
        self.probs = np.asarray(self.probs, dtype=np.float64)
        n = len(self.ids)
        if self.labels is None:
            self.labels = np.full(n, -1, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.validate()

    @property
    def split(self) -> str | None:
        return self.meta.get("split")

    @property
    def has_labels(self) -> bool:
        """True when every row has a known label."""
        return len(self.labels) > 0 and bool((self.labels >= 0).all())

    def validate(self, source: str = "table") -> None:
        """Raise :class:`TableError` naming the first problem found."""
        n, c = len(self.ids), len(self.classes)
        if self.probs.ndim != 2 or self.probs.shape != (n, c):
            raise TableError(f"{source}: probs has shape {self.probs.shape}, expected ({n}, {c}) "
                             f"for {n} ids and {c} classes")
        if len(set(self.classes)) != c:
            raise TableError(f"{source}: duplicate class names in {self.classes}")
        if len(set(self.ids)) != n:
            dup = _duplicates(self.ids)
            raise TableError(f"{source}: duplicate image ids {dup[:5]} ({len(dup)} in all); ids must be unique")
        if self.labels.shape != (n,):
            raise TableError(f"{source}: {self.labels.shape[0]} labels for {n} ids")
        bad = ~np.isfinite(self.probs).all(axis=1) | (self.probs < 0).any(axis=1) | (self.probs > 1).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TableError(f"{source}: row {i} (image_id {self.ids[i]!r}) has probabilities "
                             f"{self.probs[i].tolist()}; every value must be finite and in [0, 1]")
        if ((self.labels < -1) | (self.labels >= c)).any():
            i = int(np.flatnonzero((self.labels < -1) | (self.labels >= c))[0])
            raise TableError(f"{source}: row {i} has label index {self.labels[i]}, allowed 0..{c - 1} or -1")

    def select(self, ids: Sequence[str]) -> "ProbabilityTable":
        """Rows for ``ids``, in that order; raises listing any id the table lacks."""
        index = {k: i for i, k in enumerate(self.ids)}
        missing = [k for k in ids if k not in index]
        if missing:
            raise TableError(f"table {self.name!r} lacks {len(missing)} ids: {missing[:5]}")
        rows = np.array([index[k] for k in ids], dtype=np.int64)
        return ProbabilityTable(list(ids), self.classes, self.probs[rows], self.labels[rows], dict(self.meta))

    @property
    def name(self) -> str:
        return str(self.meta.get("member") or self.meta.get("name") or "?")

    def label_names(self) -> list[str]:
        """``[N]`` true class names, ``""`` where unknown."""
        return [self.classes[k] if k >= 0 else "" for k in self.labels]

    def write(self, path: str | Path) -> Path:
        """Write the CSV and its JSON sidecar atomically; return the CSV path."""
        path = Path(path)
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow([*FIXED_COLUMNS, *self.classes])
        w.writerows([i, lab, *(f"{v:.10g}" for v in row)] for i, lab, row in zip(self.ids, self.label_names(), self.probs))
        data = buf.getvalue().encode()
        write_json(sidecar_path(path), {**self.meta, "classes": self.classes, "n": len(self.ids),
                                        "sha256": hashlib.sha256(data).hexdigest()})
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return path

    @classmethod
    def read(cls, path: str | Path) -> "ProbabilityTable":
        """Read a table written by medzoo or by another tool (sidecar optional).

        Warns (one line, naming the file, the first such row and how many) when rows do not
        sum to 1 within :data:`ROW_SUM_TOLERANCE`, unless ``meta["rows_sum_to_one"]`` is false.
        """
        path = Path(path)
        if not path.exists():
            raise TableError(f"no probability table at {path}")
        data = path.read_bytes()
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
        if not rows:
            raise TableError(f"{path}: empty file; expected header {','.join(FIXED_COLUMNS)},<classes...>")
        header = rows[0]
        if tuple(header[:2]) != FIXED_COLUMNS or len(header) < 3:
            raise TableError(f"{path}: header {header[:4]}... must start with image_id,label "
                             f"followed by one column per class")
        classes = header[2:]
        meta = {}
        side = sidecar_path(path)
        if side.exists():
            meta = json.loads(side.read_text())
            named = meta.pop("classes", classes)
            n = meta.pop("n", None)
            digest = meta.pop("sha256", None)
            if digest is not None and digest != hashlib.sha256(data).hexdigest():
                raise TableError(f"{path}: the CSV is not the one its sidecar {side.name} describes (edited, or "
                                 f"a write was interrupted); write the table again, or delete {side.name} to "
                                 f"read the CSV without its metadata")
            if list(named) != classes:
                raise TableError(f"{path}: columns {classes} differ from the sidecar's classes {named}")
            if n is not None and n != len(rows) - 1:
                raise TableError(f"{path}: the table has {len(rows) - 1} rows but its sidecar says {n}; "
                                 f"the CSV was cut short or edited: write it again")
        body = rows[1:]
        for r, row in enumerate(body, start=2):
            if len(row) != len(header):
                raise TableError(f"{path}: line {r} has {len(row)} fields, header has {len(header)}")
        ids = [row[0] for row in body]
        lookup = {c: k for k, c in enumerate(classes)}
        labels = np.full(len(body), -1, dtype=np.int64)
        for r, row in enumerate(body):
            if row[1] != "":
                if row[1] not in lookup:
                    raise TableError(f"{path}: line {r + 2} has label {row[1]!r}; allowed {classes} or empty")
                labels[r] = lookup[row[1]]
        try:
            probs = np.array([[float(v) for v in row[2:]] for row in body], dtype=np.float64).reshape(len(body), len(classes))
        except ValueError as e:
            raise TableError(f"{path}: non-numeric probability ({e})") from None
        table = cls.__new__(cls)
        table.ids, table.classes, table.probs, table.labels, table.meta = ids, classes, probs, labels, meta
        table.validate(source=str(path))
        if table.meta.get("rows_sum_to_one", True):
            _warn_unnormalised(table, str(path))
        return table

    def rows_sum_to_one(self) -> np.ndarray:
        """``[N]`` bool: whether each row's probabilities sum to 1 within :data:`ROW_SUM_TOLERANCE`."""
        return np.abs(self.probs.sum(axis=1) - 1.0) <= ROW_SUM_TOLERANCE


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar beside a table CSV."""
    return Path(path).with_suffix(".json")


def _warn_unnormalised(table: ProbabilityTable, source: str) -> None:
    off = np.flatnonzero(~table.rows_sum_to_one())
    if off.size:
        i = int(off[0])
        warnings.warn(f"{source}: {off.size} of {len(table.ids)} rows do not sum to 1 (within {ROW_SUM_TOLERANCE:g}); "
                      f"first: row {i} (image_id {table.ids[i]!r}) sums to {table.probs[i].sum():.6g}",
                      stacklevel=3)


def _duplicates(items: Sequence[str]) -> list[str]:
    seen, dup = set(), []
    for x in items:
        if x in seen and x not in dup:
            dup.append(x)
        seen.add(x)
    return dup


def align(tables: Sequence[ProbabilityTable]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Stack tables of the same images and classes, ordered by the first table's ids.

    Returns ``(ids [N], classes [C], probs [M, N, C], labels [N])``. Raises naming the
    member and the missing or extra ids, or the differing class lists. Labels come from
    the first table that has any; tables that disagree on a known label raise.
    """
    if not tables:
        raise TableError("no tables to align")
    first = tables[0]
    ids, classes = first.ids, first.classes
    idset = set(ids)
    out = []
    labels = first.labels.copy()
    for t in tables:
        if t.classes != classes:
            raise TableError(f"member {t.name!r} has classes {t.classes}, member {first.name!r} has {classes}")
        if t.ids != ids:
            other = set(t.ids)
            missing, extra = sorted(idset - other), sorted(other - idset)
            if missing or extra:
                raise TableError(f"member {t.name!r} does not cover the same images as {first.name!r}: "
                                 f"missing {len(missing)} {missing[:5]}, extra {len(extra)} {extra[:5]}")
            t = t.select(ids)
        known = (labels >= 0) & (t.labels >= 0)
        if (labels[known] != t.labels[known]).any():
            i = int(np.flatnonzero(known & (labels != t.labels))[0])
            raise TableError(f"member {t.name!r} labels image {ids[i]!r} as {classes[t.labels[i]]!r}, "
                             f"member {first.name!r} as {classes[labels[i]]!r}")
        labels = np.where(labels >= 0, labels, t.labels)
        out.append(t.probs)
    return list(ids), list(classes), np.stack(out), labels
