"""Training throughput: medzoo's in-memory loop against the model alone and a tutorial-style loop.

In one run, for each model, with the same batch size, input size, optimizer and augmentation:
  (a) the model alone: forward, backward and optimizer step on batches already in memory (the very
      batches (b) gets next);
  (b) medzoo end to end: ``zoo.loop.train_one_epoch`` over ``zoo.loader.BatchLoader`` fed from the
      uint8 arrays medzoo caches (decoded and resized once), augmenting on the device;
      (a) and (b) alternate every two batches, so a shared machine's load hits both alike;
  (c) a tutorial-style loop: ``torchvision.datasets.ImageFolder`` over the JPEG files, PIL decode and
      torchvision transforms for every image every epoch, ``torch.utils.data.DataLoader`` workers;
and once: (d) medzoo's loader alone delivering augmented, normalised 224x224 batches.
Prints images/s and the ratios b/a (the loop's overhead; 1.0 = none) and b/c (speed-up over the tutorial).
``benchmarks/gpu_check.py`` times (a), (b) and (d) on CUDA with these helpers.

    python benchmarks/speed_train.py                       # synthetic 256 px JPEGs
    python benchmarks/speed_train.py --jpegs ../shared/data/isic2017/ISIC-2017_Training_Data
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from medzoo.zoo.cache import load_images
from medzoo.zoo.loader import BatchLoader, keep_freed_memory
from medzoo.zoo.config import TrainConfig
from medzoo.zoo.loop import AUX_WEIGHT, amp_setup, optimizer_step, train_one_epoch
from medzoo.zoo.models import create_model, forward_logits, model_info

AUGMENT = {"hflip": True, "rotate": 10.0, "zoom": 0.1, "brightness": 0.1, "contrast": 0.1}


def write_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """n smooth random RGB images (bicubic-upsampled 8x8 noise plus fine noise) as JPEGs in two class folders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        img = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255)
        path = folder / f"class{i % 2}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def link_jpegs(source: Path, folder: Path, n: int) -> list[Path]:
    """Symlink the first n JPEGs of ``source`` into two class folders (ImageFolder needs classes)."""
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
    if not files:
        raise FileNotFoundError(f"no .jpg files in {source}")
    paths = []
    for i, f in enumerate(files):
        path = folder / f"class{i % 2}" / f.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(f.resolve())
        paths.append(path)
    return paths


def tutorial_transforms(size: int, mean, std):
    """The per-image torchvision pipeline matching ``AUGMENT``."""
    zoom = AUGMENT["zoom"]
    return T.Compose([
        T.RandomResizedCrop(size, scale=((1 - zoom) ** 2, 1.0), ratio=(1.0, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomRotation(AUGMENT["rotate"]),
        T.ColorJitter(brightness=AUGMENT["brightness"], contrast=AUGMENT["contrast"]),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def synchronize(device: str | torch.device) -> None:
    """Wait until ``device`` has done all the work queued on it (CUDA runs asynchronously); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(name: str, seed: int = 0, device: str | torch.device = "cpu",
               channels_last: bool = False, head: str = "auto") -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """``(model, AdamW at lr 1e-4)``: a 2-class ``name`` (with ``head``) seeded with ``seed``, in train mode on
    ``device``."""
    torch.manual_seed(seed)
    layout = torch.channels_last if channels_last else torch.preserve_format
    model = create_model(name, num_classes=2, head=head).to(device, memory_format=layout).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step(model, optimizer, x, y, amp_dtype: torch.dtype | None = None, scaler=None) -> None:
    """One step of the model alone on a batch already on its device: forward (under autocast when ``amp_dtype``),
    cross-entropy (plus the auxiliary head's, as ``zoo.loop``), backward, ``zoo.loop.optimizer_step``."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, aux = forward_logits(model, x)
        loss = F.cross_entropy(logits, y) + (AUX_WEIGHT * F.cross_entropy(aux, y) if aux is not None else 0.0)
    (scaler.scale(loss) if scaler else loss).backward()
    optimizer_step(optimizer, scaler)


def model_and_medzoo(name: str, images: np.ndarray, labels: np.ndarray, batch: int, batches: int,
                     chunk: int = 2, device: str | torch.device = "cpu",
                     channels_last: bool = False) -> tuple[float, float]:
    """(a) and (b) in alternating chunks of ``chunk`` batches, after one warm-up chunk of each, so both see
    the same share of whatever else the machine is doing -> (images/s of the model alone, images/s of
    ``train_one_epoch`` over a BatchLoader with augmentation), over ``batches`` timed batches each.

    Each chunk, (a) trains on the batches (b) gets next, drawn from the loader beforehand and held on
    ``device``; both use AMP as medzoo's training does (``zoo.loop.amp_setup``: on CUDA only) and
    ``channels_last`` for the model and the batches. The loader needs at least ``chunk`` batches.
    """
    device = torch.device(device)
    info = model_info(name)
    loader = BatchLoader(images, labels, batch, shuffle=True, seed=0, mean=info.mean, std=info.std,
                         augment=AUGMENT, drop_last=True, device=device, channels_last=channels_last)
    if len(loader) < chunk:
        raise ValueError(f"{len(images)} images make {len(loader)} batches of {batch}; a chunk needs {chunk}")
    model_a, optimizer_a = make_model(name, device=device, channels_last=channels_last)
    model_b, optimizer_b = make_model(name, device=device, channels_last=channels_last)
    amp_dtype, scaler_a = amp_setup(device, TrainConfig())
    _, scaler_b = amp_setup(device, TrainConfig())
    seconds, done = [0.0, 0.0], [0, 0]
    for i in range(-1, -(-batches // chunk)):  # round -1 warms both up
        loader.set_epoch(i + 1)
        held = [(x, y) for x, y, _ in itertools.islice(loader, chunk)]
        synchronize(device)
        start = time.perf_counter()
        for x, y in held:
            step(model_a, optimizer_a, x, y, amp_dtype, scaler_a)
        synchronize(device)
        middle = time.perf_counter()
        n = train_one_epoch(model_b, loader, optimizer_b, F.cross_entropy, scaler=scaler_b, amp_dtype=amp_dtype,
                            max_batches=chunk, progress=False)["images"]
        synchronize(device)
        if i >= 0:
            seconds[0] += middle - start
            seconds[1] += time.perf_counter() - middle
            done[0] += sum(len(y) for _, y in held)
            done[1] += n
    return done[0] / seconds[0], done[1] / seconds[1]


def tutorial_loop(name: str, folder: Path, size: int, batch: int, epochs: int, workers: int) -> float:
    """(c): images/s of an ImageFolder + DataLoader loop decoding and transforming every image every epoch."""
    info = model_info(name)
    model, optimizer = make_model(name)
    dataset = ImageFolder(str(folder), transform=tutorial_transforms(size, info.mean, info.std))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True)
    for i, (x, y) in enumerate(loader):
        step(model, optimizer, x, y)
        if i == 1:
            break
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            step(model, optimizer, x, y)
            seen += len(y)
    return seen / (time.perf_counter() - start)


def loader_alone(images: np.ndarray, batch: int, epochs: int, augment: dict, device: str | torch.device = "cpu",
                 channels_last: bool = False) -> float:
    """(d): images/s of BatchLoader delivering augmented, normalised batches on ``device`` (after one warm-up batch)."""
    loader = BatchLoader(images, np.zeros(len(images), dtype=np.int64), batch, shuffle=True, seed=0,
                         augment=augment, drop_last=True, device=device, channels_last=channels_last)
    next(iter(loader))
    synchronize(device)
    seen, start = 0, time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch + 1)
        for x, _, _ in loader:
            seen += len(x)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["squeezenet1_1", "resnet18"])
    parser.add_argument("--size", type=int, default=64, help="training input size (px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs for (b) and (c)")
    parser.add_argument("--jpegs", type=Path, help="folder of JPEGs to use (default: synthetic ones)")
    parser.add_argument("--jpeg-size", type=int, default=256, help="side of the synthetic JPEGs (px)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers for (c)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--loader-size", type=int, default=224, help="image size for (d)")
    parser.add_argument("--loader-batch-size", type=int, default=128)
    parser.add_argument("--loader-images", type=int, default=1024)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (default: zoo.loader.keep_freed_memory())")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved repeats of every measurement; the best is kept (the machine is shared)")
    args = parser.parse_args(argv)
    kept = False if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.workers} DataLoader workers, "
          f"malloc keeps freed memory: {kept}, load average {os.getloadavg()[0]:.2f}; augmentation {AUGMENT}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        if args.jpegs:
            paths = link_jpegs(args.jpegs, folder, args.images)
            source = f"{len(paths)} JPEGs from {args.jpegs}"
        else:
            paths = write_jpegs(folder, args.images, args.jpeg_size)
            source = f"{len(paths)} synthetic {args.jpeg_size}x{args.jpeg_size} JPEGs"
        labels = np.array([int(p.parent.name == "class1") for p in paths], dtype=np.int64)
        cache = load_images(paths, args.size)  # what medzoo's image cache holds: decoded and resized once
        print(f"{source}; size {args.size} px, batch {args.batch_size}, {args.epochs} timed epochs")
        for name in args.models:
            batches = args.epochs * (len(paths) // args.batch_size)
            runs = []
            for _ in range(args.rounds):
                runs.append((*model_and_medzoo(name, cache, labels, args.batch_size, batches),
                             tutorial_loop(name, folder, args.size, args.batch_size, args.epochs, args.workers)))
            a, b, c = (max(r[k] for r in runs) for k in range(3))
            print(f"{name:<14} (a) model alone {a:7.1f} img/s  (b) medzoo loop {b:7.1f} img/s  "
                  f"(c) tutorial loop {c:7.1f} img/s  b/a = {b / a:.2f}  b/c = {b / c:.2f}  (best of {args.rounds}; "
                  f"per round b/a {', '.join(f'{r[1] / r[0]:.2f}' for r in runs)}, "
                  f"b/c {', '.join(f'{r[1] / r[2]:.2f}' for r in runs)})")
        reps = -(-args.loader_images // len(paths))
        big = np.concatenate([load_images(paths, args.loader_size)] * reps)[:args.loader_images]
    flips_jitter = {k: v for k, v in AUGMENT.items() if k not in ("rotate", "zoom")}
    for label, augment in (("full augmentation", AUGMENT), ("flips + jitter", flips_jitter)):
        d = max(loader_alone(big, args.loader_batch_size, args.epochs, augment) for _ in range(args.rounds))
        print(f"(d) medzoo loader alone, {label}: {d:.0f} img/s of {args.loader_size}x{args.loader_size} batches "
              f"of {args.loader_batch_size} ({len(big)} images, {args.epochs} epochs, best of {args.rounds})")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
