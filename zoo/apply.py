"""Applying a fitted run to new images: one entry of ``results/<run>/``, a member or an ensemble.

A member entry runs the kept checkpoint of each training unit its table's sidecar names (``units``)
exactly as that table was predicted (:func:`medzoo.zoo.member._write_tables`): the checkpoint whose
digest the sidecar records (``best.pt``, or ``snap<j>.pt`` for a snapshot member), at the recorded
input size, with the recorded TTA (:func:`medzoo.zoo.predict.tta_flips`), in full precision. A
cross-validated member (units ``<id>@f<k>``, whose test table is the mean of its K fold models) is
the mean of its K fold models' probabilities; each fold unit's own table sidecar names its checkpoint.
An ensemble entry combines its members' outputs with the method restored from the state saved beside
its tables (``RunDir.ensemble_state``, :func:`medzoo.ensemble.combiners.restore_method`),
with no refit; methods that rank images (``rank_mean``) rank them among the images given. A
temperature-scaled entry (``medzoo calibrate``'s ``<name>+ts``) is its source entry's output with the
temperature fitted on validation applied (:func:`medzoo.ensemble.calibration.calibration_source`).

Inputs (:func:`read_images`): image files and folders (searched recursively; ids are the file stems,
:func:`medzoo.zoo.predict.image_paths`), a CSV of image paths (a ``path`` / ``file`` / ``filename`` /
``image_path`` / ``image`` column, or one column with or without a header; relative paths start at the
CSV's folder), or a MedMNIST-style ``.npz`` (``FILE.npz`` takes its ``images`` array, else its
``test_images``; ``FILE.npz:val`` names the split), read by the dataset reader so that ids and labels
are those of the dataset's tables. Images stream in chunks: each chunk is decoded once per input size
and every model the entry needs predicts it.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from medzoo.core.fileio import file_digest
from medzoo.core.names import unknown_name
from medzoo.core.rundir import MemberDir, RunDir
from medzoo.ensemble.calibration import apply_temperature, calibration_source
from medzoo.ensemble.combiners import Combiner, restore_method
from medzoo.ensemble.table import ProbabilityTable, sidecar_path
from medzoo.zoo.cache import load_images, resize_array
from medzoo.zoo.checkpoint import model_from_checkpoint
from medzoo.zoo.config import TrainConfig
from medzoo.zoo.datasets import load_card, open_dataset
from medzoo.zoo.device import resolve_device, use_channels_last
from medzoo.zoo.predict import image_ids, image_paths, predict_probs, tta_flips
from medzoo.zoo.readers import READERS, SplitRecords

PATH_COLUMNS = ("path", "file", "filename", "image_path", "image")
TABLE_SPLITS = ("test", "val")  # the sidecar a member's checkpoints are read from: test's, else val's
CHUNK = 256


@dataclass(frozen=True)
class UnitModel:
    """One kept checkpoint of a member entry and how its table was predicted (from that table's sidecar)."""

    unit: str
    checkpoint: Path
    digest: str
    size: int
    tta: bool
    batch_size: int
    channels_last: bool | str


@dataclass(frozen=True)
class MemberPlan:
    """A member entry: its table's sidecar ``meta`` and its ``units`` (one, or K fold models to average)."""

    entry: str
    meta: dict
    units: tuple[UnitModel, ...]


def run_entries(run: RunDir) -> dict[str, str]:
    """``{entry: "member" | "ensemble"}`` of every table folder of the run, members first."""
    members = {name: "member" for name in run.table_names("member")}
    return {**members, **{name: "ensemble" for name in run.table_names("ensemble") if name not in members}}


def open_entry(run_dir: str | Path, entry: str) -> tuple[RunDir, str]:
    """``(run, "member" | "ensemble")`` of one entry of a run folder; raises for a missing folder, for a folder
    without tables, and for an unknown entry listing the run's entries."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise FileNotFoundError(f"no run folder at {run.path}")
    entries = run_entries(run)
    if not entries:
        raise ValueError(f"{run.path}: no probability tables (predictions/, ensembles/) to take entry {entry!r} from; "
                         f"a committed or copied run keeps its board, not its tables and checkpoints: train it with "
                         f"`medzoo bench` (or `medzoo train` and `medzoo ensemble`) first")
    if entry not in entries:
        raise ValueError(f"{run.path}: " + unknown_name("entry", entry, entries))
    return run, entries[entry]


def predict_run(run_dir: str | Path, images: str | Path | Sequence[str | Path], *, entry: str,
                out: str | Path | None = None, device: str = "auto", batch_size: int | None = None,
                chunk: int = CHUNK, progress: bool = True) -> ProbabilityTable:
    """Probability table ``[N, C]`` of run entry ``entry`` (a member, an ensemble or a temperature-scaled
    ``+ts`` copy of either) for new images.

    ``images``: image files and folders, a CSV of image paths, or an ``.npz`` (see :func:`read_images`).
    Every model the entry needs runs as its tables were made (see the module docstring), on
    ``device``, ``batch_size`` images at a time (default: each member's training batch size), over
    ``chunk`` images decoded at a time. Labels are those the input gives (an ``.npz`` split's), else
    unknown. Writes the table (and its sidecar) to ``out`` when given. An unknown entry raises listing
    the run's entries.
    """
    run, kind = open_entry(run_dir, entry)
    inputs = [images] if isinstance(images, (str, Path)) else list(images)
    records = read_images(inputs)
    table = _predict_table(run, kind, entry, records, resolve_device(device), batch_size=batch_size, chunk=chunk,
                         progress=progress)
    table.meta.update(split="test", source="medzoo predict", run=str(run.path), entry=entry, kind=kind,
                      inputs=[str(i) for i in inputs])
    if out is not None:
        table.write(out)
    return table


def _predict_table(run: RunDir, kind: str, entry: str, records: SplitRecords, device: torch.device, *,
                 batch_size: int | None, chunk: int, progress: bool) -> ProbabilityTable:
    """The table of ``entry`` for ``records``: its members' tables, combined by its restored method for an
    ensemble; a temperature-scaled entry is its source's table with the fitted temperature applied."""
    calibrated = calibration_source(run.path, entry)
    if calibrated is not None:
        source_kind, source, temperature = calibrated
        table = _predict_table(run, source_kind, source, records, device, batch_size=batch_size, chunk=chunk,
                             progress=progress)
        return ProbabilityTable(table.ids, table.classes, apply_temperature(table.probs, temperature), table.labels,
                                {**table.meta, "calibrated_from": {"kind": source_kind, "name": source},
                                 "temperature": temperature})
    method = restored_method(run, entry) if kind == "ensemble" else None
    plans = [member_plan(run, m) for m in (method.members_ if method is not None else [entry])]
    classes = plan_classes(plans)
    probs = member_probs(plans, records, device, batch_size=batch_size, chunk=chunk, progress=progress,
                         desc=f"predict {entry}")
    tables = [ProbabilityTable(records.ids, classes, probs[p.entry], records.labels, _member_meta(p))
              for p in plans]
    return method.predict(tables) if method is not None else tables[0]


def restored_method(run: RunDir, entry: str) -> Combiner:
    """The fitted method of ensemble ``entry``, rebuilt from its saved state."""
    path = run.ensemble_state(entry)
    if not path.is_file():
        raise FileNotFoundError(f"ensemble {entry!r} has no saved state at {path} (built before medzoo saved "
                                f"one); rebuild the ensembles: medzoo ensemble {run.path}")
    return restore_method(json.loads(path.read_text()), source=str(path))


def member_plan(run: RunDir, entry: str) -> MemberPlan:
    """The kept checkpoints of member entry ``entry`` and how its table was predicted, from its sidecars.

    Raises naming the file when the member's table records no training units (a table from another
    tool), or when no checkpoint of a unit has the digest its table's sidecar records.
    """
    table = _first_table([run.table("member", entry, s) for s in TABLE_SPLITS], entry)
    meta = _sidecar(table)
    units = meta.get("units")
    if not units:
        raise ValueError(f"member {entry!r}: {sidecar_path(table)} names no training units; only members trained "
                         f"by medzoo (medzoo train) can be applied to new images")
    folded = "folds" in meta
    models = []
    for unit in units:
        files = run.member(unit)
        own = _first_table([files.table(entry, s) for s in TABLE_SPLITS], entry) if folded else table
        models.append(_unit_model(files, _sidecar(own), sidecar_path(own)))
    return MemberPlan(entry, meta, tuple(models))


def _first_table(candidates: list[Path], entry: str) -> Path:
    """The first of ``candidates`` (one table per :data:`TABLE_SPLITS`) that exists; raises naming them all."""
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"member {entry!r}: no table at {' or '.join(map(str, candidates))}")
    return found


def _sidecar(table: Path) -> dict:
    """The JSON sidecar of a table CSV; raises naming it when it is missing."""
    path = sidecar_path(table)
    if not path.is_file():
        raise FileNotFoundError(f"no sidecar {path} beside {table}: it records the checkpoint, size and TTA that "
                                f"made the table")
    return json.loads(path.read_text())


def _unit_model(files: MemberDir, meta: dict, source: Path) -> UnitModel:
    """The unit's checkpoint whose digest ``meta`` (the sidecar at ``source``) records, and how it predicted."""
    missing = [k for k in ("checkpoint", "size", "tta", "config") if k not in meta]
    if missing:
        raise ValueError(f"{source} lacks {missing}; it needs checkpoint, size, tta and config (medzoo train writes "
                         f"them)")
    candidates = [files.best]
    while files.snapshot(len(candidates)).is_file():
        candidates.append(files.snapshot(len(candidates)))
    path = next((p for p in candidates if p.is_file() and file_digest(p) == meta["checkpoint"]), None)
    if path is None:
        raise ValueError(f"{source} records checkpoint {meta['checkpoint'][:12]}..., and no checkpoint in "
                         f"{files.folder} ({', '.join(p.name for p in candidates)}) has that digest: the unit was "
                         f"retrained after its tables were written; train it again (medzoo train) to rewrite them")
    train = meta["config"].get("train", {})
    return UnitModel(files.id, path, meta["checkpoint"], int(meta["size"]), bool(meta["tta"]),
                     int(train.get("batch_size", 64)), train.get("channels_last", "auto"))


def read_images(inputs: Sequence[str | Path]) -> SplitRecords:
    """The images to predict, before decoding: ``ids [N]``, ``labels [N]`` (-1 unknown) and their files, or the
    rows of an ``.npz`` array (``array``, ``index``).

    ``inputs``: image files and folders; or one CSV of image paths; or one ``FILE.npz`` /
    ``FILE.npz:<split>`` (see the module docstring).
    """
    items = [str(i) for i in inputs]
    if not items:
        raise ValueError("no images given; pass image files, folders, a CSV of image paths or an .npz")
    alone = [i for i in items if _npz_split(i) is not None or i.lower().endswith(".csv")]
    if alone and len(items) > 1:
        raise ValueError(f"a CSV or an .npz of images is given alone; got {items}")
    if alone and _npz_split(items[0]) is not None:
        return _npz_records(*_npz_split(items[0]))
    paths = _csv_paths(Path(items[0])) if alone else image_paths(items)
    ids = image_ids(paths)
    return SplitRecords(ids, np.full(len(ids), -1, dtype=np.int64), paths=paths, origins=[str(p) for p in paths])


class Images:
    """Images decoded on request at any size (``uint8 [N, size, size, 3]``, once per size), as training decodes
    them (``resize_array`` of an ``.npz``'s rows, ``load_images`` of files).

    ``parts``: ``(positions [k], records [k], raw rows of their array or None for files)``.
    """

    def __init__(self, n: int, parts: list[tuple[np.ndarray, SplitRecords, np.ndarray | None]]):
        self.n, self.parts, self.cache = n, parts, {}

    def at(self, size: int) -> np.ndarray:
        if size not in self.cache:
            out = np.zeros((self.n, size, size, 3), dtype=np.uint8)
            for pos, rec, raw in self.parts:
                out[pos] = resize_array(raw, size) if raw is not None else load_images(rec.paths, size, rec.origins)
            self.cache[size] = out
        return self.cache[size]


def records_images(records: SplitRecords) -> Images:
    """The images of ``records`` (as :func:`read_images` gives them), in their order."""
    array = records_array(records)
    raw = None if array is None else array[records.index]
    return Images(len(records), [(np.arange(len(records)), records, raw)])


def run_images(run: RunDir, ids: list[str]) -> Images:
    """The images ``ids`` of the run's dataset (``config.json``'s ``dataset`` and ``data_root``), from any split."""
    config = run.read_config()
    if "dataset" not in config:
        raise ValueError(f"{run.config_json} names no dataset to read the images from; give the images instead")
    ds = open_dataset(config["dataset"], data_root=config.get("data_root"))
    records = {split: ds.records(split) for split in ds.splits}
    where = {}
    for split, rec in records.items():
        for row, i in enumerate(rec.ids):
            where.setdefault(i, (split, row))
    missing = [i for i in ids if i not in where]
    if missing:
        raise ValueError(f"dataset {ds.name!r} has no image {missing[0]!r} ({len(missing)} of the {len(ids)} images "
                         f"missing); the run's tables were made from other data")
    parts = []
    for split in dict.fromkeys(where[i][0] for i in ids):
        pos = np.array([k for k, i in enumerate(ids) if where[i][0] == split])
        rec = records[split].subset(np.array([where[ids[k]][1] for k in pos]))
        array = records_array(rec)
        parts.append((pos, rec, None if array is None else array[rec.index]))
    return Images(len(ids), parts)


def _npz_split(item: str) -> tuple[Path, str | None] | None:
    """``(file, split or None)`` for ``FILE.npz`` or ``FILE.npz:<split>``; None for anything else."""
    head, sep, split = item.rpartition(":")
    if sep and head.lower().endswith(".npz"):
        return Path(head), split
    return (Path(item), None) if item.lower().endswith(".npz") else None


def _npz_records(path: Path, split: str | None) -> SplitRecords:
    """One split of an ``.npz``, read by the dataset reader (ids ``test_00000``, ...): ``split``, else its
    ``images`` array, else its test split."""
    if not path.is_file():
        raise FileNotFoundError(f"no .npz file at {path}")
    _, records = READERS["npz"].target(load_card(path), path.parent)
    chosen = split or next((s for s in ("all", "test") if s in records), None)
    if chosen not in records:
        raise ValueError(f"{path}: " + unknown_name("split", split or "test", records, sort=False)
                         + f" (give one as {path}:<split>)")
    return records[chosen]


def _csv_paths(path: Path) -> list[Path]:
    """The image files a CSV lists, one per row (see the module docstring); raises naming a missing one's line."""
    if not path.is_file():
        raise FileNotFoundError(f"no CSV of image paths at {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if any(v.strip() for v in r)]
    if not rows:
        raise ValueError(f"{path}: no rows; expected a column of image paths")
    header = [c.strip() for c in rows[0]]
    lower = [c.lower() for c in header]
    column = next((lower.index(c) for c in PATH_COLUMNS if c in lower), 0 if len(header) == 1 else None)
    if column is None:
        raise ValueError(f"{path}: no column of image paths among {header}; name it one of {list(PATH_COLUMNS)} or "
                         f"give a CSV of one column")
    headerless = len(header) == 1 and _resolve(path, header[0]).is_file()
    body = rows if headerless else rows[1:]
    paths = [_resolve(path, r[column].strip()) for r in body]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        i = missing[0]
        raise FileNotFoundError(f"{path} line {i + 1 + (not headerless)}: no image file {paths[i]} ({len(missing)} "
                                f"of {len(paths)} missing; relative paths start at {path.parent})")
    if not paths:
        raise ValueError(f"{path}: a header and no rows; expected one image path per row")
    return paths


def _resolve(csv_file: Path, value: str) -> Path:
    """A path a CSV lists: absolute as it is, relative to the CSV's folder otherwise."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else csv_file.parent / p


def member_probs(plans: Sequence[MemberPlan], records: SplitRecords, device: torch.device, *,
                 batch_size: int | None = None, chunk: int = CHUNK, progress: bool = True,
                 desc: str = "predict") -> dict[str, np.ndarray]:
    """``{entry: probs float64 [N, C]}``: each member's probabilities for the ``N`` images of ``records``.

    Every unit model is loaded once; the images stream in chunks of ``chunk``, each decoded once
    per input size, with one progress bar over the images. A member with several units (fold
    models) gets their mean.
    """
    units = list(dict.fromkeys(u for p in plans for u in p.units))
    loaded = {u: load_unit(u, device) for u in units}
    n = len(records)
    out: dict[UnitModel, list[np.ndarray]] = {u: [] for u in units}
    array = records_array(records)
    with tqdm(total=n, desc=desc, unit="img", disable=None if progress else True) as bar:
        for start in range(0, n, chunk):
            rows = np.arange(start, min(n, start + chunk))
            for size in sorted({u.size for u in units}):
                images = _decode(records, array, rows, size)
                for u in (u for u in units if u.size == size):
                    model, ckpt, channels_last = loaded[u]
                    out[u].append(predict_probs(model, images, mean=ckpt["mean"], std=ckpt["std"], device=device,
                                                batch_size=batch_size or u.batch_size,
                                                flips=tta_flips(u.tta, ckpt.get("vflip", False)),
                                                channels_last=channels_last))
            bar.update(len(rows))
    full = {u: np.concatenate(parts) for u, parts in out.items()}
    return {p.entry: np.mean([full[u] for u in p.units], axis=0) for p in plans}


def load_unit(u: UnitModel, device: torch.device) -> tuple[torch.nn.Module, dict, bool]:
    """``(model, checkpoint, channels_last)`` of one unit, on ``device`` as its tables were predicted."""
    model, ckpt = model_from_checkpoint(u.checkpoint, device)
    channels_last = use_channels_last(TrainConfig(channels_last=u.channels_last), device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, ckpt, channels_last


def records_array(records: SplitRecords) -> np.ndarray | None:
    """The whole ``.npz`` array of array records (read once), None for files."""
    if records.array is None:
        return None
    file, key = records.array
    with np.load(file) as z:
        return z[key]


def _decode(records: SplitRecords, array: np.ndarray | None, rows: np.ndarray, size: int) -> np.ndarray:
    """Images ``rows`` of ``records`` as uint8 ``[len(rows), size, size, 3]``, as the dataset loader makes them
    (:func:`medzoo.zoo.datasets.load_arrays`: files decoded, arrays resized in one pass)."""
    if array is not None:
        return resize_array(array[records.index[rows]], size)
    return load_images([records.paths[i] for i in rows], size, [records.origins[i] for i in rows],
                       desc=f"decoding at {size}px")


def plan_classes(plans: Sequence[MemberPlan]) -> list[str]:
    """The class list every member's table shares; raises naming the member that differs."""
    first = plans[0]
    for p in plans[1:]:
        if p.meta.get("classes") != first.meta.get("classes"):
            raise ValueError(f"member {p.entry!r} has classes {p.meta.get('classes')}, member {first.entry!r} "
                             f"{first.meta.get('classes')}")
    return list(first.meta["classes"])


def _member_meta(p: MemberPlan) -> dict:
    """A member's output sidecar: what its run table records, and the checkpoints that ran."""
    keep = ("model", "dataset", "size", "tta", "config", "seed", "folds")
    return {"member": p.entry, **{k: p.meta[k] for k in keep if k in p.meta}, "units": [u.unit for u in p.units],
            "checkpoints": [u.digest for u in p.units]}
