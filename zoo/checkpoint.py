"""Checkpoints: atomic save/load, RNG state capture, and rebuilding a model from one file.

A medzoo checkpoint is a dict saved with ``torch.save``. Keys:
``format`` ("medzoo-checkpoint"), ``arch`` (registry name), ``classes``, ``size``, ``mean``,
``std``, ``member``, ``dataset``, ``vflip`` (trained with vertical flips: TTA may use them),
``model`` (the model's state dict, where ``zoo.models.create_model(pretrained=path)`` looks), ``epoch`` (epochs completed), ``best_auc``,
``best_epoch``, ``bad_epochs`` (early-stopping counter), ``stopped`` (early stop reached),
``history`` (list of per-epoch dicts), ``config`` (the member's resolved config), and in
``last.pt`` also ``optimizer``, ``scheduler``, ``scaler`` and ``rng``. It is self-contained:
``medzoo predict`` needs nothing else.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from medzoo.ensemble.fileio import atomic_path

FORMAT = "medzoo-checkpoint"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (a crash leaves the previous file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def load_checkpoint(path: str | Path, map_location="cpu", weights_only: bool = True) -> dict:
    """Load a medzoo checkpoint; raises naming the file when it is missing or not one.

    ``weights_only=True`` (safe unpickling) reads ``best.pt``; ``last.pt`` holds numpy RNG
    state and needs ``False``: use that only for files this run wrote itself.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a medzoo checkpoint (no format = {FORMAT!r}); "
                         f"use it as pretrained weights instead")
    return state


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict:
    """The python, numpy, torch and (if present) CUDA random states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def model_from_checkpoint(path: str | Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model stored in a checkpoint, in eval mode on ``device``; returns ``(model, checkpoint)``."""
    from medzoo.zoo.models import create_model

    ckpt = load_checkpoint(path)
    model = create_model(ckpt["arch"], num_classes=len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
