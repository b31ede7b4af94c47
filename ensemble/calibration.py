"""Post-hoc temperature scaling of probability tables, fitted on validation only.

One temperature ``T > 0`` per table: each row's probabilities ``p [C]`` become
``softmax(log p / T)`` (a probability of 0 is floored at the smallest positive float first).
``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens under-confident ones, ``T = 1``
leaves them. :func:`fit_temperature` picks the ``T`` that minimises the validation negative
log-likelihood (mean ``-log p[label]``): convex in ``1 / T``, so a golden-section search over
``log T`` in :data:`TEMPERATURE_BOUNDS` finds its minimum (numpy only). The same ``T`` is then
applied, unchanged, to test: test labels are never read.

What it changes and what it keeps: the argmax of every row is kept (``T > 0``), so accuracy is. For
two classes ``p1 -> p1^(1/T) / (p1^(1/T) + p0^(1/T))`` is increasing in ``p1``, so the order of the
images, hence the rank-based AUC (and DeLong's test), is unchanged; only the probabilities (ECE,
Brier, NLL) and a probability threshold move. For more classes one class's order across images can
change, so the macro one-vs-rest AUC may move a little.

On a run folder, :func:`calibrate_run` writes each scaled entry as ``ensembles/<name>+ts/`` (the
suffix goes before a repeat tag: ``mean@s1`` -> ``mean+ts@s1``), with ``T`` in both sidecars,
atomically, and never touches the source tables. A calibrated member goes under ``ensembles/`` too,
so that ``medzoo ensemble`` never takes it for a new member. Its val table is marked ``in_sample``
(``T`` was fitted on those images): the leaderboard stars it and ranks it below every honestly scored
entry; its test table is honest. Under ``[cv]`` the fold models' own ``test.fold<k>`` tables are not
scaled.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from medzoo.core.names import unknown_name
from medzoo.core.rundir import TABLE_FOLDERS, TAG, RunDir
from medzoo.ensemble.table import ProbabilityTable, sidecar_path

SUFFIX = "+ts"
TEMPERATURE_BOUNDS = (0.01, 100.0)
LOG_T_TOLERANCE = 1e-7  # golden-section search stops when the bracket on log T is narrower
KEPT_META = ("split", "dataset", "out_of_fold")  # what a scaled table keeps of its source's sidecar
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_TINY = np.finfo(np.float64).tiny


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log p`` of ``probs [N, C]`` -> ``[N, C]``, zeros floored at the smallest positive float."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), _TINY))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` of every row of ``probs [N, C]`` -> ``[N, C]`` (rows sum to 1)."""
    _check_temperature(temperature)
    z = log_probs(probs) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood ``-log p[label]`` of ``probs [N, C]`` for ``labels [N]`` (class indices)."""
    labels, probs = _check_problem(labels, probs)
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], _TINY)).mean())


def fit_temperature(labels: np.ndarray, probs: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature in ``bounds`` minimising the NLL of ``apply_temperature(probs [N, C], T)`` for ``labels [N]``.

    With ``z = log p`` and ``b = 1 / T`` the NLL is ``mean(logsumexp(b z) - b z[label])``, convex in ``b``
    and so unimodal in ``log T``: a golden-section search over ``log T`` finds its minimum to
    :data:`LOG_T_TOLERANCE`. A result at a bound means the NLL still fell there (e.g. ``T`` at the lower
    bound when every image is classified correctly).
    """
    labels, probs = _check_problem(labels, probs)
    lo, hi = _check_bounds(bounds)
    z = log_probs(probs)
    z_true = z[np.arange(len(labels)), labels]

    def loss(log_t: float) -> float:
        b = math.exp(-log_t)
        top = (b * z).max(axis=1)
        return float((top + np.log(np.exp(b * z - top[:, None]).sum(axis=1)) - b * z_true).mean())

    a, d = math.log(lo), math.log(hi)
    b, c = d - _GOLDEN * (d - a), a + _GOLDEN * (d - a)
    fb, fc = loss(b), loss(c)
    while d - a > LOG_T_TOLERANCE:
        if fb <= fc:
            d, c, fc = c, b, fb
            b = d - _GOLDEN * (d - a)
            fb = loss(b)
        else:
            a, b, fb = b, c, fc
            c = a + _GOLDEN * (d - a)
            fc = loss(c)
    return float(min(max(math.exp((a + d) / 2), lo), hi))


def temperature_scale(val: ProbabilityTable, test: ProbabilityTable | None = None,
                      bounds: tuple[float, float] = TEMPERATURE_BOUNDS
                      ) -> tuple[float, ProbabilityTable, ProbabilityTable | None]:
    """Fit one temperature on the labelled ``val`` table and apply it to ``val`` and ``test``: ``(T, val', test')``.

    The new tables keep ids, classes and labels; their sidecars keep the source's :data:`KEPT_META` and add
    ``temperature``, ``calibration`` and ``val_nll`` (before and after); ``val'`` is marked ``in_sample``.
    ``test`` (labelled or not) only has ``T`` applied; None gives None. Raises when ``val`` lacks a label,
    when a table's rows are not probabilities (do not sum to 1) or when the classes differ.
    """
    for table in (val, test):
        if table is not None and not table.rows_sum_to_one().all():
            raise ValueError(f"temperature scaling needs probabilities, and table {table.name!r} has rows that do "
                             f"not sum to 1 (scores, e.g. a rank or median ensemble)")
    if not val.has_labels:
        raise ValueError(f"temperature scaling is fitted on validation labels; table {val.name!r} lacks "
                         f"{int((val.labels < 0).sum())} of its {len(val.ids)}")
    if test is not None and test.classes != val.classes:
        raise ValueError(f"test table {test.name!r} has classes {test.classes}, its val table {val.classes}")
    t = fit_temperature(val.labels, val.probs, bounds)
    scaled = apply_temperature(val.probs, t)
    info = {"temperature": t, "calibration": "temperature scaling fitted on val (NLL)",
            "val_nll": [nll(val.labels, val.probs), nll(val.labels, scaled)]}

    def out(table: ProbabilityTable, probs: np.ndarray, **extra) -> ProbabilityTable:
        meta = {k: table.meta[k] for k in KEPT_META if k in table.meta}
        return ProbabilityTable(table.ids, table.classes, probs, table.labels, {**meta, **info, **extra})

    val_out = out(val, scaled, in_sample=True)
    test_out = out(test, apply_temperature(test.probs, t)) if test is not None else None
    return t, val_out, test_out


def calibrated_name(name: str) -> str:
    """The name of ``name`` temperature-scaled: :data:`SUFFIX` before any repeat tag (``mean@s1`` -> ``mean+ts@s1``)."""
    base, tag, rest = name.partition(TAG)
    return f"{base}{SUFFIX}{tag}{rest}"


def is_calibrated(name: str) -> bool:
    """Whether entry ``name`` is a temperature-scaled copy (its name before any repeat tag ends in :data:`SUFFIX`)."""
    return name.partition(TAG)[0].endswith(SUFFIX)


def calibrate_run(run_dir: str | Path, entries: Sequence[str] | None = None, bounds=TEMPERATURE_BOUNDS,
                  log=print) -> dict[str, dict]:
    """Temperature-scale members and ensembles of ``run_dir``; write ``ensembles/<name>+ts/{val,test}.csv``.

    ``entries`` names members or ensembles (a name without a repeat tag stands for all its repeats,
    ``mean`` for ``mean@s0``, ...); an entry named there that cannot be scaled raises. By default every
    entry with a val table is scaled except calibrated copies and those whose val table lacks a label or
    holds scores (each logged and skipped). The sidecars name the source (``calibrated_from``) and its
    ``members`` (a member: itself). Returns ``{new name: {"source", "dir", "temperature", "val_nll",
    "at_bound", "test"}}``.
    """
    rd = RunDir(run_dir)
    sources = [(kind, name) for kind in TABLE_FOLDERS for name in rd.table_names(kind, "val")
               if not is_calibrated(name)]
    picked = _pick(sources, entries, rd)
    targets = {}
    for kind, name in picked:
        out = calibrated_name(name)
        if out in targets:
            raise ValueError(f"{targets[out][0]} {targets[out][1]!r} and {kind} {name!r} would both be written to "
                             f"{rd.table_dir('ensemble', out)}; name one of them with --entries")
        targets[out] = (kind, name)
    results = {}
    for out, (kind, name) in targets.items():
        val = ProbabilityTable.read(rd.table(kind, name, "val"))
        test_path = rd.table(kind, name, "test")
        test = ProbabilityTable.read(test_path) if test_path.exists() else None
        problem = _unusable(val, test)
        if problem and entries is not None:
            raise ValueError(f"{kind} {name!r} cannot be temperature-scaled: {problem}")
        if problem:
            if log:
                log(f"skipping {kind} {name!r}: {problem}")
            continue
        t, val_out, test_out = temperature_scale(val, test, bounds)
        table = str(rd.table(kind, name, "val").relative_to(rd.path))
        source = {"name": out, "method": "temperature", "calibrated_from": {"kind": kind, "name": name, "table": table},
                  "members": val.meta.get("members", []) if kind == "ensemble" else [name]}
        new_test = rd.table("ensemble", out, "test")
        if test_out is not None:
            test_out.meta.update(source)
            test_out.write(new_test)
        else:
            for stale in (new_test, sidecar_path(new_test)):
                stale.unlink(missing_ok=True)
        val_out.meta.update(source)
        val_out.write(rd.table("ensemble", out, "val"))
        at_bound = not bounds[0] * (1 + 1e-5) < t < bounds[1] * (1 - 1e-5)
        results[out] = {"source": f"{kind} {name}", "dir": str(rd.table_dir("ensemble", out)), "temperature": t,
                        "val_nll": val_out.meta["val_nll"], "at_bound": at_bound, "test": test_out is not None}
        if log:
            before, after = val_out.meta["val_nll"]
            log(f"{out:>24s}  T {t:.4g}  val NLL {before:.4f} -> {after:.4f}  -> {results[out]['dir']}"
                + (f"  (T at the bound {bounds}: the val NLL still fell there)" if at_bound else ""))
    return results


def calibration_source(run_dir: str | Path, entry: str) -> tuple[str, str, float] | None:
    """``(source kind, source entry, temperature)`` of an entry :func:`calibrate_run` wrote (a ``+ts`` name), from
    its val table's sidecar; None for any other entry.

    Raises when that sidecar is missing or not calibrate's, and when the source's val table no longer gives the
    scaled one (the source was rebuilt after calibrating, so the temperature is stale).
    """
    if not is_calibrated(entry):
        return None
    rd = RunDir(run_dir)
    val = rd.table("ensemble", entry, "val")
    scaled = ProbabilityTable.read(val)
    source = scaled.meta.get("calibrated_from")
    if not isinstance(source, dict) or "temperature" not in scaled.meta:
        raise ValueError(f"entry {entry!r} is named as a temperature-scaled copy, but {sidecar_path(val)} is missing "
                         f"or records no source and temperature; rerun `medzoo calibrate {rd.path}`")
    kind, name, t = source["kind"], source["name"], float(scaled.meta["temperature"])
    original = ProbabilityTable.read(rd.table(kind, name, "val"))
    if original.ids != scaled.ids or not np.allclose(apply_temperature(original.probs, t), scaled.probs,
                                                     rtol=0, atol=1e-6):
        raise ValueError(f"entry {entry!r}: {kind} {name!r} has changed since it was temperature-scaled (T {t:.4g} "
                         f"no longer gives the scaled val table); rerun `medzoo calibrate {rd.path} --entries {name}`")
    return kind, name, t


def _pick(sources: list[tuple[str, str]], entries: Sequence[str] | None, rd: RunDir) -> list[tuple[str, str]]:
    """The ``(kind, name)`` of ``sources`` that ``entries`` names (all of them for None); unknown names raise."""
    if entries is None:
        return sources
    picked = []
    for entry in entries:
        if is_calibrated(entry):
            raise ValueError(f"{entry!r} is already temperature-scaled; name the entry it was made from")
        found = [s for s in sources if entry in (s[1], s[1].partition(TAG)[0])]
        if not found:
            raise ValueError(unknown_name("entry", entry, dict.fromkeys(n for _, n in sources),
                                          label=f"entries with a val table in {rd}"))
        picked += [s for s in found if s not in picked]
    return picked


def _unusable(val: ProbabilityTable, test: ProbabilityTable | None) -> str | None:
    """Why the tables cannot be temperature-scaled, or None."""
    if not val.has_labels:
        return "its val table lacks labels"
    if not all(t.rows_sum_to_one().all() for t in (val, test) if t is not None):
        return "its rows are scores, not probabilities"
    return None


def _check_problem(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels [N]`` as int class indices and ``probs [N, C]`` (C >= 2, N >= 1, values in [0, 1]), or raise."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2 or labels.shape != (probs.shape[0],) or not len(labels):
        raise ValueError(f"temperature scaling needs labels [N] and probs [N, C] with N >= 1 and C >= 2; got "
                         f"labels of shape {labels.shape} and probs of shape {probs.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must be class indices in 0..{probs.shape[1] - 1}; got {labels.dtype} values from "
                         f"{labels.min()} to {labels.max()}")
    if not (np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()):
        raise ValueError(f"probs must lie in [0, 1]; got values from {np.nanmin(probs)} to {np.nanmax(probs)}")
    return labels, probs


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_bounds(bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be two numbers (lowest, highest temperature), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"bounds must satisfy 0 < lowest < highest temperature, both finite; got {bounds!r}")
    return lo, hi
