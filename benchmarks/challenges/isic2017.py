"""ISIC 2017 Part 3: ``image_id,melanoma,seborrheic_keratosis``, scored per task as the challenge did.

Submission: the two task scores are read off the 3-class table: ``melanoma`` = p(melanoma) and
``seborrheic_keratosis`` = p(seborrheic keratosis), the probabilities of those classes as they stand
(no renormalisation); each task was scored one-vs-rest. Option ``header=False`` writes the header-less
variant the 2017 scorer read. Ids are bare (``ISIC_0012086``).

Truth: the ISIC GroundTruth CSV ``image_id,melanoma,seborrheic_keratosis`` (0/1). Scores per task:
ROC-AUC, average precision, specificity at 95% sensitivity; and the mean of the two AUCs (the
challenge's ranking number).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medzoo.benchmarks import metrics
from medzoo.benchmarks.challenges.base import (ID_COLUMNS, Submission, challenge, class_index, join_bare, pick_column,
                                               read_truth_csv, spell_ids)

TASKS = ("melanoma", "seborrheic_keratosis")


def score(sub: Submission, truth: Path) -> dict:
    """Per task AUC, average precision and specificity at 95% sensitivity; ``mean_auc`` of the two."""
    header, rows = read_truth_csv(truth)
    cols = [pick_column(header, [c], truth, c) for c in TASKS]
    id_col = pick_column(header, ID_COLUMNS, truth, "id")
    y = np.array([[float(r[c]) for c in cols] for r in rows])
    y = y[join_bare(sub, rows, id_col, truth)]
    out = {}
    for j, task in enumerate(TASKS):
        s = sub.column(task)
        out[f"{task}_auc"] = metrics.roc_auc(y[:, j], s)
        out[f"{task}_average_precision"] = metrics.average_precision(y[:, j], s)
        out[f"{task}_specificity_at_95_sensitivity"] = metrics.specificity_at_sensitivity(y[:, j], s, 0.95)
    out["mean_auc"] = (out["melanoma_auc"] + out["seborrheic_keratosis_auc"]) / 2
    out["n"] = len(sub.ids)
    return out


@challenge("isic2017", id_column="image_id", columns=TASKS, header_optional=True, bare_ids=True,
           aliases={"melanoma": ("mel",), "seborrheic_keratosis": ("seborrheic keratosis", "sk")},
           options={"class_map": None}, score=score,
           description="ISIC 2017 Part 3: image_id,melanoma,seborrheic_keratosis (task probabilities)")
def build(fmt, table, *, class_map=None):
    """Each task column is the probability of the table class named like it."""
    cols = [class_index(fmt, table, c, class_map) for c in fmt.get("columns")]
    return spell_ids(fmt, table.ids), list(fmt.get("columns")), table.probs[:, cols]
