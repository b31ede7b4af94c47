"""``medzoo check``: what can go wrong with a config's data and plan, found before training.

:func:`check` opens the dataset, decodes every image once at each member size (through
:func:`~medzoo.zoo.datasets.load_arrays`, so the on-disk cache is filled and training decodes
nothing), counts the images per split and class, looks for identical images, and prints the
plan with an estimated training time. What would spoil a run is an error: an unreadable image,
a class with no image in train or val (the validation ROC-AUC is NaN without it), the same image
in two splits (a leak; the card's ``duplicates`` field may allow it). :func:`check` prints the
whole report and then raises ValueError listing every error; ``medzoo data inspect`` runs the
dataset part (:func:`check_dataset`) at one size.
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medzoo.core.fileio import file_digest
from medzoo.core.rundir import RunDir
from medzoo.zoo.config import MemberConfig, ZooConfig
from medzoo.zoo.datasets import Dataset, decode_all, open_dataset
from medzoo.zoo.device import resolve_device, use_channels_last
from medzoo.zoo.loop import amp_setup, make_optimizer, optimizer_step
from medzoo.zoo.models import create_model, forward_logits, resolve_head
from medzoo.zoo.predict import tta_flips
from medzoo.zoo.schedule import status

__all__ = ["CheckReport", "check", "check_dataset", "plan_members", "estimate_time", "format_counts",
           "image_digests", "identical_sets", "TINY_CLASS", "SHOWN_PAIRS", "TIMED_STEPS"]

TINY_CLASS = 5  # a class with fewer images than this in a split is a warning: its scores are noise
SHOWN_PAIRS = 3  # identical pairs named in a duplicates message
TIMED_STEPS = 2  # timed training steps per member (after one warm-up step)
SHOWN_UNREADABLE = 10  # unreadable files named one by one; the rest are counted


@dataclass
class CheckReport:
    """What a check found.

    Attributes:
        dataset: the dataset's name.
        errors: what would spoil training, one line each.
        warnings: what is worth knowing, one line each.
        notes: the report's other lines (what was decoded, duplicates the card allows).
        counts: ``{split: {"images": N, "unlabeled": U, "classes": {class: n}}}``.
        duplicates: sets of identical images, each ``[(split, image id), ...]`` in split order.
        plan: one dict per member: ``id, model, size, epochs, batch_size, batches`` (per epoch),
            ``state`` (pending, done, ... in the run folder) and ``epochs_left``.
        estimate: ``{"device": str, "seconds": {member id: s}, "total": s}``; None when not estimated.
    """

    dataset: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, dict] = field(default_factory=dict)
    duplicates: list[list[tuple[str, str]]] = field(default_factory=list)
    plan: list[dict] = field(default_factory=list)
    estimate: dict | None = None

    def raise_for_errors(self) -> None:
        """Raise ValueError with every error, one per line, when there is any."""
        if self.errors:
            raise ValueError(f"dataset {self.dataset!r}: {len(self.errors)} error(s):\n" + "\n".join(self.errors))


def check(cfg: ZooConfig, *, results_dir: str | Path = "results", log: Callable[[str], None] = print,
          estimate: bool = True) -> CheckReport:
    """Check a zoo config's dataset and plan; print the report through ``log``.

    Decodes every image at each distinct member size (filling the image cache), finds unreadable
    images, missing or tiny classes and identical images (pixel-identical at the largest member
    size; byte-identical files are named as such), lists the members (and their state in
    ``results_dir/<run>``) and, when ``estimate``, times :data:`TIMED_STEPS` training steps per
    member on ``cfg.device`` to estimate the training time.

    Raises:
        ValueError: listing every error, after the whole report is printed.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(cfg.dataset, data_root=cfg.data_root)
    sizes = sorted({m.size for m in cfg.members}, reverse=True)
    report = check_dataset(ds, sizes)
    report.warnings[:0] = [str(w.message) for w in caught]
    run_dir = RunDir.of(results_dir, cfg.run).path
    report.plan = plan_members(cfg, ds, run_dir)
    if estimate:
        report.estimate = estimate_time(cfg, ds, report.plan)
    head = (f"dataset {ds.name!r}: {len(ds.classes)} classes, format {ds.card.format}, data root {ds.root}; "
            + (ds.describe_made() or "splits given by the data"))
    lines = [head, format_counts(ds), *report.notes, *_plan_lines(cfg, report, run_dir)]
    lines += [f"warning: {w}" for w in report.warnings] + [f"error: {e}" for e in report.errors]
    lines.append(f"check {'failed' if report.errors else 'passed'}: {len(report.errors)} error(s), "
                 f"{len(report.warnings)} warning(s)")
    for line in lines:
        log(line)
    report.raise_for_errors()
    return report


def check_dataset(ds: Dataset, sizes: Sequence[int]) -> CheckReport:
    """Counts, class coverage, unreadable and identical images of an opened dataset.

    Every image is decoded at each of ``sizes`` (filling the cache); identical images are
    looked for at the largest. Nothing is printed and nothing raised: see the report's fields.
    """
    report = CheckReport(ds.name)
    _check_counts(ds, report)
    sizes = sorted(set(sizes), reverse=True)
    arrays, unreadable = decode_all(ds, sizes[0])
    digests = {s: image_digests(a.images) for s, a in arrays.items()}
    del arrays
    for s, bad in unreadable.items():
        for row in bad:
            digests[s][row] = None
    for size in sizes[1:]:
        decode_all(ds, size)
    n = sum(len(ds.records(s)) for s in ds.splits)
    messages = [m for s in ds.splits for m in unreadable.get(s, {}).values()]
    report.errors += messages[:SHOWN_UNREADABLE]
    if len(messages) > SHOWN_UNREADABLE:
        report.errors.append(f"... and {len(messages) - SHOWN_UNREADABLE} more unreadable image(s), "
                             f"{len(messages)} in all")
    verb = "decoded" if ds.card.format != "npz" else "read"
    cached = ("" if ds.card.format == "npz" else " (the splits holding them are not cached)" if messages
              else " (now cached)")
    report.notes.append(f"{verb} {n} images at {', '.join(map(str, sizes))} px: "
                        + (f"{len(messages)} unreadable" if messages else "all readable") + cached)
    sets = identical_sets(ds, digests)
    report.duplicates = [[(s, ds.records(s).ids[r]) for s, r in rows] for rows in sets]
    _report_duplicates(ds, report, sets, sizes[0])
    return report


def _check_counts(ds: Dataset, report: CheckReport) -> None:
    """Counts per split and class; missing splits, labels and classes; tiny classes."""
    for split in ds.splits:
        counts = ds.class_counts(split)
        report.counts[split] = {"images": int(counts.sum()), "unlabeled": int(counts[-1]),
                                "classes": dict(zip(ds.classes, counts[:-1].tolist()))}
    lacking = [s for s in ("train", "val") if s not in ds.splits]
    if lacking:
        report.errors.append(f"dataset {ds.name!r} has splits {list(ds.splits)}; training needs train and val "
                             f"(missing: {', '.join(lacking)}); give them in the data or make them with the "
                             f"card's [split] table")
    for split, c in report.counts.items():
        need = split in ("train", "val")
        if c["unlabeled"] and need:
            report.errors.append(f"split {split!r}: {c['unlabeled']} of {c['images']} images have no label; "
                                 f"training needs every {split} image labeled")
        if c["unlabeled"] == c["images"]:
            continue
        missing = [k for k, n in c["classes"].items() if n == 0]
        if missing:
            why = {"train": "the model never sees them", "val": "the validation ROC-AUC is NaN without them, so "
                   "no epoch is ever best", "test": "their test ROC-AUC cannot be computed"}[split]
            text = (f"split {split!r} has no image of class(es) {missing} (counts {c['classes']}): {why}; "
                    f"move some images there or drop the class from the card")
            (report.errors if need else report.warnings).append(text)
        tiny = {k: n for k, n in c["classes"].items() if 0 < n < TINY_CLASS}
        if tiny:
            report.warnings.append(f"split {split!r}: class(es) with fewer than {TINY_CLASS} images {tiny}; "
                                   f"scores on so few images are noisy")


def image_digests(images: np.ndarray) -> list[bytes | None]:
    """uint8 ``[N, S, S, 3]`` -> ``N`` digests (BLAKE2b, 16 bytes) of each image's pixel bytes."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return [hashlib.blake2b(row, digest_size=16).digest() for row in flat]


def identical_sets(ds: Dataset, digests: dict[str, list[bytes | None]]) -> list[list[tuple[str, int]]]:
    """Sets (two or more) of images with equal digests (None: never equal), as ``[(split, row), ...]``.

    ``digests``: ``{split: [N] digests}`` in the rows of ``ds.records(split)``. Sets and their
    members come in split order, then row order.
    """
    found: dict[bytes, list[tuple[str, int]]] = {}
    for split in ds.splits:
        for row, d in enumerate(digests[split]):
            if d is not None:
                found.setdefault(d, []).append((split, row))
    return [rows for rows in found.values() if len(rows) > 1]


def _report_duplicates(ds: Dataset, report: CheckReport, sets: list[list[tuple[str, int]]], size: int) -> None:
    """Identical-image sets as errors, warnings or notes, as the card's ``duplicates`` says.

    ``"error"`` (the default): the same image in two splits is an error, twice in one split a
    warning; ``"warn"``: both are warnings; ``"allow"``: both are notes.
    """
    policy = ds.card.raw.get("duplicates", "error")
    allowed = "allowed by the card (duplicates = \"allow\"): "
    if not sets:
        report.notes.append(f"no identical images (compared at {size} px)")
        return
    across = [rows for rows in sets if len({s for s, _ in rows}) > 1]
    within = [rows for rows in sets if len({s for s, _ in rows}) == 1]
    files: dict[Path, bytes] = {}
    if across:
        pairs = Counter("+".join(sorted({s for s, _ in rows}, key=ds.splits.index)) for rows in across)
        text = (f"{len(across)} set(s) of identical images span splits "
                f"({', '.join(f'{k} {n}' for k, n in pairs.items())}){_conflicts(ds, across)}: "
                + _examples(ds, across, size, files, across=True)
                + "; a leak: scores on images that were trained on, or that picked the best epoch, are "
                  "optimistic" + (": remove the copies, or set duplicates = \"warn\" (or \"allow\") in the card"
                                  if policy == "error" else f" (kept: the card sets duplicates = \"{policy}\")"))
        if policy == "allow":
            report.notes.append(allowed + text)
        else:
            (report.errors if policy == "error" else report.warnings).append(text)
    if within:
        per = Counter(rows[0][0] for rows in within)
        text = (f"{len(within)} set(s) of identical images within a split "
                f"({', '.join(f'{k} {n}' for k, n in per.items())}){_conflicts(ds, within)}: "
                + _examples(ds, within, size, files)
                + "; each copy counts again in training or scoring")
        if policy == "allow":
            report.notes.append(allowed + text)
        else:
            report.warnings.append(text)


def _conflicts(ds: Dataset, sets: list[list[tuple[str, int]]]) -> str:
    """``", 1 of them with different labels"`` when identical images carry different labels."""
    n = sum(len({int(ds.records(s).labels[r]) for s, r in rows} - {-1}) > 1 for rows in sets)
    return f", {n} of them with different labels" if n else ""


def _examples(ds: Dataset, sets: list[list[tuple[str, int]]], size: int, files: dict, *,
              across: bool = False) -> str:
    """The first :data:`SHOWN_PAIRS` pairs, ``train 'a' (path) = val 'b' (path), byte-identical files``."""
    shown = []
    for rows in sets[:SHOWN_PAIRS]:
        a = rows[0]
        b = next(r for r in rows[1:] if (r[0] != a[0]) == across)
        shown.append(" = ".join(_where(ds, *r) for r in (a, b)) + ", " + _kind(ds, a, b, size, files))
    more = f"; and {len(sets) - SHOWN_PAIRS} more" if len(sets) > SHOWN_PAIRS else ""
    return "; ".join(shown) + more


def _where(ds: Dataset, split: str, row: int) -> str:
    rec = ds.records(split)
    place = rec.paths[row] if rec.paths is not None else rec.origins[row]
    return f"{split} {rec.ids[row]!r} ({place})"


def _kind(ds: Dataset, a: tuple[str, int], b: tuple[str, int], size: int, files: dict) -> str:
    """How two identical images are identical: the same file, byte-identical files, or pixels."""
    pa, pb = (ds.records(s).paths for s, _ in (a, b))
    if pa is None or pb is None:
        return f"pixel-identical at {size} px"
    fa, fb = pa[a[1]], pb[b[1]]
    if fa.resolve() == fb.resolve():
        return "the same file"
    for f in (fa, fb):
        if f not in files:
            files[f] = file_digest(f)
    return "byte-identical files" if files[fa] == files[fb] else f"pixel-identical at {size} px"


def format_counts(ds: Dataset) -> str:
    """A text table: one row per split, columns images, each class, unlabeled."""
    head = ["split", "images", *ds.classes, "unlabeled"]
    rows = [[s, str(len(ds.records(s))), *map(str, ds.class_counts(s))] for s in ds.splits]
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width)))
                     for r in [head, *rows])


def plan_members(cfg: ZooConfig, ds: Dataset, run_dir: Path) -> list[dict]:
    """One dict per member over its units (seeds, folds): what each trains (batches per epoch as training counts
    them, images validated per epoch), how many units there are, their state, and the epochs and final
    predictions (one per unit and kept checkpoint) still to run."""
    states = {r["member"]: r for r in status(run_dir)} if run_dir.is_dir() else {}
    n_train, n_val = (len(ds.records(s)) if s in ds.splits else 0 for s in ("train", "val"))
    k = cfg.cv.folds
    n_fit, n_held = ((n_train + n_val) * (k - 1) // k, (n_train + n_val) // k) if k else (n_train, n_val)
    rows = []
    for m in cfg.members:
        t = m.train
        full = n_fit // t.batch_size if n_fit >= t.batch_size else math.ceil(n_fit / t.batch_size)
        units = [states.get(u.name, {}) for u in cfg.units([m.id])]
        done = sum(r.get("state") == "done" for r in units)
        started = sum(r.get("state", "pending") != "pending" for r in units)
        state = ("done" if done == len(units) else "pending" if not started
                 else units[0].get("state", "pending") if len(units) == 1 else f"{done}/{len(units)} done")
        left = sum(max(0, t.epochs - int(r.get("epoch") or 0)) for r in units if r.get("state") != "done")
        rows.append({"id": m.id, "model": m.model, "size": m.size, "epochs": t.epochs, "batch_size": t.batch_size,
                     "batches": min(full, t.max_train_batches) if t.max_train_batches else full,
                     "units": len(units), "val_images": n_held, "state": state, "epochs_left": left,
                     "finals": (len(units) - done) * len(m.entries)})
    return rows


def estimate_time(cfg: ZooConfig, ds: Dataset, plan: list[dict]) -> dict:
    """Seconds each unfinished member should take on ``cfg.device``, from timed steps on random data.

    Per member: the mean of :data:`TIMED_STEPS` training steps (forward, backward, optimizer step,
    after one warm-up step) on a random batch of its batch size at its size, times its batches
    per epoch and epochs left over all its units, plus the validation predictions of every epoch
    and the final val/test predictions of every unit and kept checkpoint (forward passes, timed
    within the same steps).
    """
    device = resolve_device(cfg.device)
    n_test = len(ds.records("test")) if "test" in ds.splits else 0
    seconds = {}
    for row in plan:
        if row["epochs_left"] == 0:
            continue
        member = cfg.member(row["id"])
        t = member.train
        step, forward = _time_steps(member, len(ds.classes), device, cfg.seed)
        n_val = row["val_images"]
        per_epoch = row["batches"] * step + math.ceil(n_val / t.batch_size) * forward
        final = len(tta_flips(t.tta, t.augment.vflip)) * (math.ceil(n_val / t.batch_size)
                                                           + math.ceil(n_test / t.batch_size)) * forward
        seconds[member.id] = row["epochs_left"] * per_epoch + row["finals"] * final
    return {"device": str(device), "seconds": seconds, "total": sum(seconds.values())}


def _time_steps(member: MemberConfig, num_classes: int, device: torch.device, seed: int) -> tuple[float, float]:
    """``(seconds per training step, seconds per forward pass)`` of a randomly initialised member."""
    t = member.train
    torch.manual_seed(seed)
    fmt = torch.channels_last if use_channels_last(t, device) else torch.preserve_format
    model = create_model(member.model, num_classes=num_classes,
                         head=resolve_head(member.model, t.pretrained)).to(device, memory_format=fmt)
    model.train()
    optimizer = make_optimizer(model, t)
    amp_dtype, scaler = amp_setup(device, t)
    x = torch.randn(t.batch_size, 3, member.size, member.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (t.batch_size,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step_s = forward_s = 0.0
    for k in range(TIMED_STEPS + 1):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, aux = forward_logits(model, x)
            loss = F.cross_entropy(logits, y) + (0 if aux is None else F.cross_entropy(aux, y))
        sync()
        middle = time.perf_counter()
        (scaler.scale(loss) if scaler else loss).backward()
        optimizer_step(optimizer, scaler)
        sync()
        if k:
            step_s += time.perf_counter() - start
            forward_s += middle - start
    del model, optimizer, x, y
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return step_s / TIMED_STEPS, forward_s / TIMED_STEPS


def _plan_lines(cfg: ZooConfig, report: CheckReport, run_dir: Path) -> list[str]:
    est = report.estimate
    head = ["member", "model", "size", "epochs", "batch", "batches/epoch", "state", "runs"] + (["minutes"] if est else [])
    rows = [[r["id"], r["model"], str(r["size"]), str(r["epochs"]), str(r["batch_size"]), str(r["batches"]),
             r["state"], str(r["units"])] + ([_minutes(est["seconds"].get(r["id"]))] if est else [])
            for r in report.plan]
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    repeats = f", {len(cfg.repeats)} repeats" if cfg.repeats else ""
    folds = f", {cfg.cv.folds}-fold cross-validation over train+val" if cfg.cv.folds else ""
    lines = [f"plan: {len(report.plan)} member(s) of run {cfg.run!r} into {run_dir}{repeats}{folds} "
             f"(runs: training runs per member)"]
    lines += [("  " + "  ".join(c.ljust(w) if i in (0, 1, 6) else c.rjust(w)
                                for i, (c, w) in enumerate(zip(r, width)))).rstrip() for r in [head, *rows]]
    if est:
        lines.append(f"estimated training time on {est['device']}: about {_minutes(est['total'])} min in all "
                     f"(an estimate: {TIMED_STEPS} timed steps per member on random data, extrapolated to its "
                     f"batches x epochs left plus val and test predictions; data loading not counted, early "
                     f"stopping may end sooner)")
    return lines


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f}" if seconds < 600 else f"{seconds / 60:.0f}"
