"""Class probabilities from a trained member: validation/test tables, and new images.

Test-time augmentation (``tta``) averages the softmax of the image as it is, flipped
horizontally, and flipped vertically when the member was trained with vertical flips.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo import distributed
from medzoo.zoo.cache import IMAGE_EXTENSIONS, load_images
from medzoo.core.fileio import file_digest
from medzoo.zoo.checkpoint import model_from_checkpoint
from medzoo.zoo.device import resolve_device
from medzoo.zoo.loader import BatchLoader


def tta_flips(tta: bool, vflip: bool) -> tuple[tuple[int, ...], ...]:
    """Image dims to flip for each view: identity, then hflip (and vflip) when ``tta``."""
    if not tta:
        return ((),)
    return ((), (-1,), (-2,)) if vflip else ((), (-1,))


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images, *, mean, std, device, batch_size: int = 64,
                  flips: Sequence[tuple[int, ...]] = ((),), amp_dtype=None, channels_last: bool = False,
                  ) -> np.ndarray:
    """images uint8 ``[N, S, S, 3]`` -> probabilities float64 ``[N, C]`` (softmax, averaged over ``flips``).

    Under ``torch.distributed`` each rank predicts its shard and every rank gets all ``N`` rows,
    each image once.
    """
    dist = distributed.info()
    n = len(images)
    loader = BatchLoader(images, np.zeros(n, dtype=np.int64), batch_size, shuffle=False, seed=0, device=device,
                         mean=mean, std=std, rank=dist.rank, world_size=dist.world_size,
                         channels_last=channels_last)
    was_training = model.training
    model.eval()
    out, rows = [], []
    for x, _, idx in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            p = sum(torch.softmax(model(x.flip(f) if f else x).double(), dim=1) for f in flips)
        out.append(p / len(flips))
        rows.append(idx)
    model.train(was_training)
    probs = torch.cat(out) if out else torch.zeros(0, 0, device=device)
    index = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=device)
    return distributed.gather_by_index(probs, index, n).double().cpu().numpy()


def image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, and image files found (recursively, sorted) in folders; raises for anything missing."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"no image file or folder at {item}")
    return paths


def image_ids(paths: Sequence[Path]) -> list[str]:
    """File stems as ids (``ISIC_0012086``); the full paths when two files share a stem."""
    stems = [p.stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def predict(checkpoint: str | Path, inputs: Sequence[str | Path], *, out: str | Path | None = None,
            tta: bool = False, device: str = "auto", batch_size: int = 64) -> ProbabilityTable:
    """Probability table (labels unknown) for new image files or folders, from one checkpoint.

    The checkpoint (a member's best, or its resume checkpoint for the last epoch's weights) carries the
    architecture, classes, input size and normalisation. Writes the table to ``out`` when given.
    """
    dev = resolve_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, dev)
    paths = image_paths(inputs)
    images = load_images(paths, ckpt["size"])
    probs = predict_probs(model, images, mean=ckpt["mean"], std=ckpt["std"], device=dev, batch_size=batch_size,
                          flips=tta_flips(tta, ckpt.get("vflip", False)))
    table = ProbabilityTable(image_ids(paths), ckpt["classes"], probs, None,
                             {"member": ckpt["member"], "model": ckpt["arch"], "split": "test", "source": "medzoo predict",
                              "dataset": ckpt["dataset"], "checkpoint": file_digest(checkpoint),
                              "size": ckpt["size"], "tta": tta, "files": [str(p) for p in paths]})
    if out is not None:
        table.write(out)
    return table
