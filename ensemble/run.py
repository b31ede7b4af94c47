"""Build every ensemble of a run: ``RUN_DIR/predictions/<member>/{val,test}.csv`` -> ``RUN_DIR/ensembles/<method>/``.

Methods are fitted on the members' validation tables only, then applied to the validation
and (when present) test tables. Each output is a probability table whose sidecar names the
method, the members, their weights and method-specific entries (selection counts, the
chosen subset, stacking coefficients, the validation AUC). The learned combiners' validation
tables and AUCs are out-of-fold (their sidecars also give the in-sample AUC).

The ``[ensemble]`` section of a config (a dict here) may hold:
``methods`` (list), ``members`` (list of member ids to use), ``temperature`` (softmax_auc and
subset_search), ``threshold`` (vote threshold: a number or ``{member: t}``), ``weights``
(``{member: w}`` or ``{member: [w per class]}``, enables ``weighted_mean``), ``seed``, and
option tables ``greedy`` (steps, bags, bag_fraction, folds), ``stacking`` (folds, C) and
``subset_search`` (aggregators, top, folds).
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from medzoo.ensemble.auc import auc
from medzoo.ensemble.combiners import make_method
from medzoo.ensemble.names import unknown_name
from medzoo.ensemble.table import ProbabilityTable, TableError, align, sidecar_path

CONFIG_KEYS = ("methods", "members", "temperature", "threshold", "weights", "seed", "greedy", "stacking", "subset_search")
DEFAULT_METHODS = ("mean", "weighted_mean", "median", "geometric_mean", "rank_mean", "majority_vote",
                   "majority_vote_mean", "softmax_auc", "greedy", "stacking", "subset_search")


def load_member_tables(run_dir: str | Path, members=None, log=print) -> tuple[list[ProbabilityTable],
                                                                              list[ProbabilityTable]]:
    """``(val tables, test tables)`` of the run's members, in member-id order (test empty when no member has one).

    Members are the folders under ``predictions/`` holding a ``val.csv`` and, when the run has a
    ``members/`` folder, a finished ``members/<id>/done.json`` (written after the tables, so a
    member another job is still writing is left out). Skipped folders are logged with the reason.
    ``members`` restricts them; asking for one that was skipped raises. Raises naming members
    that lack a test table the others have.
    """
    run_dir = Path(run_dir)
    pred, trained = run_dir / "predictions", run_dir / "members"
    folders = sorted(d.name for d in pred.iterdir() if d.is_dir()) if pred.is_dir() else []
    skipped = {}
    for m in folders:
        if not (pred / m / "val.csv").exists():
            skipped[m] = f"no {pred / m / 'val.csv'}"
        elif trained.is_dir() and not (trained / m / "done.json").exists():
            skipped[m] = f"not finished: no {trained / m / 'done.json'}"
    for m, why in skipped.items():
        if log:
            log(f"skipping member {m!r}: {why}")
    found = [m for m in folders if m not in skipped]
    if not found:
        raise FileNotFoundError(f"no member tables under {pred} (expected predictions/<member>/val.csv"
                                f"{' and members/<member>/done.json' if trained.is_dir() else ''})")
    for m in members or []:
        if m in skipped:
            raise ValueError(f"member {m!r} cannot be used: {skipped[m]}")
        if m not in found:
            raise ValueError(unknown_name("member", m, found))
    names = list(members) if members else found
    with_test = [m for m in names if (pred / m / "test.csv").exists()]
    if with_test and len(with_test) != len(names):
        raise TableError(f"members {[m for m in names if m not in with_test]} have no test.csv; {with_test} do")

    def read(member: str, split: str) -> ProbabilityTable:
        t = ProbabilityTable.read(pred / member / f"{split}.csv")
        t.meta["member"] = member
        return t

    return [read(m, "val") for m in names], [read(m, "test") for m in with_test]


def default_methods(config: dict, n_classes: int) -> list[str]:
    """The default method list: everything that applies (weighted_mean needs weights; majority_vote_mean two classes)."""
    return [m for m in DEFAULT_METHODS
            if (m != "weighted_mean" or "weights" in config) and (m != "majority_vote_mean" or n_classes == 2)]


def method_options(name: str, config: dict) -> dict:
    """Keyword options for ``make_method(name, ...)`` taken from the ``[ensemble]`` config."""
    seed = {"seed": config["seed"]} if "seed" in config else {}
    if name == "weighted_mean":
        if "weights" not in config:
            raise ValueError("weighted_mean needs member weights: set weights = {member = weight, ...} in [ensemble]")
        return {"weights": config["weights"]}
    if name in ("majority_vote", "majority_vote_mean"):
        return {k: config[k] for k in ("threshold",) if k in config}
    if name == "softmax_auc":
        return {k: config[k] for k in ("temperature",) if k in config}
    if name in ("greedy", "stacking"):
        return {**seed, **config.get(name, {})}
    if name == "subset_search":
        return {**seed, **{k: config[k] for k in ("temperature", "threshold") if k in config}, **config.get(name, {})}
    return {}


def check_config(config: dict | None) -> dict:
    """The ``[ensemble]`` config, with unknown keys rejected by name."""
    config = dict(config or {})
    for key in config:
        if key not in CONFIG_KEYS:
            raise ValueError(unknown_name("[ensemble] key", key, CONFIG_KEYS))
    return config


def build_ensembles(run_dir: str | Path, methods=None, config: dict | None = None, log=print) -> dict:
    """Fit every method on the members' validation tables and write ``ensembles/<method>/{val,test}.csv``.

    ``methods`` overrides ``config["methods"]``; default :func:`default_methods`. Returns
    ``{method: {"dir": str, "members": [ids], "val_auc": float | None, "test": bool}}``;
    ``val_auc`` is out-of-fold for the learned combiners (greedy, stacking, subset_search) and
    in-sample for ``softmax_auc``.
    """
    run_dir = Path(run_dir)
    config = check_config(config)
    val_tables, test_tables = load_member_tables(run_dir, config.get("members"), log)
    classes = align(val_tables)[1]
    if test_tables:
        align(test_tables)
    names = list(methods or config.get("methods") or default_methods(config, len(classes)))
    built = {name: make_method(name, **method_options(name, config)) for name in names}
    results = {}
    for name, method in tqdm(built.items(), desc="ensembles", unit="method", disable=None):
        method.fit(val_tables)
        val = method.validation_table()
        val_auc = auc(val.probs, val.labels) if val.has_labels else None
        val.meta.update(split="val", val_auc=val_auc)
        out = run_dir / "ensembles" / name
        val.write(out / "val.csv")
        if test_tables:
            test = method.predict(test_tables)
            test.meta.update(split="test", val_auc=val_auc)
            test.write(out / "test.csv")
        else:
            for stale in (out / "test.csv", sidecar_path(out / "test.csv")):
                stale.unlink(missing_ok=True)
        results[name] = {"dir": str(out), "members": method.members, "val_auc": val_auc, "test": bool(test_tables)}
        if log:
            log(f"{name:>20s}  val AUC {'-' if val_auc is None else f'{val_auc:.4f}'}  -> {out}")
    return results
