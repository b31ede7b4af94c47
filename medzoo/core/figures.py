"""One writer for every figure medzoo draws: an atomic, 256-colour PNG.

Quantizing to a 256-colour palette (median cut) makes the heatmap grids about 3-4x smaller and the line
plots about 3x smaller than full-colour PNGs, with no visible loss, which keeps the committed
reference runs, and the self-contained reports that embed their figures, small.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from medzoo.core.fileio import atomic_path


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 100, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` as a palette PNG at ``dpi`` (trimmed to its content when ``tight``); return the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    image = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, "PNG", optimize=True)
    return path
