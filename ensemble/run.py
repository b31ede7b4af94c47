"""Build every ensemble of a run: the members' val (and test) tables -> one table per method and split.

Paths are the run folder's (:class:`medzoo.core.rundir.RunDir`): member tables are
``run.table("member", member, split)``, outputs ``run.table("ensemble", method, split)``.
Methods are fitted on the members' validation tables only, then applied to the validation
and (when present) test tables; each method's fitted state is saved beside its tables
(``RunDir.ensemble_state``: ``ensembles/<method>/state.json``, :meth:`~medzoo.ensemble.combiners.Combiner.state`),
so that it applies to new images without a refit (:func:`~medzoo.ensemble.combiners.restore_method`).
Each output is a probability table whose sidecar names the method, the members, their weights
and method-specific entries (selection counts, the chosen subset, stacking coefficients, the
validation AUC, the members left out). The validation tables and AUCs of the learned combiners
and of the aggregators that learn their members' AUCs (softmax_auc) are out-of-fold (their
sidecars also give the in-sample AUC). Members whose validation AUC is within noise of chance
(:func:`medzoo.ensemble.auc.near_chance`) are left out of every method unless ``members`` names them.

The ``[ensemble]`` section of a config (a dict here) may hold:
``methods`` (list), ``members`` (list of member ids to use), the options shared by every method
that takes them (:data:`SHARED_KEYS`): ``temperature`` (softmax_auc and subset_search: a number,
or ``"cv"`` to choose it by inner out-of-fold AUC), ``threshold`` (vote threshold: a number or
``{member: t}``), ``weights`` (``{member: w}`` or ``{member: [w per class]}``, enables the
``weighted`` aggregators), ``folds`` and ``seed`` (out-of-fold scoring); and one option table
per learned combiner, named after it, of its constructor's options (e.g. ``greedy``: steps, bags,
bag_fraction, folds, seed; ``stacking``: folds, C, seed; ``subset_search``: aggregators,
temperature, threshold, top, folds, seed). What applies to which method is read from the method
registries (:mod:`medzoo.ensemble.combiners`). :func:`check_ensemble_config` checks the section
whole, keys and values, without reading a file.
"""
from __future__ import annotations

import inspect
import json
import math
import numbers
from pathlib import Path

from tqdm import tqdm

from medzoo.core.fileio import write_json
from medzoo.core.names import unknown_name
from medzoo.core.rundir import TAG, RunDir
from medzoo.ensemble.aggregators import AGGREGATORS, TEMPERATURE_CV, TEMPERATURE_GRID, normalise_weights
from medzoo.ensemble.auc import auc, auc_interval, near_chance
from medzoo.ensemble.combiners import COMBINERS, make_method, method_entry, method_names, method_params
from medzoo.ensemble.table import ProbabilityTable, TableError, align, sidecar_path

SHARED_KEYS = ("temperature", "threshold", "weights", "folds", "seed")
OPTION_LOWER_BOUNDS = {"folds": (2, False), "C": (0, True), "top": (0, False), "seed": (0, False)}


def config_keys() -> tuple[str, ...]:
    """The keys ``[ensemble]`` may hold: ``methods``, ``members``, the shared options, one table per combiner."""
    return ("methods", "members", *SHARED_KEYS, *COMBINERS.names())


def load_member_tables(run_dir: str | Path, members=None, log=print) -> tuple[list[ProbabilityTable],
                                                                              list[ProbabilityTable]]:
    """``(val tables, test tables)`` of the run's members, in member-id order (test empty when no member has one).

    Members are the member-table folders holding a val table and, when the run has a members
    folder, a finished ``done`` marker of every unit the table's sidecar names (``units``; else the
    folder's own name), written after the tables, so a member another job is still writing is
    left out. Skipped folders are logged with the reason. ``members`` restricts them (a member id
    without a repeat tag stands for all its repeats, ``resnet18`` for ``resnet18@s0``, ...); asking
    for one that was skipped raises. Raises naming members that lack a test table the others have.
    """
    run = RunDir(run_dir)
    folders = run.table_names("member")
    skipped = {}
    for m in folders:
        if not run.table("member", m, "val").exists():
            skipped[m] = f"no {run.table('member', m, 'val')}"
            continue
        unfinished = [run.member(u).done for u in _units(run, m) if not run.member(u).done.exists()]
        if run.members.is_dir() and unfinished:
            skipped[m] = f"not finished: no {unfinished[0]}"
    for m, why in skipped.items():
        if log:
            log(f"skipping member {m!r}: {why}")
    found = [m for m in folders if m not in skipped]
    if not found:
        layout = RunDir(".")  # the relative paths, for the message
        done = f" and {layout.member('<member>').done}" if run.members.is_dir() else ""
        raise FileNotFoundError(f"no member tables under {run.tables('member')} "
                                f"(expected {layout.table('member', '<member>', 'val')}{done})")
    names = []
    for m in members or []:
        if m in skipped:
            raise ValueError(f"member {m!r} cannot be used: {skipped[m]}")
        repeats = repeats_of(m, found)
        if m not in found and not repeats:
            raise ValueError(unknown_name("member", m, found))
        names += [m] if m in found else repeats
    names = names or found
    with_test = [m for m in names if run.table("member", m, "test").exists()]
    without = [m for m in names if m not in with_test]
    if with_test and without:
        raise TableError(f"members {without} have no {run.table('member', without[0], 'test').name}; {with_test} do")

    def read(member: str, split: str) -> ProbabilityTable:
        t = ProbabilityTable.read(run.table("member", member, split))
        t.meta["member"] = member
        return t

    return [read(m, "val") for m in names], [read(m, "test") for m in with_test]


def _units(run: RunDir, member: str) -> list[str]:
    """The training units whose done markers finish member table ``member`` (its val sidecar's ``units``)."""
    path = sidecar_path(run.table("member", member, "val"))
    meta = json.loads(path.read_text()) if path.is_file() else {}
    return [str(u) for u in meta.get("units") or [member]]


def fold_tables(run_dir: str | Path, members: list[str]) -> dict[int, list[ProbabilityTable]]:
    """``{fold: [test.fold<k> table of each member]}`` for the folds every one of ``members`` has (``[cv]`` runs)."""
    run = RunDir(run_dir)
    common = None
    for m in members:
        found = {int(p.stem.removeprefix("test.fold")) for p in run.table_dir("member", m).glob("test.fold*.csv")}
        common = found if common is None else common & found
    return {k: [ProbabilityTable.read(run.table("member", m, f"test.fold{k}")) for m in members]
            for k in sorted(common or ())}


def repeats_of(member: str, names: list[str]) -> list[str]:
    """The tagged repeats of ``member`` among table ``names``: ``resnet18`` -> ``[resnet18@s0, resnet18@s1]``."""
    return [n for n in names if TAG in n and n.split(TAG, 1)[0] == member]


def repeat_groups(names: list[str]) -> dict[str, list[str]]:
    """Member names grouped by repeat: ``{"": names}`` unless some carry a repeat tag (``resnet18@s1``), then
    ``{"@s1": [the members tagged s1 and the untagged ones, shared by every repeat], ...}`` in seed order."""
    tags = sorted({n.split(TAG, 1)[1] for n in names if TAG in n}, key=lambda t: (len(t), t))
    if not tags:
        return {"": list(names)}
    return {f"{TAG}{t}": [n for n in names if TAG not in n or n.split(TAG, 1)[1] == t] for t in tags}


def methods_table() -> str:
    """The README's table of ensemble methods, one markdown row per registered method (derived, never hand-written)."""
    rows = ["| method | kind | in the default list | options (default) | what it does |", "|---|---|---|---|---|"]
    for name in method_names():
        entry = method_entry(name)
        kind = "learned" if name in COMBINERS else "aggregator"
        params = ", ".join(f"{k}" if v is inspect.Parameter.empty else f"{k} ({v!r})" for k, v in method_params(name).items())
        needs = ("; needs `weights`" if entry.get("weighted") else "") + ("; two classes" if entry.get("binary_only") else "")
        rows.append(f"| `{name}` | {kind} | {'yes' if entry.get('default') else 'no'}{needs} | {params or '-'} | "
                    f"{entry.description} |")
    return "\n".join(rows) + "\n"


def default_methods(config: dict, n_classes: int) -> list[str]:
    """Every method registered as ``default`` that applies: ``weighted`` ones need weights, ``binary_only`` two classes."""
    return [e.name for e in (*AGGREGATORS, *COMBINERS) if e.get("default")
            and ("weights" in config or not e.get("weighted")) and (n_classes == 2 or not e.get("binary_only"))]


def method_options(name: str, config: dict) -> dict:
    """Keyword options for ``make_method(name, ...)`` from the ``[ensemble]`` config.

    The shared options the method takes (:data:`SHARED_KEYS` among :func:`method_params`), then
    a combiner's own table ``[ensemble.<name>]``. A ``weighted`` method without weights raises.
    """
    if method_entry(name).get("weighted") and "weights" not in config:
        raise ValueError(f"{name} needs member weights: set weights = {{member = weight, ...}} in [ensemble]")
    takes = method_params(name)
    shared = {k: config[k] for k in SHARED_KEYS if k in takes and k in config}
    return {**shared, **config.get(name, {})} if name in COMBINERS else shared


def check_ensemble_config(config: dict | None, n_classes: int | None = None) -> dict:
    """The ``[ensemble]`` config checked whole, keys and values, before anything runs; returns a copy.

    ``methods``: registered method names; ``members``: member ids, each once; ``temperature``:
    a number > 0 or ``"cv"``; ``threshold``: a number in (0, 1) or ``{member: t}``; ``weights``:
    ``{member: w}`` or ``{member: [w per class]}`` of finite numbers >= 0 with a positive sum;
    ``folds``: an integer >= 2; ``seed``: an integer >= 0; one table per learned combiner
    (``greedy``, ``stacking``, ``subset_search``) of its options (integers where the default is
    one, numbers where it is a float). Every method
    named in ``methods`` or by an option table is then built once, so its own checks
    (``_validate_params``) run too. With ``n_classes``: ``threshold`` and ``binary_only`` methods
    need two classes, per-class weights one per class. Pure and fast: no file is read. Raises
    :class:`ValueError` naming the key, the value received and what is allowed.
    """
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"[ensemble] must be a table of options, got {type(config).__name__} {config!r}")
    config = dict(config or {})
    for key in config:
        if key not in config_keys():
            raise ValueError(unknown_name("[ensemble] key", key, config_keys()))
    methods = config.get("methods")
    if methods is not None:
        if not _is_names(methods):
            raise ValueError(f"[ensemble] methods = {methods!r}; expected a list of method names, "
                             f"e.g. [\"mean\", \"greedy\"]")
        for name in methods:
            if name not in method_names():
                raise ValueError("[ensemble] methods: " + unknown_name("ensemble method", name, method_names()))
    members = config.get("members")
    if members is not None and (not _is_names(members) or len(set(members)) != len(members)):
        raise ValueError(f"[ensemble] members = {members!r}; expected a list of member ids, each once")
    if "temperature" in config:
        _check_temperature("[ensemble] temperature", config["temperature"])
    if "threshold" in config:
        _check_threshold("[ensemble] threshold", config["threshold"], members)
    if "weights" in config:
        _check_weights(config["weights"], members, n_classes)
    if "folds" in config:
        _check_number("[ensemble] folds", config["folds"], integer=True, low=2)
    if "seed" in config:
        _check_number("[ensemble] seed", config["seed"], integer=True, low=0)
    tables = [name for name in COMBINERS.names() if name in config]
    for name in tables:
        _check_option_table(name, config[name], members)
    for name in dict.fromkeys([*(methods or []), *tables]):
        try:
            make_method(name, **method_options(name, config))
        except ValueError as e:
            raise ValueError(f"[ensemble{'.' + name if name in COMBINERS else ''}] {e}") from None
    two_class = _two_class_only(config, methods or [], tables) if n_classes is not None and n_classes != 2 else []
    if two_class:
        raise ValueError(f"[ensemble] {two_class[0]} is for two-class tasks; the tables have {n_classes} classes")
    return config


def _two_class_only(config: dict, methods: list[str], tables: list[str]) -> list[str]:
    """What the config uses that is for two-class tasks only: a threshold, ``binary_only`` methods and aggregators."""
    uses = ["threshold"] if "threshold" in config else []
    uses += [f"{name} threshold" for name in tables if "threshold" in config[name]]
    uses += [f"method {m}" for m in methods if method_entry(m).get("binary_only")]
    uses += [f"{name} aggregator {a}" for name in tables for a in config[name].get("aggregators") or []
             if AGGREGATORS[a].get("binary_only")]
    return uses


def _is_names(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)


def _check_number(where: str, value, *, integer: bool = False, low: float | None = None, high: float | None = None,
                  open_low: bool = False, open_high: bool = False) -> None:
    """Raise ``"<where> = <value>; expected <what is allowed>"`` unless ``value`` is such a number."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or value > low or (not open_low and value == low))
    ok = ok and (high is None or value < high or (not open_high and value == high))
    if not ok:
        what = "an integer" if integer else "a finite number"
        if low is not None and high is not None:
            what += f" in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        elif low is not None:
            what += f" {'>' if open_low else '>='} {low}"
        raise ValueError(f"{where} = {value!r}; expected {what}")


def _check_temperature(where: str, value) -> None:
    """A number > 0, or ``"cv"``: chosen from :data:`TEMPERATURE_GRID` by inner out-of-fold AUC."""
    if value == TEMPERATURE_CV:
        return
    kind_ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (kind_ok and value > 0):
        raise ValueError(f"{where} = {value!r}; expected a finite number > 0 or {TEMPERATURE_CV!r} "
                         f"(chosen from {list(TEMPERATURE_GRID)} by inner out-of-fold validation AUC)")


def _check_per_member(where: str, table: dict, members) -> None:
    """A ``{member: value}`` table's keys: strings, and exactly ``members`` when they are given."""
    if not all(isinstance(k, str) for k in table):
        raise ValueError(f"{where} = {table!r}; expected member ids as keys")
    if members is not None and set(table) != set(members):
        raise ValueError(f"{where} is given per member; missing members {[m for m in members if m not in table]}, "
                         f"unknown members {[k for k in table if k not in members]} (members: {list(members)})")


def _check_threshold(where: str, value, members) -> None:
    if isinstance(value, dict):
        _check_per_member(where, value, members)
        for member, t in value.items():
            _check_number(f"{where}.{member}", t, low=0, high=1, open_low=True, open_high=True)
    else:
        _check_number(where, value, low=0, high=1, open_low=True, open_high=True)


def _check_weights(weights, members, n_classes: int | None) -> None:
    """``{member: w}`` or ``{member: [w per class]}`` of numbers, range-checked by :func:`normalise_weights`."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"[ensemble] weights = {weights!r}; expected a table {{member = weight, ...}} or "
                         f"{{member = [weight per class], ...}}")
    _check_per_member("[ensemble] weights", weights, members)
    for member, w in weights.items():
        values = w if isinstance(w, list) else [w]
        if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            raise ValueError(f"[ensemble] weights.{member} = {w!r}; expected a number or a list of numbers "
                             f"(one per class)")
    lengths = {len(w) if isinstance(w, list) else None for w in weights.values()}
    if len(lengths) > 1:
        raise ValueError(f"[ensemble] weights = {weights!r}; give every member one number, or every member a list "
                         f"of the same length (one weight per class)")
    c = lengths.pop()
    if c is not None and n_classes is not None and c != n_classes:
        raise ValueError(f"[ensemble] weights: got {c} weights per member, the tables have {n_classes} classes")
    try:
        normalise_weights(list(weights.values()), len(weights), c or 1)
    except ValueError as e:
        raise ValueError(f"[ensemble] weights = {weights!r}: {e}") from None


def _check_option_table(name: str, table, members) -> None:
    """``[ensemble.<name>]``: known keys; integers where the default is one, numbers where it is a float."""
    where = f"[ensemble.{name}]"
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table of options, got {table!r}")
    defaults = method_params(name)
    for key, value in table.items():
        if key not in defaults:
            raise ValueError(unknown_name(f"{where} key", key, defaults, label="allowed"))
        if key == "threshold":
            _check_threshold(f"{where} threshold", value, members)
        elif key == "temperature":
            _check_temperature(f"{where} temperature", value)
        elif key == "aggregators" and not _is_names(value):
            raise ValueError(f"{where} aggregators = {value!r}; expected a list of aggregator names, "
                             f"e.g. [\"mean\", \"softmax_auc\"]")
        elif isinstance(defaults[key], (int, float)):
            integer = isinstance(defaults[key], int)
            low, open_low = OPTION_LOWER_BOUNDS.get(key, (None, False))
            _check_number(f"{where} {key}", value, integer=integer, low=low, open_low=open_low)


def build_ensembles(run_dir: str | Path, methods=None, config: dict | None = None, log=print) -> dict:
    """Fit every method on the members' validation tables and write its val (and test) table.

    ``methods`` overrides ``config["methods"]``; default :func:`default_methods`. Outputs go to
    ``RunDir(run_dir).table("ensemble", method, split)``. A repeated run (member tables tagged
    ``@s<seed>``) gets every method once per repeat, over that repeat's members and the untagged
    ones, named ``<method>@s<seed>``; naming tagged members in ``config["members"]`` builds one
    ensemble across them instead (a seed ensemble). Unless ``config["members"]`` names the
    members, those whose validation AUC is within noise of chance (:func:`near_chance_members`)
    are left out of every method, each logged once, and the ``{member: value}`` options are
    restricted to the members kept. Returns
    ``{method: {"dir": str, "members": [ids], "val_auc": float | None, "test": bool, "left_out": [ids]}}``
    (every table's sidecar also gets ``left_out``); ``val_auc`` is out-of-fold for the learned
    combiners (greedy, stacking, subset_search) and for aggregators that learn their members' AUCs
    (softmax_auc). Each method's fitted state goes to ``RunDir.ensemble_state``, before its val table. With
    fewer than two usable members nothing is built (the config and methods are still checked), a
    note is logged and ``{}`` returned. A table whose rows are scores rather than probabilities gets
    ``rows_sum_to_one: false`` in its sidecar.
    """
    run = RunDir(run_dir)
    config = check_ensemble_config(config)
    val_tables, test_tables = load_member_tables(run.path, config.get("members"), log)
    classes = align(val_tables)[1]
    if test_tables:
        align(test_tables)
    names = list(methods or config.get("methods") or default_methods(config, len(classes)))
    config = _per_repeat(config, [t.name for t in val_tables])
    check_ensemble_config({**config, "methods": names, "members": [t.name for t in val_tables]}, len(classes))
    tagged = any(TAG in m for m in config.get("members") or [])  # named repeats: one ensemble across them
    groups = {"": [t.name for t in val_tables]} if tagged else repeat_groups([t.name for t in val_tables])
    results = {}
    for suffix, members in groups.items():
        if len(groups) > 1 and log:
            log(f"repeat {suffix[1:]}: members {', '.join(members)}")
        results.update(_build_group(run, names, config, [t for t in val_tables if t.name in members],
                                    [t for t in test_tables if t.name in members], suffix, log))
    return results


def _build_group(run: RunDir, names: list[str], config: dict, val_tables: list[ProbabilityTable],
                 test_tables: list[ProbabilityTable], suffix: str, log) -> dict:
    """:func:`build_ensembles` over one set of members (one repeat), outputs named ``<method><suffix>``.

    Under ``[cv]`` each method is also applied to every fold's own member test tables (``test.fold<k>``).
    """
    left_out = [] if config.get("members") else near_chance_members(val_tables, log)
    val_tables = [t for t in val_tables if t.name not in left_out]
    test_tables = [t for t in test_tables if t.name not in left_out]
    config = _restricted(config, [t.name for t in val_tables])  # this repeat's members, those kept
    if len(val_tables) < 2:
        if log:
            have = f"only one member ({val_tables[0].name})" if val_tables else "no member left"
            log(f"{have}: ensembles need at least two; skipped")
        return {}
    built = {name: make_method(name, **method_options(name, config)) for name in names}
    folds = fold_tables(run.path, [t.name for t in test_tables]) if test_tables else {}
    results = {}
    for name, method in tqdm(built.items(), desc="ensembles", unit="method", disable=None):
        out_name = name + suffix
        method.fit(val_tables)
        val = method.validation_table()
        val_auc = auc(val.probs, val.labels) if val.has_labels else None
        val.meta.update(split="val", val_auc=val_auc, left_out=left_out)
        test_path = run.table("ensemble", out_name, "test")
        if test_tables:
            for k, tables in folds.items():
                fold = method.predict(tables)
                fold.meta.update(split="test", fold=k, val_auc=val_auc, left_out=left_out)
                _write(fold, run.table("ensemble", out_name, f"test.fold{k}"))
            test = method.predict(test_tables)
            test.meta.update(split="test", val_auc=val_auc, left_out=left_out)
            _write(test, test_path)
        else:
            for stale in (test_path, sidecar_path(test_path)):
                stale.unlink(missing_ok=True)
        write_json(run.ensemble_state(out_name), method.state())
        _write(val, run.table("ensemble", out_name, "val"))
        out = run.table_dir("ensemble", out_name)
        results[out_name] = {"dir": str(out), "members": method.members_, "val_auc": val_auc,
                             "test": bool(test_tables), "left_out": left_out}
        if log:
            log(f"{out_name:>20s}  val AUC {'-' if val_auc is None else f'{val_auc:.4f}'}  -> {out}")
    return results


def near_chance_members(val_tables: list[ProbabilityTable], log=print) -> list[str]:
    """The ids of the members whose validation AUC is within noise of chance (:func:`medzoo.ensemble.auc.near_chance`).

    Each is logged once with its AUC and interval. Tables without a label for every image are not judged.
    """
    out = []
    for t in val_tables:
        if t.has_labels and near_chance(t.probs, t.labels):
            out.append(t.name)
            a, low, high = auc_interval(t.probs, t.labels)
            if log:
                log(f"leaving out member {t.name!r}: validation AUC {a:.4f} (95% CI {low:.4f}-{high:.4f}) is within "
                    f"noise of chance; name it in [ensemble] members to keep it")
    return out


def _per_member_options(config: dict, change) -> dict:
    """``config`` with ``change`` (a ``{member: value} -> {member: value}`` function) applied to every per-member
    option: ``threshold``, ``weights`` and a combiner's ``threshold``, where they are tables."""
    def apply(value):
        return change(value) if isinstance(value, dict) else value

    out = {k: apply(v) if k in ("threshold", "weights") else v for k, v in config.items()}
    for name in COMBINERS.names():
        if name in out and "threshold" in out[name]:
            out[name] = {**out[name], "threshold": apply(out[name]["threshold"])}
    return out


def _restricted(config: dict, members: list[str]) -> dict:
    """``config`` with every per-member option restricted to ``members``."""
    return _per_member_options(config, lambda value: {m: v for m, v in value.items() if m in members})


def _per_repeat(config: dict, names: list[str]) -> dict:
    """``config`` with each per-member option's untagged key given to every repeat of that member among the
    table ``names`` (``resnet18`` -> ``resnet18@s0``, ``resnet18@s1``, ...); other keys are kept as they are."""
    def expand(value: dict) -> dict:
        out = {}
        for key, v in value.items():
            repeats = [] if key in names else repeats_of(key, names)
            out.update(dict.fromkeys(repeats, v) if repeats else {key: v})
        return out
    return _per_member_options(config, expand)


def _write(table: ProbabilityTable, path: Path) -> None:
    """Write an ensemble's table, marking it ``rows_sum_to_one: false`` when its rows are scores."""
    if not table.rows_sum_to_one().all():
        table.meta["rows_sum_to_one"] = False
    table.write(path)
