"""Aggregators: pure, vectorised ``probs [M, N, C] -> probs [N, C]`` over M members, N images, C classes.

Every aggregator is one function registered in :data:`AGGREGATORS` (``@AGGREGATORS.register(name, **meta)``);
its first parameter is ``probs``, the others are its parameters, with their defaults in the signature.
Most are *pooled*: the function returns :class:`Parts`, a per-member transform of the probabilities
(features ``[M, N, F]``), a weighted mean over members, and a finishing map back to ``[N, C]``.
Written that way, the same aggregator is evaluated over thousands of member subsets with one
matrix product (:meth:`Aggregator.over_subsets`), which is what the exhaustive subset search
runs on. The others return ``[N, C]`` and name a ``subsets`` function in their metadata.

Metadata an entry may set (everything that lists, builds or checks methods reads it from here):

* ``subsets``: ``subsets(probs [M, N, C], columns, **params)`` -> ``masks [S, M] -> [S, N, len(columns)]``,
  for an aggregator that is not pooled.
* ``default``: in the default method list.
* ``weighted``: needs the user's member ``weights``; left out of the defaults when none are given,
  and of the subset search (it has no weights to search with).
* ``needs_aucs``: learns its ``aucs`` parameter (the members' validation AUCs) when fitted, so it
  needs validation labels and is scored out-of-fold like a learned combiner (its method takes
  ``folds`` and ``seed``; see :class:`medzoo.ensemble.combiners.AggregatorMethod`).
* ``binary_only``: for two-class tasks only.
* ``linear``: its output is the weighted mean of the members' probabilities with the weights in its
  :class:`Parts` (they go in the ensemble's sidecar).

A single member is returned unchanged by every aggregator. For most that is what the
formula gives anyway; for the vote-based ones and ``rank_mean`` (whose output for one
member would be one-hot votes or ranks, not the member's probabilities) it is an explicit
identity: with one member there is nothing to combine.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from medzoo.core.registry import Entry, Registry
from medzoo.ensemble.auc import auc, class_aucs, midranks

DEFAULT_TEMPERATURE = 125.0
TEMPERATURE_CV = "cv"
TEMPERATURE_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 125.0, 300.0, 1000.0)
DEFAULT_THRESHOLD = 0.5
TIE_TOLERANCE = 1e-9
POOL_BLOCK_ELEMENTS = 1 << 18

AGGREGATORS = Registry("aggregator")


class Parts(NamedTuple):
    """A pooled aggregator taken apart.

    features: ``[M, N, F]`` per-member transform of the probabilities.
    weights: ``None`` (equal), ``[M]`` or ``[M, F]`` member weights (renormalised over the members used).
    finish: ``(pooled [..., N, F], columns) -> [..., N, len(columns)]`` applied to the weighted mean
        (``columns`` ``None``: all C), or ``None`` for identity.
    """

    features: np.ndarray
    weights: np.ndarray | None
    finish: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None


@dataclass(frozen=True)
class Aggregator:
    """A registered aggregator, ready to call: ``agg(probs, **params)`` -> ``[N, C]``.

    fn: the registered function. subsets: its ``subsets`` metadata (``None``: pooled, ``fn``
    returns :class:`Parts`). params: ``{parameter: default}`` from ``fn``'s signature, ``probs``
    left out (``inspect.Parameter.empty`` where there is no default). linear: its ``linear`` metadata.
    """

    name: str
    fn: Callable
    subsets: Callable | None
    params: dict
    linear: bool

    @classmethod
    def of(cls, entry: Entry) -> "Aggregator":
        """The aggregator of a registry entry."""
        params = list(inspect.signature(entry.target).parameters.values())[1:]
        return cls(entry.name, entry.target, entry.get("subsets"), {p.name: p.default for p in params},
                   bool(entry.get("linear")))

    @property
    def pooled(self) -> bool:
        return self.subsets is None

    def __call__(self, probs: np.ndarray, **params) -> np.ndarray:
        probs = check_probs(probs)
        self._check_params(params)
        if self.pooled:
            out = combine(self.fn(probs, **params), np.ones((1, probs.shape[0]), dtype=bool))[0]
        else:
            out = self.fn(probs, **params)
        return probs[0].copy() if probs.shape[0] == 1 else out

    def member_weights(self, m: int, c: int, **params) -> np.ndarray | None:
        """Member weights ``[M]`` or ``[M, C]`` of a ``linear`` aggregator (equal: ``1 / M`` each); ``None`` otherwise.

        A linear aggregator's weights do not depend on the probabilities, so they are read from
        its :class:`Parts` for a placeholder ``[M, 1, C]`` input.
        """
        if not self.linear:
            return None
        self._check_params(params)
        weights = self.fn(np.zeros((m, 1, c)), **params).weights
        return np.full(m, 1 / m) if weights is None else weights

    def over_subsets(self, probs: np.ndarray, masks: np.ndarray, **params) -> np.ndarray:
        """Outputs ``[S, N, C]`` for member subsets ``masks`` ``[S, M]`` (bool; row s = members in subset s)."""
        return self.subset_evaluator(probs, **params)(masks)

    def subset_evaluator(self, probs: np.ndarray, columns: Sequence[int] | None = None,
                         **params) -> Callable[[np.ndarray], np.ndarray]:
        """A function ``masks [S, M] -> outputs [S, N, len(columns)]`` (default all C columns).

        The per-member work (ranks, logs, votes, orderings) is done once, here, so a search
        can call the function on many chunks of subsets. One-member subsets give the member.
        """
        probs = check_probs(probs)
        self._check_params(params)
        m, _, c = probs.shape
        cols = np.arange(c) if columns is None else np.asarray(columns)
        if self.pooled:
            parts = self.fn(probs, **params)
            if parts.finish is None:
                w = parts.weights
                parts = Parts(parts.features[:, :, cols], w[:, cols] if w is not None and w.ndim == 2 else w, None)
                run = lambda masks: combine(parts, masks)
            else:
                run = lambda masks: combine(parts, masks, cols)
        else:
            run = self.subsets(probs, cols, **params)

        def evaluate(masks: np.ndarray) -> np.ndarray:
            masks = np.asarray(masks, dtype=bool)
            if masks.ndim != 2 or masks.shape[1] != m or not masks.any(axis=1).all():
                raise ValueError(f"masks have shape {masks.shape}; expected [S, {m}] with a member in every row")
            out = run(masks)
            single = masks.sum(axis=1) == 1
            out[single] = probs[masks[single].argmax(axis=1)][:, :, cols]
            return out

        return evaluate

    def _check_params(self, params: dict) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"aggregator {self.name!r} got unknown parameter(s) {unknown}; "
                             f"allowed: {list(self.params) or 'none'}")


def get_aggregator(name: str) -> Aggregator:
    """The registered aggregator ``name``; an unknown name raises with the closest match."""
    return Aggregator.of(AGGREGATORS[name])


def aggregate(name: str, probs: np.ndarray, **params) -> np.ndarray:
    """Run aggregator ``name`` on ``probs`` ``[M, N, C]`` -> ``[N, C]``."""
    return get_aggregator(name)(probs, **params)


def check_probs(probs: np.ndarray) -> np.ndarray:
    """``probs`` as float64 ``[M, N, C]``, or a clear error."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or 0 in probs.shape:
        raise ValueError(f"probs have shape {probs.shape}; expected [M members, N images, C classes], none empty")
    return probs


def combine(parts: Parts, masks: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of ``parts.features`` over the members of each subset, finished: ``[S, N, C]``.

    ``masks`` ``[S, M]`` bool. Weights are renormalised within each subset. ``columns``
    selects output columns of ``finish`` (default all). Works through blocks of images so
    the pooled features stay in cache between the product and ``finish``.
    """
    x, w, finish = parts
    m, n, f = x.shape
    mw = masks.astype(np.float64)
    mw = mw if w is None else mw[:, :, None] * w[None] if w.ndim == 2 else mw * w
    total = mw.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        s = int(np.flatnonzero((total <= 0).reshape(len(masks), -1).any(axis=1))[0])
        subset = np.flatnonzero(masks[s])
        raise ValueError(f"member weights sum to 0 over the subset of members {subset.tolist()}: their weights are "
                         f"{w[subset].tolist()}; weights must have a positive sum over every subset")
    mw = mw / total
    block = max(256, POOL_BLOCK_ELEMENTS // (mw.shape[0] * f))
    out = None
    for start in range(0, n, block):
        xb = x[:, start:start + block]
        nb = xb.shape[1]
        if mw.ndim == 3:
            pooled = np.stack([mw[:, :, j] @ xb[:, :, j] for j in range(f)], axis=-1)
        else:
            pooled = (mw @ xb.reshape(m, nb * f)).reshape(-1, nb, f)
        done = finish(pooled, columns) if finish is not None else pooled
        if out is None:
            out = np.empty((mw.shape[0], n, done.shape[2]))
        out[:, start:start + nb] = done
    return out


def normalise_weights(weights, m: int, c: int) -> np.ndarray:
    """Member weights ``[M]`` or ``[M, C]``, checked and normalised to sum to 1 over members."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1 and w.shape[0] != m:
        raise ValueError(f"got {w.shape[0]} weights, {m} members")
    if w.ndim not in (1, 2) or (w.ndim == 2 and w.shape != (m, c)):
        raise ValueError(f"got weights of shape {w.shape}; expected [{m}] (per member) or [{m}, {c}] (per member and class)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and non-negative; got {w.tolist()}")
    total = w.sum(axis=0)
    if (total <= 0).any():
        raise ValueError(f"weights sum to 0 (over members); got {w.tolist()}")
    return w / total


def softmax_auc_weights(aucs, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """Member weights ``softmax(temperature * aucs)`` over members: ``aucs`` ``[M]`` or ``[M, C]`` -> same shape."""
    a = np.asarray(aucs, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape[0] == 0 or not np.isfinite(a).all():
        raise ValueError(f"aucs must be finite, [M] or [M, C]; got shape {a.shape}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0; got {temperature}")
    e = np.exp(temperature * (a - a.max(axis=0)))
    return e / e.sum(axis=0)


def validation_aucs(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each member's validation AUC: ``probs`` ``[M, N, C]`` -> ``[M]`` (two classes) or ``[M, C]`` one-vs-rest."""
    probs = check_probs(probs)
    return np.atleast_1d(auc(probs, labels)) if probs.shape[2] == 2 else class_aucs(probs, labels)


def _thresholds(threshold, m: int) -> np.ndarray:
    t = np.asarray(DEFAULT_THRESHOLD if threshold is None else threshold, dtype=np.float64)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != m):
        raise ValueError(f"threshold must be one number or one per member ({m}); got shape {t.shape}")
    return np.broadcast_to(t, (m,))[:, None]


def _positive_votes(probs: np.ndarray, threshold, name: str) -> np.ndarray:
    if probs.shape[2] != 2:
        raise ValueError(f"{name} with a threshold is for two-class tasks; got {probs.shape[2]} classes")
    return (probs[:, :, 1] >= _thresholds(threshold, probs.shape[0])).astype(np.float64)


@AGGREGATORS.register("mean", default=True, linear=True)
def mean(probs: np.ndarray) -> Parts:
    """Plain mean over members: ``[M, N, C] -> [N, C]``."""
    return Parts(probs, None, None)


@AGGREGATORS.register("weighted_mean", default=True, weighted=True, linear=True)
def weighted_mean(probs: np.ndarray, weights) -> Parts:
    """Weighted mean, weights ``[M]`` per member or ``[M, C]`` per member and class, normalised over members."""
    return Parts(probs, normalise_weights(weights, probs.shape[0], probs.shape[2]), None)


def _median_subsets(probs: np.ndarray, columns: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Median over the members of each subset, ``masks [S, M] -> [S, N, len(columns)]``, without gathering subsets.

    Members are ordered per image and class once (ties by member index); ``below[m]`` is the
    bitmask of members ordered before ``m``. In a subset of k members, the one with
    ``popcount(below[m] & subset) == j`` is its j-th smallest. The loop over (subset, member)
    writes into preallocated buffers: fresh temporaries of this size cost more than the arithmetic.
    """
    x = probs[:, :, columns]
    m = x.shape[0]
    if m > 62:
        raise ValueError(f"median over subsets supports at most 62 members; got {m}")
    order = np.argsort(x, axis=0, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m).reshape(m, 1, 1), axis=0)
    member_bits = np.uint64(1) << np.arange(m, dtype=np.uint64)
    below = np.zeros(x.shape, dtype=np.uint64)
    for other in range(m):
        below |= np.where(rank[other] < rank, member_bits[other], np.uint64(0))

    def run(masks: np.ndarray) -> np.ndarray:
        out = np.zeros((masks.shape[0],) + x.shape[1:])
        anded, count = np.empty(x.shape[1:], dtype=np.uint64), np.empty(x.shape[1:], dtype=np.uint8)
        pick, pick_hi, term = np.empty(x.shape[1:], dtype=bool), np.empty(x.shape[1:], dtype=bool), np.empty(x.shape[1:])
        for s, mask in enumerate(masks):
            members = np.flatnonzero(mask)
            bits = np.uint64(member_bits[members].sum())
            lo, hi = (members.size - 1) // 2, members.size // 2
            for j in members:
                np.bitwise_and(below[j], bits, out=anded)
                np.bitwise_count(anded, out=count)
                np.equal(count, lo, out=pick)
                if hi != lo:
                    np.logical_or(pick, np.equal(count, hi, out=pick_hi), out=pick)
                np.add(out[s], np.multiply(x[j], pick, out=term), out=out[s])
            if hi != lo:
                out[s] /= 2
        return out

    return run


@AGGREGATORS.register("median", default=True, subsets=_median_subsets)
def median(probs: np.ndarray) -> np.ndarray:
    """Per-class median over members (mean of the two middle values for an even count); rows need not sum to 1."""
    return np.median(probs, axis=0)


@AGGREGATORS.register("geometric_mean", default=True)
def geometric_mean(probs: np.ndarray) -> Parts:
    """Geometric mean over members per class, renormalised so each row sums to 1.

    Probabilities are floored at the smallest positive float before the log, so a zero from
    one member drives the class towards 0 without erasing the order between images.
    """
    return Parts(np.log(np.maximum(probs, np.finfo(np.float64).tiny)), None, _exp_normalise)


def _exp_normalise(logs: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis, ``columns`` of it; for two classes the same numbers from one exp per row."""
    if logs.shape[-1] == 2:
        d = logs[..., 1] - logs[..., 0]
        e = np.exp(-np.abs(d))
        q = 1 / (1 + e)
        eq = e * q
        up = d >= 0
        return np.stack([np.where(up, q, eq) if j else np.where(up, eq, q)
                         for j in (range(2) if columns is None else columns)], axis=-1)
    e = np.exp(logs - logs.max(axis=-1, keepdims=True))
    out = e / e.sum(axis=-1, keepdims=True)
    return out if columns is None else out[..., columns]


@AGGREGATORS.register("rank_mean", default=True)
def rank_mean(probs: np.ndarray) -> Parts:
    """Mean over members of per-class ranks scaled to [0, 1]: ``(rank - 1) / (N - 1)``, ties averaged.

    Ranks are taken over the images of the table being aggregated (0.5 when N = 1). Two
    classes: the positive column is ranked and the negative column is ``1 - `` it, so rows
    sum to 1. More classes: every column is ranked on its own; rows need not sum to 1.
    """
    m, n, c = probs.shape
    cols = probs[:, :, 1:2] if c == 2 else probs
    rows = cols.transpose(0, 2, 1).reshape(-1, n)
    scaled = (midranks(rows) - 1) / (n - 1) if n > 1 else np.full(rows.shape, 0.5)
    ranks = scaled.reshape(m, cols.shape[2], n).transpose(0, 2, 1)
    return Parts(ranks, None, _with_complement if c == 2 else None)


def _with_complement(pooled: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """``[..., N, 1]`` positive-class scores -> ``[..., N, 2]`` as ``[1 - p, p]`` (``columns`` of it)."""
    p = pooled[..., 0]
    return np.stack([p if j == 1 else 1 - p for j in (range(2) if columns is None else columns)], axis=-1)


@AGGREGATORS.register("majority_vote", default=True)
def majority_vote(probs: np.ndarray, threshold=None) -> Parts:
    """Vote fraction per class: the share of members voting for each class (a score, never one-hot).

    Two classes: a member votes positive when ``p[1] >= threshold`` (default 0.5; one number
    or one per member), so output ``[:, 1]`` is the fraction of positive votes. More classes:
    a member votes for its argmax (ties go to the lowest class index); ``threshold`` is not
    allowed.
    """
    if probs.shape[2] == 2:
        v = _positive_votes(probs, threshold, "majority_vote")
        return Parts(np.stack([1 - v, v], axis=2), None, None)
    if threshold is not None:
        raise ValueError(f"majority_vote takes a threshold only for two classes; got {probs.shape[2]} classes "
                         f"(each member votes for its argmax)")
    return Parts(np.eye(probs.shape[2])[probs.argmax(axis=2)], None, None)


@AGGREGATORS.register("majority_vote_mean", default=True, binary_only=True)
def majority_vote_mean(probs: np.ndarray, threshold=None) -> Parts:
    """The seed tutorial's two-class vote: mean probability of the members on the winning side.

    Each member votes positive when ``p[1] >= threshold`` (default 0.5; one number or one per
    member). If more members vote positive, ``p[1]`` is the mean ``p[1]`` of the positive
    voters; if more vote negative, the mean ``p[1]`` of the negative voters. Tie (an even
    split): the mean ``p[1]`` of all members. Output rows are ``[1 - p, p]``.
    """
    v = _positive_votes(probs, threshold, "majority_vote_mean")
    p = probs[:, :, 1]
    return Parts(np.stack([v, v * p, p], axis=2), None, _winning_side)


def _winning_side(pooled: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """``[..., N, 3]`` pooled (positive vote share, mean of p * vote, mean p) -> ``[..., N, 2]``.

    The negative side's share and p sum are the complements ``1 - pos`` and ``all_p - pos_p``.
    """
    pos, pos_p, all_p = np.moveaxis(pooled, -1, 0)
    margin = 2 * pos - 1
    p = all_p.copy()
    np.divide(pos_p, pos, out=p, where=margin > TIE_TOLERANCE)
    np.divide(all_p - pos_p, 1 - pos, out=p, where=margin < -TIE_TOLERANCE)
    np.clip(p, 0, 1, out=p)
    return np.stack([p if j == 1 else 1 - p for j in (range(2) if columns is None else columns)], axis=-1)


@AGGREGATORS.register("softmax_auc", default=True, needs_aucs=True, linear=True)
def softmax_auc(probs: np.ndarray, aucs, temperature: float = DEFAULT_TEMPERATURE) -> Parts:
    """Weighted mean with weights ``softmax(temperature * aucs)`` over members.

    ``aucs``: validation AUCs, ``[M]`` (one per member; two classes) or ``[M, C]`` (per-class
    one-vs-rest AUCs, giving per-class weights). See :func:`validation_aucs`. ``temperature``: a
    number >= 0 here; a method built with ``temperature = "cv"`` (:data:`TEMPERATURE_CV`) chooses
    one from :data:`TEMPERATURE_GRID` when fitted (:func:`medzoo.ensemble.combiners.cv_temperature`).
    """
    a = np.asarray(aucs, dtype=np.float64)
    if a.shape not in ((probs.shape[0],), probs.shape[::2]):
        raise ValueError(f"got aucs of shape {a.shape}; expected [{probs.shape[0]}] or [{probs.shape[0]}, {probs.shape[2]}] "
                         f"for {probs.shape[0]} members and {probs.shape[2]} classes")
    return Parts(probs, softmax_auc_weights(a, temperature), None)
