"""Training zoo members: one member (:func:`train_member`) or the whole zoo (:func:`train_zoo`).

A member's folder ``results/<run>/members/<id>/`` holds ``last.pt`` (everything needed to
resume), ``best.pt`` (weights with the best validation ROC-AUC), ``history.csv``,
``curves.png`` and, when finished, ``done.json``; its probability tables go to
``results/<run>/predictions/<id>/{val,test}.csv``. Every write is atomic, so a run killed at
any moment resumes from its last completed epoch. Under ``torchrun`` one member trains with
DistributedDataParallel; only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import socket
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medzoo.core.fileio import clean_stale_temps, write_json, write_text
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo import distributed
from medzoo.zoo.checkpoint import file_sha256, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medzoo.core.rundir import RunDir
from medzoo.zoo.config import MemberConfig, TrainConfig, ZooConfig, config_differences
from medzoo.zoo.datasets import known_cards, load_arrays, open_dataset, resolve_data_root
from medzoo.zoo.predict import predict_probs, tta_flips

AUX_WEIGHT = 0.4
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds", "effective_batch")


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else the CPU; ``cuda`` without a GPU raises."""
    if local_rank is None:
        local_rank = distributed.env_info().local_rank
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device = {spec!r} but CUDA is not available here; use device = \"auto\" or \"cpu\"")
    return torch.device(spec if spec.startswith("cuda:") else f"cuda:{local_rank}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """labels int ``[N]`` -> weights float64 ``[C]``: ``N / (C * count_c)`` (balanced; absent classes 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float, weight: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean focal loss: ``-sum_c q_c (1 - p_c)^gamma log p_c`` per image, ``q`` the (smoothed) target.

    logits ``[B, C]``, target int64 ``[B]``, weight ``[C]`` (per true class; the mean is
    weighted like ``F.cross_entropy``'s). With ``gamma = 0`` it equals cross-entropy.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    c = logits.shape[1]
    q = F.one_hot(target, c).float() * (1 - label_smoothing) + label_smoothing / c
    per = -(q * (1 - logp.exp()).pow(gamma) * logp).sum(dim=1)
    w = weight[target] if weight is not None else torch.ones_like(per)
    return (per * w).sum() / w.sum()


def make_loss(cfg: TrainConfig, weights: np.ndarray, device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training criterion ``(logits [B, C], target [B]) -> scalar`` for ``cfg.loss``."""
    w = torch.tensor(weights, dtype=torch.float32, device=device)
    if cfg.loss == "focal":
        return lambda z, y: focal_loss(z, y, gamma=cfg.focal_gamma, weight=w, label_smoothing=cfg.label_smoothing)
    weight = w if cfg.loss == "weighted_ce" else None
    return lambda z, y: F.cross_entropy(z.float(), y, weight=weight, label_smoothing=cfg.label_smoothing)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), Adam or AdamW over all parameters (frozen ones get no gradient)."""
    params = list(model.parameters())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step cosine with linear warm-up, per-epoch reduce-on-plateau (on val AUC), or ``None``."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                                          patience=cfg.plateau_patience)
    if cfg.schedule == "none":
        return None
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC-AUC (``ensemble.auc.auc``): positive-class probability for 2 classes, macro one-vs-rest for more.

    labels int ``[N]``, probs ``[N, C]``. NaN when a class is absent from ``labels`` (unlike the
    leaderboard, which skips it): early stopping then never selects on a macro AUC of fewer classes.
    """
    from medzoo.ensemble.auc import auc

    present = np.unique(labels)
    if len(present) < 2 or (probs.shape[1] > 2 and len(present) < probs.shape[1]):
        return float("nan")
    return auc(probs, labels)


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    """Batches per optimizer step: ``accumulate``, or what keeps ``effective_batch`` at any world size."""
    if not cfg.effective_batch:
        return cfg.accumulate
    per_step = cfg.batch_size * world_size
    if cfg.effective_batch % per_step:
        raise ValueError(f"effective_batch = {cfg.effective_batch} is not a multiple of batch_size {cfg.batch_size} "
                         f"x {world_size} processes; change batch_size or the number of processes")
    return cfg.effective_batch // per_step


def amp_setup(device: torch.device, cfg: TrainConfig):
    """``(autocast dtype or None, GradScaler or None)``: bf16 where supported, else fp16 + scaler; off on CPU."""
    if device.type != "cuda" or cfg.amp is False:
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def optimizer_step(optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """One optimizer step (through ``scaler`` when fp16 AMP uses a GradScaler), then clear the gradients."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_one_epoch(model: nn.Module, loader, optimizer, loss_fn, *, scheduler=None, scaler=None, amp_dtype=None,
                    accumulate: int = 1, max_batches: int = 0, on_batch: Callable | None = None,
                    progress: bool = True, desc: str = "train") -> dict:
    """One pass over ``loader`` (yielding ``x [B,3,H,W], y [B], idx [B]``); returns loss and throughput.

    Gradients are accumulated over ``accumulate`` batches per optimizer step (without DDP
    gradient sync on the intermediate ones). A per-step ``scheduler`` (LambdaLR) steps after
    each optimizer step. ``on_batch(i, idx)`` is called after each batch. Returns
    ``{"loss", "images", "seconds", "images_per_s", "steps"}``.
    """
    from tqdm import tqdm

    from medzoo.zoo.models import forward_logits

    model.train()
    n_batches = min(len(loader), max_batches) if max_batches else len(loader)
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    images = steps = 0
    sync_free = model.no_sync if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=n_batches, desc=desc, leave=False, disable=not progress, unit="batch", dynamic_ncols=True)
    start = time.perf_counter()
    for i, (x, y, idx) in enumerate(loader):
        if i >= n_batches:
            break
        step_now = (i + 1) % accumulate == 0 or i + 1 == n_batches
        with (contextlib.nullcontext() if step_now else sync_free()):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits, aux = forward_logits(model, x)
                loss = loss_fn(logits, y)
                if aux is not None:
                    loss = loss + AUX_WEIGHT * loss_fn(aux, y)
            scaled = loss / accumulate
            (scaler.scale(scaled) if scaler else scaled).backward()
        if step_now:
            optimizer_step(optimizer, scaler)
            steps += 1
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                scheduler.step()
        total += loss.detach() * len(y)
        images += len(y)
        if on_batch is not None:
            on_batch(i, idx)
        bar.update()
        if progress and (i % 10 == 0 or i + 1 == n_batches):
            bar.set_postfix(loss=f"{total.item() / images:.4f}", img_s=f"{images / (time.perf_counter() - start):.0f}")
    bar.close()
    seconds = time.perf_counter() - start
    return {"loss": total.item() / max(images, 1), "images": images, "seconds": seconds,
            "images_per_s": images / max(seconds, 1e-9), "steps": steps}


def write_history(history: list[dict], path: Path) -> None:
    """``history.csv``: one row per epoch with :data:`HISTORY_COLUMNS` (atomic).

    ``lr`` is the learning rate of the epoch's first step; ``seconds`` covers training and validation;
    ``val_loss`` is the unweighted cross-entropy of the validation probabilities.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    write_text(path, buf.getvalue())


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Training/validation loss and validation AUC against epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from medzoo.core.fileio import atomic_path

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(ep, [h["val_auc"] for h in history], "o-", color="C2")
    b.set(xlabel="epoch", ylabel="ROC-AUC", title="validation ROC-AUC")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def check_trainable(ds) -> None:
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


def _load_data(cfg: ZooConfig, size: int) -> tuple[str, list[str], dict]:
    """(dataset name, classes, {split: SplitArrays}) at ``size`` px; rank 0 fills the cache first."""
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
    return ds.name, list(ds.classes), arrays


class _Run:
    """The mutable state of one member's training that a checkpoint carries."""

    def __init__(self):
        self.epoch, self.best_auc, self.best_epoch, self.bad_epochs = 0, -math.inf, 0, 0
        self.stopped = False
        self.history: list[dict] = []

    def state(self) -> dict:
        return {"epoch": self.epoch, "best_auc": self.best_auc, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "stopped": self.stopped, "history": self.history}

    def load(self, ckpt: dict) -> None:
        for k in ("epoch", "best_auc", "best_epoch", "bad_epochs", "stopped", "history"):
            setattr(self, k, ckpt[k])


def train_member(cfg: ZooConfig, member: MemberConfig | str, run_dir: str | Path, *, progress: bool = True,
                 on_batch: Callable | None = None, on_epoch: Callable | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Train one member into ``run_dir`` (resuming from its ``last.pt``) and write its tables.

    ``on_batch(i, idx)`` runs after every training batch, ``on_epoch(epoch)`` after every
    epoch (claim heartbeats). Returns ``{"member", "model", "size", "val_auc", "test_auc",
    "best_epoch", "epochs", "minutes", "effective_batch", "status"}`` (also ``done.json``).
    """
    from medzoo.zoo.loader import BatchLoader
    from medzoo.zoo.models import create_model, model_info, set_backbone_trainable

    member = cfg.member(member) if isinstance(member, str) else member
    t = member.train
    run_dir = Path(run_dir)
    mdir = run_dir / "members" / member.id
    dist = distributed.info()
    device = resolve_device(cfg.device)
    say = _logger(log, dist.is_main)
    info = model_info(member.model)
    dataset, classes, data = _load_data(cfg, member.size)
    train, val = data["train"], data["val"]

    seed_everything(cfg.seed)
    model = create_model(member.model, num_classes=len(classes), pretrained=t.pretrained)
    channels_last = t.channels_last is True or (t.channels_last == "auto" and device.type == "cuda")
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if t.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp_dtype, scaler = amp_setup(device, t)
    loader_kw = dict(device=device, mean=info.mean, std=info.std, rank=dist.rank, world_size=dist.world_size,
                     channels_last=channels_last)
    drop_last = len(train.labels) >= t.batch_size * dist.world_size  # BatchNorm fails on a last batch of one
    train_loader = BatchLoader(train.images, train.labels, t.batch_size, shuffle=True, seed=cfg.seed,
                               augment=t.augment.as_loader_dict(), drop_last=drop_last, **loader_kw)
    n_batches = min(len(train_loader), t.max_train_batches) if t.max_train_batches else len(train_loader)
    accumulate = accumulation_steps(t, dist.world_size)
    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t, math.ceil(n_batches / accumulate))
    loss_fn = make_loss(t, class_weights(train.labels, len(classes)), device)
    effective = t.batch_size * dist.world_size * accumulate
    static = {"arch": member.model, "classes": classes, "size": member.size, "mean": list(info.mean),
              "std": list(info.std), "member": member.id, "dataset": dataset, "vflip": t.augment.vflip,
              "config": asdict(member), "effective_batch": effective}

    run = _Run()
    last, best = mdir / "last.pt", mdir / "best.pt"
    if last.exists():
        ckpt = load_checkpoint(last, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        run.load(ckpt)
        if dist.is_main:
            _repair_best(ckpt, best, static)
            write_history(run.history, mdir / "history.csv")
        say(f"{member.id}: resuming after epoch {run.epoch} (best val AUC {run.best_auc:.4f} at epoch {run.best_epoch})")
    say(f"{member.id}: {member.model} at {member.size}px on {device}, {len(train.labels)} train / "
        f"{len(val.labels)} val images, effective batch {effective} = {t.batch_size} x {dist.world_size} "
        f"process(es) x {accumulate} accumulated" + (f", AMP {amp_dtype}" if amp_dtype else ""))

    ddp, trainable = None, None
    while run.epoch < t.epochs and not run.stopped:
        epoch = run.epoch
        now_trainable = not t.freeze_backbone or (t.unfreeze_after > 0 and epoch >= t.unfreeze_after)
        if now_trainable != trainable:
            set_backbone_trainable(model, member.model, now_trainable)
            trainable = now_trainable
            ddp = _wrap(model, device) if dist.enabled else model
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        with distributed.peer_errors(cfg.dist_timeout):
            stats = train_one_epoch(ddp, train_loader, optimizer, loss_fn, scheduler=scheduler, scaler=scaler,
                                    amp_dtype=amp_dtype, accumulate=accumulate, max_batches=t.max_train_batches,
                                    on_batch=on_batch, progress=progress and dist.is_main,
                                    desc=f"{member.id} {epoch + 1}/{t.epochs}")
            distributed.broadcast_buffers(model)
            probs = predict_probs(model, val.images, mean=info.mean, std=info.std, device=device,
                                  batch_size=t.batch_size, amp_dtype=amp_dtype, channels_last=channels_last)
            train_loss = _mean_over_ranks(stats["loss"], stats["images"], device)
        auc = roc_auc(val.labels, probs)
        val_loss = float(-np.log(np.clip(probs[np.arange(len(val.labels)), val.labels], 1e-12, None)).mean())
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(auc if not math.isnan(auc) else -math.inf)
        improved = run.best_epoch == 0 or auc > run.best_auc
        run.epoch = epoch + 1
        if improved:
            run.best_auc, run.best_epoch, run.bad_epochs = auc, run.epoch, 0
        else:
            run.bad_epochs += 1
        run.stopped = t.patience > 0 and run.bad_epochs >= t.patience
        seconds = time.perf_counter() - start
        run.history.append({"epoch": run.epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc": auc,
                            "lr": lr, "seconds": seconds, "effective_batch": effective})
        if dist.is_main:
            state = {**static, **run.state(), "model": _unwrap(model).state_dict()}
            save_checkpoint({**state, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict() if scheduler is not None else None,
                             "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state()}, last)
            if improved:
                save_checkpoint(state, best)
            write_history(run.history, mdir / "history.csv")
            plot_curves(run.history, mdir / "curves.png", f"{member.id} ({member.model}, {member.size}px)")
        say(f"{member.id} epoch {run.epoch}/{t.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
            f"val AUC {auc:.4f}{' *' if improved else ''}, {stats['images_per_s'] * dist.world_size:.0f} img/s, "
            f"{seconds:.1f} s"
            + (f" - early stop ({t.patience} epochs without improvement)" if run.stopped else ""))
        if on_epoch is not None:
            on_epoch(run.epoch)
    distributed.barrier()
    return _finish(cfg, member, run_dir, run, data, device, channels_last, say)


def _finish(cfg, member, run_dir, run, data, device, channels_last, say) -> dict:
    """Predict val/test with ``best.pt`` and write the tables and ``done.json``.

    Tables are predicted in full precision (no autocast): bf16/fp16 logits would tie
    confident images and blur every AUC computed from the tables.
    """
    from medzoo.zoo.checkpoint import model_from_checkpoint

    mdir = run_dir / "members" / member.id
    best = mdir / "best.pt"
    model, ckpt = model_from_checkpoint(best, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sha = file_sha256(best)
    flips = tta_flips(member.train.tta, member.train.augment.vflip)
    aucs = {}
    for split, arrays in data.items():
        if split == "train":
            continue
        probs = predict_probs(model, arrays.images, mean=ckpt["mean"], std=ckpt["std"], device=device,
                              batch_size=member.train.batch_size, flips=flips, channels_last=channels_last)
        known = arrays.labels >= 0
        aucs[split] = roc_auc(arrays.labels[known], probs[known]) if known.all() else None
        if distributed.info().is_main:
            ProbabilityTable(list(arrays.ids), ckpt["classes"], probs, arrays.labels,
                             {"member": member.id, "model": member.model, "split": split, "dataset": ckpt["dataset"],
                              "checkpoint": sha, "size": member.size, "tta": member.train.tta,
                              "config": asdict(member)}).write(run_dir / "predictions" / member.id / f"{split}.csv")
    minutes = sum(h["seconds"] for h in run.history) / 60
    done = {"member": member.id, "model": member.model, "size": member.size, "val_auc": aucs["val"],
            "test_auc": aucs.get("test"), "best_epoch": run.best_epoch, "epochs": run.epoch,
            "minutes": round(minutes, 3), "effective_batch": ckpt["effective_batch"], "tta": member.train.tta,
            "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if distributed.info().is_main:
        write_json(mdir / "done.json", done)
    test = f", test AUC {aucs['test']:.4f}" if aucs.get("test") is not None else ""
    say(f"{member.id}: done - val AUC {aucs['val']:.4f}{test} (best epoch {run.best_epoch}), {minutes:.1f} min")
    distributed.barrier()
    return {**done, "status": "trained"}


def _repair_best(ckpt: dict, best: Path, static: dict) -> None:
    """After a crash between writing ``last.pt`` and ``best.pt``, rebuild ``best.pt`` from ``last.pt``."""
    if ckpt["best_epoch"] != ckpt["epoch"]:
        return
    if best.exists() and load_checkpoint(best).get("epoch") == ckpt["epoch"]:
        return
    keep = ("model", "epoch", "best_auc", "best_epoch", "bad_epochs", "stopped", "history")
    save_checkpoint({**static, **{k: ckpt[k] for k in keep}}, best)


def _wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the parameters that currently require gradients."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _mean_over_ranks(mean: float, count: int, device) -> float:
    """Image-weighted mean of a per-rank mean over all ranks."""
    if not distributed.info().enabled:
        return mean
    t = torch.tensor([mean * count, count], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t[0] / t[1])


def _logger(log, is_main: bool) -> Callable[[str], None]:
    if not is_main:
        return lambda msg: None
    if log is not None:
        return log
    from tqdm import tqdm

    return tqdm.write


def train_zoo(cfg: ZooConfig, members: list[str] | None = None, results_dir: str | Path = "results", *,
              progress: bool = True, on_batch: Callable | None = None,
              log: Callable[[str], None] | None = None, extend: bool = False) -> list[dict]:
    """Train the zoo's members (or those named) into ``results_dir/<run>/``; returns one dict per member.

    Before anything is written the dataset is opened and checked (train and val must hold every
    class), and a run folder that already has a ``config.json`` must match ``cfg``: otherwise
    ValueError names the differing keys, unless ``extend`` (then the new config replaces the
    recorded one; finished members are kept as they are). Finished members (``done.json``) are skipped; a member another job holds a live claim on
    is skipped (``status`` "running elsewhere"); a member whose training raises gets
    ``failed.json`` with the error and the zoo moves on (``status`` "failed") — except under
    torchrun, where the error ends the job. Other statuses: "done" (already finished), "trained".
    """
    chosen = [cfg.member(m) for m in members] if members else list(cfg.members)
    run_dir = Path(results_dir) / cfg.run
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        from medzoo.zoo.loader import keep_freed_memory

        keep_freed_memory()
    results = []
    with distributed.session(device, cfg.dist_timeout) as dist:
        say = _logger(log, dist.is_main)
        if dist.is_main:
            record_run(cfg, run_dir, extend=extend, log=say)
        for m in chosen:
            mdir = run_dir / "members" / m.id
            claim, holder = None, None
            if dist.is_main and not (mdir / "done.json").exists():
                claim = distributed.try_claim(mdir / "claim.json", cfg.claim_timeout)
                if claim is not None and (mdir / "done.json").exists():
                    claim.release()
                    claim = None
                elif claim is None:
                    holder = distributed.read_claim(mdir / "claim.json") or {}
                elif claim.took_over:
                    say(f"{m.id}: took over a stale claim ({claim.took_over})")
                if claim is not None:
                    for folder in (mdir, run_dir / "predictions" / m.id):
                        clean_stale_temps(folder)
            decision = "busy" if holder is not None else "train" if claim is not None else "done"
            decision, holder = distributed.broadcast((decision, holder))
            if decision == "done":
                results.append({**_read_json(mdir / "done.json"), "status": "done"})
                say(f"{m.id}: already done, skipped")
                continue
            if decision == "busy":
                say(f"{m.id}: being trained by {holder.get('host')} pid {holder.get('pid')} "
                    f"since {holder.get('started_iso')}; skipped")
                results.append({"member": m.id, "model": m.model, "status": "running elsewhere",
                                "host": holder.get("host"), "pid": holder.get("pid")})
                continue
            try:
                if dist.is_main:
                    (mdir / "failed.json").unlink(missing_ok=True)
                beat = (lambda epoch: claim.beat(epoch=epoch)) if claim else None
                results.append(train_member(cfg, m, run_dir, progress=progress, on_batch=on_batch,
                                            on_epoch=beat, log=log))
            except Exception as e:
                if dist.is_main and not isinstance(e, distributed.ClaimLost):
                    write_json(mdir / "failed.json", {"member": m.id, "error": f"{type(e).__name__}: {e}",
                                                      "traceback": traceback.format_exc(),
                                                      "host": socket.gethostname(),
                                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
                if dist.enabled:
                    raise
                say(f"{m.id}: FAILED - {type(e).__name__}: {e}")
                results.append({"member": m.id, "model": m.model, "status": "failed",
                                "error": f"{type(e).__name__}: {e}"})
            finally:
                if claim is not None:
                    claim.release()
    return results


def resolve_run(cfg: ZooConfig, run_dir: Path, *, extend: bool = False) -> ZooConfig:
    """``cfg`` as a run folder records it (absolute data root and dataset path), once it fits ``run_dir``.

    A ``config.json`` already in ``run_dir`` must match (see :func:`config_differences`) unless
    ``extend``; otherwise ValueError names the differing keys. Writes nothing.
    """
    root = str(resolve_data_root(cfg.data_root).resolve())
    resolved = replace(cfg, data_root=root, dataset=_dataset_reference(cfg.dataset))
    recorded = RunDir(run_dir).read_config()
    if recorded and not extend:
        diffs = config_differences(recorded, resolved.to_dict())
        if diffs:
            raise ValueError(f"{run_dir / 'config.json'} was written by a different config: "
                             + "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
                             + ". Use another run name, or pass --extend to continue this run with the new "
                               "config (finished members are kept as they are)")
    return resolved


def record_run(cfg: ZooConfig, run_dir: Path, *, extend: bool = False, log: Callable[[str], None] = print) -> ZooConfig:
    """Check the dataset and the run folder, then save the resolved config; returns what was saved.

    The dataset is opened first (a wrong path fails here and writes nothing) and must be
    trainable (:func:`check_trainable`); the run folder must fit (:func:`resolve_run`). When
    the dataset's splits were made rather than given, the split of every image is saved under
    ``splits/`` and announced in one line.
    """
    resolved = resolve_run(cfg, run_dir, extend=extend)
    ds = open_dataset(resolved.dataset, data_root=resolved.data_root)
    check_trainable(ds)
    RunDir(run_dir).write_config(resolved.to_dict())
    if ds.made is not None:
        path = ds.write_splits(run_dir / "splits" / f"{ds.name}.csv")
        announce = ds.describe_made()
        if announce:
            log(f"{announce}; saved to {path}")
    return resolved


def _dataset_reference(dataset: str) -> str:
    """A card name as it is; a path (card .toml, folder, CSV, npz) made absolute."""
    p = Path(dataset).expanduser()
    if p.suffix == ".toml" or (p.exists() and dataset not in known_cards()):
        return str(p.resolve())
    return dataset


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def status(run_dir: str | Path) -> list[dict]:
    """Each member's state in a run folder, from ``config.json`` and the member folders.

    ``state`` is "done" (with ``val_auc``, ``minutes``), "running" (``host``, ``pid``, ``since``,
    ``epoch``), "failed" (``error``), "stale" (a claim whose owner stopped; the next job takes
    it over) or "pending" (``epoch``: epochs already in ``last.pt``'s history, if any).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    cfg = RunDir(run_dir).read_config()
    models = {m["id"]: m["model"] for m in cfg.get("members", [])}
    timeout = float(cfg.get("claim_timeout", 600.0))
    found = sorted(p.name for p in (run_dir / "members").glob("*") if p.is_dir()) if (run_dir / "members").is_dir() else []
    out = []
    for mid in [*models, *(m for m in found if m not in models)]:
        mdir = run_dir / "members" / mid
        row = {"member": mid, "model": models.get(mid)}
        claim = distributed.read_claim(mdir / "claim.json")
        history = mdir / "history.csv"
        epochs = max(0, len(history.read_text().splitlines()) - 1) if history.exists() else 0
        if (mdir / "done.json").exists():
            done = _read_json(mdir / "done.json")
            row.update(state="done", val_auc=done.get("val_auc"), minutes=done.get("minutes"),
                       epoch=done.get("epochs"), model=done.get("model", row["model"]))
        elif claim is not None and distributed.stale_reason(claim, timeout) is None:
            row.update(state="running", host=claim.get("host"), pid=claim.get("pid"),
                       since=claim.get("started_iso"), epoch=claim.get("epoch", epochs))
        elif (mdir / "failed.json").exists():
            row.update(state="failed", error=_read_json(mdir / "failed.json").get("error"), epoch=epochs)
        elif claim is not None:
            row.update(state="stale", host=claim.get("host"), pid=claim.get("pid"), since=claim.get("started_iso"),
                       reason=distributed.stale_reason(claim, timeout), epoch=epochs)
        else:
            row.update(state="pending", epoch=epochs)
        out.append(row)
    return out
