"""The training loop of one member: loss, optimizer, learning-rate schedule, AMP, and one epoch over a loader."""
from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medzoo.ensemble.auc import auc
from medzoo.zoo.config import TrainConfig
from medzoo.zoo.models import forward_logits

AUX_WEIGHT = 0.4


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
    """The training criterion ``(logits [B, C], target [B]) -> scalar`` for ``cfg.loss``; ``weights`` ``[C]``."""
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
    """Per-step cosine with linear warm-up, per-epoch reduce-on-plateau (on val AUC), or ``None``.

    With ``snapshots = M`` the cosine restarts: M cycles of ``epochs / M`` epochs, each from the
    full rate down to zero (Huang et al. 2017, snapshot ensembles); the warm-up is in the first.
    """
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                                          patience=cfg.plateau_patience)
    if cfg.schedule == "none":
        return None
    cycle = cfg.epochs // cfg.snapshots * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        start = warm if step < cycle else step - step % cycle
        end = cycle if step < cycle else start + cycle
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / max(1, end - start))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def validation_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC-AUC (``ensemble.auc.auc``): positive-class probability for 2 classes, macro one-vs-rest for more.

    labels int ``[N]``, probs ``[N, C]``. NaN when a class is absent from ``labels`` (unlike the
    leaderboard, which skips it): early stopping then never selects on a macro AUC of fewer classes.
    """
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


def _mixed_loss(loss_fn, logits: torch.Tensor, y: torch.Tensor, *, y2: torch.Tensor, lam: float) -> torch.Tensor:
    """The loss of a mixed batch: ``lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y2)``."""
    return lam * loss_fn(logits, y) + (1.0 - lam) * loss_fn(logits, y2)


def _backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, *, device: torch.device, scaler,
              amp_dtype, accumulate: int) -> torch.Tensor:
    """Forward ``x [B,3,H,W]`` (autocast on ``device`` when ``amp_dtype``), add the auxiliary loss of ``y [B]``,
    backward ``loss / accumulate`` (through ``scaler`` when given); returns the loss, a scalar tensor."""
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, aux = forward_logits(model, x)
        loss = loss_fn(logits, y)
        if aux is not None:
            loss = loss + AUX_WEIGHT * loss_fn(aux, y)
    scaled = loss / accumulate
    (scaler.scale(scaled) if scaler else scaled).backward()
    return loss


def train_one_epoch(model: nn.Module, loader, optimizer, loss_fn, *, scheduler=None, scaler=None, amp_dtype=None,
                    accumulate: int = 1, max_batches: int = 0, mix: Callable | None = None,
                    on_batch: Callable | None = None, on_step: Callable | None = None, progress: bool = True,
                    desc: str = "train") -> dict:
    """One pass over ``loader`` (yielding ``x [B,3,H,W], y [B], idx [B]``); returns loss and throughput.

    Gradients are accumulated over ``accumulate`` batches per optimizer step (without DDP
    gradient sync on the intermediate ones). A per-step ``scheduler`` (LambdaLR) steps after
    each optimizer step, then ``on_step()`` (an EMA update). ``mix(x) -> (x, perm [B], lam)`` mixes each batch
    (``zoo.augment.mix_batch``), the loss then being ``lam L(y) + (1 - lam) L(y[perm])``. ``on_batch(i, idx)``
    is called after each batch. Returns
    ``{"loss", "images", "seconds", "images_per_s", "steps"}``.
    """
    model.train()
    n_batches = min(len(loader), max_batches) if max_batches else len(loader)
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    images = steps = 0
    sync_free = model.no_sync if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=n_batches, desc=desc, leave=False, disable=None if progress else True, unit="batch",
               dynamic_ncols=True)  # None: a bar on a terminal only
    start = time.perf_counter()
    for i, (x, y, idx) in enumerate(loader):
        if i >= n_batches:
            break
        step_now = (i + 1) % accumulate == 0 or i + 1 == n_batches
        batch_loss = loss_fn
        if mix is not None:
            x, perm, lam = mix(x)
            batch_loss = functools.partial(_mixed_loss, loss_fn, y2=y.index_select(0, perm), lam=lam)
        with (contextlib.nullcontext() if step_now else sync_free()):
            loss = _backward(model, x, y, batch_loss, device=device, scaler=scaler, amp_dtype=amp_dtype,
                             accumulate=accumulate)
        if step_now:
            optimizer_step(optimizer, scaler)
            steps += 1
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                scheduler.step()
            if on_step is not None:
                on_step()
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
