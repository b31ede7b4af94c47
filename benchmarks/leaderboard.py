"""The leaderboard of a run: every member and every ensemble, ranked by validation AUC, with test alongside.

Reads the validation and test probability tables of every member and every ensemble of a run
(:class:`~medzoo.core.rundir.RunDir` knows where they are) and writes the run's ``leaderboard.csv``,
``leaderboard.md`` and ``plots/*.png``.

What each column means (the metric conventions are in :mod:`benchmarks.metrics`):

* ``val_auc`` / ``test_auc``: binary AUC of the second class for two classes, macro one-vs-rest AUC for more;
  ``*_lo`` / ``*_hi`` its stratified-bootstrap 95% CI.
* ``delta_vs_best_member`` / ``delong_p``: test AUC minus that of the best single member (highest
  validation AUC; ties to the first name) and the paired DeLong p-value of that difference;
  ``delong_p_holm`` the same p-values Holm-corrected over the board's entries (temperature-scaled copies,
  ``<entry>+ts`` from :mod:`medzoo.ensemble.calibration`, are not counted and get none).
* ``threshold``, ``sensitivity`` ... ``f1``: the *primary task* (the dataset card's first view, else the
  second class of a two-class table; none for several classes without views) at the threshold chosen
  on validation (``youden`` or ``sens:<target>``) and applied to test.
* ``accuracy``, ``balanced_accuracy``: argmax of the class probabilities on test.
* ``val_ece`` / ``test_ece``, ``val_brier`` / ``test_brier``: expected calibration error (10 equal-width bins)
  and Brier score, of the positive class for two classes and top-label / summed over classes for more
  (:func:`benchmarks.metrics.expected_calibration_error`, :func:`benchmarks.metrics.brier_score`); empty
  for a table whose rows are scores rather than probabilities (``rows_sum_to_one: false``).
* ``val_<view>_auc`` / ``test_<view>_auc`` for each card view (score = sum of the view's positive classes'
  probabilities), and ``*_views_mean_auc`` when there are several views (ISIC 2017's challenge score).

Test columns stay empty where the test table is missing or unlabelled (a challenge's withheld test set).

A *repeated* run (members with several seeds, tables tagged ``@s<seed>``, see
:mod:`medzoo.zoo.config`) gets one row per entry over its repeats: every number is the mean
over the repeats, ``val_auc_sd`` / ``test_auc_sd`` their spread, ``repeats`` how many, and
``delta_vs_best_member`` / ``delong_p`` come from :func:`benchmarks.metrics.repeated_delong`
(test-set sampling and training variance). Each repeat's own rows go to
``leaderboard_repeats.csv``. Under ``[cv]`` val is out-of-fold over train+val and test the fold
models' mean; ``test_auc_fold_sd`` is the spread of the fold models' own test AUCs.

Only honest validation scores rank: an entry whose validation AUC is in-sample (its weights
were fitted on those images) is shown, starred, below every honestly scored entry. So is a
temperature-scaled copy (``<entry>+ts``, :mod:`medzoo.ensemble.calibration`, ``medzoo calibrate``):
its temperature was fitted on validation. A copy is no new comparison: Holm's correction and the
validation-test rank statistics leave it out, so calibrating leaves the other entries' numbers as they were.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from medzoo.benchmarks import metrics
from medzoo.benchmarks.board import Board, Entry, Task, repeat_label
from medzoo.benchmarks.plots import draw_board, rank_agreement
from medzoo.core.fileio import write_text
from medzoo.core.names import unknown_name
from medzoo.core.rundir import TABLE_FOLDERS, TAG, RunDir
from medzoo.ensemble.auc import near_chance
from medzoo.ensemble.calibration import is_calibrated
from medzoo.ensemble.table import ProbabilityTable, align
from medzoo.zoo.crossval import read_folds
from medzoo.zoo.datasets import load_card

CONFIG_KEYS = ("threshold", "sensitivity", "bootstrap", "seed")
CALIBRATION_NAMES = {"ece": "ECE", "brier": "Brier"}


def find_entries(run_dir: str | Path) -> tuple[list[Entry], list[str]]:
    """Every member and ensemble with a validation table (members first, each kind by name); notes on skipped ones."""
    rd = RunDir(run_dir)
    entries, notes = [], []
    for kind in TABLE_FOLDERS:
        for name in rd.table_names(kind):
            val_path, test_path = rd.table(kind, name, "val"), rd.table(kind, name, "test")
            if not val_path.exists():
                notes.append(f"{kind} {name!r} skipped: no {val_path.name} in {val_path.parent}")
                continue
            val = ProbabilityTable.read(val_path)
            test = ProbabilityTable.read(test_path) if test_path.exists() else None
            members = [str(m) for m in val.meta.get("members", [])] if kind == "ensemble" else []
            folds = {int(p.stem.removeprefix("test.fold")): ProbabilityTable.read(p)
                     for p in sorted(rd.table_dir(kind, name).glob("test.fold*.csv"))}
            entries.append(Entry(name, kind, val, test, members, dict(sorted(folds.items()))))
    if not entries:
        raise FileNotFoundError(f"no probability tables under {rd.tables('member')} or {rd.tables('ensemble')} "
                                f"(expected <id>/val.csv); run `medzoo train` and `medzoo ensemble` first")
    return entries, notes


def dataset_name(run_dir: str | Path, entries: list[Entry]) -> str | None:
    """The dataset card name: ``config.json``'s ``dataset``, else the first table's ``meta["dataset"]``."""
    name = RunDir(run_dir).read_config().get("dataset")
    if name:
        return str(name)
    for e in entries:
        if e.val.meta.get("dataset"):
            return str(e.val.meta["dataset"])
    return None


def card_views(name: str | None, classes: list[str]) -> tuple[list[Task], str | None]:
    """The card's views as tasks over ``classes``, plus a note when the card could not be loaded."""
    if not name:
        return [], "views skipped: no dataset named in config.json or the tables' metadata"
    try:
        card = load_card(name)
    except FileNotFoundError as e:  # neither a shipped card nor a data path here: the board works without views
        return [], f"views skipped: could not load dataset card {name!r} ({type(e).__name__}: {e})"
    tasks = []
    for view in card.views or []:
        unknown = [c for c in view["positive"] if c not in classes]
        if unknown:
            raise ValueError(f"dataset card {name!r}: view {view['name']!r} names classes {unknown} "
                             f"that the tables lack; table classes: {classes}")
        tasks.append(Task(str(view["name"]), tuple(classes.index(c) for c in view["positive"])))
    return tasks, None


def _auc_with_ci(labels, scores, bootstrap: int, seed: int) -> tuple[float, float, float]:
    auc = metrics.auc_score(labels, scores)
    if not math.isfinite(auc):
        return auc, float("nan"), float("nan")
    return (auc, *metrics.auc_ci(labels, scores, bootstrap, seed))


def _entry_row(e: Entry, primary: Task | None, views: list[Task], rule, bootstrap: int, seed: int) -> dict:
    nan = float("nan")
    row = {"entry": e.name, "kind": e.kind}
    val_ok = e.val.has_labels
    row["val_auc"], row["val_auc_lo"], row["val_auc_hi"] = (
        _auc_with_ci(e.val.labels, e.val.probs, bootstrap, seed) if val_ok else (nan, nan, nan))
    t = e.test if e.test_labelled else None
    row["test_auc"], row["test_auc_lo"], row["test_auc_hi"] = (
        _auc_with_ci(t.labels, t.probs, bootstrap, seed) if t else (nan, nan, nan))
    row["delta_vs_best_member"] = row["delong_p"] = nan
    row["test_ap"] = metrics.average_precision(t.labels, t.probs) if t else nan
    thr = nan
    if primary and val_ok:
        thr = metrics.choose_threshold(primary.truth(e.val.labels), primary.score(e.val.probs), rule)
    row["threshold"] = thr
    at = (metrics.threshold_metrics(primary.truth(t.labels), primary.score(t.probs), thr)
          if t and primary and math.isfinite(thr) else {})
    for k in ("sensitivity", "specificity", "ppv", "npv", "f1"):
        row[k] = at.get(k, nan)
    am = metrics.argmax_metrics(t.labels, t.probs) if t else {}
    row["accuracy"], row["balanced_accuracy"] = am.get("accuracy", nan), am.get("balanced_accuracy", nan)
    for split, table in (("val", e.val if val_ok else None), ("test", t)):
        probabilities = table is not None and bool(table.rows_sum_to_one().all())
        row[f"{split}_ece"] = metrics.expected_calibration_error(table.labels, table.probs) if probabilities else nan
        row[f"{split}_brier"] = metrics.brier_score(table.labels, table.probs) if probabilities else nan
    for split, table in (("val", e.val if val_ok else None), ("test", t)):
        aucs = [metrics.roc_auc(v.truth(table.labels), v.score(table.probs)) if table else nan for v in views]
        for v, a in zip(views, aucs):
            row[f"{split}_{v.name}_auc"] = a
        if len(views) > 1:
            row[f"{split}_views_mean_auc"] = float(np.mean(aucs))
    row["near_chance"] = bool(e.kind == "member" and val_ok and near_chance(e.val.probs, e.val.labels))
    row["val_scored"] = ("in-sample" if e.val.meta.get("in_sample") else
                         "out-of-fold" if "val_auc_out_of_fold" in e.val.meta else "")
    row["members"] = ", ".join(e.members)
    return row


def _delong_vs_best(entries: list[Entry], best: Entry, rows: list[dict], notes: list[str]) -> None:
    """Fill ``delta_vs_best_member`` and ``delong_p`` (test) of every test-labelled entry, in place."""
    if not best.test_labelled:
        return
    idx = [i for i, e in enumerate(entries) if e.test_labelled]
    ref = next(k for k, i in enumerate(idx) if entries[i] is best)
    _, _, probs, labels = align([entries[i].test for i in idx])
    try:
        _, delta, p = metrics.delong_test(labels, probs, ref)
    except ValueError as err:
        notes.append(f"DeLong test skipped: {err}")
        return
    for k, i in enumerate(idx):
        rows[i]["delta_vs_best_member"], rows[i]["delong_p"] = float(delta[k]), float(p[k])


def _share_labels(entries: list[Entry]) -> None:
    """Give every table the labels any table of the same split knows (an ensemble table may omit them), in place.

    Raises, naming the entry, when the tables of a split cover different images or disagree on a label.
    """
    for split in ("val", "test"):
        tables = [getattr(e, split) for e in entries if getattr(e, split) is not None]
        if not tables or all(t.has_labels for t in tables) or not any((t.labels >= 0).any() for t in tables):
            continue
        ids, _, _, labels = align(tables)
        for e in entries:
            t = getattr(e, split)
            if t is not None and not t.has_labels:
                t = t.select(ids)
                setattr(e, split, ProbabilityTable(ids, t.classes, t.probs, labels, t.meta))


def replicate_tag(name: str) -> str | None:
    """The repeat tag of an entry name (``"s1"`` of ``"mean@s1"``); None for an untagged (shared) entry."""
    return name.split(TAG, 1)[1] if TAG in name else None


def base_name(name: str) -> str:
    """An entry name without its repeat tag."""
    return name.split(TAG, 1)[0]


def collect(run_dir: str | Path, threshold: str | float = "youden", bootstrap: int = 1000, seed: int = 0,
            sensitivity: float | None = None) -> Board:
    """Build the leaderboard of ``run_dir`` and keep the tables it was built from (for plots).

    ``sensitivity=t`` (the config's ``[leaderboard] sensitivity``) is short for ``threshold="sens:t"``.
    """
    run_dir = Path(run_dir)
    if sensitivity is not None:
        threshold = f"sens:{sensitivity}"
    metrics.parse_threshold_rule(threshold)
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 replicates, got {bootstrap}")
    entries, notes = find_entries(run_dir)
    classes = entries[0].val.classes
    for e in entries:
        for t in (e.val, e.test, *e.fold_tests.values()):
            if t is not None and t.classes != classes:
                raise ValueError(f"{e.kind} {e.name!r} has classes {t.classes}, {entries[0].name!r} has {classes}")
    _share_labels(entries)
    name = dataset_name(run_dir, entries)
    views, note = card_views(name, classes)
    notes += [note] if note else []
    primary = views[0] if views else (Task(classes[1], (1,)) if len(classes) == 2 else None)
    if primary is None:
        notes.append("no primary binary task (several classes and no card views): threshold columns are empty")
    scores = [f"{e.kind} {e.name!r}" for e in entries if not e.val.rows_sum_to_one().all()]
    if scores:
        notes.append(f"ECE and Brier left empty for {', '.join(scores)}: rows are scores, not probabilities")
    tags = sorted({t for e in entries if (t := replicate_tag(e.name))}, key=_tag_order)
    groups = {t: [e for e in entries if replicate_tag(e.name) in (t, None)] for t in tags} or {None: entries}
    cache: dict[tuple[str, str], dict] = {}
    per = {}
    progress = tqdm(total=len(entries), desc="leaderboard", unit="entry", leave=False, disable=len(entries) < 10)
    for tag, group in groups.items():
        rows = []
        for e in group:
            if (e.kind, e.name) not in cache:
                cache[e.kind, e.name] = _entry_row(e, primary, views, threshold, bootstrap, seed)
                progress.update()
            rows.append(dict(cache[e.kind, e.name]))
        best = _best_member(group, rows)
        if best is not None:
            _delong_vs_best(group, best, rows, notes)
        per[tag] = (group, rows, best)
    progress.close()
    folds = _fold_assignment(run_dir, entries)
    if tags:
        frame, shown, best_name, repeats, extra = _aggregate(per, notes)
    else:
        group, rows, best = per[None]
        _fold_spreads(group, rows)
        frame, shown = pd.DataFrame(rows), {(e.kind, e.name): e for e in group}
        frame["delong_p_holm"] = metrics.holm(_others(frame, best.name if best else None, "delong_p"))
        best_name = best.name if best else None
        repeats = _fold_frame(group, rows, folds)
        extra = _pick_summary({None: frame})
    frame = _rank(frame)
    ranks = repeats if repeats is not None and tags else frame.assign(replicate="run")
    ranks = ranks[~ranks["entry"].map(is_calibrated).astype(bool)]  # a temperature-scaled copy is no new entry
    scored = ranks[["val_auc", "test_auc"]].notna().all(axis=1).sum() >= 2
    rho = [float(v) for v in rank_agreement(ranks)[1].values()] if scored else []
    first = entries[0]
    info = {"run_dir": str(run_dir), "dataset": name, "threshold": str(threshold), "bootstrap": bootstrap,
            "seed": seed, "best_member": best_name, "primary": primary.name if primary else None,
            "n_val": len(first.val.ids), "n_test": len(first.test.ids) if first.test is not None else 0,
            "test_labelled": first.test_labelled, "classes": classes, "notes": notes,
            "repeats": tags, "folds": len(set(folds.values())) if folds else 0,
            "out_of_fold": bool(first.val.meta.get("out_of_fold")), "rank_spearman": rho, **extra}
    frame.attrs["info"] = info
    return Board(frame, shown, classes, primary, views, info, repeats)


def _tag_order(tag: str) -> tuple:
    """Repeat tags in seed order (``s2`` before ``s10``)."""
    return (0, int(tag[1:])) if tag[1:].isdigit() else (1, tag)


def _best_member(entries: list[Entry], rows: list[dict]) -> Entry | None:
    """The member with the highest validation AUC (ties to the first name); None without a scored member."""
    members = [i for i, e in enumerate(entries) if e.kind == "member" and math.isfinite(rows[i]["val_auc"])]
    return entries[min(members, key=lambda i: (-rows[i]["val_auc"], entries[i].name))] if members else None


def _others(frame: pd.DataFrame, best: str | None, column: str) -> np.ndarray:
    """``frame[column]`` over the board's comparisons: NaN for the reference member's own row and for the
    temperature-scaled copies (:func:`medzoo.ensemble.calibration.is_calibrated`), which add no comparison of
    their own (a two-class copy orders the images exactly as its source does), so calibrating leaves the
    other entries' Holm-corrected p-values as they were."""
    values = frame[column].to_numpy(dtype=np.float64).copy()
    values[((frame["entry"] == best) & (frame["kind"] == "member")).to_numpy()] = np.nan
    values[frame["entry"].map(is_calibrated).to_numpy(dtype=bool)] = np.nan
    return values


def _rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Sorted by validation AUC, honest scores first (in-sample ones below them), then name; ``rank`` 1.. first."""
    honest = frame["val_scored"] != "in-sample"
    frame = frame.assign(_honest=honest, _key=frame["val_auc"].fillna(-np.inf))
    frame = frame.sort_values(["_honest", "_key", "entry", "kind"], ascending=[False, False, True, True],
                              kind="stable").drop(columns=["_honest", "_key"]).reset_index(drop=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame


def _fold_assignment(run_dir: Path, entries: list[Entry]) -> dict[str, int]:
    """The run's ``[cv]`` folds ``{image_id: fold}`` (found by the tables' dataset name); empty without them."""
    names = {str(e.val.meta["dataset"]) for e in entries if e.val.meta.get("dataset")}
    paths = [RunDir(run_dir).folds_csv(n) for n in sorted(names)]
    return next((read_folds(p) for p in paths if p.is_file()), {})


def _fold_spreads(entries: list[Entry], rows: list[dict]) -> None:
    """``test_auc_fold_sd`` (spread of the fold models' own test AUCs) of every entry that has them, in place."""
    for e, row in zip(entries, rows):
        aucs = [metrics.auc_score(t.labels, t.probs) for t in e.fold_tests.values() if t.has_labels]
        row["test_auc_fold_sd"] = metrics.mean_sd(aucs)[1] if aucs else float("nan")


def _fold_frame(entries: list[Entry], rows: list[dict], folds: dict[str, int]) -> pd.DataFrame | None:
    """One row per entry and fold (``replicate`` "fold k"): the out-of-fold AUC on fold k, the fold model's test AUC."""
    if not folds:
        return None
    out = []
    for e in entries:
        fold_of = np.array([folds.get(i, 0) for i in e.val.ids])
        for k in sorted(set(fold_of.tolist()) - {0}):
            held = fold_of == k
            t = e.fold_tests.get(k)
            out.append({"entry": e.name, "kind": e.kind, "replicate": f"fold {k}",
                        "val_auc": metrics.auc_score(e.val.labels[held], e.val.probs[held]) if e.val.has_labels
                        else float("nan"),
                        "test_auc": metrics.auc_score(t.labels, t.probs) if t is not None and t.has_labels
                        else float("nan")})
    return pd.DataFrame(out)


def _aggregate(per: dict, notes: list[str]) -> tuple[pd.DataFrame, dict, str | None, pd.DataFrame, dict]:
    """One row per entry over the repeats (means, sds, the repeated DeLong test, Holm), the repeats' long frame,
    the entries shown for plots (the first repeat's), the best member's name and the pick summary."""
    long = []
    for tag, (group, rows, _) in per.items():
        for e, row in zip(group, rows):
            long.append({**row, "entry": base_name(e.name), "replicate": repeat_label(tag), "_entry": e})
    frame_long = pd.DataFrame(long)
    keys = list(dict.fromkeys(zip(frame_long["kind"], frame_long["entry"])))
    skip = ("entry", "kind", "replicate", "_entry", "val_scored", "near_chance", "members")
    numeric = [c for c in frame_long.columns if c not in skip and pd.api.types.is_numeric_dtype(frame_long[c])]
    rows = []
    for kind, entry in keys:
        part = frame_long[(frame_long["kind"] == kind) & (frame_long["entry"] == entry)]
        shared = replicate_tag(part["_entry"].iloc[0].name) is None
        values = part.iloc[:1] if shared else part
        row = {"entry": entry, "kind": kind, **{c: float(values[c].mean()) for c in numeric}}
        row["val_auc_sd"] = metrics.mean_sd(values["val_auc"].to_numpy())[1]
        row["test_auc_sd"] = metrics.mean_sd(values["test_auc"].to_numpy())[1]
        row["repeats"] = len(values)
        row["near_chance"] = bool(values["near_chance"].any())
        row["val_scored"] = part["val_scored"].iloc[0]
        row["members"] = ", ".join(dict.fromkeys(base_name(m.strip()) for m in ", ".join(part["members"]).split(",")
                                                 if m.strip()))
        rows.append(row)
    frame = pd.DataFrame(rows)
    member_rows = frame[(frame["kind"] == "member") & frame["val_auc"].notna()]
    best = min(zip(-member_rows["val_auc"], member_rows["entry"]))[1] if len(member_rows) else None
    frame["delta_vs_best_member"] = frame["delong_p"] = np.nan
    if best is not None:
        _repeated_delong(per, frame, best, notes)
    frame["delong_p_holm"] = metrics.holm(_others(frame, best, "delong_p"))
    first = next(iter(per.values()))[0]
    shown = {(e.kind, base_name(e.name)): e for e in first}
    by_tag = {tag: pd.DataFrame([{**r, "entry": base_name(e.name)} for e, r in zip(group, rws)])
              for tag, (group, rws, _) in per.items()}
    repeats = frame_long.drop(columns="_entry")
    return frame, shown, best, repeats, _pick_summary(by_tag)


def _repeated_delong(per: dict, frame: pd.DataFrame, best: str, notes: list[str]) -> None:
    """Fill ``delta_vs_best_member`` / ``delong_p`` of ``frame`` from :func:`metrics.repeated_delong`, in place.

    Entries with a labelled test table in every repeat take part; the reference is member ``best``.
    """
    keys = [(k, e) for k, e in zip(frame["kind"], frame["entry"])]
    tables = {key: [] for key in keys}
    for group, _, _ in per.values():
        found = {(e.kind, base_name(e.name)): e for e in group}
        for key in keys:
            e = found.get(key)
            tables[key].append(e.test if e is not None and e.test_labelled else None)
    usable = [key for key in keys if all(t is not None for t in tables[key])]
    if ("member", best) not in usable:
        return
    aligned = [align([tables[key][r] for key in usable]) for r in range(len(per))]
    labels, stacks = aligned[0][3], [probs for _, _, probs, _ in aligned]
    try:
        _, delta, p, _ = metrics.repeated_delong(labels, np.stack(stacks), usable.index(("member", best)))
    except ValueError as err:
        notes.append(f"repeated DeLong test skipped: {err}")
        return
    for k, key in enumerate(usable):
        i = keys.index(key)
        frame.loc[i, "delta_vs_best_member"], frame.loc[i, "delong_p"] = float(delta[k]), float(p[k])


def _pick_summary(by_tag: dict) -> dict:
    """How the pick held up in each repeat: was the entry ranked first by validation the test-best, and the best
    ensemble's (by validation) test margin over the best member's (by validation)."""
    picked, margins = [], []
    for frame in by_tag.values():
        honest = frame[(frame["val_scored"] != "in-sample") & frame["val_auc"].notna()]
        tested = honest[honest["test_auc"].notna()]
        if tested.empty:
            continue
        top = tested.sort_values(["val_auc", "entry"], ascending=[False, True], kind="stable").iloc[0]
        picked.append(bool(top["test_auc"] >= tested["test_auc"].max()))
        ens = tested[tested["kind"] == "ensemble"].sort_values(["val_auc", "entry"], ascending=[False, True])
        mem = tested[tested["kind"] == "member"].sort_values(["val_auc", "entry"], ascending=[False, True])
        if len(ens) and len(mem):
            margins.append(float(ens.iloc[0]["test_auc"] - mem.iloc[0]["test_auc"]))
    return {"pick_was_test_best": picked, "ensemble_margins": margins}


def build_leaderboard(run_dir: str | Path, threshold: str | float = "youden", bootstrap: int = 1000,
                      seed: int = 0, sensitivity: float | None = None) -> pd.DataFrame:
    """The leaderboard of ``run_dir`` as a DataFrame, rank 1 first (``frame.attrs["info"]`` says how it was made)."""
    return collect(run_dir, threshold, bootstrap, seed, sensitivity).frame


def _fmt(x, digits: int = 4) -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{digits}f}"


def _fmt_sd(sd) -> str:
    """`` ± 0.0021`` for a finite spread, else nothing."""
    return f" ± {sd:.4f}" if isinstance(sd, float) and math.isfinite(sd) else ""


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """``frame[name]``, or NaN everywhere when a board written before it lacks the column."""
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index)


def _fmt_p(p) -> str:
    if not isinstance(p, float) or not math.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns people read, formatted as strings (CI as ``[lo, hi]``); used by the markdown and the terminal."""
    out = pd.DataFrame({"rank": frame["rank"].astype(str), "entry": frame["entry"], "kind": frame["kind"]})
    out["val AUC"] = [_fmt(a) + _fmt_sd(sd) + ("*" if how == "in-sample" else "") + (" (near chance)" if dead else "")
                      for a, sd, how, dead in zip(frame["val_auc"], _column(frame, "val_auc_sd"), frame["val_scored"],
                                                  _column(frame, "near_chance").fillna(False).astype(bool))]
    show_test = frame["test_auc"].notna().any()
    if show_test:
        spread = _column(frame, "test_auc_sd") if "test_auc_sd" in frame else _column(frame, "test_auc_fold_sd")
        out["test AUC"] = [_fmt(a) + _fmt_sd(sd) for a, sd in zip(frame["test_auc"], spread)]
        out["test 95% CI"] = [f"[{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) else ""
                              for lo, hi in zip(frame["test_auc_lo"], frame["test_auc_hi"])]
        out["Δ vs best member"] = frame["delta_vs_best_member"].map(lambda x: "" if not math.isfinite(x) else f"{x:+.4f}")
        out["p"] = frame["delong_p"].map(_fmt_p)
        out["p (Holm)"] = _column(frame, "delong_p_holm").map(_fmt_p)
    else:
        out["val 95% CI"] = [f"[{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) else ""
                             for lo, hi in zip(frame["val_auc_lo"], frame["val_auc_hi"])]
    view_cols = [c for c in frame.columns if c.endswith("_auc") and c.startswith(("val_", "test_"))
                 and c not in ("val_auc", "test_auc") and (show_test or c.startswith("val_"))]
    if show_test:
        for name, col in (("thr", "threshold"), ("sens", "sensitivity"), ("spec", "specificity"),
                          ("acc", "accuracy"), ("bal acc", "balanced_accuracy")):
            if frame[col].notna().any():
                out[name] = frame[col].map(_fmt)
    calibration_split = "test" if show_test else "val"
    for name in ("ece", "brier"):
        col = _column(frame, f"{calibration_split}_{name}")
        if col.notna().any():
            out[f"{calibration_split} {CALIBRATION_NAMES[name]}"] = col.map(_fmt)
    for c in view_cols:
        out[c.removesuffix("_auc").replace("_", " ") + " AUC"] = frame[c].map(_fmt)
    if frame["members"].astype(bool).any():
        out["members"] = frame["members"]
    return out


def to_markdown(frame: pd.DataFrame) -> str:
    """A markdown table with a short header saying what was measured and how."""
    info = frame.attrs.get("info", {})
    shown = display_frame(frame)
    test_state = ("labelled" if info.get("test_labelled") else "unlabelled: validation only") if info.get("n_test") else "absent"
    auc_rule = (f"binary AUC of '{info['classes'][1]}'" if len(info.get("classes", [])) == 2
                else f"macro one-vs-rest AUC over {len(info.get('classes', []))} classes")
    labelled = bool(info.get("test_labelled"))
    lines = [f"# Leaderboard: {info.get('dataset') or 'unknown dataset'}", "",
             f"- N: val {info.get('n_val')}, test {info.get('n_test')} ({test_state})",
             f"- AUC: {auc_rule}; 95% CI from a stratified bootstrap of {info.get('bootstrap')} replicates "
             f"(seed {info.get('seed')})",
             "- Ranked by validation AUC" + (f"; Δ and p (on test) against the best single member by validation "
                                              f"AUC: {info.get('best_member')}" if labelled else "")]
    repeats = info.get("repeats") or []
    if labelled:
        test_name = (metrics.REPEATED_DELONG_NAME if repeats else "paired DeLong test")
        copies = " (temperature-scaled copies +ts not counted)" if frame["entry"].map(is_calibrated).any() else ""
        lines.append(f"- p: {test_name}; p (Holm): Holm-corrected over the board's "
                     f"{int(frame['delong_p_holm'].notna().sum()) if 'delong_p_holm' in frame else 0} comparisons"
                     f"{copies}")
    if repeats:
        lines.append(f"- Repeats: {len(repeats)} ({', '.join(repeats)}); every number is the mean over the repeats, "
                     f"± the sd across them (a 95% CI is the mean of the repeats' bootstrap intervals); each repeat's rows: "
                     f"leaderboard_repeats.csv")
    if info.get("out_of_fold"):
        lines.append(f"- val: out-of-fold over all {info.get('n_val')} train+val images ({info.get('folds')} folds; "
                     f"each image scored by the fold model that did not train on it); test: the mean of the fold "
                     f"models (bagged)" + ("; test ± : sd of the fold models' own test AUCs" if not repeats else ""))
    rho = [r for r in info.get("rank_spearman") or [] if math.isfinite(r)]
    if rho:
        lines.append("- Spearman correlation of validation and test ranks: " + (
            f"{rho[0]:.2f}" if len(rho) == 1 else f"{np.mean(rho):.2f} (mean over repeats; from {min(rho):.2f} "
                                                   f"to {max(rho):.2f})"))
    picked, margins = info.get("pick_was_test_best") or [], info.get("ensemble_margins") or []
    if len(picked) > 1:
        lines.append(f"- The entry ranked first by validation was the test-best in {sum(picked)} of {len(picked)} "
                     f"repeats")
    if len(margins) > 1:
        mean, sd = metrics.mean_sd(np.array(margins))
        lines.append(f"- Best ensemble's test margin over the best member (each by validation, per repeat): "
                     f"{mean:+.4f} ± {sd:.4f} (from {min(margins):+.4f} to {max(margins):+.4f})")
    if labelled and info.get("primary"):
        lines.append(f"- Sensitivity, specificity: task '{info.get('primary')}' at the threshold chosen on validation "
                     f"({info.get('threshold')}), applied to test")
    if labelled:
        lines.append("- Accuracy, balanced accuracy: argmax of the class probabilities")
    lines.append(f"- {'test' if labelled else 'val'} ECE, Brier: " + (
        f"of the probability of '{info['classes'][1]}'; Brier = mean (p - y)^2" if len(info.get("classes", [])) == 2
        else "ECE of the top label (largest probability against whether its class is the true one); Brier = mean "
             "over images of the squared error summed over classes, against one-hot labels (0 to 2)")
        + f"; ECE = bin-size-weighted mean |observed frequency - mean probability| over {metrics.CALIBRATION_BINS} "
          f"equal-width bins; both 0 when perfectly calibrated"
        + ("" if labelled else " (on validation: no labelled test)"))
    if "near_chance" in frame and frame["near_chance"].fillna(False).astype(bool).any():
        lines.append("- (near chance): a member whose validation AUC's 95% interval holds 0.5 did not learn; "
                     "ensembles leave it out unless [ensemble] members names it")
    if (frame["val_scored"] == "in-sample").any():
        lines.append("- val AUC*: in-sample (the method's weights were fitted on these validation images): shown, "
                     "not ranked; such entries come after every honestly scored one (their val ECE and Brier are "
                     "in-sample too)")
    lines += [f"- Note: {n}" for n in info.get("notes", [])]
    lines += ["", "| " + " | ".join(shown.columns) + " |", "|" + "|".join("---" for _ in shown.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_terminal(frame: pd.DataFrame) -> str:
    """A plain-text table for the terminal."""
    return display_frame(frame).to_string(index=False)


def check_options(config: dict | None) -> dict:
    """The ``[leaderboard]`` section checked, keys and values; returns a copy. Pure: reads no file.

    ``threshold``: a rule :func:`benchmarks.metrics.parse_threshold_rule` accepts (``"youden"``,
    ``"sens:0.95"``, or a target sensitivity in (0, 1]); ``sensitivity``: a number in (0, 1],
    short for ``threshold = "sens:<it>"``, so not both; ``bootstrap``: an integer >= 0
    (replicates for the CIs, 0 for none); ``seed``: an integer >= 0.
    """
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"[leaderboard] must be a table of options, got {type(config).__name__} {config!r}")
    config = dict(config or {})
    for key in config:
        if key not in CONFIG_KEYS:
            raise ValueError(unknown_name("[leaderboard] key", key, CONFIG_KEYS))
    if "threshold" in config and "sensitivity" in config:
        raise ValueError(f"[leaderboard] gives threshold = {config['threshold']!r} and sensitivity = "
                         f"{config['sensitivity']!r}; sensitivity = t is short for threshold = \"sens:t\": give one")
    if "threshold" in config:
        try:
            metrics.parse_threshold_rule(config["threshold"])
        except ValueError as e:
            raise ValueError(f"[leaderboard] threshold: {e}") from None
    if "sensitivity" in config:
        value = config["sensitivity"]
        if not _is_number(value) or not 0 < value <= 1:
            raise ValueError(f"[leaderboard] sensitivity = {value!r}; expected a number in (0, 1], the target "
                             f"sensitivity of the operating threshold")
    for key in ("bootstrap", "seed"):
        value = config.get(key)
        if key in config and not (_is_number(value) and isinstance(value, numbers.Integral) and value >= 0):
            raise ValueError(f"[leaderboard] {key} = {value!r}; expected an integer >= 0")
    return config


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def config_options(run_dir: str | Path, **overrides) -> dict:
    """Keyword arguments for :func:`write_leaderboard` from the run config's ``[leaderboard]`` section.

    The section is checked by :func:`check_options`. ``overrides`` (command-line flags; ``None``
    = not given) win over the section; a ``threshold`` given here replaces the section's
    ``sensitivity``. Keys left out take :func:`collect`'s defaults.
    """
    rd = RunDir(run_dir)
    try:
        options = check_options(rd.read_config().get("leaderboard"))
    except ValueError as e:
        raise ValueError(f"{rd.config_json}: {e}") from None
    given = {k: v for k, v in overrides.items() if v is not None}
    if "threshold" in given:
        options.pop("sensitivity", None)
    return {**options, **given}


def write_leaderboard(run_dir: str | Path, threshold: str | float = "youden", bootstrap: int = 1000, seed: int = 0,
                      sensitivity: float | None = None, plots: bool = True) -> pd.DataFrame:
    """Build the leaderboard and write ``leaderboard.csv``, ``leaderboard.md`` and (if ``plots``) ``plots/*.png``.

    Takes the config's ``[leaderboard]`` keys as keyword arguments (``threshold`` or ``sensitivity``, ``bootstrap``).
    """
    rd = RunDir(run_dir)
    board = collect(rd.path, threshold, bootstrap, seed, sensitivity)
    write_text(rd.leaderboard_csv, board.frame.to_csv(index=False))
    write_text(rd.leaderboard_md, to_markdown(board.frame))
    if board.repeats is not None and board.info.get("repeats"):
        write_text(rd.leaderboard_repeats_csv, board.repeats.to_csv(index=False))
    if plots:
        board.info["plots"] = [str(p) for p in draw_board(rd.path, board)]
    return board.frame
