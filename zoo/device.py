"""Where training runs and how it is seeded: the torch device, the seeds, the memory format."""
from __future__ import annotations

import random

import numpy as np
import torch

from medzoo.zoo import distributed
from medzoo.zoo.config import TrainConfig


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


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a member's model and batches use the channels_last memory format: ``true``, or ``"auto"`` on CUDA."""
    return cfg.channels_last is True or (cfg.channels_last == "auto" and device.type == "cuda")
