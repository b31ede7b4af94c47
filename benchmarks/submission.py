"""Challenge submission files: check the options, build, validate, write atomically, read back, submit a run.

The formats are the challenges in :mod:`medzoo.benchmarks.challenges`, one module each (``isic2017``,
``isic2019``, ``isic2020``, ``object-cxr``, ``medmnist``, ``generic``), registered in
:data:`~medzoo.benchmarks.challenges.CHALLENGES`; each module's docstring says what its file holds.
A format is a declarative entry (id column, value columns, header or not, how ids are spelled, which
table classes feed which column, its options) plus a builder that turns a
:class:`~medzoo.ensemble.table.ProbabilityTable` into rows; this module does the rest for every format.

:func:`submit_run` names a file after the format's ``file_name`` template: ``<format>-<entry>.csv``,
except where a challenge reads another name (``medmnist``: ``{flag}{size_flag}_{split}_<entry>@{run}.csv``).
"""
from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medzoo.benchmarks.challenges import CHALLENGES
from medzoo.benchmarks.challenges.base import Submission, SubmissionError, expected_header, is_names, spell_ids
from medzoo.core.fileio import atomic_path
from medzoo.core.names import unknown_name
from medzoo.core.registry import Entry
from medzoo.core.rundir import TABLE_FOLDERS, TAG, RunDir
from medzoo.ensemble.table import ProbabilityTable, align
from medzoo.zoo.cards import DatasetCard
from medzoo.zoo.datasets import load_card, open_dataset

COMMON_OPTIONS = {"header": None}
SECTION_KEYS = ("format", "entry")
DEFAULT_FORMAT = "generic"


def get_format(name: str | Entry) -> Entry:
    """The registered challenge ``name`` (its :data:`CHALLENGES` entry); unknown names raise with the closest."""
    if isinstance(name, Entry):
        return name
    if name not in CHALLENGES:
        raise SubmissionError(unknown_name("submission format", name, CHALLENGES.names()))
    return CHALLENGES[name]


def _check_header(fmt: Entry | None, value) -> None:
    if not isinstance(value, bool):
        raise SubmissionError(f"header = {value!r}; expected true or false")
    if fmt is not None and value != fmt.get("header") and not fmt.get("header_optional"):
        raise SubmissionError(f"{fmt.name}: header={value!r} is not allowed; this format is always "
                              f"{'with' if fmt.get('header') else 'without'} a header row")


def _check_class_map(fmt: Entry | None, value) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SubmissionError(f"class_map = {value!r}; expected a table {{table class = column}} of names")


def _check_positive(fmt: Entry | None, value) -> None:
    if not isinstance(value, str) and not is_names(value):
        raise SubmissionError(f"positive = {value!r}; expected a class name or a list of class names")


SHARED_CHECKS: dict[str, Callable] = {"header": _check_header, "class_map": _check_class_map,
                                      "positive": _check_positive}


def _option_checks(fmt: Entry | None) -> dict[str, Callable]:
    """Option -> ``check(fmt, value)``: the shared ones and ``fmt``'s own (every format's when ``fmt`` is None)."""
    entries = [fmt] if fmt is not None else list(CHALLENGES)
    return {**SHARED_CHECKS, **{key: check for e in entries for key, check in e.get("checks").items()}}


def _format_options(fmt: Entry, options: dict) -> dict:
    """``options`` for ``fmt`` with defaults filled in; unknown names and bad values raise (``None`` = default)."""
    allowed = {**COMMON_OPTIONS, **fmt.get("options")}
    for key in options:
        if key not in allowed:
            raise SubmissionError(f"format {fmt.name!r}: " + unknown_name("option", key, allowed, label="allowed"))
    given = {k: v for k, v in options.items() if v is not None}
    checks = _option_checks(fmt)
    for key, value in given.items():
        if key in checks:
            checks[key](fmt, value)
    return {**allowed, **given}


def _section_format(config: dict) -> Entry | None:
    """The ``[submission]`` section's ``format`` entry, ``None`` when it names none."""
    if "format" not in config:
        return None
    if not isinstance(config["format"], str):
        raise SubmissionError(f"[submission] format = {config['format']!r}; expected one of: "
                              f"{', '.join(sorted(CHALLENGES.names()))}")
    try:
        return get_format(config["format"])
    except SubmissionError as e:
        raise SubmissionError(f"[submission] format: {e}") from None


def check_options(config: dict | None) -> dict:
    """The ``[submission]`` section checked, keys and values; returns a copy. Pure: reads no file.

    ``format``: a registered format; ``entry``: the member or ensemble to submit (default: the
    leaderboard's best); then the format's own options (its ``options`` metadata and ``header``).
    Without ``format`` (the dataset card may name it) an option of any format is accepted and
    checked as far as it can be without the format. Unknown keys get the closest allowed one.
    Raises :class:`SubmissionError` naming the value received and what is allowed.
    """
    if config is not None and not isinstance(config, dict):
        raise SubmissionError(f"[submission] must be a table of options, got {type(config).__name__} {config!r}")
    config = dict(config or {})
    fmt = _section_format(config)
    if fmt is not None:
        allowed = [*SECTION_KEYS, *COMMON_OPTIONS, *fmt.get("options")]
        label = f"allowed with format {fmt.name!r}"
    else:
        allowed = [*SECTION_KEYS, *COMMON_OPTIONS, *{k: None for e in CHALLENGES for k in e.get("options")}]
        label = "allowed"
    for key in config:
        if key not in allowed:
            raise SubmissionError("[submission] " + unknown_name("key", key, allowed, label=label))
    if "entry" in config and not (isinstance(config["entry"], str) and config["entry"]):
        raise SubmissionError(f"[submission] entry = {config['entry']!r}; expected a member id or ensemble name")
    checks = _option_checks(fmt)
    for key, value in config.items():
        if key in checks:
            try:
                checks[key](fmt, value)
            except SubmissionError as e:
                raise SubmissionError(f"[submission] {e}") from None
    return config


def build_submission(table: ProbabilityTable, format: str, expected_ids: Sequence[str] | None = None,
                     **options) -> Submission:
    """Build and validate the rows of a submission from a probability table.

    ``expected_ids``: the test images the challenge expects (any spelling the table uses:
    they are spelled like the submission before comparing); default: the images an option
    lists, where the format has one (``object-cxr``'s ``image_paths``). Raises
    :class:`SubmissionError` listing every problem found.
    """
    fmt = get_format(format)
    opts = _format_options(fmt, options)
    header = opts.pop("header")
    if header is None:
        header = fmt.get("header")
    ids, value_cols, values = fmt.target(fmt, table, **opts)
    full = [fmt.get("id_column"), *value_cols]
    sub = Submission(fmt.name, full, ids, np.asarray(values, dtype=np.float64).reshape(len(ids), -1), bool(header))
    if expected_ids is None and fmt.get("expected") is not None:
        expected_ids = fmt.get("expected")(opts)
    validate_submission(sub, expected_ids=None if expected_ids is None else spell_ids(fmt, expected_ids, opts))
    return sub


def validate_submission(sub: Submission, expected_ids: Sequence[str] | None = None) -> None:
    """Check a submission; raise :class:`SubmissionError` listing every problem.

    Checks: the header is the format's, in order; each id once (and, with ``expected_ids``
    spelled as written, no missing or extra id); every value finite and in [0, 1]; the
    format's own id check (medmnist: indices exactly 0..N-1).
    """
    fmt = get_format(sub.format)
    problems = []
    n, k = len(sub.ids), len(sub.header) - 1
    id_column = fmt.get("id_column")
    if fmt.get("columns") is not None and sub.header != expected_header(fmt):
        problems.append(f"columns {sub.header}, required {expected_header(fmt)} in this order")
    elif fmt.get("columns") is None and (sub.header[:1] != [id_column] or k < 1):
        problems.append(f"columns {sub.header}, required {id_column!r} then one column per class")
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
    if fmt.get("check_ids") is not None and not dup and n:
        problems += fmt.get("check_ids")(sub.ids)
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
    has_header = rows[0][0].strip().lower() == fmt.get("id_column").lower()
    if has_header and not fmt.get("header") and not fmt.get("header_optional"):
        raise SubmissionError(f"{path}: {fmt.name} files have no header row, found {rows[0]}")
    if not has_header and fmt.get("header") and not fmt.get("header_optional"):
        raise SubmissionError(f"{path}: first row {rows[0][:4]} is not the required header "
                              f"{','.join(expected_header(fmt, len(rows[0]) - 1))}")
    header = rows[0] if has_header else expected_header(fmt, len(rows[0]) - 1)
    body = rows[1:] if has_header else rows
    for r, row in enumerate(body, start=1 + has_header):
        if len(row) != len(header):
            raise SubmissionError(f"{path}: line {r} has {len(row)} fields, expected {len(header)} ({','.join(header)})")
    try:
        values = np.array([[float(v) for v in row[1:]] for row in body], dtype=np.float64).reshape(len(body), len(header) - 1)
    except ValueError as e:
        raise SubmissionError(f"{path}: non-numeric score ({e})") from None
    ids = [row[0].strip() for row in body]
    if fmt.get("parse_id") is not None:
        ids = [fmt.get("parse_id")(i) for i in ids]
    sub = Submission(fmt.name, [h.strip() for h in header], ids, values, has_header)
    validate_submission(sub)
    return sub


def _leaderboard_rows(rd: RunDir) -> list[dict] | None:
    """The rows of the run's ``leaderboard.csv``; ``None`` when it has none."""
    if not rd.leaderboard_csv.exists():
        return None
    with open(rd.leaderboard_csv, newline="") as f:
        return list(csv.DictReader(f))


def _val_auc(row: dict) -> float:
    """A leaderboard row's ``val_auc``; -inf where empty or not finite (ranked last)."""
    try:
        v = float(row["val_auc"])
    except ValueError:
        return -math.inf
    return v if math.isfinite(v) else -math.inf


def top_entry(run_dir: str | Path) -> tuple[str, str]:
    """``(entry, kind)`` of the leaderboard's pick: its rank 1 (ranked on honest validation scores only),
    else, for a board without ranks, the highest ``val_auc``."""
    rd = RunDir(run_dir)
    rows = _leaderboard_rows(rd)
    if rows is None:
        raise FileNotFoundError(f"no leaderboard at {rd.leaderboard_csv}; run `medzoo leaderboard {run_dir}` "
                                f"or pass --entry")
    if not rows or not {"entry", "kind", "val_auc"} <= set(rows[0]):
        raise SubmissionError(f"{rd.leaderboard_csv}: expected rows with columns entry, kind, val_auc")
    ranked = [r for r in rows if str(r.get("rank", "")).isdigit()]
    best = min(ranked, key=lambda r: int(r["rank"])) if ranked else max(rows, key=_val_auc)
    return best["entry"], best["kind"]


def entry_tables(run_dir: str | Path, entry: str, kind: str | None = None, split: str = "test"
                 ) -> tuple[list[Path], str]:
    """``(paths, kind)`` of an entry's table: a member's (``kind="member"``) or an ensemble's; in a repeated run
    an entry without its repeat tag (``mean``) stands for every repeat's table (``mean@s0``, ``mean@s1``, ...).

    With ``kind=None`` the leaderboard names the kind, else whichever of the two exists.
    """
    rd = RunDir(run_dir)
    if kind is None:
        kind = next((r.get("kind") for r in _leaderboard_rows(rd) or [] if r.get("entry") == entry), None)
    if kind is not None and kind not in TABLE_FOLDERS:
        raise SubmissionError(f"entry {entry!r} has kind {kind!r}; allowed 'member' or 'ensemble'")
    for k in ([kind] if kind else TABLE_FOLDERS):
        path = rd.table(k, entry, split)
        if path.exists():
            return [path], k
        repeats = [rd.table(k, name, split) for name in rd.table_names(k, split) if name.split(TAG, 1)[0] == entry
                   and TAG in name]
        if repeats:
            return repeats, k
    known = sorted(name for k in TABLE_FOLDERS for name in rd.table_names(k, split))
    raise FileNotFoundError(f"no {split} table under {rd.tables('member')} or {rd.tables('ensemble')}: "
                            + unknown_name("entry", entry, known))


def submission_file_name(fmt: Entry | str, entry: str, run: str, dataset: str | None = None,
                         data_file: str | Path | None = None, split: str = "test") -> str:
    """The file name :func:`submit_run` writes: the format's ``file_name`` template filled in.

    ``run`` is spelled with letters, digits, ``-`` and ``_`` only (MedMNIST reads it between
    ``@`` and the first dot). The format's ``file_fields(dataset, data_file)`` adds what else its
    template names (medmnist: ``flag`` and ``size_flag`` from the dataset's ``.npz``).
    """
    fmt = get_format(fmt)
    fields = {"format": fmt.name, "entry": entry, "run": re.sub(r"[^A-Za-z0-9_-]+", "-", run), "split": split}
    if fmt.get("file_fields") is not None:
        fields.update(fmt.get("file_fields")(dataset, data_file))
    return fmt.get("file_name").format_map(fields)


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
    rd = RunDir(run_dir)
    config = rd.read_config()
    section = _section_options(rd, config)
    section_format = section.pop("format", None)
    section_entry = section.pop("entry", None)
    entry = entry or section_entry
    card, card_note = _card(rd, config)
    fmt, note = _choose_format(rd, format or section_format, card, card_note)
    if section_format not in (None, fmt):
        section = {}
    options = {**section, **{k: v for k, v in options.items() if v is not None}}
    kind = None
    if entry is None:
        entry, kind = top_entry(rd.path)
    sources, kind = entry_tables(rd.path, entry, kind)
    table = _mean_table([ProbabilityTable.read(p) for p in sources])
    checked = "the expected ids given"
    if expected_ids is None:
        expected_ids, checked = _dataset_test_ids(rd, config)
    path = Path(out) if out else rd.submissions / _file_name(rd, config, card, table, fmt, entry)
    write_submission(table, fmt, path, expected_ids, **options)
    if len(sources) > 1:
        note += f"the mean of its {len(sources)} repeats' test tables; "
    return SubmitResult(path, fmt, entry, kind, sources[0], len(table.ids), note + checked)


def _mean_table(tables: list[ProbabilityTable]) -> ProbabilityTable:
    """One table, or the mean of several over the same images (an entry's repeats)."""
    if len(tables) == 1:
        return tables[0]
    ids, classes, probs, labels = align(tables)
    return ProbabilityTable(ids, classes, probs.mean(axis=0), labels, {**tables[0].meta, "repeats": len(tables)})


def _section_options(rd: RunDir, config: dict) -> dict:
    """The ``[submission]`` section of the run's config (``format``, ``entry`` and format options), checked."""
    try:
        return check_options(config.get("submission"))
    except SubmissionError as e:
        raise SubmissionError(f"{rd.config_json}: {e}") from None


def _choose_format(rd: RunDir, named: str | None, card: DatasetCard | None, card_note: str | None) -> tuple[str, str]:
    """``(format, note)``: the one named, else the card's, else ``generic`` with a note saying why."""
    fmt = named or (card.submission if card is not None else None)
    if fmt is not None:
        return get_format(fmt).name, ""
    return DEFAULT_FORMAT, (f"format {DEFAULT_FORMAT} (none given; {rd.config_json} [submission] names none, and "
                            f"{'the dataset card names none' if card is not None else card_note}); ")


def _file_name(rd: RunDir, config: dict, card: DatasetCard | None, table: ProbabilityTable, fmt: str,
               entry: str) -> str:
    """:func:`submission_file_name` for this run: its name, and its dataset (and ``.npz`` file) where known."""
    dataset = card.name if card is not None else config.get("dataset") or table.meta.get("dataset")
    data_file = str(card.raw.get("file") or "") if card is not None else ""
    return submission_file_name(fmt, entry, str(config.get("run") or rd.path.name),
                                None if dataset is None else Path(str(dataset)).stem,
                                data_file if data_file.endswith(".npz") else None)


def _card(rd: RunDir, config: dict) -> tuple[DatasetCard | None, str | None]:
    """``(dataset card, None)`` of the run's dataset, or ``(None, why there is none)``."""
    dataset = config.get("dataset")
    if dataset is None:
        return None, f"{rd.config_json} names no dataset"
    try:
        return load_card(dataset), None
    except FileNotFoundError as e:  # neither a shipped card nor a data path here
        return None, f"the dataset card could not be loaded ({type(e).__name__}: {e})"


def _dataset_test_ids(rd: RunDir, config: dict) -> tuple[list[str] | None, str]:
    """``(the dataset's test ids, "checked against ...")``, or ``(None, why not)`` when the data is not here."""
    dataset = config.get("dataset")
    if dataset is None:
        return None, f"not checked against a test list: {rd.config_json} names no dataset"
    try:
        ds = open_dataset(dataset, data_root=config.get("data_root"))
        ids = list(ds.records("test").ids)
    except (FileNotFoundError, KeyError) as e:  # no card, the data is absent, or it has no test split
        return None, f"not checked against the dataset's test list ({type(e).__name__}: {e})"
    return ids, f"checked against the {len(ids)} test images of {ds.name}"
