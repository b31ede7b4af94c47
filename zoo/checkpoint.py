"""Checkpoints: atomic save/load, RNG state capture, and rebuilding a model from one file.

A medzoo checkpoint is a dict saved with ``torch.save``. Keys:
``format`` ("medzoo-checkpoint"), ``arch`` (registry name), ``head`` (the head it was built with,
``zoo.models.resolve_head``: "torchvision" or "small"; checkpoints without it are "torchvision"),
``classes``, ``size``, ``mean``, ``std``, ``member``, ``dataset``, ``vflip`` (trained with vertical
flips: TTA may use them), ``model`` (the model's state dict, where
``zoo.models.create_model(pretrained=path)`` looks),
``epoch`` (epochs completed), ``best_auc``, ``best_epoch``, ``bad_epochs`` (early-stopping
counter), ``stopped`` (early stop reached), ``history`` (list of per-epoch dicts), ``config``
(the member's resolved config), and in a member's resume checkpoint (``MemberDir.last``; the
best one is ``MemberDir.best``) also ``optimizer``, ``scheduler``, ``scaler`` and ``rng``. It is
self-contained: ``medzoo predict`` needs nothing else.
"""
from __future__ import annotations

import contextlib
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from medzoo.core.fileio import atomic_path
from medzoo.core.rundir import MemberDir
from medzoo.zoo.models import create_model

FORMAT = "medzoo-checkpoint"
NUMPY_RNG_GLOBALS = (np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType)


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (a crash leaves the previous file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def load_checkpoint(path: str | Path, map_location="cpu", weights_only: bool = True) -> dict:
    """Load a medzoo checkpoint; raises naming the file when it is missing or not one.

    ``weights_only=True`` (safe unpickling) reads best and resume checkpoints alike: the numpy
    arrays of the resume checkpoint's RNG state are allowed (:data:`NUMPY_RNG_GLOBALS`), nothing
    else is. ``False`` unpickles anything: use it only for files this run wrote itself. Errors are
    one line; a resume checkpoint that still cannot be read safely points at the best one beside it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    allowed = torch.serialization.safe_globals(NUMPY_RNG_GLOBALS) if weights_only else contextlib.nullcontext()
    try:
        with allowed:
            state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # torch raises several types for truncated or foreign files
        files = MemberDir(path.parent)
        if weights_only and path.name == files.last.name and isinstance(e, pickle.UnpicklingError):
            raise ValueError(f"{path} is a resume checkpoint ({files.last.name}); predict with {files.best.name} "
                             f"beside it: {files.best}") from None
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a medzoo checkpoint (no format = {FORMAT!r}); "
                         f"use it as pretrained weights instead")
    return state


def _reason(error: Exception) -> str:
    """One line of an error's text: torch's weights-only errors run to paragraphs, with the reason in one of them."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    marker = "WeightsUnpickler error:"
    return next((line.split(marker, 1)[1].strip() for line in lines if marker in line), lines[0] if lines else "")


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
    """Rebuild the model stored in a checkpoint (a member's best, or its resume checkpoint: the last
    epoch's weights), in eval mode on ``device``, with the head it was trained with (``"head"``; older
    checkpoints, without the key, are torchvision's); returns ``(model, checkpoint)``."""
    ckpt = load_checkpoint(path)
    model = model_for_checkpoint(ckpt)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def model_for_checkpoint(ckpt: dict) -> torch.nn.Module:
    """A freshly initialised model of the architecture, class count and head a checkpoint records (older
    checkpoints, without ``"head"``, are torchvision's), built on the current default device."""
    return create_model(ckpt["arch"], num_classes=len(ckpt["classes"]), head=ckpt.get("head", "torchvision"))
