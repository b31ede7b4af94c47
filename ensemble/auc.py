"""Exact ROC-AUC, vectorised over many score vectors at once.

AUC is the Mann-Whitney statistic: the chance that a random positive scores above a random
negative, ties counting one half. It is computed from ranks (ties get their average rank),
equals ``sklearn.metrics.roc_auc_score`` to rounding, and takes ``[K, N]`` score matrices so a
subset search can score thousands of candidate ensembles in one call.

Binary tasks use the positive-class column (index 1); tasks with more classes use the macro
average of one-vs-rest AUCs. :func:`binary_auc_bounds` brackets the AUC from histograms,
without sorting, so a search can discard candidates that cannot win before scoring the rest
exactly. :func:`auc_interval` and :func:`near_chance` say whether an AUC is within noise of chance.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_ELEMENTS = 1 << 20
BINS = 1 << 14
TIE_CHECK_GAP = 1e-4
CHANCE_AUC = 0.5
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval is AUC +- Z95 * SE


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float | np.ndarray:
    """ROC-AUC of ``scores`` ``[N]`` or ``[K, N]`` against ``positive`` ``[N]`` (bool or 0/1).

    Returns a float for ``[N]`` scores and a ``[K]`` array for ``[K, N]``. Raises when the
    labels hold only one class or a score is not finite.
    """
    s, positive, n_pos, n_neg = _check_binary(scores, positive)
    rank_sums = _map_rows(lambda rows: _positive_rank_sums(rows, positive), s)
    auc = (rank_sums - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float(auc[0]) if np.ndim(scores) == 1 else auc


def binary_auc_bounds(scores: np.ndarray, positive: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds ``[K]`` on the ROC-AUC of each row of ``scores`` ``[K, N]``, without sorting.

    Each row is binned by value (its min to its max in ``bins`` equal bins). Pairs in
    different bins are ordered by their bins, and pairs in a bin whose scores are all equal
    are ties: both are counted exactly. Only opposite-class pairs sharing a bin of unequal
    scores are unknown; they make the gap between the bounds. O(N + bins) per row; bins are
    checked for equal scores only when the gap would otherwise exceed ``TIE_CHECK_GAP``.
    """
    s, positive, n_pos, n_neg = _check_binary(scores, positive)
    label = positive.astype(np.intp)
    known, unknown = np.empty(s.shape[0]), np.empty(s.shape[0])
    pairs = n_pos * n_neg
    for r, row in enumerate(s):
        low = row.min()
        span = row.max() - low
        b = ((row - low) * ((bins - 1) / span if span > 0 else 0.0)).astype(np.intp)
        key = b * 2
        key += label
        neg, pos = np.bincount(key, minlength=2 * bins).reshape(bins, 2).T
        shared = pos * neg
        known[r] = pos @ (np.cumsum(neg) - neg)
        unknown[r] = shared.sum()
        if unknown[r] > TIE_CHECK_GAP * pairs:
            first = np.empty(bins)
            first[b] = row
            tied = np.bincount(b[row != first[b]], minlength=bins) == 0
            known[r] += 0.5 * shared[tied].sum()
            unknown[r] -= shared[tied].sum()
    return known / pairs, (known + unknown) / pairs


def _check_binary(scores, positive) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(scores [K, N] float64, positive [N] bool, positives, negatives)`` or a clear error."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive).astype(bool).reshape(-1)
    s = scores.reshape(1, -1) if scores.ndim == 1 else scores
    if s.ndim != 2 or s.shape[1] != positive.shape[0]:
        raise ValueError(f"scores have shape {scores.shape}; expected [N] or [K, N] with N = {positive.shape[0]} labels")
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC-AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite; got NaN or infinite values")
    return s, positive, n_pos, n_neg


def midranks(values: np.ndarray) -> np.ndarray:
    """Ranks ``[K, N]`` (1-based, ties get their average rank) of each row of ``values`` ``[K, N]``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values have shape {values.shape}; expected [K, N]")
    return _map_rows(_midranks, values)


def _midranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, axis=1)
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, _sorted_midranks(np.take_along_axis(values, order, axis=1)), axis=1)
    return ranks


def _map_rows(fn, rows: np.ndarray) -> np.ndarray:
    """``fn`` applied to blocks of rows of ``rows`` ``[K, N]`` on a thread per core (numpy sorts release the GIL)."""
    step = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
    if rows.shape[0] <= step:
        return fn(rows)
    blocks = [rows[i:i + step] for i in range(0, rows.shape[0], step)]
    with ThreadPoolExecutor(min(len(blocks), os.cpu_count() or 1)) as pool:
        return np.concatenate(list(pool.map(fn, blocks)))


def _positive_rank_sums(s: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """``[K]`` sums of the (tie-averaged, 1-based) ranks of the positives in each row of ``s`` ``[K, N]``.

    Rows of non-negative scores are sorted as one 64-bit key per image: the float's bit
    pattern (which orders like the value when the sign bit is clear) shifted left, with
    the label in the freed low bit. Other rows use an argsort.
    """
    fast = (s >= 0).all(axis=1)
    sums = np.empty(s.shape[0])
    if fast.any():
        bits = ((s if fast.all() else s[fast]) + 0.0).view(np.uint64)
        keys = np.sort((bits << np.uint64(1)) | positive.astype(np.uint64), axis=1)
        sums[fast] = _rank_sums_sorted(keys >> np.uint64(1), keys & np.uint64(1))
    if not fast.all():
        rows = s[~fast]
        order = np.argsort(rows, axis=1)
        sums[~fast] = _rank_sums_sorted(np.take_along_axis(rows, order, axis=1), positive[order])
    return sums


def _rank_sums_sorted(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[K]`` positive rank sums from rows already sorted by value: ``values``, ``labels`` ``[K, N]``."""
    tied = np.flatnonzero((values[:, 1:] == values[:, :-1]).any(axis=1))
    sums = labels.astype(np.float64) @ np.arange(1, values.shape[1] + 1, dtype=np.float64)
    if tied.size:
        sums[tied] = (labels[tied] * _sorted_midranks(values[tied])).sum(axis=1)
    return sums


def _sorted_midranks(values: np.ndarray) -> np.ndarray:
    """``[K, N]`` tie-averaged 1-based ranks of rows already sorted ascending."""
    k, n = values.shape
    idx = np.arange(n)
    new = np.ones((k, n), dtype=bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    if new.all():
        return np.broadcast_to(idx + 1.0, (k, n))
    start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
    last = np.ones_like(new)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, idx, n - 1)[:, ::-1], axis=1)[:, ::-1]
    return (start + end) / 2 + 1


def class_aucs(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC per class: ``probs`` ``[N, C]`` or ``[K, N, C]``, ``labels`` ``[N]`` -> ``[C]`` or ``[K, C]``.

    Raises naming the class when a class has no images or covers every image.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = _check_labels(probs, labels)
    c = probs.shape[-1]
    out = np.empty(probs.shape[:-2] + (c,))
    for j in range(c):
        positive = labels == j
        if positive.all() or not positive.any():
            raise ValueError(f"class index {j} has {int(positive.sum())} of {len(labels)} images; "
                             f"one-vs-rest AUC needs images in and out of every class")
        out[..., j] = binary_auc(probs[..., j], positive)
    return out


def auc(probs: np.ndarray, labels: np.ndarray) -> float | np.ndarray:
    """Task ROC-AUC of ``probs`` ``[N, C]`` or ``[K, N, C]`` against ``labels`` ``[N]`` (class indices).

    Two classes: AUC of column 1 (the positive class). More classes: macro mean of the
    one-vs-rest AUCs. Returns a float, or ``[K]`` for a batch.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = _check_labels(probs, labels)
    if probs.shape[-1] == 2:
        out = binary_auc(probs[..., 1], labels == 1)
    else:
        out = class_aucs(probs, labels).mean(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def auc_bounds(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """Bounds ``([K], [K])`` on :func:`auc` of ``probs`` ``[K, N, C]`` from :func:`binary_auc_bounds`."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = _check_labels(probs, labels)
    if probs.ndim != 3:
        raise ValueError(f"probs have shape {probs.shape}; expected [K, N, C]")
    if probs.shape[-1] == 2:
        return binary_auc_bounds(probs[..., 1], labels == 1, bins)
    per_class = [binary_auc_bounds(probs[..., j], labels == j, bins) for j in range(probs.shape[-1])]
    return np.mean([lo for lo, _ in per_class], axis=0), np.mean([hi for _, hi in per_class], axis=0)


def _check_labels(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if probs.ndim not in (2, 3) or probs.shape[-2] != labels.shape[0]:
        raise ValueError(f"probs have shape {probs.shape}; expected [N, C] or [K, N, C] with N = {labels.shape[0]} labels")
    if probs.shape[-1] < 2:
        raise ValueError(f"probs have {probs.shape[-1]} class column; AUC needs at least 2")
    if ((labels < 0) | (labels >= probs.shape[-1])).any():
        raise ValueError(f"labels must be class indices 0..{probs.shape[-1] - 1} for every image; "
                         f"got values {sorted(set(labels.tolist()))[:10]} (unknown labels are -1)")
    return labels


def hanley_mcneil_se(a, n_pos, n_neg) -> float | np.ndarray:
    """Standard error of ROC-AUC ``a`` from ``n_pos`` positives and ``n_neg`` negatives (numbers or arrays ``[K]``).

    Hanley & McNeil (1982): ``SE^2 = (A (1 - A) + (n_pos - 1)(Q1 - A^2) + (n_neg - 1)(Q2 - A^2)) / (n_pos n_neg)``
    with ``Q1 = A / (2 - A)`` and ``Q2 = 2 A^2 / (1 + A)``. It is 0 at A = 0 and A = 1.
    """
    a = np.asarray(a, dtype=np.float64)
    q1, q2 = a / (2 - a), 2 * a ** 2 / (1 + a)
    se = np.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a ** 2) + (n_neg - 1) * (q2 - a ** 2)) / (n_pos * n_neg))
    return float(se) if se.ndim == 0 else se


def auc_interval(probs: np.ndarray, labels: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """``(auc, low, high)``: the task ROC-AUC of ``probs`` ``[N, C]`` against ``labels`` ``[N]`` and its 95% interval.

    The interval is ``auc +- z * SE``, clipped to [0, 1]. Two classes: SE is Hanley & McNeil's
    (:func:`hanley_mcneil_se`) for the positive column. More classes: the AUC is the macro mean of
    the one-vs-rest AUCs (as :func:`auc`) and SE the mean of their Hanley & McNeil SEs, which is
    at least the macro AUC's SE whatever the correlation between the classes (equal to it when
    they are perfectly correlated): the interval is never narrower than it should be, so a
    member is called better than chance only when every correlation would say so.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = _check_labels(probs, labels)
    if probs.ndim != 2:
        raise ValueError(f"probs have shape {probs.shape}; expected [N, C]")
    if probs.shape[1] == 2:
        a = binary_auc(probs[:, 1], labels == 1)
        n_pos = int((labels == 1).sum())
        se = hanley_mcneil_se(a, n_pos, len(labels) - n_pos)
    else:
        per_class = class_aucs(probs, labels)
        n_pos = np.bincount(labels, minlength=probs.shape[1])
        a = float(per_class.mean())
        se = float(hanley_mcneil_se(per_class, n_pos, len(labels) - n_pos).mean())
    return a, max(0.0, a - z * se), min(1.0, a + z * se)


def near_chance(probs: np.ndarray, labels: np.ndarray) -> bool:
    """True when the ROC-AUC of ``probs`` ``[N, C]`` against ``labels`` ``[N]`` is within noise of chance.

    That is, when its 95% interval (:func:`auc_interval`: Hanley & McNeil standard error; for more
    than two classes the macro AUC with the mean of the classes' standard errors) contains 0.5.
    """
    _, low, high = auc_interval(probs, labels)
    return low <= CHANCE_AUC <= high
