"""A member's training record: the per-epoch history as CSV and its loss/AUC curves as a PNG."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from medzoo.core.figures import save_png
from medzoo.core.fileio import write_text

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds", "effective_batch")


def write_history(history: list[dict], path: Path) -> None:
    """The history CSV: one row per epoch with :data:`HISTORY_COLUMNS` (atomic).

    ``lr`` is the learning rate of the epoch's first step; ``seconds`` covers training and validation;
    ``val_loss`` is the unweighted cross-entropy of the validation probabilities.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    write_text(path, buf.getvalue())


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Training/validation loss and validation AUC against epoch, as a PNG (atomic).

    Drawn on a bare :class:`~matplotlib.figure.Figure`, not through pyplot: no backend is chosen
    and no global figure state is touched, so training inside a notebook leaves its plots alone.
    """
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    a, b = fig.subplots(1, 2)
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(ep, [h["val_auc"] for h in history], "o-", color="C2")
    b.set(xlabel="epoch", ylabel="ROC-AUC", title="validation ROC-AUC")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, tight=False)
