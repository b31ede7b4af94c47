"""In-memory batch loader: uint8 images in, normalised (and augmented) float batches on the device out.

The split's images live in one uint8 tensor, laid out as the batches will be (NCHW, or NHWC for
channels_last). Each batch is gathered with one ``index_select``, copied to the device (pinned and
non-blocking on CUDA), then converted to float, augmented and normalised there by
``zoo.augment.augment_batch``: no worker processes, no per-image Python work.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from medzoo.zoo.augment import augment_batch, check_augment
from medzoo.zoo.models import IMAGENET_MEAN, IMAGENET_STD


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS (Linux).

    A CPU training step allocates and frees the same large tensors (a 128 x 3 x 224 x 224 float batch is
    77 MB) every batch. By default glibc serves each from a fresh ``mmap``, so every pass over a new
    tensor first page-faults all of it: on the 2-core benchmark machine that made the loader 1.5-2x
    slower (``benchmarks/speed_train.py``). This disables ``mmap`` for allocations and never trims the
    heap: memory freed stays mapped for the next batch, and the process keeps its peak size.
    Process-wide; call once at start-up of a CPU run. Returns False where it does not apply (no glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**62))
    except (OSError, AttributeError):
        return False


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing several integers (seed, epoch, stream, rank) without collisions like a + b."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class BatchLoader:
    """Iterate (x, y, idx) batches over an in-memory split.

    images: uint8 [N, H, W, 3] (numpy or torch, RGB); labels: int64 [N] (-1 = unknown is passed through).
    Yields x float32 [B, 3, H, W] normalised with mean/std (in [0, 1] units) on ``device``, optionally
    augmented (``augment``: a ``zoo.augment.check_augment`` dict), in channels_last memory format when
    asked; y int64 [B] on ``device``; idx int64 [B] on the CPU: the rows of the split in this batch.
    Holds one uint8 copy of the images (none for a contiguous NHWC array with channels_last).

    Order: with ``shuffle`` a permutation drawn from (seed, epoch), else 0..N-1. Call ``set_epoch(e)``
    before each epoch; batches and augmentation are a function of (seed, epoch, rank) only.
    Sharding (world_size > 1), as ``torch.utils.data.DistributedSampler``: every rank draws the same
    epoch order, pads it by repeating its start to a multiple of world_size, and takes every
    world_size-th index from position ``rank``; so every rank gets ceil(N / world_size) indices, shards
    are disjoint apart from the padding (at most world_size - 1 repeated images per epoch) and together
    cover the split. ``drop_last`` drops a last incomplete batch.
    """

    def __init__(self, images, labels, batch_size: int, *, shuffle: bool, seed: int = 0,
                 device: str | torch.device = "cpu", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, augment: dict | None = None, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False):
        self._images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if self._images.dtype != torch.uint8 or self._images.ndim != 4 or self._images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {self._images.dtype} {tuple(self._images.shape)}")
        if self.labels.shape != self._images.shape[:1]:
            raise ValueError(f"labels must be [N] = [{len(self._images)}], got {tuple(self.labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if len(self._images) == 0:
            raise ValueError("no images to load (the split is empty)")
        # Stored in the memory format of the batches to come: [N, H, W, 3] is channels_last once permuted.
        self._images = self._images.contiguous() if channels_last else self._images.permute(0, 3, 1, 2).contiguous()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = check_augment(augment) if augment else None
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.epoch = 0
        self._pin = self.device.type == "cuda"

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def epoch_rng(self, stream: int) -> np.random.Generator:
        """A numpy generator of the current (seed, epoch, rank) for another random stream of the epoch (>= 2;
        0 and 1 are the order and the augmentation), such as batch mixing."""
        return np.random.default_rng(_seed(self.seed, self.epoch, stream, self.rank))

    def shard(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's row indices for an epoch (default: the current one) -> int64 [ceil(N / world_size)]."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, epoch, 0)))
        else:
            order = torch.arange(n)
        total = -(-n // self.world_size) * self.world_size
        order = order.repeat(-(-total // n))[:total]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        per_rank = -(-len(self.labels) // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self._pin:
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.shard()
        generator = torch.Generator().manual_seed(_seed(self.seed, self.epoch, 1, self.rank))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self._to_device(self._images.index_select(0, idx))
            y = self._to_device(self.labels.index_select(0, idx))
            if not self.channels_last:
                yield augment_batch(x, self.augment, generator, self.mean, self.std), y, idx
                continue
            x = augment_batch(x.permute(0, 3, 1, 2), self.augment, generator, self.mean, self.std)
            yield x.contiguous(memory_format=torch.channels_last), y, idx  # grid_sample returns NCHW
