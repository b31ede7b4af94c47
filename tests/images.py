"""Tiny generated image trees for the end-to-end tests (a Kaggle-style ``train/`` + ``test/`` layout)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("normal", "pneumonia")


def write_class_tree(root: Path, counts: dict[str, int], classes=CLASSES, size: int = 16, seed: int = 0) -> Path:
    """``root/<split>/<class>/<split>_<class>_<k>.png``: ``counts[split]`` grayscale images per class.

    Images are noise; the class with index ``c`` has a centre square brighter by ``60 * c``, so a
    small model separates them in an epoch or two. Every image differs from every other.
    """
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                x = rng.integers(0, 150, (size, size)).astype(np.uint8)
                x[size // 4: -size // 4, size // 4: -size // 4] += 60 * c
                Image.fromarray(x).save(folder / f"{split}_{name}_{k}.png")
    return root
