"""Classification metrics for the leaderboard: ROC-AUC with bootstrap CIs, DeLong's test, operating points.

Also DeLong's test over a zoo trained several times (:func:`repeated_delong`), Holm's correction of
several p-values (:func:`holm`), spreads over repeats (:func:`mean_sd`, :func:`spearman`), and whether
the probabilities can be read as probabilities (:func:`expected_calibration_error`, :func:`brier_score`).

Conventions shared by every function here:

* A *binary* problem is ``y [N]`` (bool or 0/1, 1 = positive) with ``score [N]`` (higher = more positive).
* A *table* problem is ``labels [N]`` (int class index) with ``probs [N, C]``. Its AUC is the binary AUC of
  column 1 when ``C == 2`` and otherwise the unweighted mean of the one-vs-rest AUCs of the classes that
  have both positives and negatives (macro). Functions that accept both tell them apart by ``ndim``.
* Absent classes: a class without positives (or without negatives) has no AUC (NaN from
  :func:`roc_auc`) and is skipped by the macro mean (:func:`macro_mean`); the mean is NaN only when no
  class has one. The challenge scorers (``benchmarks.challenges``) use the same two functions.
  (``ensemble.auc`` is stricter: it raises, since an ensemble search needs every candidate scored on
  the same classes.)
* AUC values come from ``ensemble.auc`` (exact Mann-Whitney from midranks): ties between a positive and
  a negative count one half, equal to scikit-learn's ``roc_auc_score`` to rounding.

Operating points: the threshold is chosen on validation scores only (:func:`choose_threshold`) and then
applied unchanged to test scores (:func:`threshold_metrics`); a case is called positive when
``score >= threshold``. Accuracy, balanced accuracy and the multi-class confusion matrix use the argmax
of the class probabilities (:func:`argmax_metrics`), the decision rule MedMNIST's published ACC uses.

Calibration (:func:`calibration_problem`): a binary table (``[N]`` scores, or ``[N, 2]`` and its column 1)
is judged on the positive class, ``(y, p)``; a table of ``C > 2`` classes on its *top label*: the
confidence is the row's largest probability and the event is "the argmax (first on ties, as
:func:`argmax_metrics`) is the true class". The reliability bins are :data:`CALIBRATION_BINS` = 10
equal-width bins over [0, 1], those of scikit-learn's ``calibration_curve(strategy="uniform")``:
``[0, 0.1], (0.1, 0.2], ..., (0.9, 1]``. ECE = sum over bins of ``n_b / N * |frequency_b - mean confidence_b|``.
Brier: binary ``mean (p - y)^2`` of the positive class (scikit-learn's ``brier_score_loss``); for
``C > 2`` the mean over images of ``sum_c (p_c - onehot_c)^2`` (0 to 2; for two classes this sum would
be twice the binary score).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, brier_score_loss,
                             confusion_matrix, roc_curve)

from medzoo.ensemble import auc as exact


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC-AUC of ``score [N]`` for ``y [N]`` (bool or 0/1); NaN when ``y`` holds only one class.

    One score per case; the AUC of a table problem (``labels [N]``, ``probs [N, C]``) is :func:`auc_score`.
    """
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return exact.binary_auc(np.asarray(score, dtype=np.float64), y)


def per_class_auc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC of each class: ``labels [N]``, ``probs [N, C]`` -> ``[C]`` (NaN for an absent class)."""
    labels = np.asarray(labels)
    return np.array([roc_auc(labels == k, probs[:, k]) for k in range(probs.shape[1])])


def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """The leaderboard's AUC: binary for ``scores [N]``, else of a table problem ``scores [N, C]`` (see module doc)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        return roc_auc(labels, scores)
    if scores.shape[1] == 2:
        return roc_auc(np.asarray(labels) == 1, scores[:, 1])
    return macro_mean(per_class_auc(labels, scores))


def macro_mean(values) -> float:
    """Mean of per-class values ``[C]`` over the classes that have one (NaN = absent class, skipped); NaN if none."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision with the same conventions as :func:`auc_score` (macro over classes for ``C > 2``)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim == 2 and scores.shape[1] == 2:
        labels, scores = labels == 1, scores[:, 1]
    if scores.ndim == 1:
        y = labels.astype(bool)
        return float(average_precision_score(y, scores)) if y.any() else float("nan")
    aps = [average_precision_score(labels == k, scores[:, k]) for k in range(scores.shape[1]) if (labels == k).any()]
    return float(np.mean(aps)) if aps else float("nan")


def argmax_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, balanced accuracy and the ``[C, C]`` confusion matrix (rows true, columns predicted) of argmax."""
    pred = np.argmax(probs, axis=1)
    c = probs.shape[1]
    return {"accuracy": float(accuracy_score(labels, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            "confusion": confusion_matrix(labels, pred, labels=np.arange(c))}


CALIBRATION_BINS = 10


def calibration_problem(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What calibration is judged on: ``labels [N]`` with ``probs [N]``, ``[N, 2]`` or ``[N, C]`` ->
    ``(event [N] bool, confidence [N])``.

    Binary (``[N]``, or column 1 of ``[N, 2]``): the event is ``label == 1`` and the confidence its
    probability. ``C > 2``: top label, the confidence is the largest probability of the row and the event
    that its class (the first on ties) is the true one. Raises unless every label is a class index and every
    probability lies in [0, 1].
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim not in (1, 2) or probs.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise ValueError(f"calibration needs labels [N] with probs [N] or [N, C]; got labels of shape {labels.shape} "
                         f"and probs of shape {probs.shape}")
    c = 2 if probs.ndim == 1 else probs.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"calibration needs every label known, a class index in 0..{c - 1}; got labels from "
                         f"{labels.min()} to {labels.max()}")
    if not (np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()):
        raise ValueError(f"calibration needs probabilities in [0, 1]; got values from {np.nanmin(probs)} to "
                         f"{np.nanmax(probs)}")
    if probs.ndim == 1 or c == 2:
        return labels == 1, probs if probs.ndim == 1 else probs[:, 1]
    top = np.argmax(probs, axis=1)
    return top == labels, probs[np.arange(len(top)), top]


def reliability(event: np.ndarray, confidence: np.ndarray,
                n_bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-empty equal-width bins of ``event [N]`` (bool) against ``confidence [N]`` (in [0, 1]).

    Returns ``(mean confidence [B], observed frequency [B], count [B])``, B <= ``n_bins`` bins in increasing
    order of confidence, from scikit-learn's ``calibration_curve(strategy="uniform")``; bin k holds the
    confidences in ``(k / n_bins, (k + 1) / n_bins]``, the first also 0.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    event = np.asarray(event).astype(int)
    confidence = np.asarray(confidence, dtype=np.float64)
    if event.shape != confidence.shape or event.ndim != 1 or not event.size:
        raise ValueError(f"reliability needs event [N] and confidence [N] with N >= 1, got shapes {event.shape} "
                         f"and {confidence.shape}")
    frequency, mean_confidence = calibration_curve(event, confidence, n_bins=n_bins, strategy="uniform", pos_label=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)
    return mean_confidence, frequency, counts[counts > 0]


def calibration_error(event: np.ndarray, confidence: np.ndarray, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE of ``confidence [N]`` for ``event [N]`` (bool): the count-weighted mean over the :func:`reliability`
    bins of ``|observed frequency - mean confidence|``."""
    mean_confidence, frequency, counts = reliability(event, confidence, n_bins)
    return float(np.sum(counts * np.abs(frequency - mean_confidence)) / counts.sum())


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE of ``probs [N]``, ``[N, 2]`` (positive class) or ``[N, C]`` (top label) for ``labels [N]``
    (:func:`calibration_problem`, :func:`calibration_error`)."""
    return calibration_error(*calibration_problem(labels, probs), n_bins)


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Brier score of ``probs [N]`` or ``[N, 2]`` (positive class: ``mean (p - y)^2``, scikit-learn's
    ``brier_score_loss``) or ``[N, C]`` with C > 2 (``mean over images of sum_c (p_c - onehot_c)^2``)."""
    event, _ = calibration_problem(labels, probs)  # checks labels and probabilities
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1 or probs.shape[1] == 2:
        return float(brier_score_loss(event.astype(int), probs if probs.ndim == 1 else probs[:, 1], pos_label=1))
    onehot = np.asarray(labels)[:, None] == np.arange(probs.shape[1])[None, :]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def parse_threshold_rule(rule: str | float) -> tuple[str, float | None]:
    """``"youden"`` -> ``("youden", None)``; ``"sens:0.95"`` or ``0.95`` -> ``("sens", 0.95)``."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        kind, target = "sens", float(rule)
    else:
        text = str(rule).strip().lower()
        if text == "youden":
            return "youden", None
        head, _, tail = text.partition(":")
        if head not in ("sens", "sensitivity") or not tail:
            raise ValueError(f"unknown threshold rule {rule!r}; allowed: youden, sens:<target> (e.g. sens:0.95)")
        try:
            kind, target = "sens", float(tail)
        except ValueError:
            raise ValueError(f"threshold rule {rule!r}: target sensitivity {tail!r} is not a number") from None
    if not 0 < target <= 1:
        raise ValueError(f"threshold rule {rule!r}: target sensitivity must be in (0, 1], got {target}")
    return kind, target


def choose_threshold(y_val: np.ndarray, score_val: np.ndarray, rule: str | float = "youden") -> float:
    """Pick the operating threshold from validation data only.

    ``youden`` maximises sensitivity + specificity - 1 over the validation scores; ``sens:t`` takes the
    highest threshold whose validation sensitivity is at least ``t`` (the best specificity meeting the
    target). Ties go to the highest threshold. ``y_val [N]``, ``score_val [N]``; NaN when ``y_val`` has one class.
    """
    kind, target = parse_threshold_rule(rule)
    y_val = np.asarray(y_val).astype(bool)
    if y_val.all() or not y_val.any():
        return float("nan")
    fpr, tpr, thr = roc_curve(y_val, score_val, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # the first point is the +inf threshold: nothing positive
    if kind == "youden":
        i = int(np.argmax(tpr - fpr))
    else:
        i = int(np.argmax(tpr >= target - 1e-12))
    return float(thr[i])


def threshold_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity, PPV, NPV, F1 and tp/fp/tn/fn of ``score >= threshold``; NaN where undefined."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(score) >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())

    def ratio(a, b):
        return a / b if b else float("nan")

    sens, ppv = ratio(tp, tp + fn), ratio(tp, tp + fp)
    return {"sensitivity": sens, "specificity": ratio(tn, tn + fp), "ppv": ppv, "npv": ratio(tn, tn + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def specificity_at_sensitivity(y: np.ndarray, score: np.ndarray, sensitivity: float = 0.95) -> float:
    """Best specificity over thresholds ``score >= t`` whose sensitivity is at least ``sensitivity``.

    ``y [N]`` (bool or 0/1), ``score [N]``; NaN when ``y`` holds only one class.
    """
    y = np.asarray(y)
    if not 0 < y.sum() < len(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return float((1.0 - fpr[tpr >= sensitivity - 1e-12]).max())


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, tied values sharing their mean rank: ``[..., N]`` -> ``[..., N]``."""
    x = np.asarray(x, dtype=np.float64)
    return exact.midranks(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _binary_problems(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One predictor as binary problems: ``-> (pos [T, N] bool, scores [T, N])``.

    ``scores [N]`` gives T = 1; ``[N, 2]`` gives column 1 (T = 1); ``[N, C]`` gives the C one-vs-rest problems,
    keeping only classes with both positives and negatives. Raises when no problem has both.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        pos, s = labels.astype(bool)[None], scores[None]
    elif scores.ndim == 2 and scores.shape[1] == 2:
        pos, s = (labels == 1)[None], scores[:, 1][None]
    elif scores.ndim == 2:
        pos, s = labels[None, :] == np.arange(scores.shape[1])[:, None], scores.T
    else:
        raise ValueError(f"scores must be [N] or [N, C], got shape {scores.shape}")
    if s.shape[1] != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {s.shape[1]} scores")
    keep = pos.any(axis=1) & ~pos.all(axis=1)
    if not keep.any():
        raise ValueError(f"AUC needs both positive and negative cases; the labels hold a single class: "
                         f"all {labels.shape[0]} are {np.unique(labels).tolist()}")
    return pos[keep], s[keep]


def stratified_bootstrap_indices(strata: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, N]`` row indices; each replicate redraws every stratum (class) from itself, keeping its size.

    Columns are grouped by stratum, so ``strata[idx]`` is the same for every replicate.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    blocks = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        blocks.append(members[rng.integers(0, len(members), size=(n_boot, len(members)))])
    return np.concatenate(blocks, axis=1)


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                  max_elements: int = 2_000_000) -> np.ndarray:
    """AUCs of ``n_boot`` stratified bootstrap replicates: ``labels [N]``, ``scores [N]`` or ``[N, C]`` -> ``[n_boot]``.

    Replicates are ranked in batches of at most ``max_elements`` scores; there is no loop per replicate.
    """
    labels = np.asarray(labels)
    pos, s = _binary_problems(labels, scores)
    strata = labels if np.asarray(scores).ndim == 2 else labels.astype(bool)
    idx = stratified_bootstrap_indices(strata, n_boot, seed)
    pos_b = pos[:, idx[0]] if n_boot else pos
    step = max(1, max_elements // s.size)
    out = [np.mean([exact.binary_auc(s[t, idx[i:i + step]], pos_b[t]) for t in range(len(s))], axis=0)
           for i in range(0, n_boot, step)]
    return np.concatenate(out) if out else np.empty(0)


def auc_ci(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
           level: float = 0.95) -> tuple[float, float]:
    """Percentile confidence interval of the AUC from a stratified bootstrap; ``(nan, nan)`` if ``n_boot == 0``."""
    if n_boot <= 0:
        return float("nan"), float("nan")
    reps = bootstrap_auc(labels, scores, n_boot, seed)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _delong_placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of K predictors and their DeLong structural components, one column per case.

    ``scores [K, N]`` or ``[K, N, C]`` -> ``(auc [K], w [K, N])`` with ``cov = w @ w.T`` (see
    :func:`delong_covariance`). Each column of ``w`` is a case's centred placement value over
    ``sqrt(m (m - 1))`` (a positive) or ``sqrt(n (n - 1))`` (a negative), averaged over the one-vs-rest
    problems of a macro AUC. The divisors depend on the labels only, so averaging ``w`` over predictors
    scored on the same cases gives the components of their averaged AUC.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim not in (2, 3):
        raise ValueError(f"scores must be [K, N] or [K, N, C], got shape {scores.shape}")
    labels = np.asarray(labels)
    parts = [_binary_problems(labels, s) for s in scores]
    pos = parts[0][0]
    s = np.stack([p[1] for p in parts])  # [K, T, N]
    k, t, n_cases = s.shape
    aucs = np.empty((k, t))
    w = np.zeros((k, t, n_cases))
    for j in range(t):
        p = pos[j]
        m, n = int(p.sum()), int((~p).sum())
        if m < 2 or n < 2:
            raise ValueError(f"DeLong's variance needs at least 2 positives and 2 negatives, got {m} and {n}")
        x, y = s[:, j, p], s[:, j, ~p]
        tz = midranks(np.concatenate([x, y], axis=1))
        v10 = (tz[:, :m] - midranks(x)) / n
        v01 = 1.0 - (tz[:, m:] - midranks(y)) / m
        aucs[:, j] = v10.mean(axis=1)
        w[:, j, p] = (v10 - aucs[:, j:j + 1]) / math.sqrt(m * (m - 1))
        w[:, j, ~p] = (v01 - aucs[:, j:j + 1]) / math.sqrt(n * (n - 1))
    return aucs.mean(axis=1), w.mean(axis=1)


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of K predictors on the same cases and DeLong's covariance of them (Sun & Xu 2014).

    ``scores`` is ``[K, N]`` (binary, ``labels`` 0/1) or ``[K, N, C]`` (tables); returns ``(auc [K], cov [K, K])``.

    For one binary problem with m positives and n negatives the placement values come from three
    midrankings (positives alone, negatives alone, all together): ``V10 = (tz_pos - tx) / n`` and
    ``V01 = 1 - (tz_neg - ty) / m``, and ``cov = cov(V10) / m + cov(V01) / n``. It is written here as
    ``W @ W.T`` with one column of ``W [K, N]`` per case (its centred placement value over
    ``sqrt(m (m - 1))`` or ``sqrt(n (n - 1))``), which is the same number. For a macro AUC each case's
    column is the mean of its columns over the one-vs-rest problems, so cases shared between classes
    carry the cross-class covariance; with one problem this is exactly DeLong's estimate.
    """
    aucs, w = _delong_placements(labels, scores)
    return aucs, w @ w.T


def _paired_p(delta: np.ndarray, var: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Two-sided normal p ``[K]`` of differences ``delta [K]`` with variances ``var [K]``.

    A variance below ``1e-12`` times the largest AUC variance on the diagonal of ``cov [K, K]`` (at least
    ``1e-12``) counts as zero: p = 1 for a zero difference (identical predictors), else p = 0.
    """
    tiny = 1e-12 * max(1.0, float(np.abs(np.diag(cov)).max()))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > tiny, np.abs(delta) / np.sqrt(np.maximum(var, tiny)),
                     np.where(np.abs(delta) < 1e-12, 0.0, np.inf))
    return np.array([math.erfc(v / math.sqrt(2)) for v in z])


def delong_test(labels: np.ndarray, scores: np.ndarray, ref: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired DeLong test of each predictor against predictor ``ref`` (two-sided).

    ``scores [K, N]`` or ``[K, N, C]`` -> ``(auc [K], delta [K] = auc - auc[ref], p [K])``. Identical
    predictors (zero difference, zero variance) get p = 1, so ``p[ref]`` is 1.
    """
    aucs, cov = delong_covariance(labels, scores)
    delta = aucs - aucs[ref]
    var = np.diag(cov) + cov[ref, ref] - 2 * cov[:, ref]
    return aucs, delta, _paired_p(delta, var, cov)


REPEATED_DELONG_NAME = "DeLong on the repeat-averaged AUCs plus between-repeat variance"


def repeated_delong(labels: np.ndarray, scores: np.ndarray,
                    ref: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """DeLong on the repeat-averaged AUCs plus between-repeat variance: each predictor against ``ref``.

    For a zoo trained R times (seeds) and every time scored on the same test cases. ``labels [N]``;
    ``scores [R, K, N]`` (binary) or ``[R, K, N, C]`` (tables, AUC as in :func:`auc_score`) ->
    ``(auc [K], delta [K], p [K], parts)``: ``auc`` the mean over the repeats of each predictor's AUC,
    ``delta = auc - auc[ref]``, ``p`` two-sided. ``parts`` holds ``auc_per_repeat [R, K]``,
    ``var_test_set [K]`` and ``var_repeats [K]``, the two terms of the variance of ``delta``.

    The test set is shared by all repeats, so its sampling noise does not average out: the DeLong
    components (placements) of each predictor, averaged over the repeats, give DeLong's covariance of
    the repeat-averaged AUCs, hence ``var_test_set``. Training variance is added as the sample variance
    (ddof 1) of the per-repeat differences ``delta_r`` over R, ``var_repeats`` (0 when R == 1).
    ``z = delta / sqrt(var_test_set + var_repeats)``. With R == 1 this is :func:`delong_test` exactly,
    and ``p[ref]`` is 1 there as here (zero difference, zero variance).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim not in (3, 4) or scores.shape[0] < 1:
        raise ValueError(f"scores must be [R, K, N] or [R, K, N, C] with R >= 1 repeats, got shape {scores.shape}")
    k = scores.shape[1]
    if isinstance(ref, bool) or not isinstance(ref, (int, np.integer)) or not 0 <= ref < k:
        raise ValueError(f"ref must be a predictor index in 0..{k - 1}, got {ref!r}")
    repeats = [_delong_placements(labels, s) for s in scores]
    per_repeat = np.stack([a for a, _ in repeats])  # [R, K]
    w = np.mean([w for _, w in repeats], axis=0)  # [K, N]
    cov = w @ w.T
    aucs = per_repeat.mean(axis=0)
    delta = aucs - aucs[ref]
    var_test_set = np.diag(cov) + cov[ref, ref] - 2 * cov[:, ref]
    deltas = per_repeat - per_repeat[:, ref:ref + 1]
    r = len(per_repeat)
    var_repeats = deltas.var(axis=0, ddof=1) / r if r > 1 else np.zeros(k)
    p = _paired_p(delta, var_test_set + var_repeats, cov)
    return aucs, delta, p, {"auc_per_repeat": per_repeat, "var_test_set": var_test_set, "var_repeats": var_repeats}


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values ``[M]`` -> ``[M]``, in the order given.

    The i-th smallest of the m defined p-values becomes ``max over j <= i of min(1, (m - j + 1) p_(j))``,
    so the adjusted values keep the order of the raw ones (tied raw values get equal adjusted values).
    NaN entries stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional [M], got shape {p.shape}")
    defined = ~np.isnan(p)
    if ((p[defined] < 0) | (p[defined] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1] (or be NaN), got {p[defined & ((p < 0) | (p > 1))].tolist()}")
    idx = np.flatnonzero(defined)
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    out = np.full(p.shape, np.nan)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of ``values [R]``, NaN entries skipped.

    The mean is NaN when no value is defined, the sd when fewer than two are.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be one-dimensional [R], got shape {v.shape}")
    v = v[~np.isnan(v)]
    mean = float(v.mean()) if v.size else float("nan")
    return mean, float(v.std(ddof=1)) if v.size > 1 else float("nan")


def spearman(x, y) -> float:
    """Spearman rank correlation of ``x [N]`` and ``y [N]``: Pearson's r of their midranks.

    Pairs where either value is NaN are skipped; NaN when fewer than two pairs remain or either
    side is constant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be one-dimensional of the same length, got shapes {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 2:
        return float("nan")
    rx, ry = midranks(x[keep]), midranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else float("nan")
