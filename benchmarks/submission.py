"""Challenge submission files: a registry of formats, one validator, one atomic writer.

A format is a small declarative description (:class:`SubmissionFormat`: id column, value
columns, header or not, how ids are spelled, which table classes feed which column) plus a
builder that turns a :class:`~ensemble.table.ProbabilityTable` into rows. Class columns are
always found by class *name*, never by position: each column lists the table class names it
accepts (compared case-insensitively, with spaces, hyphens and underscores alike), and the
option ``class_map={"table class": "column"}`` names any other spelling.

Formats (``FORMATS``):

``isic2017``  ``image_id,melanoma,seborrheic_keratosis`` (ISIC 2017 Part 3). The two task
    scores are read off the 3-class table: ``melanoma`` = p(melanoma) and
    ``seborrheic_keratosis`` = p(seborrheic keratosis), the probabilities of those classes as
    they stand (no renormalisation); each task was scored one-vs-rest. Option ``header=False``
    writes the header-less variant the 2017 scorer read. Ids are bare (``ISIC_0012086``).
``isic2019``  ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``. Every class column except ``UNK``
    must be found in the table. ``UNK`` is taken from a table class named unknown/UNK when
    there is one, else option ``unk``: ``"zero"`` (default) or ``"uncertainty"`` = 1 - max
    probability of the row. Ids are bare.
``isic2020``  ``image_name,target`` (Kaggle SIIM-ISIC 2020): target = p(melanoma/malignant).
    Ids are bare.
``object-cxr``  ``image_path,prediction``: prediction = p(foreign object). Option
    ``image_paths`` (a file with one path per line, optional ``image_path`` header, or a list)
    spells each id as the challenge's list does: the path whose file name (without extension)
    is the id; the list then is also the expected set of images. Without it, ids are written
    as they are.
``medmnist``  header-less ``index,score_0,...,score_{C-1}``, as MedMNIST's ``Evaluator`` reads
    it (``pd.read_csv(f, header=None, index_col=0).sort_index()``). The index is the integer
    position in the official split: the trailing digits of the id (``"test_00012"`` -> 12,
    ``"12"`` -> 12). Indices must be exactly 0..N-1. Scores are in the table's class order,
    which for MedMNIST cards is the label order; option ``classes=[...]`` (the label order)
    reorders the columns by name.
``generic``  ``image_id,<class_1>,...`` with every table class, in table order. The default
    when neither the run config's ``[submission]`` nor the dataset card names a format.

:func:`submit_run` names a file ``<format>-<entry>.csv``, except ``medmnist``, which is named
as MedMNIST's ``Evaluator.parse_and_evaluate`` reads it: ``{flag}{size_flag}_{split}_<entry>@{run}.csv``
(flag and size from the dataset's ``.npz`` name, ``size_flag`` empty for 28 px, ``_64`` for 64 px).

Binary formats take the positive column from a class with a matching name; option
``positive="class"`` (or a list of classes, whose probabilities are summed) overrides it.
"""
from __future__ import annotations

import csv
import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medzoo.core.rundir import RunDir
from medzoo.core.fileio import atomic_path
from medzoo.core.names import unknown_name
from medzoo.ensemble.table import ProbabilityTable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".npy")
COMMON_OPTIONS = {"header": None}
SECTION_KEYS = ("format", "entry")
DEFAULT_FORMAT = "generic"
DEFAULT_FILE_NAME = "{format}-{entry}.csv"
UNK_CHOICES = ("zero", "uncertainty")


class SubmissionError(ValueError):
    """A submission cannot be built, fails validation, or a file is malformed."""


@dataclass(frozen=True)
class SubmissionFormat:
    """Declarative description of one challenge's submission file.

    Attributes:
        name: registry name.
        id_column: header of the first column.
        columns: value columns after the id, in order; ``None`` when they follow the table's classes.
        header: whether the file starts with a header row by default.
        header_optional: whether a header-less variant is allowed (``header=False``).
        bare_ids: ids are written without folder or image extension.
        aliases: column -> table class names that feed it (besides the column name itself).
        options: format-specific options and their defaults.
        build: ``build(fmt, table, **options) -> (ids [N], value columns [K], values [N, K])``.
        doc: one line for ``--help``.
        file_name: :func:`submit_run`'s file name, a ``str.format`` template over ``format``,
            ``entry``, ``run``, ``split`` and (where the dataset is known) ``flag``, ``size_flag``.
    """

    name: str
    id_column: str
    columns: tuple[str, ...] | None
    header: bool
    header_optional: bool
    bare_ids: bool
    aliases: dict[str, tuple[str, ...]]
    options: dict
    build: Callable
    doc: str
    file_name: str = DEFAULT_FILE_NAME

    def expected_header(self, n_values: int | None = None) -> list[str]:
        """The full header: id column then value columns (``score_k`` when unnamed)."""
        cols = self.columns if self.columns is not None else [f"score_{k}" for k in range(n_values or 0)]
        return [self.id_column, *cols]


FORMATS: dict[str, SubmissionFormat] = {}


def register_format(name: str, *, id_column: str, columns: Sequence[str] | None, header: bool = True,
                    header_optional: bool = False, bare_ids: bool = False,
                    aliases: dict[str, Sequence[str]] | None = None, options: dict | None = None, doc: str = "",
                    file_name: str = DEFAULT_FILE_NAME):
    """Decorator registering a builder as format ``name``; a duplicate name is an error."""
    def deco(build):
        if name in FORMATS:
            raise ValueError(f"submission format {name!r} is already registered")
        FORMATS[name] = SubmissionFormat(
            name, id_column, tuple(columns) if columns is not None else None, header, header_optional,
            bare_ids, {k: tuple(v) for k, v in (aliases or {}).items()}, dict(options or {}), build, doc, file_name)
        return build
    return deco


def get_format(name: str | SubmissionFormat) -> SubmissionFormat:
    """The registered format ``name``; unknown names raise with the closest match."""
    if isinstance(name, SubmissionFormat):
        return name
    if name not in FORMATS:
        raise SubmissionError(unknown_name("submission format", name, FORMATS))
    return FORMATS[name]


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


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def bare_id(image_id: str) -> str:
    """``"dir/ISIC_0012086.jpg"`` -> ``"ISIC_0012086"``: no folder, no image extension."""
    name = re.split(r"[\\/]", str(image_id))[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and f".{ext.lower()}" in IMAGE_SUFFIXES else name


def medmnist_index(image_id) -> int:
    """The integer position in a MedMNIST split: trailing digits of the id (``"test_00012"`` -> 12)."""
    m = re.search(r"(\d+)$", bare_id(str(image_id)))
    if not m:
        raise SubmissionError(f"medmnist: cannot read an integer index from id {image_id!r}; "
                              f"ids must be integers or end in digits, e.g. '12' or 'test_00012'")
    return int(m.group(1))


def _is_names(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _check_header(fmt: SubmissionFormat | None, value) -> None:
    if not isinstance(value, bool):
        raise SubmissionError(f"header = {value!r}; expected true or false")
    if fmt is not None and value != fmt.header and not fmt.header_optional:
        raise SubmissionError(f"{fmt.name}: header={value!r} is not allowed; this format is always "
                              f"{'with' if fmt.header else 'without'} a header row")


def _check_unk(fmt: SubmissionFormat | None, value) -> None:
    if value not in UNK_CHOICES:
        raise SubmissionError(f"isic2019: unk={value!r}; allowed 'zero' or 'uncertainty' (1 - max probability)")


def _check_class_map_value(fmt: SubmissionFormat | None, value) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SubmissionError(f"class_map = {value!r}; expected a table {{table class = column}} of names")


def _check_positive(fmt: SubmissionFormat | None, value) -> None:
    if not isinstance(value, str) and not _is_names(value):
        raise SubmissionError(f"positive = {value!r}; expected a class name or a list of class names")


def _check_classes(fmt: SubmissionFormat | None, value) -> None:
    if not _is_names(value):
        raise SubmissionError(f"classes = {value!r}; expected the list of class names in label order")


def _check_image_paths(fmt: SubmissionFormat | None, value) -> None:
    if not isinstance(value, (str, Path)) and not _is_names(value):
        raise SubmissionError(f"image_paths = {value!r}; expected a file of image paths or a list of paths")


OPTION_CHECKS: dict[str, Callable] = {"header": _check_header, "unk": _check_unk, "class_map": _check_class_map_value,
                                      "positive": _check_positive, "classes": _check_classes,
                                      "image_paths": _check_image_paths}


def _check_options(fmt: SubmissionFormat, options: dict) -> dict:
    """``options`` for ``fmt`` with defaults filled in; unknown names and bad values raise (``None`` = default)."""
    allowed = {**COMMON_OPTIONS, **fmt.options}
    for key in options:
        if key not in allowed:
            raise SubmissionError(f"format {fmt.name!r}: " + unknown_name("option", key, allowed, label="allowed"))
    given = {k: v for k, v in options.items() if v is not None}
    for key, value in given.items():
        if key in OPTION_CHECKS:
            OPTION_CHECKS[key](fmt, value)
    return {**allowed, **given}


def check_options(config: dict | None) -> dict:
    """The ``[submission]`` section checked, keys and values; returns a copy. Pure: reads no file.

    ``format``: a registered format; ``entry``: the member or ensemble to submit (default: the
    leaderboard's best); then the format's own options (:attr:`SubmissionFormat.options` and
    ``header``). Without ``format`` (the dataset card may name it) an option of any format is
    accepted and checked as far as it can be without the format. Unknown keys get the closest
    allowed one. Raises :class:`SubmissionError` naming the value received and what is allowed.
    """
    if config is not None and not isinstance(config, dict):
        raise SubmissionError(f"[submission] must be a table of options, got {type(config).__name__} {config!r}")
    config = dict(config or {})
    fmt = None
    if "format" in config:
        if not isinstance(config["format"], str):
            raise SubmissionError(f"[submission] format = {config['format']!r}; expected one of: "
                                  f"{', '.join(sorted(FORMATS))}")
        try:
            fmt = get_format(config["format"])
        except SubmissionError as e:
            raise SubmissionError(f"[submission] format: {e}") from None
        allowed = [*SECTION_KEYS, *COMMON_OPTIONS, *fmt.options]
        label = f"allowed with format {fmt.name!r}"
    else:
        allowed = [*SECTION_KEYS, *COMMON_OPTIONS, *{k: None for f in FORMATS.values() for k in f.options}]
        label = "allowed"
    for key in config:
        if key not in allowed:
            raise SubmissionError("[submission] " + unknown_name("key", key, allowed, label=label))
    if "entry" in config and not (isinstance(config["entry"], str) and config["entry"]):
        raise SubmissionError(f"[submission] entry = {config['entry']!r}; expected a member id or ensemble name")
    for key, value in config.items():
        if key in OPTION_CHECKS:
            try:
                OPTION_CHECKS[key](fmt, value)
            except SubmissionError as e:
                raise SubmissionError(f"[submission] {e}") from None
    return config


def _check_class_map(table: ProbabilityTable, class_map: dict | None) -> dict:
    class_map = dict(class_map or {})
    for cls in class_map:
        if cls not in table.classes:
            raise SubmissionError("class_map: " + unknown_name("class", cls, table.classes, label="table classes",
                                                               sort=False))
    return class_map


def _class_index(fmt: SubmissionFormat, table: ProbabilityTable, column: str, class_map: dict | None,
                 required: bool = True) -> int | None:
    """Index of the table class that feeds ``column``, found by name (``None`` if absent and not required)."""
    class_map = _check_class_map(table, class_map)
    mapped = [table.classes.index(c) for c, col in class_map.items() if col == column]
    if mapped:
        return mapped[0]
    wanted = {_norm(column), *(_norm(a) for a in fmt.aliases.get(column, ()))}
    hits = [k for k, c in enumerate(table.classes) if _norm(c) in wanted and c not in class_map]
    if len(hits) > 1:
        raise SubmissionError(f"{fmt.name}: column {column!r} matches several table classes "
                              f"{[table.classes[k] for k in hits]}; pick one with class_map={{'<class>': {column!r}}}")
    if not hits and required:
        raise SubmissionError(f"{fmt.name}: no table class for column {column!r}; looked for "
                              f"{sorted(wanted)} in table classes {table.classes}; "
                              f"name it with class_map={{'<class>': {column!r}}}")
    return hits[0] if hits else None


def _positive(fmt: SubmissionFormat, table: ProbabilityTable, column: str, positive, class_map) -> np.ndarray:
    """``[N]`` probability of the positive side: the named class(es), summed, or the class named like ``column``."""
    if positive is None:
        return table.probs[:, _class_index(fmt, table, column, class_map)]
    names = [positive] if isinstance(positive, str) else list(positive)
    unknown = [c for c in names if c not in table.classes]
    if unknown:
        raise SubmissionError(f"{fmt.name}: positive class {unknown} not in table classes {table.classes}")
    return np.clip(table.probs[:, [table.classes.index(c) for c in names]].sum(axis=1), 0.0, 1.0)


def _spell(fmt: SubmissionFormat, ids: Sequence[str]) -> list[str]:
    return [bare_id(i) for i in ids] if fmt.bare_ids else [str(i) for i in ids]


@register_format("isic2017", id_column="image_id", columns=("melanoma", "seborrheic_keratosis"),
                 header_optional=True, bare_ids=True,
                 aliases={"melanoma": ("mel",), "seborrheic_keratosis": ("seborrheic keratosis", "sk")},
                 options={"class_map": None},
                 doc="ISIC 2017 Part 3: image_id,melanoma,seborrheic_keratosis (task probabilities)")
def _build_isic2017(fmt, table, *, class_map=None):
    cols = [_class_index(fmt, table, c, class_map) for c in fmt.columns]
    return _spell(fmt, table.ids), list(fmt.columns), table.probs[:, cols]


ISIC2019_ALIASES = {
    "MEL": ("melanoma",), "NV": ("nevus", "melanocytic nevus", "naevus"),
    "BCC": ("basal cell carcinoma",), "AK": ("actinic keratosis",),
    "BKL": ("benign keratosis", "benign keratosis-like lesion", "benign keratosis like lesions"),
    "DF": ("dermatofibroma",), "VASC": ("vascular lesion", "vascular"),
    "SCC": ("squamous cell carcinoma",), "UNK": ("unknown", "none of the others"),
}


@register_format("isic2019", id_column="image", columns=tuple(ISIC2019_ALIASES), bare_ids=True,
                 aliases=ISIC2019_ALIASES, options={"unk": "zero", "class_map": None},
                 doc="ISIC 2019: image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (UNK zero or 1 - max prob)")
def _build_isic2019(fmt, table, *, class_map=None, unk="zero"):
    values = np.zeros((len(table.ids), len(fmt.columns)))
    for j, col in enumerate(fmt.columns):
        k = _class_index(fmt, table, col, class_map, required=col != "UNK")
        if k is not None:
            values[:, j] = table.probs[:, k]
        elif unk == "uncertainty":
            values[:, j] = 1.0 - table.probs.max(axis=1)
    return _spell(fmt, table.ids), list(fmt.columns), values


@register_format("isic2020", id_column="image_name", columns=("target",), bare_ids=True,
                 aliases={"target": ("melanoma", "mel", "malignant", "positive")},
                 options={"positive": None, "class_map": None},
                 doc="Kaggle SIIM-ISIC 2020: image_name,target (probability of melanoma)")
def _build_isic2020(fmt, table, *, class_map=None, positive=None):
    return _spell(fmt, table.ids), list(fmt.columns), _positive(fmt, table, "target", positive, class_map)[:, None]


def read_image_list(source) -> list[str]:
    """Image paths from a file (one per line, optional ``image_path``/``image_name`` header) or a list."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"object-cxr: no image list at {path}")
        with open(path, newline="") as f:
            rows = [r[0].strip() for r in csv.reader(f) if r and r[0].strip()]
        if rows and rows[0].lower() in ("image_path", "image_name", "path", "image"):
            rows = rows[1:]
        return rows
    return [str(p) for p in source]


@register_format("object-cxr", id_column="image_path", columns=("prediction",),
                 aliases={"prediction": ("foreign object", "foreign_objects", "object", "positive", "present")},
                 options={"positive": None, "image_paths": None, "class_map": None},
                 doc="Object-CXR: image_path,prediction (probability of a foreign object)")
def _build_object_cxr(fmt, table, *, class_map=None, positive=None, image_paths=None):
    ids = list(table.ids)
    if image_paths is not None:
        by_stem = {bare_id(p): p for p in read_image_list(image_paths)}
        ids = [by_stem.get(bare_id(i), i) for i in ids]
    return ids, list(fmt.columns), _positive(fmt, table, "prediction", positive, class_map)[:, None]


@register_format("medmnist", id_column="index", columns=None, header=False, options={"classes": None},
                 doc="MedMNIST evaluator: header-less index,score_0,...,score_{C-1}",
                 file_name="{flag}{size_flag}_{split}_{entry}@{run}.csv")
def _build_medmnist(fmt, table, *, classes=None):
    cols = list(range(len(table.classes)))
    if classes is not None:
        missing = [c for c in classes if c not in table.classes]
        if missing or len(classes) != len(table.classes):
            raise SubmissionError(f"medmnist: classes {list(classes)} must name each table class {table.classes} once")
        cols = [table.classes.index(c) for c in classes]
    index = np.array([medmnist_index(i) for i in table.ids], dtype=np.int64)
    order = np.argsort(index, kind="stable")
    return [str(i) for i in index[order]], [f"score_{k}" for k in range(len(cols))], table.probs[order][:, cols]


@register_format("generic", id_column="image_id", columns=None, options={"class_map": None},
                 doc="image_id plus one column per table class, in table order")
def _build_generic(fmt, table, *, class_map=None):
    class_map = _check_class_map(table, class_map)
    return list(table.ids), [class_map.get(c, c) for c in table.classes], table.probs


def build_submission(table: ProbabilityTable, format: str, expected_ids: Sequence[str] | None = None,
                     **options) -> Submission:
    """Build and validate the rows of a submission from a probability table.

    ``expected_ids``: the test images the challenge expects (any spelling the table uses:
    they are spelled like the submission before comparing). Raises :class:`SubmissionError`
    listing every problem found.
    """
    fmt = get_format(format)
    opts = _check_options(fmt, options)
    header = opts.pop("header")
    if header is None:
        header = fmt.header
    ids, value_cols, values = fmt.build(fmt, table, **opts)
    full = [fmt.id_column, *value_cols]
    sub = Submission(fmt.name, full, ids, np.asarray(values, dtype=np.float64).reshape(len(ids), -1), bool(header))
    if expected_ids is None and fmt.name == "object-cxr" and opts.get("image_paths") is not None:
        expected_ids = read_image_list(opts["image_paths"])
    validate_submission(sub, expected_ids=None if expected_ids is None else spell_expected(fmt, expected_ids, opts))
    return sub


def spell_expected(fmt: SubmissionFormat | str, expected_ids: Sequence, options: dict | None = None) -> list[str]:
    """Expected ids spelled as the format writes them (bare, medmnist index, object-cxr path)."""
    fmt = get_format(fmt)
    if fmt.name == "medmnist":
        return [str(medmnist_index(i)) for i in expected_ids]
    if fmt.name == "object-cxr" and (options or {}).get("image_paths") is not None:
        by_stem = {bare_id(p): p for p in read_image_list(options["image_paths"])}
        return [by_stem.get(bare_id(i), str(i)) for i in expected_ids]
    return _spell(fmt, [str(i) for i in expected_ids])


def validate_submission(sub: Submission, expected_ids: Sequence[str] | None = None) -> None:
    """Check a submission; raise :class:`SubmissionError` listing every problem.

    Checks: the header is the format's, in order; each id once (and, with ``expected_ids``
    spelled as written, no missing or extra id); every value finite and in [0, 1]; medmnist
    indices exactly 0..N-1.
    """
    fmt = get_format(sub.format)
    problems = []
    n, k = len(sub.ids), len(sub.header) - 1
    if fmt.columns is not None and sub.header != fmt.expected_header():
        problems.append(f"columns {sub.header}, required {fmt.expected_header()} in this order")
    elif fmt.columns is None and (sub.header[:1] != [fmt.id_column] or k < 1):
        problems.append(f"columns {sub.header}, required {fmt.id_column!r} then one column per class")
    if sub.values.shape != (n, k):
        problems.append(f"values have shape {sub.values.shape}, expected ({n}, {k}) for {n} ids and {k} value columns")
    if n == 0:
        problems.append("no rows")
    dup = sorted(i for i, c in Counter(sub.ids).items() if c > 1)
    if dup:
        problems.append(f"{len(dup)} duplicate ids: {dup[:10]}")
    if expected_ids is not None:
        have, want = set(sub.ids), set(expected_ids)
        missing, extra = sorted(want - have), sorted(have - want)
        if missing:
            problems.append(f"{len(missing)} expected ids missing: {missing[:10]}")
        if extra:
            problems.append(f"{len(extra)} ids not in the expected list: {extra[:10]}")
    if sub.values.shape == (n, k) and n:
        bad = ~np.isfinite(sub.values).all(axis=1) | ((sub.values < 0) | (sub.values > 1)).any(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(f"{sub.ids[r]!r}: {sub.values[r].tolist()}" for r in rows[:5])
            problems.append(f"{len(rows)} rows with values not finite or outside [0, 1]: {shown}")
    if fmt.name == "medmnist" and not dup and n:
        try:
            index = sorted(int(i) for i in sub.ids)
        except ValueError:
            problems.append(f"medmnist index column must hold integers, got e.g. {sub.ids[:3]}")
        else:
            if index != list(range(n)):
                problems.append(f"medmnist indices must be exactly 0..{n - 1} (the evaluator sorts by index and "
                                f"compares with the split's labels); got {index[:3]}...{index[-3:]}")
    if problems:
        raise SubmissionError(f"{fmt.name} submission is not valid: " + "; ".join(problems))


def write_submission(table: ProbabilityTable, format: str, path: str | Path,
                     expected_ids: Sequence[str] | None = None, **options) -> Path:
    """Validate, then write ``table`` as a ``format`` submission to ``path`` atomically.

    On any failed check nothing is written and :class:`SubmissionError` says why. Returns ``path``.
    """
    path = Path(path)
    try:
        sub = build_submission(table, format, expected_ids, **options)
    except SubmissionError as e:
        raise SubmissionError(f"{e}; nothing written to {path}") from None
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if sub.has_header:
            w.writerow(sub.header)
        w.writerows([i, *(f"{v:.10g}" for v in row)] for i, row in zip(sub.ids, sub.values))
    return path


def read_submission(path: str | Path, format: str) -> Submission:
    """Read and validate a submission file; the header row is detected by the id column's name.

    Header-less files are accepted where the format allows them (``isic2017``, ``medmnist``).
    """
    fmt = get_format(format)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no submission file at {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise SubmissionError(f"{path}: empty file")
    has_header = rows[0][0].strip().lower() == fmt.id_column.lower()
    if has_header and not fmt.header and not fmt.header_optional:
        raise SubmissionError(f"{path}: {fmt.name} files have no header row, found {rows[0]}")
    if not has_header and fmt.header and not fmt.header_optional:
        raise SubmissionError(f"{path}: first row {rows[0][:4]} is not the required header "
                              f"{','.join(fmt.expected_header(len(rows[0]) - 1))}")
    header = rows[0] if has_header else fmt.expected_header(len(rows[0]) - 1)
    body = rows[1:] if has_header else rows
    for r, row in enumerate(body, start=1 + has_header):
        if len(row) != len(header):
            raise SubmissionError(f"{path}: line {r} has {len(row)} fields, expected {len(header)} ({','.join(header)})")
    try:
        values = np.array([[float(v) for v in row[1:]] for row in body], dtype=np.float64).reshape(len(body), len(header) - 1)
    except ValueError as e:
        raise SubmissionError(f"{path}: non-numeric score ({e})") from None
    ids = [row[0].strip() for row in body]
    if fmt.name == "medmnist":
        ids = [str(int(float(i))) if re.fullmatch(r"\d+(\.0*)?", i) else i for i in ids]
    sub = Submission(fmt.name, [h.strip() for h in header], ids, values, has_header)
    validate_submission(sub)
    return sub


def top_entry(run_dir: str | Path) -> tuple[str, str]:
    """``(entry, kind)`` of the leaderboard's best validation entry (highest ``val_auc``)."""
    path = Path(run_dir) / "leaderboard.csv"
    if not path.exists():
        raise FileNotFoundError(f"no leaderboard at {path}; run `medzoo leaderboard {run_dir}` or pass --entry")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"entry", "kind", "val_auc"} <= set(rows[0]):
        raise SubmissionError(f"{path}: expected rows with columns entry, kind, val_auc")

    def val(r):
        try:
            v = float(r["val_auc"])
        except ValueError:
            return -math.inf
        return v if math.isfinite(v) else -math.inf

    best = max(rows, key=val)
    return best["entry"], best["kind"]


def entry_table_path(run_dir: str | Path, entry: str, kind: str | None = None, split: str = "test") -> Path:
    """``predictions/<entry>/<split>.csv`` (member) or ``ensembles/<entry>/<split>.csv`` (ensemble).

    With ``kind=None`` the leaderboard names the kind, else whichever of the two exists.
    """
    run_dir = Path(run_dir)
    where = {"member": run_dir / "predictions", "ensemble": run_dir / "ensembles"}
    if kind is None:
        board = run_dir / "leaderboard.csv"
        if board.exists():
            with open(board, newline="") as f:
                kind = next((r.get("kind") for r in csv.DictReader(f) if r.get("entry") == entry), None)
    if kind is not None and kind not in where:
        raise SubmissionError(f"entry {entry!r} has kind {kind!r}; allowed 'member' or 'ensemble'")
    candidates = [where[kind] / entry / f"{split}.csv"] if kind else [d / entry / f"{split}.csv" for d in where.values()]
    for c in candidates:
        if c.exists():
            return c
    known = sorted(p.parent.name for d in where.values() if d.is_dir() for p in d.glob(f"*/{split}.csv"))
    raise FileNotFoundError(f"no {split} table under {run_dir}/predictions or {run_dir}/ensembles: "
                            + unknown_name("entry", entry, known))


def run_submission_options(run_dir: str | Path) -> dict:
    """The ``[submission]`` section of the run's ``config.json`` (``format``, ``entry`` and format options), checked."""
    try:
        return check_options(RunDir(run_dir).read_config().get("submission"))
    except SubmissionError as e:
        raise SubmissionError(f"{Path(run_dir) / 'config.json'}: {e}") from None


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


def submission_file_name(fmt: SubmissionFormat | str, entry: str, run: str, dataset: str | None = None,
                         data_file: str | Path | None = None, split: str = "test") -> str:
    """The file name :func:`submit_run` writes: the format's :attr:`SubmissionFormat.file_name` filled in.

    ``run`` is spelled with letters, digits, ``-`` and ``_`` only (MedMNIST reads it between
    ``@`` and the first dot). ``flag`` and ``size_flag`` come from ``data_file`` (the dataset's
    ``.npz``), else ``dataset`` with no size.
    """
    fmt = get_format(fmt)
    fields = {"format": fmt.name, "entry": entry, "run": re.sub(r"[^A-Za-z0-9_-]+", "-", run), "split": split}
    if {"flag", "size_flag"} & {name for _, name, _, _ in string.Formatter().parse(fmt.file_name)}:
        if data_file is None and dataset is None:
            raise SubmissionError(f"{fmt.name}: the file name {fmt.file_name} starts with the dataset's flag, and "
                                  f"the run names no dataset; give the output path (--out)")
        fields["flag"], fields["size_flag"] = medmnist_flag(data_file) if data_file is not None else (dataset, "")
    return fmt.file_name.format_map(fields)


@dataclass
class SubmitResult:
    """What :func:`submit_run` wrote: the file, from which entry and table, and what it was checked against.

    ``checked`` also says where the format came from when none was named (``generic`` then).
    """

    path: Path
    format: str
    entry: str
    kind: str
    source: Path
    rows: int
    checked: str


def submit_run(run_dir: str | Path, format: str | None = None, *, entry: str | None = None,
               out: str | Path | None = None, expected_ids: Sequence[str] | None = None,
               **options) -> SubmitResult:
    """Write ``RUN_DIR/submissions/<file name>`` (see :func:`submission_file_name`) from an entry's test table.

    ``entry`` defaults to the run config's ``[submission] entry``, then the leaderboard's best
    validation entry; ``format`` and options default to the run config's ``[submission]``
    section (its options apply only to its own format), then to the dataset card's format, then
    to ``generic`` (``checked`` says so); ``options`` given here win. ``expected_ids`` default
    to the dataset's test split when it can be opened; otherwise the table's own ids are used
    and ``checked`` says so.
    """
    run_dir = Path(run_dir)
    config = run_submission_options(run_dir)
    config_format = config.pop("format", None)
    config_entry = config.pop("entry", None)
    entry = entry or config_entry
    card, card_note = _card(run_dir)
    fmt = format or config_format or (card.submission if card is not None else None)
    note = ""
    if fmt is None:
        fmt = DEFAULT_FORMAT
        note = (f"format {DEFAULT_FORMAT} (none given; {run_dir / 'config.json'} [submission] names none, and "
                f"{'the dataset card names none' if card is not None else card_note}); ")
    fmt = get_format(fmt).name
    if config_format not in (None, fmt):
        config = {}
    options = {**config, **{k: v for k, v in options.items() if v is not None}}
    kind = None
    if entry is None:
        entry, kind = top_entry(run_dir)
    source = entry_table_path(run_dir, entry, kind)
    table = ProbabilityTable.read(source)
    checked = "the expected ids given"
    if expected_ids is None:
        expected_ids, checked = _dataset_test_ids(run_dir)
    if out:
        path = Path(out)
    else:
        run_config = RunDir(run_dir).read_config()
        dataset = card.name if card is not None else run_config.get("dataset") or table.meta.get("dataset")
        data_file = str(card.raw.get("file") or "") if card is not None else ""
        path = run_dir / "submissions" / submission_file_name(
            fmt, entry, str(run_config.get("run") or run_dir.name),
            None if dataset is None else Path(str(dataset)).stem,
            data_file if data_file.endswith(".npz") else None)
    write_submission(table, fmt, path, expected_ids, **options)
    kind = "ensemble" if source.parent.parent.name == "ensembles" else "member"
    return SubmitResult(path, fmt, entry, kind, source, len(table.ids), note + checked)


def _card(run_dir: Path) -> tuple[object | None, str | None]:
    """``(dataset card, None)`` of the run's dataset, or ``(None, why there is none)``."""
    dataset = RunDir(run_dir).read_config().get("dataset")
    if dataset is None:
        return None, f"{run_dir / 'config.json'} names no dataset"
    try:
        from medzoo.zoo.datasets import load_card
        return load_card(dataset), None
    except (ImportError, FileNotFoundError, ValueError, KeyError) as e:
        return None, f"the dataset card could not be loaded ({type(e).__name__}: {e})"


def _dataset_test_ids(run_dir: Path) -> tuple[list[str] | None, str]:
    config = RunDir(run_dir).read_config()
    dataset = config.get("dataset")
    if dataset is None:
        return None, f"not checked against a test list: {run_dir}/config.json names no dataset"
    try:
        from medzoo.zoo.datasets import open_dataset
        ds = open_dataset(dataset, data_root=config.get("data_root"))
        return list(ds.records("test").ids), f"checked against the {len(ds.records('test').ids)} test images of {ds.name}"
    except (ImportError, FileNotFoundError, ValueError, KeyError) as e:
        return None, f"not checked against the dataset's test list ({type(e).__name__}: {e})"
