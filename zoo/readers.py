"""Dataset readers, one per card ``format``: folder trees, CSV label files, MedMNIST-style ``.npz``.

A reader is registered in :data:`READERS` under its format name and called as
``reader(card, root) -> (classes, {split: SplitRecords})``: it reads the labels and lists the
images, failing early and naming the file and row on anything wrong. Splits are those the data
gives (``train``, ``val``, ``test``), or ``all`` when it gives none. ``.npz`` files a card names
are downloaded from its ``url`` when absent (:func:`ensure_file`) and checked against its checksum.
"""
from __future__ import annotations

import fnmatch
import os
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from medzoo.core.fileio import atomic_path, file_digest
from medzoo.core.names import unknown_name
from medzoo.core.registry import Registry
from medzoo.zoo.cache import IMAGE_EXTENSIONS
from medzoo.zoo.cards import SPLIT_ALIASES, SPLIT_NAMES, DatasetCard, data_path, split_name, visible

READERS = Registry("dataset format")
ID_COLUMNS = ("image_id", "image", "id", "image_name", "filename", "file", "path", "name")
LABEL_COLUMNS = ("label", "labels", "class", "diagnosis", "dx", "target")


@dataclass
class SplitRecords:
    """The images of one split, before decoding.

    Attributes:
        ids: ``[N]`` image ids.
        labels: int64 ``[N]`` class indices, ``-1`` where unknown.
        paths: ``[N]`` image files (file-based datasets), else None.
        array: ``(npz file, key)`` (array datasets), else None.
        index: int64 ``[N]`` rows of that array.
        origins: ``[N]`` where each record came from ("labels.csv line 7"), for error messages.
        groups: ``[N]`` patient/lesion ids when the card names them.
    """

    ids: list[str]
    labels: np.ndarray
    paths: list[Path] | None = None
    array: tuple[Path, str] | None = None
    index: np.ndarray | None = None
    origins: list[str] | None = None
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> "SplitRecords":
        """Records at ``rows`` (int ``[K]``), in that order."""
        pick = lambda xs: None if xs is None else [xs[i] for i in rows]  # noqa: E731
        index = None if self.index is None else self.index[rows]
        return SplitRecords(pick(self.ids), self.labels[rows], pick(self.paths), self.array, index,
                            pick(self.origins), pick(self.groups))


def concat_records(parts: Sequence[SplitRecords]) -> SplitRecords:
    """The records of ``parts`` one after another (all from the same array, for array datasets)."""
    cat = lambda name: None if getattr(parts[0], name) is None else [x for p in parts for x in getattr(p, name)]  # noqa: E731
    if len({p.array for p in parts}) > 1:
        raise ValueError("cannot pool splits stored in different arrays")
    index = None if parts[0].index is None else np.concatenate([p.index for p in parts])
    return SplitRecords(cat("ids"), np.concatenate([p.labels for p in parts]), cat("paths"),
                        parts[0].array, index, cat("origins"), cat("groups"))


def check_unique(ids: Sequence[str], origins: Sequence[str], what: str) -> None:
    """Raise naming both places when an id occurs twice in ``ids`` (``origins``: where each came from)."""
    first: dict[str, int] = {}
    for i, k in enumerate(ids):
        if k in first:
            raise ValueError(f"{origins[i]}: duplicate image id {k!r} in {what} (also at {origins[first[k]]}); "
                             f"ids must be unique: remove or rename one")
        first[k] = i


def id_column(columns: list[str], col: str | None, where: Path) -> str:
    """The id column of a CSV of images: ``col`` when given, else the first of :data:`ID_COLUMNS` present."""
    if col:
        if col not in columns:
            raise ValueError(f"{where}: " + unknown_name("id column", col, columns, sort=False))
        return col
    lower = {c.lower(): c for c in columns}
    for c in ID_COLUMNS:
        if c in lower:
            return lower[c]
    raise ValueError(f"{where}: no usable id column among {columns}; name it one of {list(ID_COLUMNS)} "
                     f"or set id_column = \"<column>\" in the card")


def _finish(card: DatasetCard, raws: dict[str, dict], hint: list[str] | None = None
            ) -> tuple[list[str], dict[str, SplitRecords]]:
    """Turn per-split raw label names (str, or None for unlabeled) into class indices."""
    values = [v for r in raws.values() for v in r["names"] if v is not None]
    classes = card.classes or hint or _infer_classes(values)
    lookup = {c: k for k, c in enumerate(classes)}
    out = {}
    for split, r in raws.items():
        labels = np.empty(len(r["ids"]), dtype=np.int64)
        for i, v in enumerate(r["names"]):
            if v is None:
                labels[i] = -1
            elif v in lookup:
                labels[i] = lookup[v]
            elif v.isdigit() and int(v) < len(classes):
                labels[i] = int(v)
            else:
                raise ValueError(f"{r['origins'][i]}: " + unknown_name("class", v, classes, sort=False) +
                                 "; fix the label or add the class to the card's classes")
        known = labels >= 0
        if known.any() and not known.all():
            i = int(np.flatnonzero(~known)[0])
            raise ValueError(f"{r['origins'][i]}: image {r['ids'][i]!r} has no label while other images of "
                             f"split {split!r} do; label it or remove it")
        out[split] = SplitRecords(r["ids"], labels, r["paths"], origins=r["origins"], groups=r.get("groups"))
    return list(classes), out


def _infer_classes(values: list[str]) -> list[str]:
    if values and all(v.isdigit() for v in values):
        return [str(k) for k in range(max(int(v) for v in values) + 1)]
    return sorted(set(values))


def _entries(card: DatasetCard, keys: Sequence[str]) -> dict[str, dict]:
    """``{split: {key: value}}`` from ``[splits.<name>]`` tables, or ``{"all": ...}`` from top-level keys."""
    given = card.raw.get("splits")
    if given:
        return {split_name(k): dict(v) for k, v in given.items()}
    top = {k: card.raw[k] for k in keys if k in card.raw}
    if not top:
        raise ValueError(f"card {card.name!r}: say where the data is: {' or '.join(keys)} "
                         f"(or [splits.<train|val|test>] tables)")
    return {"all": top}


def _image_files(folder: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """Image files in ``folder``, sorted, without those matching an ``exclude`` glob; warns about others."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and visible(p)
                   and not any(fnmatch.fnmatch(p.name, pat) for pat in exclude))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if len(images) < len(files):
        other = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        warnings.warn(f"{folder}: ignoring {len(other)} non-image file(s) such as {other[0]!r} "
                      f"(images end in {', '.join(IMAGE_EXTENSIONS)})", stacklevel=3)
    return images


def _folder_split(folder: Path, split: str, exclude: Sequence[str] = ()) -> dict:
    """Raw records of one split folder: class subfolders, or loose images (unlabeled)."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and visible(p))
    loose = _image_files(folder, exclude)
    if subdirs and loose:
        raise ValueError(f"{folder} holds both class folders ({subdirs[0].name}, ...) and loose images "
                         f"({loose[0].name}, ...); put every image in a class folder, or none for an unlabeled split")
    files, names = (loose, [None] * len(loose))
    if subdirs:
        files, names = [], []
        for d in subdirs:
            found = _image_files(d, exclude)
            files += found
            names += [d.name] * len(found)
    if not files:
        raise ValueError(f"split {split!r}: no images in {folder} (looked for *{', *'.join(IMAGE_EXTENSIONS)})")
    ids = [p.stem for p in files]
    origins = [str(p) for p in files]
    check_unique(ids, origins, f"split {split!r}")
    return {"ids": ids, "names": names, "paths": files, "origins": origins}


@READERS.register("folder")
def read_folder(card: DatasetCard, root: Path) -> tuple[list[str], dict[str, SplitRecords]]:
    """``root/<split>/<class>/*.jpg`` (split folders train/val/test or aliases) or ``root/<class>/*``."""
    raws, exclude = {}, card.raw.get("exclude", [])
    for split, entry in _entries(card, ["root"]).items():
        if "root" not in entry:
            raise ValueError(f"card {card.name!r}: split {split!r} needs root = \"<image folder>\"")
        top = data_path(root, entry["root"])
        if not top.is_dir():
            raise FileNotFoundError(f"card {card.name!r}: image folder {top} does not exist; put the images "
                                    f"there or set MEDZOO_DATA / --data-root to the folder that holds {entry.get('root')}")
        if split != "all":
            raws[split] = _folder_split(top, split, exclude)
        else:
            raws.update(_split_folders(top, exclude))
    return _finish(card, raws)


def _split_folders(top: Path, exclude: Sequence[str]) -> dict[str, dict]:
    """Raw records of a folder given as the whole dataset: its split folders, or ``all`` when it has none."""
    subdirs = [p for p in sorted(top.iterdir()) if p.is_dir() and visible(p)]
    names = {p: p.name.lower() for p in subdirs}
    split_dirs = [p for p in subdirs if names[p] in SPLIT_NAMES or names[p] in SPLIT_ALIASES]
    if not split_dirs:
        return {"all": _folder_split(top, "all", exclude)}
    others = [p.name for p in subdirs if p not in split_dirs]
    if others:
        raise ValueError(f"{top} has split folders ({', '.join(p.name for p in split_dirs)}) and also "
                         f"{others}; move those away or describe the splits in a card")
    raws = {}
    for p in split_dirs:
        s = split_name(p.name)
        if s in raws:
            raise ValueError(f"{top}: two folders for split {s!r}; keep one")
        raws[s] = _folder_split(p, s, exclude)
    return raws


def _list_dirs(folders: Sequence[Path]) -> dict[str, list[Path]]:
    """``{file name or stem: [image files]}`` over the image files in ``folders``."""
    out: dict[str, list[Path]] = {}
    for folder in folders:
        with os.scandir(folder) as it:
            for e in it:
                stem, ext = os.path.splitext(e.name)
                if ext.lower() in IMAGE_EXTENSIONS and e.is_file():
                    out.setdefault(stem, []).append(folder / e.name)
                    out.setdefault(e.name, []).append(folder / e.name)
    return out


def _find_image_dirs(csv_path: Path, ids: Sequence[str]) -> list[Path]:
    """The folders beside ``csv_path`` (itself, or up to two levels of subfolders) holding any of ``ids``."""
    base = csv_path.parent
    candidates = [base] + sorted(p for p in base.glob("*") if p.is_dir() and visible(p))
    candidates += sorted(p for c in candidates[1:] for p in c.glob("*") if p.is_dir() and visible(p))
    found = [c for c in candidates if any(k in _list_dirs([c]) for k in ids)]
    if not found:
        raise FileNotFoundError(f"{csv_path}: no folder beside it holds images named like {ids[0]!r} "
                                f"(+ {', '.join(IMAGE_EXTENSIONS)}); set images = \"<folder>\" in the card")
    return found


def _image_paths(folders: Sequence[Path], ids: Sequence[str], origins: Sequence[str]) -> list[Path]:
    """The image file of each id: ``<folder>/<id>`` or ``<folder>/<id>.<image extension>``."""
    listing = _list_dirs(folders)
    where = ", ".join(map(str, folders))
    paths = []
    for k, origin in zip(ids, origins):
        found = listing.get(k) or [f / k for f in folders if (f / k).is_file()]
        if len(found) > 1:
            raise ValueError(f"{origin}: image id {k!r} matches {[str(p) for p in found]}; keep one file per id")
        if not found:
            raise FileNotFoundError(f"{origin}: no image for id {k!r} in {where} (looked for {k}"
                                    f"{{{','.join(IMAGE_EXTENSIONS)}}}); add the file or delete the row")
        paths.append(found[0])
    return paths


def _label_source(df: pd.DataFrame, card: DatasetCard, where: Path, cols: list[str]
                  ) -> tuple[str | None, list[str] | None]:
    """``(label column, one-hot class columns)``: the card's, else guessed from ``cols`` (one of them set).

    Both None when the file has no label column at all (an unlabeled split).
    """
    raw = card.raw
    label_col, onehot = raw.get("label_column"), raw.get("onehot")
    if label_col or onehot is not None:
        return label_col, onehot
    have = [c for c in card.classes if c in cols]
    if have and set(card.classes) - set(have) <= {raw.get("negative_class")}:
        return None, have
    if not cols:
        return None, None
    if any(c.lower() in LABEL_COLUMNS for c in cols) or len(cols) == 1:
        return next((c for c in cols if c.lower() in LABEL_COLUMNS), cols[0]), None
    if df[cols].isin(["0", "1", "0.0", "1.0", ""]).all().all():
        return None, cols
    raise ValueError(f"{where}: cannot tell the label column among {cols}; set label_column = "
                     f"\"<column>\" or onehot = [<class columns>] in the card")


def _label_names(df: pd.DataFrame, card: DatasetCard, where: Path, skip: set[str]) -> tuple[list, list[str] | None]:
    """Label names per row (None where unlabeled) and, for one-hot files, the class order."""
    label_col, onehot = _label_source(df, card, where, [c for c in df.columns if c not in skip])
    if label_col:
        if label_col not in df.columns:
            raise ValueError(f"{where}: " + unknown_name("label column", label_col, df.columns, sort=False))
        return [v.strip() or None for v in df[label_col]], None
    if onehot is None:
        return [None] * len(df), None
    return _onehot_names(df, onehot, card.raw.get("negative_class"), where)


def _onehot_names(df: pd.DataFrame, onehot: list[str], neg: str | None, where: Path) -> tuple[list, list[str]]:
    """Label names from one-hot class columns (all 0: ``neg``; all empty: unlabeled) and the class order."""
    missing = [c for c in onehot if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: one-hot class column(s) {missing} not in the file (columns: {list(df.columns)})")
    text = df[onehot].apply(lambda col: col.str.strip())
    m = text.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    empty = (text == "").all(axis=1).to_numpy()
    bad = ~empty & (np.isnan(m) | ((m != 0) & (m != 1))).any(axis=1)
    hits = np.nan_to_num(m).sum(axis=1)
    problem = (bad, "one-hot class columns hold 0 or 1"), \
        (~bad & (hits > 1), "more than one class is marked; one-hot rows need exactly one 1"), \
        (~empty & (hits == 0) & (not neg), "all class columns are 0 and the card names no negative_class; "
         "set negative_class = \"<name>\" (e.g. \"nevus\" for ISIC 2017)")
    for rows, why in problem:
        if rows.any():
            i = int(np.flatnonzero(rows)[0])
            raise ValueError(f"{where} line {i + 2}: {why}; got {dict(text.iloc[i])}")
    pick = np.nan_to_num(m).argmax(axis=1)
    names = [None if e else (onehot[k] if h else neg) for e, h, k in zip(empty, hits, pick)]
    return names, list(onehot) + ([neg] if neg and neg not in onehot else [])


def _read_label_csv(path: Path, card: DatasetCard, split: str, folders: list[Path]) -> tuple[dict, list | None]:
    """One label CSV -> raw records (label names) and, for one-hot files, the class order."""
    if not path.is_file():
        raise FileNotFoundError(f"card {card.name!r}: label file {path} does not exist; put it there or set "
                                f"MEDZOO_DATA / --data-root to the folder that holds it")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise ValueError(f"split {split!r}: {path} has no rows; add images or remove the split from the card")
    idcol = id_column(list(df.columns), card.raw.get("id_column"), path)
    ids = [v.strip() for v in df[idcol]]
    origins = [f"{path} line {i + 2}" for i in range(len(df))]
    for i, k in enumerate(ids):
        if not k:
            raise ValueError(f"{origins[i]}: empty {idcol!r}; every row needs an image id")
    check_unique(ids, origins, str(path))
    group_col = card.raw.get("split", {}).get("group_column")
    skip = {idcol, group_col}
    names, hint = _label_names(df, card, path, skip)
    folders = folders or _find_image_dirs(path, ids)
    groups = [v.strip() for v in df[group_col]] if group_col in df.columns else None
    return {"ids": ids, "names": names, "paths": _image_paths(folders, ids, origins), "origins": origins,
            "groups": groups}, hint


@READERS.register("csv")
def read_csv(card: DatasetCard, root: Path) -> tuple[list[str], dict[str, SplitRecords]]:
    """A label CSV (id column + label column or one-hot class columns) per split, or one to be split.

    An entry with ``images`` but no ``labels`` is an unlabeled split of every image in that folder.
    """
    raws, hint = {}, None
    for split, entry in _entries(card, ["labels", "images"]).items():
        images = entry.get("images", [])
        folders = [data_path(root, f) for f in ([images] if isinstance(images, str) else images)]
        for f in folders:
            if not f.is_dir():
                raise FileNotFoundError(f"card {card.name!r}: image folder {f} does not exist")
        if "labels" in entry:
            raws[split], h = _read_label_csv(data_path(root, entry["labels"]), card, split, folders)
            hint = hint or h
        elif folders:
            raws[split] = _unlabeled_folders(folders, split, card.raw.get("exclude", []))
        else:
            raise ValueError(f"card {card.name!r}: split {split!r} needs labels = \"<csv>\" and/or images = \"<folder>\"")
    return _finish(card, raws, hint)


def _unlabeled_folders(folders: list[Path], split: str, exclude: Sequence[str]) -> dict:
    """Raw records of every image in ``folders`` (a split without a label file: loose images only)."""
    parts = [_folder_split(f, split, exclude) for f in folders]
    raw = {k: [x for p in parts for x in p[k]] for k in ("ids", "names", "paths", "origins")}
    check_unique(raw["ids"], raw["origins"], f"split {split!r}")
    if any(n is not None for n in raw["names"]):
        raise ValueError(f"{folders[0]} has class folders; use format = \"folder\" for it")
    return raw


_VERIFIED: dict[tuple, bool] = {}


def _checksum_ok(path: Path, card: DatasetCard) -> bool:
    """True when ``path`` matches the card's md5/sha256 (or the card gives none)."""
    algo = "sha256" if "sha256" in card.raw else "md5" if "md5" in card.raw else None
    if algo is None:
        return True
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = file_digest(path, algo) == str(card.raw[algo]).lower()
    return _VERIFIED[key]


def ensure_file(card: DatasetCard, root: Path) -> Path:
    """The card's ``file`` under ``root``: downloaded from ``url`` when absent, checksum checked."""
    path = data_path(root, card.raw["file"])
    if path.is_file():
        if not _checksum_ok(path, card):
            warnings.warn(f"{path}: checksum differs from the official one in the card {card.name!r}; "
                          f"using the file as it is (re-saved copies differ)", stacklevel=4)
        return path
    url = card.raw.get("url")
    why = "the card gives no download url"
    if url:
        try:
            with urllib.request.urlopen(url, timeout=20) as r, atomic_path(path) as tmp:
                tmp.write_bytes(r.read())
                if not _checksum_ok(tmp, card):
                    raise ValueError(f"downloaded {url} but its checksum does not match the card {card.name!r}; "
                                     f"try again or download it by hand to {path}")
            return path
        except OSError as e:
            why = f"downloading {url} failed ({e})"
    raise FileNotFoundError(f"dataset {card.name!r} needs {path} and it is absent; {why}. Download "
                            f"{url or 'the file'} and put it at {path}, or point MEDZOO_DATA / --data-root at "
                            f"the folder that holds {card.raw['file']}")


def _npy_shape(npz: Path, key: str) -> tuple[int, ...]:
    """Shape of one array in an ``.npz`` without loading it."""
    with zipfile.ZipFile(npz) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(reader(f)[0])


@READERS.register("npz")
def read_npz(card: DatasetCard, root: Path) -> tuple[list[str], dict[str, SplitRecords]]:
    """MedMNIST-style ``.npz``: ``<split>_images`` / ``<split>_labels`` (labels ``(N,)`` or ``(N, 1)``;
    images ``(N, H, W)`` or ``(N, H, W, 3)``), or ``images`` / ``labels`` to be split."""
    if "file" not in card.raw:
        raise ValueError(f"card {card.name!r}: format npz needs file = \"<path>.npz\"")
    path = ensure_file(card, root)
    labels = _npz_labels(path)
    top = max(int(lab.max()) for lab in labels.values())
    classes = card.classes or [str(k) for k in range(top + 1)]
    records = {}
    for s, lab in labels.items():
        bad = (lab < -1) | (lab >= len(classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: {s}_labels[{i}] = {lab[i]}, allowed 0..{len(classes) - 1} for classes "
                             f"{classes}; fix the file or the card's classes")
        prefix = "image" if s == "all" else s
        ids = [f"{prefix}_{i:05d}" for i in range(len(lab))]
        key = "images" if s == "all" else f"{s}_images"
        records[s] = SplitRecords(ids, lab, array=(path, key), index=np.arange(len(lab)),
                                  origins=[f"{path} {key}[{i}]" for i in range(len(lab))])
    return classes, records


def _npz_labels(path: Path) -> dict[str, np.ndarray]:
    """``{split or "all": int64 labels [N]}`` of an ``.npz`` (``-1`` for a split without labels), shapes checked."""
    with np.load(path) as z:
        keys = set(z.files)
        prefixes = [s for s in SPLIT_NAMES if f"{s}_images" in keys] or (["all"] if "images" in keys else [])
        if not prefixes:
            raise ValueError(f"{path}: no images arrays; expected keys train_images, val_images, test_images "
                             f"(with *_labels) or images/labels, found {sorted(keys)}")
        labels = {}
        for s in prefixes:
            key = "images" if s == "all" else f"{s}_images"
            shape = _npy_shape(path, key)
            lab_key = key.replace("images", "labels")
            lab = z[lab_key] if lab_key in keys else np.full(shape[0], -1)
            if lab.ndim == 2 and lab.shape[1] == 1:
                lab = lab[:, 0]
            if lab.ndim != 1 or len(lab) != shape[0] or len(shape) not in (3, 4):
                raise ValueError(f"{path}: {key} has shape {shape} and {lab_key} {lab.shape}; expected images "
                                 f"(N, H, W) or (N, H, W, 3) and single labels (N,) or (N, 1)")
            if shape[0] == 0:
                raise ValueError(f"{path}: split {s!r} is empty ({key} has shape {shape})")
            labels[s] = lab.astype(np.int64)
    return labels
