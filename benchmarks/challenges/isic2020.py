"""Kaggle SIIM-ISIC 2020: ``image_name,target``, target = p(melanoma/malignant); scored by ROC-AUC.

Submission: the positive column comes from a class with a matching name; option ``positive="class"``
(or a list of classes, whose probabilities are summed) overrides it. Ids are bare.

Truth: a CSV with an id column (``image_name``, ``image_id``, ``image_path``, ``image`` or ``index``)
and a 0/1 ``target`` or ``label`` column. ROC-AUC and average precision.
"""
from __future__ import annotations

from pathlib import Path

from medzoo.benchmarks.challenges.base import Submission, challenge, positive_scores, score_binary, spell_ids

ID_COLUMN = "image_name"


def score(sub: Submission, truth: Path) -> dict:
    """ROC-AUC and average precision of ``target``."""
    return score_binary(sub, truth, ID_COLUMN)


@challenge("isic2020", id_column=ID_COLUMN, columns=("target",), bare_ids=True,
           aliases={"target": ("melanoma", "mel", "malignant", "positive")},
           options={"positive": None, "class_map": None}, score=score,
           description="Kaggle SIIM-ISIC 2020: image_name,target (probability of melanoma)")
def build(fmt, table, *, class_map=None, positive=None):
    """``target`` = the probability of the positive class(es)."""
    return spell_ids(fmt, table.ids), list(fmt.get("columns")), positive_scores(fmt, table, "target", positive,
                                                                               class_map)[:, None]
