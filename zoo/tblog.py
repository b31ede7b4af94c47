"""An optional TensorBoard view of a unit's training (``tensorboard = true``; the ``medzoo[tensorboard]`` extra).

``history.csv`` stays the record. The event files under ``members/<unit>/tensorboard/`` repeat, per
epoch, the history's values under :data:`TAGS` with ``global_step`` = the epoch (1-based), written right
after the history row (only rank 0 writes). Nothing per optimizer step: the training loop reports the
loss once per epoch (one device sync per epoch), and the view shows no value the history lacks.

Resuming: every writer opens with ``purge_step=1`` and first writes every row the history already holds,
in a new event file. TensorBoard then drops what earlier writers logged (steps >= 1 of older files), so
each epoch shows once, as the resume checkpoint's history has it, whatever point the run was killed at
(between the resume checkpoint and the event write too), and a run resumed with ``tensorboard`` newly
switched on shows its earlier epochs as well. The rewritten rows carry the resume's wall time.

This module imports nothing heavy: the tensorboard package is imported when a :class:`Board` opens.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_auc": "auc/val", "lr": "lr"}
FOLDER = "tensorboard"
INSTALL_HINT = "pip install 'medzoo[tensorboard]'"


def tensorboard_installed() -> bool:
    """Whether the tensorboard package can be imported (looked up without importing it)."""
    return importlib.util.find_spec("tensorboard") is not None


class Board:
    """The TensorBoard writer of one unit: ``member_folder/tensorboard/``, opened with the history so far.

    ``history``: the unit's history rows (dicts with ``epoch`` and :data:`TAGS`' keys), rewritten at once.
    """

    def __init__(self, member_folder: Path, history: list[dict]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"tensorboard = true needs the tensorboard package ({e}): {INSTALL_HINT}") from e
        self.path = Path(member_folder) / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.path), purge_step=1)
        for row in history:
            self.log(row)

    def log(self, row: dict) -> None:
        """One epoch's history row as scalars at step ``row["epoch"]``, flushed to disk."""
        for key, tag in TAGS.items():
            self.writer.add_scalar(tag, float(row[key]), global_step=int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
