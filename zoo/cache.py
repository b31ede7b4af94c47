"""Decode and resize images once, and keep the result as uint8 arrays on disk.

Images become ``uint8 [size, size, 3]`` RGB (grayscale replicated to 3 channels, 16-bit and
float images scaled by their bit depth, aspect ratio not kept). The on-disk cache lives under
``$MEDZOO_CACHE`` (default ``~/.cache/medzoo/arrays``, or under ``$XDG_CACHE_HOME``) as
``<dataset>/<split>-<size>px-<key>.npy``, where the key hashes every file's path, size and
modification time: a changed, added or removed file gives a new key, so it is re-read.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from medzoo.core.fileio import atomic_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CACHE_VERSION = 2


def user_cache_dir() -> Path:
    """medzoo's folder in the user's cache: ``$XDG_CACHE_HOME/medzoo``, default ``~/.cache/medzoo``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medzoo"


def cache_root() -> Path:
    """``$MEDZOO_CACHE``, default ``<user cache>/arrays``."""
    return Path(os.environ.get("MEDZOO_CACHE") or user_cache_dir() / "arrays")


def _as_8bit(img):
    """A PIL image in mode ``L`` or ``RGB``, deeper images scaled by their bit depth (never per image),
    so a 16-bit copy decodes like the 8-bit one beside it.

    ``I;16*`` modes are multiplied by 255/65535; mode ``I`` (32-bit integers, as Pillow may open a
    16-bit PNG) likewise when every value lies in 0..65535, else by 255/(2**32 - 1) with negative
    values clipped to 0; mode ``F`` (floats) is read as intensities in [0, 1], clipped.
    """
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            a = np.clip(a, 0.0, 1.0) * 255.0
        elif img.mode.startswith("I;16") or (a.min(initial=0) >= 0 and a.max(initial=0) <= 65535):
            a = np.clip(a, 0, 65535) * (255.0 / 65535)
        else:
            a = np.clip(a, 0, None) * (255.0 / (2**32 - 1))
        return Image.fromarray(np.round(a).astype(np.uint8))
    return img.convert("L" if img.mode in ("1", "LA") else "RGB")


def decode_image(path: str | Path, size: int, origin: str | None = None) -> np.ndarray:
    """Read one image file -> ``uint8 [size, size, 3]`` (bilinear, antialiased).

    JPEGs are decoded at the smallest DCT scale that is still at least ``size`` (PIL draft
    mode), which makes downscaling cheap. ``origin`` (e.g. "labels.csv line 7") goes into errors.
    """
    where = f"{origin}: " if origin else ""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = _as_8bit(img)
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}image file {path} does not exist; put it there or remove "
                                f"the entry from the dataset") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{where}cannot decode image {path} ({e}); the file is unreadable or truncated: "
                         f"replace it with a good copy or remove it from the dataset") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


def load_images(paths: Sequence[str | Path], size: int, origins: Sequence[str] | None = None,
                desc: str = "decoding images", errors: dict[int, str] | None = None) -> np.ndarray:
    """Decode image files in parallel threads -> ``uint8 [N, size, size, 3]`` (no disk cache).

    An unreadable file raises ValueError naming it, unless ``errors`` is given: then its message
    goes to ``errors[row]``, its row is left all zero, and decoding goes on.
    """
    size = _check_size(size)
    origins = list(origins) if origins is not None else [None] * len(paths)
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1)
    decode = decode_image if errors is None else _decode_or_message
    with ThreadPoolExecutor(workers) as pool:
        decoded = pool.map(decode, paths, [size] * len(paths), origins)
        for i, arr in enumerate(tqdm(decoded, total=len(paths), desc=desc, unit="img",
                                     disable=len(paths) < 2)):
            if isinstance(arr, str):
                errors[i] = arr
                out[i] = 0
            else:
                out[i] = arr
    return out


def _decode_or_message(path: str | Path, size: int, origin: str | None) -> np.ndarray | str:
    """:func:`decode_image`, or the message of its ValueError for an unreadable file."""
    try:
        return decode_image(path, size, origin)
    except ValueError as e:
        return str(e)


def fingerprint(paths: Sequence[str | Path], size: int) -> str:
    """Hex digest of every file's absolute path, byte size and mtime_ns, and the output size."""
    h = hashlib.sha256(f"medzoo-cache v{CACHE_VERSION} size={size}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_images(dataset: str, split: str, paths: Sequence[str | Path], size: int,
                  origins: Sequence[str] | None = None) -> np.ndarray:
    """``uint8 [N, size, size, 3]`` for ``paths``, read from the cache or built and stored there."""
    size = _check_size(size)
    missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        i = missing[0]
        where = f"{origins[i]}: " if origins is not None else ""
        raise FileNotFoundError(f"{where}image file {paths[i]} does not exist ({len(missing)} missing in "
                                f"{dataset}/{split}); put it there or remove the entry from the dataset")
    path = cache_root() / dataset / f"{split}-{size}px-{fingerprint(paths, size)[:16]}.npy"
    if path.exists():
        try:
            arr = np.load(path)
            if arr.shape == (len(paths), size, size, 3) and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError):
            pass
    arr = load_images(paths, size, origins, desc=f"caching {dataset}/{split} at {size}px")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)
    return arr


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a stack of images -> ``uint8 [N, size, size, 3]`` in one vectorised call
    (torch's uint8 bilinear with antialias, which follows PIL's resize to within 1 grey level).

    Args:
        images: uint8 ``[N, H, W]``, ``[N, H, W, 1]`` or ``[N, H, W, 3]``.
    """
    size = _check_size(size)
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3) or x.dtype != np.uint8:
        raise ValueError(f"images have shape {images.shape} and dtype {images.dtype}; expected uint8 "
                         f"[N, H, W], [N, H, W, 1] or [N, H, W, 3]")
    if x.shape[1:3] != (size, size):
        # Lazy: only resizing arrays (.npz datasets) needs torch; reading cards and decoding files stay torch-free.
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
        x = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.permute(0, 2, 3, 1).numpy()
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else np.ascontiguousarray(x)


def _check_size(size) -> int:
    if int(size) != size or size < 1:
        raise ValueError(f"image size {size!r}; need a positive integer number of pixels")
    return int(size)
