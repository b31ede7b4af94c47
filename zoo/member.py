"""Training one unit of a zoo (a member at one seed, and one fold under ``[cv]``): load its data, build it,
resume it, run its epochs, predict its tables.

The unit's files are those of :class:`~medzoo.core.rundir.MemberDir`: the resume checkpoint
(everything needed to continue), the best checkpoint (weights with the best validation ROC-AUC;
under ``[cv]`` and for snapshot members the last epoch's, since their validation images are
scored and must not pick the weights), one checkpoint per snapshot, the history and curves (and with
``tensorboard = true`` its TensorBoard view, :mod:`medzoo.zoo.tblog`) and, when finished, the done
record. Its probability tables are the run folder's member tables (``RunDir.table("member", entry,
split)``, val and test), or for a fold unit its own
(``MemberDir.table``), which :mod:`medzoo.zoo.crossval` assembles. Every write is atomic, so a
run killed at any moment resumes from its last completed epoch. Under ``torchrun`` one unit
trains with DistributedDataParallel; only rank 0 writes files.
"""
from __future__ import annotations

import functools
import math
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from tqdm import tqdm

from medzoo.core.fileio import file_digest, write_json
from medzoo.core.rundir import MemberDir, RunDir
from medzoo.ensemble.auc import near_chance
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo import distributed
from medzoo.zoo.checkpoint import (load_checkpoint, model_from_checkpoint, rng_state, save_checkpoint,
                                   set_rng_state)
from medzoo.zoo import crossval
from medzoo.zoo.augment import mix_batch
from medzoo.zoo.config import MemberConfig, Unit, ZooConfig
from medzoo.zoo.curves import plot_curves, write_history
from medzoo.zoo.datasets import Dataset, SplitArrays, load_arrays, open_dataset
from medzoo.zoo.device import resolve_device, seed_everything, use_channels_last
from medzoo.zoo.loader import BatchLoader
from medzoo.zoo.loop import (accumulation_steps, amp_setup, class_weights, make_loss, make_optimizer, make_scheduler,
                             train_one_epoch, validation_auc)
from medzoo.zoo.models import ModelInfo, create_model, model_info, resolve_head, set_backbone_trainable
from medzoo.zoo.predict import predict_probs, tta_flips
from medzoo.zoo.tblog import Board

MIX_STREAM = 2  # the loader's random stream (BatchLoader.epoch_rng) that batch mixing draws from


def logger_for(log: Callable[[str], None] | None, is_main: bool) -> Callable[[str], None]:
    """Where this process's messages go: ``log`` (default ``tqdm.write``) on rank 0, nowhere on the others."""
    if not is_main:
        return lambda msg: None
    return log if log is not None else tqdm.write


def check_trainable(ds: Dataset) -> None:
    """Raise unless ``ds`` has train and val splits, fully labelled, each holding every class.

    A class absent from val makes the validation ROC-AUC NaN in every epoch (so early stopping
    and the best checkpoint would never move); absent from train, the model never sees it.
    """
    if "train" not in ds.splits or "val" not in ds.splits:
        raise ValueError(f"dataset {ds.name!r} has splits {list(ds.splits)}; training needs 'train' and 'val'")
    for split in ("train", "val"):
        counts = ds.class_counts(split)
        if counts[-1]:
            raise ValueError(f"dataset {ds.name!r}: every {split} image needs a label; {counts[-1]} have none")
        empty = [c for c, n in zip(ds.classes, counts[:-1]) if n == 0]
        if empty:
            raise ValueError(f"dataset {ds.name!r}: class(es) {empty} have no image in {split} "
                             f"(counts {dict(zip(ds.classes, counts[:-1].tolist()))}); training needs every "
                             f"class in train and val: move some images there or drop the class")


def _load_data(cfg: ZooConfig, size: int, run: RunDir, fold: int | None) -> tuple[str, list[str],
                                                                                 dict[str, SplitArrays]]:
    """(dataset name, classes, {split: SplitArrays}) at ``size`` px; rank 0 fills the cache first.

    For fold ``fold`` the splits are :func:`medzoo.zoo.crossval.fold_data`'s, from the run's folds.
    """
    ds = open_dataset(cfg.dataset, data_root=cfg.data_root)
    check_trainable(ds)
    splits = [s for s in ("train", "val", "test") if s in ds.splits]
    dist = distributed.info()
    arrays = {}
    for turn in (True, False):
        if dist.is_main == turn:
            arrays = {s: load_arrays(ds, s, size) for s in splits}
        if turn:
            distributed.barrier()
    if fold is not None:
        arrays = crossval.fold_data(arrays, crossval.read_folds(run.folds_csv(ds.name)), fold)
    return ds.name, list(ds.classes), arrays


class _Run:
    """The mutable state of one member's training that a checkpoint carries (:data:`KEYS`)."""

    KEYS = ("epoch", "best_auc", "best_epoch", "bad_epochs", "stopped", "history")

    def __init__(self):
        self.epoch, self.best_auc, self.best_epoch, self.bad_epochs = 0, -math.inf, 0, 0
        self.stopped = False
        self.history: list[dict] = []

    def state(self) -> dict:
        return {k: getattr(self, k) for k in self.KEYS}

    def load(self, ckpt: dict) -> None:
        for k in self.KEYS:
            setattr(self, k, ckpt[k])

    def record(self, auc: float, patience: int, last: bool = False) -> bool:
        """Count one more epoch with validation AUC ``auc``; returns whether it is the best so far.

        The first epoch is always best (its AUC may be NaN); ``patience`` epochs in a row without
        improvement stop the run (0: never). With ``last`` every epoch is the best (the validation
        AUC is only recorded).
        """
        improved = last or self.best_epoch == 0 or auc > self.best_auc
        self.epoch += 1
        if improved:
            self.best_auc, self.best_epoch, self.bad_epochs = auc, self.epoch, 0
        else:
            self.bad_epochs += 1
        self.stopped = patience > 0 and self.bad_epochs >= patience
        return improved


@dataclass
class _Trainer:
    """What one member's training builds once (model, loader, optimizer, ...) and its run state.

    ``static`` holds the checkpoint keys that never change during the run (architecture,
    classes, size, normalisation, member, dataset, config, effective batch).
    """

    cfg: ZooConfig
    unit: Unit
    member: MemberConfig
    files: MemberDir
    dist: distributed.DistInfo
    device: torch.device
    say: Callable[[str], None]
    info: ModelInfo
    data: dict[str, SplitArrays]
    model: nn.Module
    channels_last: bool
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    loader: BatchLoader
    accumulate: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    static: dict
    averaged: AveragedModel | None = None
    board: Board | None = None
    run: _Run = field(default_factory=_Run)

    @property
    def effective(self) -> int:
        """Images per optimizer step over all processes."""
        return self.static["effective_batch"]

    @property
    def select_last(self) -> bool:
        """Whether the last epoch's weights are kept (no early stop): fold units, snapshot and SWA members."""
        t = self.member.train
        return self.unit.fold is not None or t.snapshots > 1 or t.average == "swa"

    @property
    def eval_model(self) -> nn.Module:
        """The weights validated and kept: the EMA of the weights for ``average = "ema"``, else the model."""
        return self.averaged.module if self.averaged is not None and self.member.train.average == "ema" else self.model

    @property
    def swa_from(self) -> int:
        """The first epoch (1-based) whose weights SWA averages."""
        t = self.member.train
        return min(t.epochs, math.floor(t.swa_start * t.epochs) + 1)

    @property
    def cycle(self) -> int:
        """Epochs per snapshot (the whole run without snapshots)."""
        return self.member.train.epochs // self.member.train.snapshots


def train_member(cfg: ZooConfig, unit: Unit | MemberConfig | str, run_dir: str | Path, *, progress: bool = True,
                 on_batch: Callable | None = None, on_epoch: Callable | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Train one unit into ``run_dir`` (resuming from its resume checkpoint) and write its tables.

    A member (or its id) stands for its only unit; one with several (seeds, folds) raises.
    ``on_batch(i, idx)`` runs after every training batch, ``on_epoch(epoch)`` after every
    epoch (claim heartbeats). Returns ``{"member", "unit", "model", "size", "seed", "fold",
    "entries", "val_auc", "test_auc", "best_epoch", "epochs", "minutes", "effective_batch",
    "status"}`` (also the done record; ``val_auc``/``test_auc`` are the last entry's).
    """
    if not isinstance(unit, Unit):
        member_id = unit if isinstance(unit, str) else unit.id
        units = cfg.units([member_id])
        if len(units) != 1:
            raise ValueError(f"member {member_id!r} trains as {len(units)} units ({', '.join(u.name for u in units)}); "
                             f"train them with train_zoo or pass one of cfg.units()")
        unit = units[0]
    run = RunDir(run_dir)
    tr = _prepare(cfg, unit, run, log)
    _resume(tr)
    _say_plan(tr)
    if unit.member.train.tensorboard and tr.dist.is_main:
        tr.board = Board(tr.files.folder, tr.run.history)
    try:
        _train_epochs(tr, progress, on_batch, on_epoch)
    finally:
        if tr.board is not None:
            tr.board.close()
    distributed.barrier()
    return _finish(tr, run)


def _prepare(cfg: ZooConfig, unit: Unit, run: RunDir, log) -> _Trainer:
    """Load the data and build the model, loader, optimizer, schedule and loss (seeded by ``unit.seed``)."""
    member = unit.member
    t = member.train
    dist = distributed.info()
    device = resolve_device(cfg.device)
    info = model_info(member.model)
    dataset, classes, data = _load_data(cfg, member.size, run, unit.fold)
    model, channels_last = _build_model(member, unit.seed, len(classes), device)
    amp_dtype, scaler = amp_setup(device, t)
    train = data["train"]
    loader = _train_loader(member, unit.seed, train, info, device, channels_last)
    n_batches = min(len(loader), t.max_train_batches) if t.max_train_batches else len(loader)
    accumulate = accumulation_steps(t, dist.world_size)
    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t, math.ceil(n_batches / accumulate))
    loss_fn = make_loss(t, class_weights(train.labels, len(classes)), device)
    averaged = None
    if t.average == "ema":
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
    elif t.average == "swa":
        averaged = AveragedModel(model)
    static = {"arch": member.model, "head": resolve_head(member.model, t.pretrained), "classes": classes,
              "size": member.size, "mean": list(info.mean), "std": list(info.std), "member": member.id,
              "unit": unit.name, "seed": unit.seed, "fold": unit.fold, "dataset": dataset, "vflip": t.augment.vflip, "config": asdict(member),
              "effective_batch": t.batch_size * dist.world_size * accumulate}
    return _Trainer(cfg=cfg, unit=unit, member=member, files=run.member(unit.name), dist=dist, device=device,
                    say=logger_for(log, dist.is_main),
                    info=info, data=data, model=model, channels_last=channels_last, amp_dtype=amp_dtype,
                    scaler=scaler, loader=loader, accumulate=accumulate, optimizer=optimizer, scheduler=scheduler,
                    loss_fn=loss_fn, static=static, averaged=averaged)


def _build_model(member: MemberConfig, seed: int, num_classes: int, device: torch.device
                 ) -> tuple[nn.Module, bool]:
    """The member's model on ``device`` (global RNGs seeded with ``seed`` first) and whether it is channels_last."""
    t = member.train
    seed_everything(seed)
    model = create_model(member.model, num_classes=num_classes, pretrained=t.pretrained)
    channels_last = use_channels_last(t, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if t.sync_bn and distributed.info().enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model, channels_last


def _train_loader(member: MemberConfig, seed: int, train: SplitArrays, info: ModelInfo, device: torch.device,
                  channels_last: bool) -> BatchLoader:
    """The shuffled, augmented loader of this rank's shard of the train split."""
    t, dist = member.train, distributed.info()
    drop_last = len(train.labels) >= t.batch_size * dist.world_size  # BatchNorm fails on a last batch of one
    return BatchLoader(train.images, train.labels, t.batch_size, shuffle=True, seed=seed,
                       augment=t.augment.as_loader_dict(), drop_last=drop_last, device=device, mean=info.mean,
                       std=info.std, rank=dist.rank, world_size=dist.world_size, channels_last=channels_last)


def _resume(tr: _Trainer) -> None:
    """Continue from the resume checkpoint when there is one: weights, optimizer, schedule, scaler, RNGs, run state.

    Rank 0 also repairs the best checkpoint (:func:`_repair_best`) and rewrites the history.
    """
    if not tr.files.last.exists():
        return
    ckpt = load_checkpoint(tr.files.last, map_location=tr.device, weights_only=False)  # this run's own file
    if ckpt.get("head", "torchvision") != tr.static["head"]:
        raise ValueError(f"{tr.files.last} was trained with the {ckpt.get('head', 'torchvision')!r} head; this "
                         f"medzoo builds {tr.member.model} with the {tr.static['head']!r} head: finish it with the "
                         f"medzoo that started it, or remove {tr.files.folder} to train it again")
    tr.model.load_state_dict(ckpt["model"])
    if tr.averaged is not None:
        tr.averaged.load_state_dict(ckpt["averaged"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    if tr.scheduler is not None:
        tr.scheduler.load_state_dict(ckpt["scheduler"])
    if tr.scaler is not None and ckpt.get("scaler"):
        tr.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    tr.run.load(ckpt)
    if tr.dist.is_main:
        _repair_best(ckpt, tr.files.best, tr.static)
        write_history(tr.run.history, tr.files.history)
    run = tr.run
    tr.say(f"{tr.unit.name}: resuming after epoch {run.epoch} (best val AUC {run.best_auc:.4f} at epoch "
           f"{run.best_epoch})")


def _repair_best(ckpt: dict, best: Path, static: dict) -> None:
    """After a crash between writing the resume and the best checkpoint, rebuild ``best`` from ``ckpt`` (its kept
    weights: the EMA's when the member averages)."""
    if ckpt["best_epoch"] != ckpt["epoch"]:
        return
    if best.exists() and load_checkpoint(best).get("epoch") == ckpt["epoch"]:
        return
    weights = ckpt.get("kept_model", ckpt["model"])
    save_checkpoint({**static, **{k: ckpt[k] for k in _Run.KEYS}, "model": weights}, best)


def _say_plan(tr: _Trainer) -> None:
    """One line: the model, its size and device, the split sizes, the effective batch and AMP."""
    m, t = tr.member, tr.member.train
    u = tr.unit
    held = f"fold {u.fold} of {tr.cfg.cv.folds} held out" if u.fold else "val"
    tr.say(f"{u.name}: {m.model} at {m.size}px on {tr.device}, seed {u.seed}, {len(tr.data['train'].labels)} train / "
           f"{len(tr.data['val'].labels)} {held} images, effective batch {tr.effective} = {t.batch_size} x "
           f"{tr.dist.world_size} process(es) x {tr.accumulate} accumulated"
           + (f", AMP {tr.amp_dtype}" if tr.amp_dtype else "")
           + (f", {t.snapshots} snapshots of {tr.cycle} epochs" if t.snapshots > 1 else "")
           + (", last epoch kept (no early stop)" if tr.select_last else ""))


def _train_epochs(tr: _Trainer, progress: bool, on_batch: Callable | None, on_epoch: Callable | None) -> None:
    """Epochs until ``epochs`` or an early stop; the backbone thaws at ``unfreeze_after`` (DDP re-wrapped then)."""
    t = tr.member.train
    ddp, trainable = None, None
    while tr.run.epoch < t.epochs and not tr.run.stopped:
        now_trainable = not t.freeze_backbone or (t.unfreeze_after > 0 and tr.run.epoch >= t.unfreeze_after)
        if now_trainable != trainable:
            set_backbone_trainable(tr.model, tr.member.model, now_trainable)
            trainable = now_trainable
            ddp = _wrap(tr.model, tr.device) if tr.dist.enabled else tr.model
        improved, stats = _epoch(tr, ddp, progress, on_batch)
        if tr.dist.is_main:
            _save_epoch(tr, improved)
        _say_epoch(tr, improved, stats)
        if on_epoch is not None:
            on_epoch(tr.run.epoch)


def _epoch(tr: _Trainer, model: nn.Module, progress: bool, on_batch: Callable | None) -> tuple[bool, dict]:
    """Train one epoch through ``model`` (``tr.model`` or its DDP wrapper), validate, step a plateau schedule.

    Appends the epoch's history row; returns ``(best so far, train_one_epoch's stats)``.
    """
    t, run, val = tr.member.train, tr.run, tr.data["val"]
    epoch = run.epoch
    tr.loader.set_epoch(epoch)
    lr = tr.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    ema = tr.averaged if t.average == "ema" else None
    mix = None
    if t.mixup or t.cutmix:
        rng = tr.loader.epoch_rng(MIX_STREAM)
        mix = functools.partial(mix_batch, mixup=t.mixup, cutmix=t.cutmix, rng=rng)
    with distributed.peer_errors(tr.cfg.dist_timeout):
        stats = train_one_epoch(model, tr.loader, tr.optimizer, tr.loss_fn, scheduler=tr.scheduler, scaler=tr.scaler,
                                amp_dtype=tr.amp_dtype, accumulate=tr.accumulate, max_batches=t.max_train_batches,
                                mix=mix, on_batch=on_batch, on_step=(lambda: ema.update_parameters(tr.model)) if ema else None,
                                progress=progress and tr.dist.is_main, desc=f"{tr.unit.name} {epoch + 1}/{t.epochs}")
        distributed.broadcast_buffers(tr.model)
        if t.average == "swa" and epoch + 1 >= tr.swa_from:
            tr.averaged.update_parameters(tr.model)
        probs = predict_probs(tr.eval_model, val.images, mean=tr.info.mean, std=tr.info.std, device=tr.device,
                              batch_size=t.batch_size, amp_dtype=tr.amp_dtype, channels_last=tr.channels_last)
        train_loss = _mean_over_ranks(stats["loss"], stats["images"], tr.device)
    auc = validation_auc(val.labels, probs)
    val_loss = float(-np.log(np.clip(probs[np.arange(len(val.labels)), val.labels], 1e-12, None)).mean())
    if isinstance(tr.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        tr.scheduler.step(auc if not math.isnan(auc) else -math.inf)
    improved = run.record(auc, 0 if tr.select_last else t.patience, last=tr.select_last)
    run.history.append({"epoch": run.epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc": auc,
                        "lr": lr, "seconds": time.perf_counter() - start, "effective_batch": tr.effective})
    return improved, stats


def _save_epoch(tr: _Trainer, improved: bool) -> None:
    """Write the snapshot at a cycle's end, the resume checkpoint, the best one when ``improved``, the history
    and the curves. The snapshot goes first: a crash before the resume checkpoint repeats the epoch."""
    m = tr.member
    state = {**tr.static, **tr.run.state(), "model": tr.eval_model.state_dict()}
    if m.train.snapshots > 1 and tr.run.epoch % tr.cycle == 0:
        save_checkpoint(state, tr.files.snapshot(tr.run.epoch // tr.cycle))
    resume = {"model": tr.model.state_dict()}
    if tr.averaged is not None:
        resume.update(averaged=tr.averaged.state_dict(), kept_model=state["model"])
    save_checkpoint({**state, **resume, "optimizer": tr.optimizer.state_dict(),
                     "scheduler": tr.scheduler.state_dict() if tr.scheduler is not None else None,
                     "scaler": tr.scaler.state_dict() if tr.scaler is not None else None, "rng": rng_state()},
                    tr.files.last)
    if improved:
        save_checkpoint(state, tr.files.best)
    write_history(tr.run.history, tr.files.history)
    if tr.board is not None:
        tr.board.log(tr.run.history[-1])
    plot_curves(tr.run.history, tr.files.curves, f"{tr.unit.name} ({m.model}, {m.size}px)")


def _say_epoch(tr: _Trainer, improved: bool, stats: dict) -> None:
    """One line per epoch: losses, validation AUC (``*`` when best), throughput over all ranks, seconds."""
    t, row = tr.member.train, tr.run.history[-1]
    tr.say(f"{tr.unit.name} epoch {tr.run.epoch}/{t.epochs}: train loss {row['train_loss']:.4f}, val loss "
           f"{row['val_loss']:.4f}, val AUC {row['val_auc']:.4f}{' *' if improved else ''}, "
           f"{stats['images_per_s'] * tr.dist.world_size:.0f} img/s, {row['seconds']:.1f} s"
           + (f" - early stop ({t.patience} epochs without improvement)" if tr.run.stopped else ""))


def _finish(tr: _Trainer, run: RunDir) -> dict:
    """Predict val/test with the kept weights (one checkpoint per entry) and write the tables and the done record."""
    m, u = tr.member, tr.unit
    if m.train.average == "swa":
        _keep_swa(tr)
    kept = ([tr.files.snapshot(j) for j in range(1, m.train.snapshots + 1)] if m.train.snapshots > 1
            else [tr.files.best])
    aucs, dead = {}, False
    for entry, path in zip(u.entries, kept):
        model, ckpt = model_from_checkpoint(path, tr.device)
        aucs[entry], dead = _write_tables(tr, run, entry, model, ckpt, path)
    last = aucs[u.entries[-1]]
    minutes = sum(h["seconds"] for h in tr.run.history) / 60
    done = {"member": m.id, "unit": u.name, "model": m.model, "size": m.size, "seed": u.seed, "fold": u.fold,
            "entries": {e: a for e, a in aucs.items()}, "val_auc": last["val"], "test_auc": last.get("test"),
            "near_chance": dead,
            "best_epoch": tr.run.best_epoch, "epochs": tr.run.epoch, "minutes": round(minutes, 3),
            "effective_batch": tr.effective, "tta": m.train.tta, "host": socket.gethostname(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if tr.dist.is_main:
        write_json(tr.files.done, done)
    test = f", test AUC {last['test']:.4f}" if last.get("test") is not None else ""
    scored = f"fold {u.fold} AUC" if u.fold else "val AUC"
    tr.say(f"{u.name}: done - {scored} {last['val']:.4f}{test} (epoch {tr.run.best_epoch}), {minutes:.1f} min"
           + (f", {len(kept)} snapshots" if len(kept) > 1 else "")
           + (" - WARNING: validation AUC within noise of chance, the member did not learn" if dead else ""))
    distributed.barrier()
    return {**done, "status": "trained"}


def _keep_swa(tr: _Trainer) -> None:
    """Recompute the SWA model's batch-norm statistics over the training split and keep its weights as ``best``.

    Idempotent: the average comes from the resume checkpoint, and the loader's order from its epoch.
    """
    tr.loader.set_epoch(tr.member.train.epochs)
    with torch.no_grad():
        update_bn(((x, y) for x, y, _ in tr.loader), tr.averaged, device=tr.device)
    if tr.dist.is_main:
        save_checkpoint({**tr.static, **tr.run.state(), "model": tr.averaged.module.state_dict(),
                         "swa_from": tr.swa_from}, tr.files.best)
    distributed.barrier()


def _write_tables(tr: _Trainer, run: RunDir, entry: str, model: nn.Module, ckpt: dict,
                  path: Path) -> tuple[dict[str, float | None], bool]:
    """The val and test probability tables of one kept checkpoint (``model`` rebuilt from ``ckpt`` at ``path``).

    Written as member tables ``entry``, or for a fold unit into its own folder (val: its held-out
    fold). Returns ``({split: ROC-AUC}, near chance)``: None for a split with unknown labels, and whether the
    val table is within noise of chance (:func:`~medzoo.ensemble.auc.near_chance`). Tables are
    predicted in full precision (no autocast): bf16/fp16 logits would tie confident images and
    blur every AUC computed from the tables.
    """
    m, u = tr.member, tr.unit
    if tr.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sha = file_digest(path)
    flips = tta_flips(m.train.tta, m.train.augment.vflip)
    aucs, dead = {}, False
    for split, arrays in tr.data.items():
        if split == "train":
            continue
        probs = predict_probs(model, arrays.images, mean=ckpt["mean"], std=ckpt["std"], device=tr.device,
                              batch_size=m.train.batch_size, flips=flips, channels_last=tr.channels_last)
        known = arrays.labels >= 0
        aucs[split] = validation_auc(arrays.labels[known], probs[known]) if known.all() else None
        if split == "val":
            dead = bool(near_chance(probs, arrays.labels))
        if tr.dist.is_main:
            meta = {"member": entry, "model": m.model, "split": split, "dataset": ckpt["dataset"], "checkpoint": sha,
                    "size": m.size, "tta": m.train.tta, "config": asdict(m), "units": [u.name], "seed": u.seed}
            if u.fold is not None:
                meta["fold"] = u.fold
            dest = tr.files.table(entry, split) if u.fold is not None else run.table("member", entry, split)
            ProbabilityTable(list(arrays.ids), ckpt["classes"], probs, arrays.labels, meta).write(dest)
    return aucs, dead


def _wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the parameters that currently require gradients."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _mean_over_ranks(mean: float, count: int, device) -> float:
    """Image-weighted mean of a per-rank mean over all ranks."""
    if not distributed.info().enabled:
        return mean
    t = torch.tensor([mean * count, count], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t[0] / t[1])
