"""What a built leaderboard is made of: its tasks, its entries and the board itself (data only).

:mod:`medzoo.benchmarks.leaderboard` builds a :class:`Board`; :mod:`medzoo.benchmarks.plots` draws one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medzoo.ensemble.table import ProbabilityTable


def repeat_label(tag: str) -> str:
    """A repeat's tag -> its ``replicate`` in :attr:`Board.repeats`: ``"s1"`` -> ``"seed 1"``."""
    return f"seed {tag[1:]}"


@dataclass(frozen=True)
class Task:
    """A binary task read off class probabilities: positive = any class in ``positive`` (column indices)."""

    name: str
    positive: tuple[int, ...]

    def truth(self, labels: np.ndarray) -> np.ndarray:
        """``labels [N]`` -> ``[N]`` bool."""
        return np.isin(labels, self.positive)

    def score(self, probs: np.ndarray) -> np.ndarray:
        """``probs [N, C]`` -> ``[N]``: the summed probability of the positive classes."""
        return probs[:, list(self.positive)].sum(axis=1)


@dataclass
class Entry:
    """One leaderboard row's inputs: its validation and (optional) test tables, and under ``[cv]`` each fold
    model's own test table (``fold_tests``, by fold)."""

    name: str
    kind: str
    val: ProbabilityTable
    test: ProbabilityTable | None
    members: list[str] = field(default_factory=list)
    fold_tests: dict[int, ProbabilityTable] = field(default_factory=dict)

    @property
    def test_labelled(self) -> bool:
        return self.test is not None and self.test.has_labels


@dataclass
class Board:
    """A built leaderboard: the frame plus what the plots and the markdown header need.

    ``entries`` are keyed like the frame's rows, ``(kind, entry)`` (a repeated run's: its first
    repeat's tables); ``repeats`` has one row per entry and repeat (or fold) with ``replicate``,
    ``val_auc`` and ``test_auc``, None for a single run without folds.
    """

    frame: pd.DataFrame
    entries: dict[tuple[str, str], Entry]
    classes: list[str]
    primary: Task | None
    views: list[Task]
    info: dict
    repeats: pd.DataFrame | None = None
