"""Ensemble methods over probability tables: ``fit(validation tables)`` then ``predict(any tables)``.

Every aggregator is a method (:class:`AggregatorMethod`; only ``softmax_auc`` learns
anything: the members' validation AUCs). The learned combiners live in :data:`COMBINERS`:
``stacking`` (logistic regression on the members' probabilities), ``greedy`` (Caruana et al.
2004 ensemble selection with replacement and bagging) and ``subset_search`` (every non-empty
subset of members under each aggregator, ranked by validation ROC-AUC).

No method may see test labels: ``fit`` raises for a table whose sidecar says split "test".

The learned combiners' ``validation_table()`` is out-of-fold (see :meth:`Combiner.fit`), so the
validation AUC that ranks them on the leaderboard is not scored on the images they were fitted
on. ``softmax_auc`` learns one number per member from validation and reports in-sample.
"""
from __future__ import annotations

import copy
import inspect
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from medzoo.ensemble.aggregators import (AGGREGATORS, DEFAULT_TEMPERATURE, get_aggregator, normalise_weights,
                                  softmax_auc_weights, validation_aucs)
from medzoo.ensemble.auc import auc, auc_bounds, binary_auc, binary_auc_bounds
from medzoo.core.names import unknown_name
from medzoo.ensemble.table import ProbabilityTable, align

MAX_SUBSET_MEMBERS = 16
SUBSET_CHUNK_ELEMENTS = 1 << 23


class Combiner:
    """Base: ``fit(tables)`` on validation tables, ``predict(tables)`` -> :class:`ProbabilityTable`.

    Subclasses implement ``_fit(probs [M, N, C], labels [N])`` and ``_predict(probs) -> [N, C]``
    and may add sidecar entries in ``info`` (a dict). With ``out_of_fold`` set (the learned
    combiners, which then have ``folds`` and ``seed``), ``validation_table()`` holds out-of-fold
    outputs: K = min(folds, smallest class count) stratified, seeded folds of the validation
    images, each predicted by the method refitted on the other K - 1; ``predict`` uses the fit on
    all of them. Otherwise it is the output on the tables it was fitted on.
    """

    name = "?"
    needs_labels = True
    out_of_fold = False

    def fit(self, tables: Sequence[ProbabilityTable]) -> "Combiner":
        for t in tables:
            if t.split == "test":
                raise ValueError(f"{self.name} fits on validation tables only; the table of member {t.name!r} "
                                 f"is marked split 'test'")
        ids, classes, probs, labels = align(tables)
        if self.needs_labels and not (labels >= 0).all():
            raise ValueError(f"{self.name} needs a label for every validation image; "
                             f"{int((labels < 0).sum())} of {len(labels)} are unknown")
        self.members = [t.name for t in tables]
        self.classes = classes
        self.info: dict = {}
        self._fit_tables = list(tables)
        self._fit(probs, labels)
        self._val_probs = self._predict(probs)
        if self.out_of_fold:
            in_sample = float(auc(self._val_probs, labels))
            self._val_probs = self._cross_validate(probs, labels)
            self.info.update(val_auc_out_of_fold=float(auc(self._val_probs, labels)), val_auc_in_sample=in_sample)
        return self

    def _cross_validate(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Out-of-fold outputs ``[N, C]`` for ``probs`` ``[M, N, C]``; records ``info["folds"]``."""
        from sklearn.model_selection import StratifiedKFold
        smallest = int(np.bincount(labels, minlength=probs.shape[2]).min())
        folds = min(self.folds, smallest)
        if folds < 2:
            raise ValueError(f"{self.name} is scored out-of-fold on validation and needs at least 2 images of "
                             f"every class; the smallest class has {smallest}")
        out = np.empty(probs.shape[1:])
        for train, held in StratifiedKFold(folds, shuffle=True, random_state=self.seed).split(labels, labels):
            part = copy.copy(self)
            part.info = {}
            part._fit(probs[:, train], labels[train])
            out[held] = part._predict(probs[:, held])
        self.info["folds"] = folds
        return out

    def predict(self, tables: Sequence[ProbabilityTable]) -> ProbabilityTable:
        if not hasattr(self, "members"):
            raise ValueError(f"{self.name} must be fitted on validation tables before predict")
        names = [t.name for t in tables]
        if names != self.members:
            raise ValueError(f"{self.name} was fitted on members {self.members}; got tables of {names}")
        ids, classes, probs, labels = align(tables)
        if classes != self.classes:
            raise ValueError(f"{self.name} was fitted on classes {self.classes}; got {classes}")
        return self._table(tables, ids, self._predict(probs), labels)

    def validation_table(self) -> ProbabilityTable:
        """The output ``[N, C]`` on the validation tables used in ``fit``: out-of-fold where ``out_of_fold``."""
        if not hasattr(self, "members"):
            raise ValueError(f"{self.name} must be fitted on validation tables before validation_table")
        ids, _, _, labels = align(self._fit_tables)
        return self._table(self._fit_tables, ids, self._val_probs, labels)

    def sidecar(self) -> dict:
        """What made the output: method, members and weights, plus method-specific entries."""
        return {"method": self.name, "members": self.members, "weights": self.weights(), **self.info}

    def weights(self):
        """Effective member weights ``{member: weight}``, or ``None`` where the method has none."""
        return None

    def _table(self, tables, ids, probs, labels) -> ProbabilityTable:
        first = tables[0].meta
        meta = {k: first[k] for k in ("split", "dataset") if k in first}
        meta.update(self.sidecar())
        return ProbabilityTable(ids, self.classes, np.clip(probs, 0.0, 1.0), labels, meta)


class AggregatorMethod(Combiner):
    """One aggregator as a method. ``params`` are the aggregator's, with member-keyed values allowed:
    ``weights`` / ``threshold`` as ``{member: value}`` dicts. ``softmax_auc`` learns ``aucs`` in fit.
    """

    def __init__(self, name: str, **params):
        self.aggregator = get_aggregator(name)
        self.name = name
        self.needs_labels = name == "softmax_auc"
        allowed = set(self.aggregator.params) - ({"aucs"} if name == "softmax_auc" else set())
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(f"method {name!r} got unknown option(s) {unknown}; allowed: {sorted(allowed) or 'none'}")
        self.params = params

    def _fit(self, probs, labels):
        self._params = {k: _per_member(v, self.members, k) for k, v in self.params.items()}
        if self.name == "softmax_auc":
            self._params["aucs"] = validation_aucs(probs, labels)
            self.info.update(val_aucs=self._params["aucs"].tolist(), in_sample=True)

    def _predict(self, probs):
        return self.aggregator(probs, **self._params)

    def weights(self):
        w = member_weights(self.name, self._params, len(self.members), len(self.classes))
        return None if w is None else dict(zip(self.members, w.tolist()))


def member_weights(name: str, params: dict, m: int, c: int) -> np.ndarray | None:
    """Member weights ``[M]`` or ``[M, C]`` that aggregator ``name`` applies, or ``None`` if it is not a weighted mean."""
    if name == "mean":
        return np.full(m, 1 / m)
    if name == "weighted_mean":
        return normalise_weights(params["weights"], m, c)
    if name == "softmax_auc":
        return softmax_auc_weights(params["aucs"], params.get("temperature", DEFAULT_TEMPERATURE))
    return None


def _per_member(value, members: list[str], key: str):
    """A ``{member: value}`` dict as a list in member order; other values unchanged."""
    if not isinstance(value, dict):
        return value
    missing = [m for m in members if m not in value]
    extra = [k for k in value if k not in members]
    if missing or extra:
        raise ValueError(f"{key} is given per member; missing members {missing}, unknown members {extra} "
                         f"(members: {members})")
    return [value[m] for m in members]


COMBINERS: dict[str, type[Combiner]] = {}


def register_combiner(name: str):
    """Class decorator adding a learned combiner to :data:`COMBINERS`; a duplicate name raises."""
    def deco(cls):
        if name in COMBINERS or name in AGGREGATORS:
            raise ValueError(f"method name {name!r} is already taken")
        cls.name = name
        COMBINERS[name] = cls
        return cls
    return deco


def method_names() -> list[str]:
    """Every method name: the aggregators, then the learned combiners."""
    return [*AGGREGATORS, *COMBINERS]


def make_method(name: str, **params) -> Combiner:
    """A fresh method by name: a learned combiner or an aggregator; bad names and options raise."""
    if name in AGGREGATORS:
        return AggregatorMethod(name, **params)
    if name not in COMBINERS:
        raise ValueError(unknown_name("ensemble method", name, method_names()))
    cls = COMBINERS[name]
    allowed = list(inspect.signature(cls.__init__).parameters)[1:]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r} got unknown option(s) {unknown}; allowed: {allowed}")
    return cls(**params)


@register_combiner("stacking")
class Stacking(Combiner):
    """Logistic regression on the members' validation probabilities.

    Features ``[N, M]`` (two classes: each member's positive probability) or ``[N, M * C]``.
    """

    out_of_fold = True

    def __init__(self, folds: int = 5, C: float = 1.0, seed: int = 0):
        self.folds, self.C, self.seed = int(folds), float(C), int(seed)

    @staticmethod
    def _features(probs: np.ndarray) -> np.ndarray:
        cols = probs[:, :, 1:] if probs.shape[2] == 2 else probs
        return cols.transpose(1, 0, 2).reshape(probs.shape[1], -1)

    def _model(self):
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(C=self.C, max_iter=1000)

    def _fit(self, probs, labels):
        self.model = self._model().fit(self._features(probs), labels)
        self.info.update(C=self.C, intercept=self.model.intercept_.tolist(), coef=self.model.coef_.tolist())

    def _predict(self, probs):
        return self.model.predict_proba(self._features(probs))


@register_combiner("greedy")
class GreedySelection(Combiner):
    """Ensemble selection with replacement (Caruana et al. 2004) on validation ROC-AUC, bagged.

    Each of ``bags`` bags draws ``bag_fraction`` of the members (all when ``bags == 1``),
    then adds, ``steps`` times, the member whose addition to the running mean gives the best
    validation AUC (ties: lowest member index), and keeps the prefix of steps with the best
    AUC (the longest such prefix: re-adding the one best member keeps its AUC). Each bag's ensemble is the mean of its selections (weights = its counts / its steps);
    the result averages the bags' ensembles. ``info["selection_counts"]`` sums the counts of the
    fit on all validation images.
    """

    out_of_fold = True

    def __init__(self, steps: int = 50, bags: int = 20, bag_fraction: float = 0.5, folds: int = 5, seed: int = 0):
        if steps < 1 or bags < 1 or not 0 < bag_fraction <= 1:
            raise ValueError(f"greedy needs steps >= 1, bags >= 1 and 0 < bag_fraction <= 1; "
                             f"got steps={steps}, bags={bags}, bag_fraction={bag_fraction}")
        self.steps, self.bags, self.bag_fraction = int(steps), int(bags), float(bag_fraction)
        self.folds, self.seed = int(folds), int(seed)

    def _fit(self, probs, labels):
        m = probs.shape[0]
        rng = np.random.default_rng(self.seed)
        size = m if self.bags == 1 else max(1, int(round(self.bag_fraction * m)))
        self.counts = np.zeros(m, dtype=np.int64)
        self._weights = np.zeros(m)
        for _ in range(self.bags):
            bag = np.sort(rng.choice(m, size, replace=False))
            counts = self._select(probs[bag], labels, bag, m)
            self.counts += counts
            self._weights += counts / counts.sum() / self.bags
        self.info["selection_counts"] = dict(zip(self.members, self.counts.tolist()))
        self.info.update(steps=self.steps, bags=self.bags, bag_fraction=self.bag_fraction)

    def _select(self, bag_probs, labels, bag, m) -> np.ndarray:
        """Selection counts ``[M]`` from one bag: ``bag_probs`` ``[B, N, C]``, ``bag`` ``[B]`` member indices."""
        total = np.zeros(bag_probs.shape[1:])
        chosen, scores = [], []
        for step in range(self.steps):
            candidates = (total + bag_probs) / (step + 1)
            aucs = np.atleast_1d(auc(candidates, labels))
            best = int(np.argmax(aucs))
            chosen.append(bag[best])
            scores.append(aucs[best])
            total += bag_probs[best]
        keep = len(scores) - int(np.argmax(scores[::-1]))
        return np.bincount(chosen[:keep], minlength=m)

    def _predict(self, probs):
        return np.tensordot(self._weights, probs, axes=(0, 0))

    def weights(self):
        return dict(zip(self.members, self._weights.tolist()))


def all_subsets(m: int) -> np.ndarray:
    """Every non-empty subset of ``m`` members as masks ``[2^m - 1, m]``; row s is the binary digits of s + 1."""
    if m > MAX_SUBSET_MEMBERS:
        raise ValueError(f"subset search scores all 2^M - 1 subsets; M = {m} members gives {2 ** m - 1}, "
                         f"more than the {2 ** MAX_SUBSET_MEMBERS - 1} allowed (at most {MAX_SUBSET_MEMBERS} members); "
                         f"choose members with the ensemble 'members' option")
    return ((np.arange(1, 2 ** m)[:, None] >> np.arange(m)) & 1).astype(bool)


def subset_aucs(probs: np.ndarray, labels: np.ndarray, aggregator: str, masks: np.ndarray, bounds: bool = False,
                progress=None, **params):
    """Validation AUC ``[S]`` of ``aggregator`` over each member subset in ``masks`` ``[S, M]``.

    With ``bounds=True`` returns ``(lower [S], upper [S])`` from histograms instead (see
    :func:`ensemble.auc.auc_bounds`), several times cheaper than exact AUCs at large N.
    ``params`` are the aggregator's, given for all M members (subsets renormalise weights).
    Outputs are built in chunks of subsets, with BLAS on one thread (its many small
    products are slower when threaded, worse so on a busy machine).
    """
    with threadpool_limits(1, user_api="blas"):
        return _subset_aucs(probs, labels, aggregator, masks, bounds, progress, **params)


def _subset_aucs(probs, labels, aggregator, masks, bounds, progress, **params):
    n, c = probs.shape[1:]
    binary = c == 2
    evaluate = get_aggregator(aggregator).subset_evaluator(probs, columns=[1] if binary else None, **params)
    step = max(1, SUBSET_CHUNK_ELEMENTS // n)
    parts = []
    for i in range(0, masks.shape[0], step):
        out = evaluate(masks[i:i + step])
        if binary:
            parts.append((binary_auc_bounds if bounds else binary_auc)(out[:, :, 0], labels == 1))
        else:
            parts.append((auc_bounds if bounds else auc)(out, labels))
        if progress is not None:
            progress.update(min(step, masks.shape[0] - i))
    if bounds:
        return np.concatenate([lo for lo, _ in parts]), np.concatenate([hi for _, hi in parts])
    return np.concatenate([np.atleast_1d(a) for a in parts])


@register_combiner("subset_search")
class SubsetSearch(Combiner):
    """Exhaustive search: every non-empty subset of members under each aggregator, by validation ROC-AUC.

    ``aggregators``: default every registered one that needs no extra input (``weighted_mean``
    needs weights; ``majority_vote_mean`` is for two classes only). ``softmax_auc`` uses the
    members' validation AUCs and ``temperature``; the vote aggregators use ``threshold``.
    Each aggregator is scored first by histogram bounds on every subset's AUC, then exactly
    where a bound says it can matter (see ``_exact_candidates``).
    Ranking: higher AUC first, then fewer members, then aggregator order, then subset order.
    The best (aggregator, subset) on all validation images is the ensemble; ``info["top"]``
    lists the best ``top`` (their AUCs are in-sample). At most 16 members.
    """

    out_of_fold = True

    def __init__(self, aggregators: Sequence[str] | None = None, temperature: float = DEFAULT_TEMPERATURE,
                 threshold=None, top: int = 20, folds: int = 5, seed: int = 0):
        for a in aggregators or []:
            get_aggregator(a)
            if a == "weighted_mean":
                raise ValueError("subset_search cannot use weighted_mean: it has no weights to search with; "
                                 "use softmax_auc or mean")
        self.aggregators = None if aggregators is None else list(aggregators)
        self.temperature, self.threshold, self.top = temperature, threshold, int(top)
        self.folds, self.seed = int(folds), int(seed)

    def _params(self, name: str) -> dict:
        if name == "softmax_auc":
            return {"aucs": self._aucs, "temperature": self.temperature}
        if name.startswith("majority_vote"):
            return {"threshold": _per_member(self.threshold, self.members, "threshold")}
        return {}

    def _fit(self, probs, labels):
        m, n, c = probs.shape
        masks = all_subsets(m)
        names = self.aggregators or [a for a in AGGREGATORS if a != "weighted_mean" and (c == 2 or a != "majority_vote_mean")]
        self._aucs = validation_aucs(probs, labels)
        with threadpool_limits(1, user_api="blas"), \
                tqdm(total=len(names) * len(masks), desc="subset search", unit="subset", disable=None) as bar:
            bounds = [_subset_aucs(probs, labels, name, masks, True, bar, **self._params(name)) for name in names]
            low, high = np.array([lo for lo, _ in bounds]), np.array([hi for _, hi in bounds])
            scores = self._exact_candidates(probs, labels, names, masks, low, high)
        agg_idx, sub_idx = np.nonzero(np.isfinite(scores))
        sizes = masks.sum(axis=1)[sub_idx]
        order = np.lexsort((sub_idx, agg_idx, sizes, -scores[agg_idx, sub_idx]))
        best_a, best_s = agg_idx[order[0]], sub_idx[order[0]]
        self.best_aggregator, self.best_mask = names[best_a], masks[best_s]
        self.info.update(
            aggregator=self.best_aggregator,
            selected=[mb for mb, keep in zip(self.members, self.best_mask) if keep],
            subsets_scored=int(low.size),
            exact_aucs=int(np.isfinite(scores).sum()),
            best_val_auc_per_aggregator={nm: float(np.nanmax(scores[i])) for i, nm in enumerate(names)},
            top=[{"aggregator": names[agg_idx[k]], "val_auc": float(scores[agg_idx[k], sub_idx[k]]),
                  "members": [mb for mb, keep in zip(self.members, masks[sub_idx[k]]) if keep]}
                 for k in order[:self.top]],
        )

    def _exact_candidates(self, probs, labels, names, masks, low, high) -> np.ndarray:
        """Exact AUCs ``[A, S]`` where they can matter, NaN elsewhere.

        A (aggregator, subset) whose upper bound is below both the ``top``-th best lower bound
        overall and its aggregator's best lower bound can be neither in the top list nor its
        aggregator's best, so only the others are scored exactly.
        """
        kth = np.sort(low, axis=None)[-min(max(self.top, 1), low.size)]
        candidate = high >= np.minimum(kth, low.max(axis=1, keepdims=True))
        scores = np.full(low.shape, np.nan)
        for a, name in enumerate(names):
            rows = np.flatnonzero(candidate[a])
            scores[a, rows] = _subset_aucs(probs, labels, name, masks[rows], False, None, **self._params(name))
        return scores

    def _subset_params(self) -> dict:
        """The best aggregator's parameters restricted to the selected members."""
        params = self._params(self.best_aggregator)
        for key in ("aucs", "threshold"):
            if np.ndim(params.get(key)) >= 1:
                params[key] = np.asarray(params[key])[self.best_mask]
        return params

    def _predict(self, probs):
        return get_aggregator(self.best_aggregator)(probs[self.best_mask], **self._subset_params())

    def weights(self):
        params = self._subset_params()
        w = member_weights(self.best_aggregator, params, int(self.best_mask.sum()), len(self.classes))
        if w is None:
            return None
        full = np.zeros((len(self.members),) + w.shape[1:])
        full[self.best_mask] = w
        return dict(zip(self.members, full.tolist()))
