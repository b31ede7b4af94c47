"""Ensemble methods over probability tables: ``fit(validation tables)`` then ``predict(any tables)``.

Every method is a registry entry: each aggregator (:data:`medzoo.ensemble.aggregators.AGGREGATORS`) is a
method through :class:`AggregatorMethod` (those with ``needs_aucs`` learn the members' validation AUCs),
and the learned combiners live in :data:`COMBINERS`: ``greedy`` (Caruana et al. 2004 ensemble selection
with replacement and bagging), ``stacking`` (logistic regression on the members' probabilities) and
``subset_search`` (every non-empty subset of members under each aggregator, ranked by validation
ROC-AUC). :func:`make_method` builds any of them by name; adding one is one decorated class
(:func:`combiner`) or function (``@AGGREGATORS.register``).

Methods keep scikit-learn's estimator habits: ``__init__`` stores the parameters as given and
nothing else, :meth:`Combiner.fit` validates them (:meth:`Combiner._validate_params`, which needs no
data, so a config can be checked before training) and sets the fitted state, whose names end in
``_``; :meth:`Combiner.get_params` rebuilds an unfitted copy.

No method may see test labels: ``fit`` raises for a table whose sidecar says split "test".

A fitted method's state is plain JSON (:meth:`Combiner.state`: its options, members, classes, weights,
sidecar entries and what its ``predict`` reads, e.g. stacking's coefficients); :func:`restore_method`
rebuilds from it a method that predicts exactly as the fitted one did, without refitting.

The learned combiners' ``validation_table()`` is out-of-fold (see :meth:`Combiner.fit`), so the
validation AUC that ranks them on the leaderboard is not scored on the images they were fitted
on. So is that of an aggregator that learns its members' AUCs (``needs_aucs``: softmax_auc), whose
method takes ``folds`` and ``seed`` too (:data:`FIT_OPTIONS`). ``temperature = "cv"`` (softmax_auc,
subset_search) chooses the temperature by inner out-of-fold AUC on the images a fit sees
(:func:`cv_temperature`); in out-of-fold scoring each fold's fit chooses its own, nested.
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from medzoo.core.fileio import strict_json
from medzoo.core.names import unknown_name
from medzoo.core.registry import Entry, Registry
from medzoo.ensemble.aggregators import (AGGREGATORS, DEFAULT_TEMPERATURE, TEMPERATURE_CV, TEMPERATURE_GRID,
                                         get_aggregator, validation_aucs)
from medzoo.ensemble.auc import auc, auc_bounds, binary_auc, binary_auc_bounds
from medzoo.ensemble.table import ProbabilityTable, align

STATE_FORMAT = "medzoo-ensemble-state"  # the ``format`` of :meth:`Combiner.state`
STATE_VERSION = 1
MAX_SUBSET_MEMBERS = 16
SUBSET_CHUNK_ELEMENTS = 1 << 23
FIT_OPTIONS = {"folds": 5, "seed": 0}  # the out-of-fold options of an aggregator that learns (needs_aucs), defaults

COMBINERS = Registry("combiner")


class Combiner:
    """Base: ``fit(tables)`` on validation tables, ``predict(tables)`` -> :class:`ProbabilityTable`.

    Fitted state: ``members_`` (member ids, in table order), ``classes_``, ``weights_`` (the effective
    member weights ``{member: weight or [weight per class]}``, ``None`` where the method has none),
    ``info_`` (method-specific sidecar entries), ``val_tables_`` and ``val_probs_`` ``[N, C]`` (the
    output that :meth:`validation_table` holds).

    Subclasses implement ``_fit(probs [M, N, C], labels [N])``, which may set ``weights_`` and add to
    ``info_``, and ``_predict(probs [M, N, C]) -> [N, C]``. With ``out_of_fold`` set (the learned
    combiners and the aggregators with ``needs_aucs``, which then have ``folds`` and ``seed``),
    ``val_probs_`` holds out-of-fold outputs:
    K = min(folds, smallest class count) stratified, seeded folds of the validation images, each
    predicted by a copy (rebuilt from :meth:`get_params`) fitted on the other K - 1; ``predict`` uses
    the fit on all of them. Otherwise it is the output on the tables it was fitted on.
    """

    name = "?"
    needs_labels = True
    out_of_fold = False

    def get_params(self) -> dict:
        """The constructor's parameters as given: ``type(self)(**self.get_params())`` is an unfitted copy."""
        return {p: getattr(self, p) for p in list(inspect.signature(type(self).__init__).parameters)[1:]}

    def options(self) -> dict:
        """The options as given: ``make_method(self.name, **self.options())`` is an unfitted copy."""
        return self.get_params()

    def _validate_params(self) -> None:
        """Raise :class:`ValueError` naming a bad parameter value; needs no data (config checks call it too)."""

    def fit(self, tables: Sequence[ProbabilityTable]) -> "Combiner":
        self._validate_params()
        for t in tables:
            if t.split == "test":
                raise ValueError(f"{self.name} fits on validation tables only; the table of member {t.name!r} "
                                 f"is marked split 'test'")
        ids, classes, probs, labels = align(tables)
        if self.needs_labels and not (labels >= 0).all():
            raise ValueError(f"{self.name} needs a label for every validation image; "
                             f"{int((labels < 0).sum())} of {len(labels)} are unknown")
        self._start([t.name for t in tables], classes)
        self.val_tables_ = list(tables)
        self._fit(probs, labels)
        self.val_probs_ = self._predict(probs)
        if self.out_of_fold:
            in_sample = float(auc(self.val_probs_, labels))
            self.val_probs_ = self._cross_validate(probs, labels)
            self.info_.update(val_auc_out_of_fold=float(auc(self.val_probs_, labels)), val_auc_in_sample=in_sample)
        return self

    def _start(self, members: list[str], classes: list[str]) -> None:
        """The state every fit starts from: its members and classes, no weights, no sidecar entries."""
        self.members_, self.classes_, self.weights_, self.info_ = list(members), classes, None, {}

    def _cross_validate(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Out-of-fold outputs ``[N, C]`` for ``probs`` ``[M, N, C]``; records ``info_["folds"]``."""
        splits = _stratified_folds(labels, probs.shape[2], self.folds, self.seed,
                                  f"{self.name} is scored out-of-fold on validation")
        out = np.empty(probs.shape[1:])
        for train, held in splits:
            part = type(self)(**self.get_params())
            part._start(self.members_, self.classes_)
            part._fit(probs[:, train], labels[train])
            out[held] = part._predict(probs[:, held])
        self.info_["folds"] = len(splits)
        return out

    def _choose_temperature(self, probs, labels, aggregator: str, params: dict) -> float:
        """:func:`cv_temperature` with this method's ``folds`` and ``seed``; the choice and the grid's AUCs go in
        ``info_``."""
        chosen, inner, folds = cv_temperature(probs, labels, self.folds, self.seed, aggregator, **params)
        self.info_.update(temperature_chosen=chosen, temperature_grid=list(TEMPERATURE_GRID),
                          temperature_inner_aucs=inner.tolist(), temperature_inner_folds=folds)
        return chosen

    def _check_fitted(self, what: str) -> None:
        if "members_" not in vars(self):
            raise ValueError(f"{self.name} is not fitted; call fit(val_tables) first (it must be fitted on "
                             f"validation tables before {what})")

    def predict(self, tables: Sequence[ProbabilityTable]) -> ProbabilityTable:
        self._check_fitted("predict")
        names = [t.name for t in tables]
        if names != self.members_:
            raise ValueError(f"{self.name} was fitted on members {self.members_}; got tables of {names}")
        ids, classes, probs, labels = align(tables)
        if classes != self.classes_:
            raise ValueError(f"{self.name} was fitted on classes {self.classes_}; got {classes}")
        return self._table(tables, ids, self._predict(probs), labels)

    def validation_table(self) -> ProbabilityTable:
        """The output ``[N, C]`` on the validation tables used in ``fit``: out-of-fold where ``out_of_fold``."""
        self._check_fitted("validation_table")
        if "val_tables_" not in vars(self):
            raise ValueError(f"{self.name} was restored from its saved state and only predicts; fit it on the "
                             f"validation tables for a validation table")
        ids, _, _, labels = align(self.val_tables_)
        return self._table(self.val_tables_, ids, self.val_probs_, labels)

    def sidecar(self) -> dict:
        """What made the output: method, members and weights, plus method-specific entries."""
        return {"method": self.name, "members": self.members_, "weights": self.weights_, **self.info_}

    def state(self) -> dict:
        """The fitted state as JSON-able values, what :func:`restore_method` rebuilds the method from.

        ``{"format": STATE_FORMAT, "version", "method", "options"`` (:meth:`options`), ``"members"``,
        ``"classes"``, ``"weights"``, ``"info"`` (the sidecar entries) and ``"fitted"`` (what ``_predict``
        reads: :meth:`_fitted_state`)``}``. Arrays become lists; non-finite numbers become ``null`` when
        written with :func:`medzoo.core.fileio.write_json` (and NaN again when restored).
        """
        self._check_fitted("state")
        return strict_json({"format": STATE_FORMAT, "version": STATE_VERSION, "method": self.name,
                            "options": self.options(), "members": self.members_, "classes": self.classes_,
                            "weights": self.weights_, "info": self.info_, "fitted": self._fitted_state()})

    def _fitted_state(self) -> dict:
        """What ``_predict`` reads beyond the options, as JSON-able values (subclasses with fitted arrays)."""
        return {}

    def _restore_fitted(self, fitted: dict) -> None:
        """Set what :meth:`_fitted_state` saved."""

    def _table(self, tables, ids, probs, labels) -> ProbabilityTable:
        first = tables[0].meta
        meta = {k: first[k] for k in ("split", "dataset") if k in first}
        meta.update(self.sidecar())
        return ProbabilityTable(ids, self.classes_, np.clip(probs, 0.0, 1.0), labels, meta)


class AggregatorMethod(Combiner):
    """One aggregator as a method. ``params`` are the aggregator's, with member-keyed values allowed:
    ``weights`` / ``threshold`` as ``{member: value}`` dicts.

    One with ``needs_aucs`` learns ``aucs`` (``info_["val_aucs"]``) in fit and is scored
    out-of-fold, so it also takes :data:`FIT_OPTIONS` (``folds``, ``seed``). With ``temperature =
    "cv"`` each fit chooses its temperature by :func:`cv_temperature` on the images it sees
    (``info_``: ``temperature_chosen``, ``temperature_grid``, ``temperature_inner_aucs``,
    ``temperature_inner_folds``, from the fit on all validation images).
    """

    def __init__(self, name: str, **params):
        self.name = name
        self.params = params

    def get_params(self) -> dict:
        return {"name": self.name, **self.params}

    def options(self) -> dict:
        return dict(self.params)

    @property
    def needs_labels(self) -> bool:
        return bool(AGGREGATORS[self.name].get("needs_aucs"))

    @property
    def out_of_fold(self) -> bool:
        return self.needs_labels

    @property
    def folds(self) -> int:
        return self.params.get("folds", FIT_OPTIONS["folds"])

    @property
    def seed(self) -> int:
        return self.params.get("seed", FIT_OPTIONS["seed"])

    def _validate_params(self) -> None:
        _check_options(self.name, self.params)
        if "temperature" in self.params:
            check_temperature(self.name, self.params["temperature"])
        if self.needs_labels:
            _check_fold_options(self.name, self.folds, self.seed)

    def _fit(self, probs, labels):
        given = {k: v for k, v in self.params.items() if k not in FIT_OPTIONS}
        self.params_ = {k: _per_member(v, self.members_, k) for k, v in given.items()}
        if self.needs_labels:
            self.params_["aucs"] = validation_aucs(probs, labels)
            self.info_["val_aucs"] = self.params_["aucs"].tolist()
            if self.params_.get("temperature") == TEMPERATURE_CV:
                self.params_["temperature"] = self._choose_temperature(probs, labels, self.name, {
                    k: v for k, v in self.params_.items() if k not in ("aucs", "temperature")})
        w = get_aggregator(self.name).member_weights(len(self.members_), len(self.classes_), **self.params_)
        self.weights_ = None if w is None else dict(zip(self.members_, w.tolist()))

    def _predict(self, probs):
        return get_aggregator(self.name)(probs, **self.params_)

    def _fitted_state(self) -> dict:
        return {"params": self.params_}

    def _restore_fitted(self, fitted: dict) -> None:
        self.params_ = dict(fitted["params"])
        if "aucs" in self.params_:
            self.params_["aucs"] = _floats(self.params_["aucs"])


def _stratified_folds(labels: np.ndarray, c: int, folds: int, seed: int,
                      what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, held)`` index pairs of K = min(folds, smallest class count) stratified, seeded folds of ``labels``
    ``[N]``.

    ``c`` is the class count; K < 2 raises ``"<what> and needs at least 2 images of every class"``.
    """
    from sklearn.model_selection import StratifiedKFold  # sklearn is heavy: loaded when a learned method fits
    smallest = int(np.bincount(labels, minlength=c).min())
    k = min(int(folds), smallest)
    if k < 2:
        raise ValueError(f"{what} and needs at least 2 images of every class; the smallest class has {smallest}")
    return list(StratifiedKFold(k, shuffle=True, random_state=int(seed)).split(labels, labels))


def cv_temperature(probs: np.ndarray, labels: np.ndarray, folds: int, seed: int, aggregator: str = "softmax_auc",
                   **params) -> tuple[float, np.ndarray, int]:
    """The temperature of :data:`TEMPERATURE_GRID` with the best inner out-of-fold AUC: ``(T, aucs [G], K)``.

    ``probs`` ``[M, N, C]``, ``labels`` ``[N]``: the images a fit sees. They are split into K
    stratified folds (:func:`_stratified_folds`); on each, the members' AUCs are learned on the
    other K - 1 and ``aggregator`` (one with ``needs_aucs`` and a ``temperature``; ``params`` are
    its others) is applied to the held fold at every grid temperature. A temperature's score is
    the AUC of its pooled out-of-fold outputs; ties go to the smaller temperature.
    """
    splits = _stratified_folds(labels, probs.shape[2], folds, seed,
                              f"{aggregator} with temperature {TEMPERATURE_CV!r} chooses it by inner out-of-fold AUC "
                              f"on the images of each fit (out-of-fold scoring fits on K - 1 folds)")
    agg = get_aggregator(aggregator)
    out = np.empty((len(TEMPERATURE_GRID),) + probs.shape[1:])
    for train, held in splits:
        aucs = validation_aucs(probs[:, train], labels[train])
        for g, t in enumerate(TEMPERATURE_GRID):
            out[g, held] = agg(probs[:, held], aucs=aucs, temperature=t, **params)
    inner = np.atleast_1d(auc(out, labels))
    return TEMPERATURE_GRID[int(np.argmax(inner))], inner, len(splits)


def check_temperature(method: str, value) -> None:
    """Raise unless ``value`` is a finite number >= 0 or ``"cv"`` (:data:`TEMPERATURE_CV`)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not (number or value == TEMPERATURE_CV):
        raise ValueError(f"{method} temperature = {value!r}; expected a finite number >= 0 or {TEMPERATURE_CV!r} "
                         f"(chosen from {list(TEMPERATURE_GRID)} by inner out-of-fold AUC)")


def _check_fold_options(method: str, folds, seed) -> None:
    for key, value, low in (("folds", folds, 2), ("seed", seed, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{method} {key} = {value!r}; expected an integer >= {low}")


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


def method_names() -> list[str]:
    """Every method name: the aggregators, then the learned combiners, each in registration order."""
    return [*AGGREGATORS.names(), *COMBINERS.names()]


def method_entry(name: str) -> Entry:
    """The registry entry of method ``name`` (an aggregator's or a combiner's); an unknown name raises."""
    for registry in (AGGREGATORS, COMBINERS):
        if name in registry:
            return registry[name]
    raise ValueError(unknown_name("ensemble method", name, method_names()))


def method_params(name: str) -> dict:
    """The options of method ``name`` with their defaults, from its signature (``inspect.Parameter.empty``: none).

    A combiner's are its ``__init__`` parameters; an aggregator's are its parameters, and when it
    ``needs_aucs``, less the ``aucs`` it learns in fit and plus :data:`FIT_OPTIONS` (``folds``, ``seed``).
    """
    entry = method_entry(name)
    if name in COMBINERS:
        return {p.name: p.default for p in list(inspect.signature(entry.target.__init__).parameters.values())[1:]}
    params = get_aggregator(name).params
    if not entry.get("needs_aucs"):
        return dict(params)
    return {**{k: v for k, v in params.items() if k != "aucs"}, **FIT_OPTIONS}


def _check_options(name: str, options: dict) -> None:
    allowed = list(method_params(name))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r} got unknown option(s) {unknown}; allowed: {allowed or 'none'}")


def make_method(name: str, **options) -> Combiner:
    """A fresh, unfitted method by name, a learned combiner or an aggregator; bad names, options and values raise.

    The option values are checked as :meth:`Combiner.fit` checks them (:meth:`Combiner._validate_params`).
    """
    _check_options(name, options)
    method = COMBINERS[name].target(**options) if name in COMBINERS else AggregatorMethod(name, **options)
    method._validate_params()
    return method


def restore_method(state: dict, source: str = "the state") -> Combiner:
    """A predict-only method rebuilt from :meth:`Combiner.state` (``source`` names where it came from in errors).

    Its ``predict`` gives what the fitted method's did, with no refit; ``validation_table`` raises.
    """
    keys = ("format", "version", "method", "options", "members", "classes", "weights", "info", "fitted")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{source} is not a fitted ensemble method's state: format {got!r}, expected {STATE_FORMAT!r}")
    missing = [k for k in keys if k not in state]
    if missing or state["version"] != STATE_VERSION:
        why = f"lacks {missing}" if missing else f"is version {state['version']!r}"
        raise ValueError(f"{source} {why}; this medzoo reads version {STATE_VERSION} with keys {list(keys)}: "
                         f"rebuild the ensembles (medzoo ensemble RUN_DIR)")
    method = make_method(state["method"], **state["options"])
    method._start(state["members"], state["classes"])
    method.weights_, method.info_ = state["weights"], dict(state["info"])
    method._restore_fitted(state["fitted"])
    return method


def _floats(values) -> np.ndarray:
    """A saved list of numbers as float64 (``null``, a non-finite number written as JSON, back to NaN)."""
    return np.asarray(values, dtype=np.float64)


def combiner(name: str, **meta):
    """Class decorator: register a learned combiner in :data:`COMBINERS` as method ``name`` (also its ``name``).

    ``meta`` as for aggregators (``default``: in the default method list). Its ``__init__``
    parameters are its options, and its ``[ensemble.<name>]`` config table. Method names are
    shared with the aggregators, so taking an aggregator's name raises.
    """
    def deco(cls):
        if name in AGGREGATORS:
            raise ValueError(f"method name {name!r} is already taken by an aggregator")
        cls.name = name
        return COMBINERS.register(name, **meta)(cls)

    return deco


@combiner("greedy", default=True)
class GreedySelection(Combiner):
    """Ensemble selection with replacement (Caruana et al. 2004) on validation ROC-AUC, bagged.

    Each of ``bags`` bags draws ``bag_fraction`` of the members (all when ``bags == 1``),
    then adds, ``steps`` times, the member whose addition to the running mean gives the best
    validation AUC (ties: lowest member index), and keeps the prefix of steps with the best
    AUC (the longest such prefix: re-adding the one best member keeps its AUC). Each bag's ensemble is the mean of its selections (weights = its counts / its steps);
    the result averages the bags' ensembles. ``info_["selection_counts"]`` sums the counts of the
    fit on all validation images. Fitted: ``counts_`` ``[M]`` and ``selection_weights_`` ``[M]``.
    """

    out_of_fold = True

    def __init__(self, steps: int = 50, bags: int = 20, bag_fraction: float = 0.5, folds: int = 5, seed: int = 0):
        self.steps, self.bags, self.bag_fraction, self.folds, self.seed = steps, bags, bag_fraction, folds, seed

    def _validate_params(self) -> None:
        if self.steps < 1 or self.bags < 1 or not 0 < self.bag_fraction <= 1:
            raise ValueError(f"{self.name} needs steps >= 1, bags >= 1 and 0 < bag_fraction <= 1; "
                             f"got steps={self.steps}, bags={self.bags}, bag_fraction={self.bag_fraction}")

    def _fit(self, probs, labels):
        m = probs.shape[0]
        steps, bags, bag_fraction = int(self.steps), int(self.bags), float(self.bag_fraction)
        rng = np.random.default_rng(int(self.seed))
        size = m if bags == 1 else max(1, int(round(bag_fraction * m)))
        self.counts_ = np.zeros(m, dtype=np.int64)
        self.selection_weights_ = np.zeros(m)
        for _ in range(bags):
            bag = np.sort(rng.choice(m, size, replace=False))
            counts = self._select(probs[bag], labels, bag, m, steps)
            self.counts_ += counts
            self.selection_weights_ += counts / counts.sum() / bags
        self.weights_ = dict(zip(self.members_, self.selection_weights_.tolist()))
        self.info_["selection_counts"] = dict(zip(self.members_, self.counts_.tolist()))
        self.info_.update(steps=steps, bags=bags, bag_fraction=bag_fraction)

    def _select(self, bag_probs, labels, bag, m, steps) -> np.ndarray:
        """Selection counts ``[M]`` from one bag: ``bag_probs`` ``[B, N, C]``, ``bag`` ``[B]`` member indices."""
        total = np.zeros(bag_probs.shape[1:])
        chosen, scores = [], []
        for step in range(steps):
            candidates = (total + bag_probs) / (step + 1)
            aucs = np.atleast_1d(auc(candidates, labels))
            best = int(np.argmax(aucs))
            chosen.append(bag[best])
            scores.append(aucs[best])
            total += bag_probs[best]
        keep = len(scores) - int(np.argmax(scores[::-1]))
        return np.bincount(chosen[:keep], minlength=m)

    def _predict(self, probs):
        return np.tensordot(self.selection_weights_, probs, axes=(0, 0))

    def _fitted_state(self) -> dict:
        return {"counts": self.counts_, "selection_weights": self.selection_weights_}

    def _restore_fitted(self, fitted: dict) -> None:
        self.counts_ = np.asarray(fitted["counts"], dtype=np.int64)
        self.selection_weights_ = _floats(fitted["selection_weights"])


@combiner("stacking", default=True)
class Stacking(Combiner):
    """Logistic regression on the members' validation probabilities.

    Features ``[N, M]`` (two classes: each member's positive probability) or ``[N, M * C]``.
    Fitted: ``model_`` (the scikit-learn model).
    """

    out_of_fold = True

    def __init__(self, folds: int = 5, C: float = 1.0, seed: int = 0):
        self.folds, self.C, self.seed = folds, C, seed

    @staticmethod
    def _features(probs: np.ndarray) -> np.ndarray:
        cols = probs[:, :, 1:] if probs.shape[2] == 2 else probs
        return cols.transpose(1, 0, 2).reshape(probs.shape[1], -1)

    def _fit(self, probs, labels):
        from sklearn.linear_model import LogisticRegression  # sklearn is heavy: loaded when stacking fits
        self.model_ = LogisticRegression(C=float(self.C), max_iter=1000).fit(self._features(probs), labels)
        self.info_.update(C=float(self.C), intercept=self.model_.intercept_.tolist(), coef=self.model_.coef_.tolist())

    def _predict(self, probs):
        return self.model_.predict_proba(self._features(probs))

    def _fitted_state(self) -> dict:
        m = self.model_
        return {"coef": m.coef_, "intercept": m.intercept_, "classes": m.classes_, "n_iter": m.n_iter_}

    def _restore_fitted(self, fitted: dict) -> None:
        from sklearn.linear_model import LogisticRegression  # sklearn is heavy: loaded when stacking is restored
        self.model_ = LogisticRegression(C=float(self.C), max_iter=1000)
        self.model_.coef_ = _floats(fitted["coef"])
        self.model_.intercept_ = _floats(fitted["intercept"])
        self.model_.classes_ = np.asarray(fitted["classes"])
        self.model_.n_iter_ = np.asarray(fitted["n_iter"], dtype=np.int32)
        self.model_.n_features_in_ = self.model_.coef_.shape[1]


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


@combiner("subset_search", default=True)
class SubsetSearch(Combiner):
    """Exhaustive search: every non-empty subset of members under each aggregator, by validation ROC-AUC.

    ``aggregators``: default every registered one that needs no extra input (none ``weighted``:
    there are no weights to search with; none ``binary_only`` for more than two classes), the
    pooled ones first. Those with ``needs_aucs`` use the members' validation AUCs, and those
    taking ``temperature`` or ``threshold`` get this search's; ``temperature = "cv"`` is chosen once
    per fit, by :func:`cv_temperature` for the first of them over all members, and used for every
    subset (``temperature_`` and the ``temperature_*`` ``info_`` entries). Each aggregator is scored first by
    histogram bounds on every subset's AUC, then exactly where a bound says it can matter (see
    ``_exact_candidates``). Ranking: higher AUC first, then fewer members, then aggregator order,
    then subset order. The best (aggregator, subset) on all validation images is the ensemble
    (fitted: ``aggregator_``, ``mask_`` ``[M]`` bool, ``aucs_``); ``info_["top"]`` lists the best
    ``top`` (their AUCs are in-sample). At most 16 members.
    """

    out_of_fold = True

    def __init__(self, aggregators: Sequence[str] | None = None, temperature: float | str = DEFAULT_TEMPERATURE,
                 threshold=None, top: int = 20, folds: int = 5, seed: int = 0):
        self.aggregators, self.temperature, self.threshold = aggregators, temperature, threshold
        self.top, self.folds, self.seed = top, folds, seed

    def _validate_params(self) -> None:
        check_temperature(self.name, self.temperature)
        for a in self.aggregators or []:
            if AGGREGATORS[a].get("weighted"):
                raise ValueError(f"{self.name} cannot use {a}: it has no weights to search with; "
                                 f"use softmax_auc or mean")

    def _aggregator_names(self, c: int) -> list[str]:
        if self.aggregators is not None:
            return list(self.aggregators)
        usable = [e for e in AGGREGATORS if not e.get("weighted") and (c == 2 or not e.get("binary_only"))]
        return [e.name for e in sorted(usable, key=lambda e: e.get("subsets") is not None)]

    def _params(self, name: str) -> dict:
        """Aggregator ``name``'s parameters for all M members: the learned ``aucs`` where it needs them,
        and this search's options of the same name (``{member: value}`` as a list in member order)."""
        takes = get_aggregator(name).params
        given = {**self.get_params(), "temperature": self.temperature_}
        params = {k: _per_member(v, self.members_, k) for k, v in given.items() if k in takes}
        return {**params, "aucs": self.aucs_} if AGGREGATORS[name].get("needs_aucs") else params

    def _fit(self, probs, labels):
        m, n, c = probs.shape
        masks = all_subsets(m)
        names = self._aggregator_names(c)
        self.aucs_ = validation_aucs(probs, labels)
        self.temperature_ = self.temperature
        tempered = [name for name in names if "temperature" in get_aggregator(name).params]
        if self.temperature == TEMPERATURE_CV and tempered:
            others = {k: v for k, v in self._params(tempered[0]).items() if k not in ("aucs", "temperature")}
            self.temperature_ = self._choose_temperature(probs, labels, tempered[0], others)
        with threadpool_limits(1, user_api="blas"), \
                tqdm(total=len(names) * len(masks), desc="subset search", unit="subset", disable=None) as bar:
            bounds = [_subset_aucs(probs, labels, name, masks, True, bar, **self._params(name)) for name in names]
            low, high = np.array([lo for lo, _ in bounds]), np.array([hi for _, hi in bounds])
            scores = self._exact_candidates(probs, labels, names, masks, low, high)
        agg_idx, sub_idx = np.nonzero(np.isfinite(scores))
        sizes = masks.sum(axis=1)[sub_idx]
        order = np.lexsort((sub_idx, agg_idx, sizes, -scores[agg_idx, sub_idx]))
        self.aggregator_, self.mask_ = names[agg_idx[order[0]]], masks[sub_idx[order[0]]]
        self.info_.update(
            aggregator=self.aggregator_,
            selected=[mb for mb, keep in zip(self.members_, self.mask_) if keep],
            subsets_scored=int(low.size),
            exact_aucs=int(np.isfinite(scores).sum()),
            best_val_auc_per_aggregator={nm: float(np.nanmax(scores[i])) for i, nm in enumerate(names)},
            top=[{"aggregator": names[agg_idx[k]], "val_auc": float(scores[agg_idx[k], sub_idx[k]]),
                  "members": [mb for mb, keep in zip(self.members_, masks[sub_idx[k]]) if keep]}
                 for k in order[:int(self.top)]],
        )
        self._set_weights(c)

    def _exact_candidates(self, probs, labels, names, masks, low, high) -> np.ndarray:
        """Exact AUCs ``[A, S]`` where they can matter, NaN elsewhere.

        A (aggregator, subset) whose upper bound is below both the ``top``-th best lower bound
        overall and its aggregator's best lower bound can be neither in the top list nor its
        aggregator's best, so only the others are scored exactly.
        """
        kth = np.sort(low, axis=None)[-min(max(int(self.top), 1), low.size)]
        candidate = high >= np.minimum(kth, low.max(axis=1, keepdims=True))
        scores = np.full(low.shape, np.nan)
        for a, name in enumerate(names):
            rows = np.flatnonzero(candidate[a])
            scores[a, rows] = _subset_aucs(probs, labels, name, masks[rows], False, None, **self._params(name))
        return scores

    def _subset_params(self) -> dict:
        """The best aggregator's parameters, every per-member one restricted to the selected members."""
        params = self._params(self.aggregator_)
        return {k: np.asarray(v)[self.mask_] if np.ndim(v) >= 1 else v for k, v in params.items()}

    def _set_weights(self, c: int) -> None:
        """``weights_``: the best aggregator's member weights, 0 for the members left out; none if it has none."""
        w = get_aggregator(self.aggregator_).member_weights(int(self.mask_.sum()), c, **self._subset_params())
        if w is not None:
            full = np.zeros((len(self.members_),) + w.shape[1:])
            full[self.mask_] = w
            self.weights_ = dict(zip(self.members_, full.tolist()))

    def _predict(self, probs):
        return get_aggregator(self.aggregator_)(probs[self.mask_], **self._subset_params())

    def _fitted_state(self) -> dict:
        return {"aggregator": self.aggregator_, "mask": self.mask_, "aucs": self.aucs_,
                "temperature": self.temperature_}

    def _restore_fitted(self, fitted: dict) -> None:
        self.aggregator_ = fitted["aggregator"]
        self.mask_ = np.asarray(fitted["mask"], dtype=bool)
        self.aucs_ = _floats(fitted["aucs"])
        self.temperature_ = fitted["temperature"]
