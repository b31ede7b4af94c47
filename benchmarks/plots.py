"""Leaderboard figures (matplotlib, Agg, PNG): ROC curves, a confusion matrix, AUC with CIs, reliability
diagrams, training curves, the spread of AUCs over replicates and the agreement of validation and test ranks.

The drawing functions take plain arrays; :func:`draw_board` picks what to draw from a built leaderboard.
Every figure is written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from medzoo.benchmarks import metrics
from medzoo.benchmarks.board import Board, repeat_label
from medzoo.core.figures import save_png
from medzoo.core.rundir import RunDir
from medzoo.ensemble.calibration import calibrated_name, is_calibrated


KIND_COLORS = {"member": "tab:gray", "ensemble": "tab:blue"}
HISTORY_PANELS = (("train_loss", "train loss"), ("val_loss", "validation loss"), ("val_auc", "validation AUC"))


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, path: str | Path) -> Path:
    """ROC curves, one per ``(label, y [N] bool, score [N])``, each labelled with its AUC."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for label, y, score in curves:
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, lw=1.6, label=f"{label} (AUC {metrics.roc_auc(y, score):.4f})")
    ax.plot([0, 1], [0, 1], ls=":", color="black", lw=0.8)
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path, dpi=120)


def plot_confusion(matrix: np.ndarray, names: Sequence[str], title: str, path: str | Path) -> Path:
    """A ``[C, C]`` confusion matrix (rows true, columns predicted) with counts and row fractions."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    frac = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    c = len(names)
    fig = Figure(figsize=(1.4 * c + 2.2, 1.2 * c + 1.6))
    ax = fig.subplots()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            ax.text(j, i, f"{matrix[i, j]}\n{frac[i, j]:.1%}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.6 else "black", fontsize=9)
    ax.set(xticks=range(c), yticks=range(c), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_yticklabels(names)
    return save_png(fig, path, dpi=120)


def plot_reliability(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, path: str | Path,
                     n_bins: int = metrics.CALIBRATION_BINS) -> Path:
    """Reliability diagram, one curve per ``(label, event [N] bool, confidence [N])``, each labelled with its ECE.

    Top: the observed frequency of the event against the mean confidence of each non-empty bin of
    :func:`metrics.reliability` (``n_bins`` equal-width bins), and the diagonal of perfect calibration.
    Bottom: the images in each of those bins, at its mean confidence (log scale).
    """
    if not curves:
        raise ValueError("plot_reliability: no curves to draw; give at least one (label, event, confidence)")
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls=":", color="black", lw=0.8, label="perfectly calibrated")
    for i, (label, event, confidence) in enumerate(curves):
        mean_confidence, frequency, counts = metrics.reliability(event, confidence, n_bins)
        ece = metrics.calibration_error(event, confidence, n_bins)
        top.plot(mean_confidence, frequency, marker="o", ms=4, lw=1.4, color=f"C{i % 10}",
                 label=f"{label} (ECE {ece:.4f})")
        bottom.plot(mean_confidence, counts, marker="o", ms=3, lw=1, color=f"C{i % 10}")
    top.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed frequency", title=title)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set(yscale="log", xlabel=f"mean predicted probability in the bin ({n_bins} equal-width bins)",
               ylabel="images per bin")
    bottom.grid(alpha=0.3)
    return save_png(fig, path, dpi=120)


def plot_auc_bars(names: Sequence[str], kinds: Sequence[str], auc: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  title: str, path: str | Path, reference: float | None = None) -> Path:
    """Horizontal AUC bars with CI whiskers, first name on top; ``reference`` draws a dashed line."""
    auc, lo, hi = (np.asarray(a, dtype=float) for a in (auc, lo, hi))
    n = len(names)
    fig = Figure(figsize=(7, 0.32 * n + 1.4))
    ax = fig.subplots()
    ypos = np.arange(n)[::-1]
    err = np.vstack([np.nan_to_num(auc - lo), np.nan_to_num(hi - auc)])
    ax.barh(ypos, auc, xerr=err, color=[KIND_COLORS.get(k, "tab:orange") for k in kinds], capsize=3, height=0.7)
    xlabel = "ROC-AUC (bars: point estimate, whiskers: 95% CI)"
    if reference is not None and np.isfinite(reference):
        ax.axvline(reference, ls="--", color="black", lw=0.8)
        xlabel += "; dashed: best single member"
    finite = np.concatenate([a[np.isfinite(a)] for a in (auc, lo)])
    left = max(0.0, float(finite.min()) - 0.05) if finite.size else 0.0
    ax.set(yticks=ypos, xlim=(left, 1.005), xlabel=xlabel, title=title)
    ax.set_yticklabels([f"{nm} ({k})" for nm, k in zip(names, kinds)], fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, path, dpi=120)


def plot_class_counts(counts: np.ndarray, splits: Sequence[str], names: Sequence[str], title: str,
                      path: str | Path) -> Path:
    """Grouped bar chart of ``counts [S, K]``: the K ``names`` on x, one bar per split, each bar labelled."""
    x = np.arange(len(names))
    width = 0.8 / len(splits)
    fig = Figure(figsize=(max(5.0, 1.3 * len(names) + 2), 4))
    ax = fig.subplots()
    for k, split in enumerate(splits):
        bars = ax.bar(x + (k - (len(splits) - 1) / 2) * width, counts[k], width, label=f"{split} ({counts[k].sum()})")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0)
    ax.set(ylabel="images", title=title)
    ax.legend()
    return save_png(fig, path, dpi=120)


def plot_dataset_counts(dataset, path: str | Path) -> Path:
    """A dataset's (``medzoo.zoo.datasets.Dataset``) images per class, and unlabeled when any, per split."""
    counts = np.stack([dataset.class_counts(s) for s in dataset.splits])
    names = [*dataset.classes, "unlabeled"]
    if not counts[:, -1].any():
        counts, names = counts[:, :-1], names[:-1]
    return plot_class_counts(counts, dataset.splits, names, f"{dataset.name}: images per class and split", path)


def plot_training_curves(histories: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """One panel per history column (train loss, validation loss, validation AUC), one line per member."""
    fig = Figure(figsize=(5 * len(HISTORY_PANELS), 4))
    axes = fig.subplots(1, len(HISTORY_PANELS))
    for ax, (col, label) in zip(axes, HISTORY_PANELS):
        for member, h in histories.items():
            if col in h.columns:
                ax.plot(h["epoch"], h[col], marker=".", lw=1.2, label=member)
        ax.set(xlabel="epoch", title=label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Training curves of the members", y=1.02)
    return save_png(fig, path, dpi=120)


SPREAD_COLUMNS = ("entry", "kind", "replicate", "val_auc", "test_auc")
RANK_COLUMNS = ("entry", "val_auc", "test_auc")
SPLIT_STYLES = (("test_auc", "test", "black", "o"), ("val_auc", "val", "tab:orange", "^"))


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: frame lacks columns {missing}; it has {list(frame.columns)}, "
                         f"and needs {list(columns)}")
    if frame.empty:
        raise ValueError(f"{what}: frame has no rows")


def plot_spread(frame: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Each entry's AUC over its replicates (seeds or folds): one row per entry, first entry on top.

    ``frame`` has one row per entry and replicate, columns ``entry``, ``kind`` ("member" or "ensemble"),
    ``replicate`` (str, e.g. "seed 0"), ``val_auc``, ``test_auc`` (NaN allowed, e.g. a withheld test).
    Entries keep their order of first appearance. Each replicate's test AUC is a dot, its validation AUC
    a triangle just below it, each with a bar from mean - sd to mean + sd (:func:`metrics.mean_sd`) and
    a tick at the mean; a split with no defined AUC is left out.
    """
    _require(frame, SPREAD_COLUMNS, "plot_spread")
    keys = list(dict.fromkeys(zip(frame["entry"], frame["kind"])))
    n = len(keys)
    fig = Figure(figsize=(8, 0.36 * n + 1.6))
    ax = fig.subplots()
    ypos = np.arange(n)[::-1]
    drawn = []
    for offset, (col, split, color, marker) in zip((0.13, -0.13), SPLIT_STYLES):
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(values).all():
            continue
        drawn.append(values)
        for y, (entry, kind) in zip(ypos, keys):
            v = values[((frame["entry"] == entry) & (frame["kind"] == kind)).to_numpy()]
            mean, sd = metrics.mean_sd(v)
            ax.scatter(v, np.full(len(v), y + offset), s=26, color=color, marker=marker, alpha=0.85,
                       edgecolors="white", lw=0.5, zorder=3,
                       label=f"{split} AUC, one per replicate" if y == ypos[0] else None)
            if np.isfinite(sd):
                ax.plot([mean - sd, mean + sd], [y + offset] * 2, color=color, lw=2, alpha=0.45,
                        label=f"{split} mean ± 1 sd" if y == ypos[0] else None)
            ax.plot([mean], [y + offset], marker="|", ms=11, mew=2, color=color)
    finite = np.concatenate([v[np.isfinite(v)] for v in drawn]) if drawn else np.empty(0)
    left = max(0.0, float(finite.min()) - 0.02) if finite.size else 0.0
    right = min(1.005, float(finite.max()) + 0.02) if finite.size else 1.005
    ax.set(yticks=ypos, ylim=(-0.6, n - 0.4), xlim=(left, right), title=title,
           xlabel="ROC-AUC (marks: replicates; bar: mean ± 1 sd; tick: mean)")
    ax.set_yticklabels([f"{entry} ({kind})" for entry, kind in keys], fontsize=8)
    for label, (_, kind) in zip(ax.get_yticklabels(), keys):  # ensembles in bold blue, members in black
        if kind == "ensemble":
            label.set(color=KIND_COLORS["ensemble"], fontweight="bold")
    ax.grid(axis="x", alpha=0.3)
    for y in ypos[:-1]:
        ax.axhline(y - 0.5, color="black", lw=0.3, alpha=0.2)
    ax.plot([], [], ls="none", label="bold blue names: ensembles")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return save_png(fig, path, dpi=120)


def rank_agreement(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Validation and test ranks of entries (1 = highest AUC, ties share their mean rank) and their Spearman.

    ``frame`` has columns ``entry``, ``val_auc``, ``test_auc`` and optionally ``replicate`` (ranked within
    each replicate); rows lacking either AUC are dropped. Returns ``(ranked, rho)``: the kept rows with
    ``val_rank`` and ``test_rank`` added, and Spearman's correlation per replicate (key ``""`` without a
    ``replicate`` column; NaN where fewer than two entries or a constant side).
    """
    _require(frame, RANK_COLUMNS, "rank_agreement")
    kept = frame.assign(val_auc=pd.to_numeric(frame["val_auc"], errors="coerce"),
                        test_auc=pd.to_numeric(frame["test_auc"], errors="coerce")).dropna(subset=["val_auc", "test_auc"])
    if kept.empty:
        raise ValueError(f"rank_agreement: none of the {len(frame)} rows has both val_auc and test_auc")
    groups = kept["replicate"].astype(str) if "replicate" in kept.columns else pd.Series("", index=kept.index)
    ranked, rho = [], {}
    for name in dict.fromkeys(groups):
        g = kept[(groups == name).to_numpy()]
        n = len(g)
        ranked.append(g.assign(val_rank=n + 1 - metrics.midranks(g["val_auc"].to_numpy()),
                               test_rank=n + 1 - metrics.midranks(g["test_auc"].to_numpy())))
        rho[name] = metrics.spearman(g["val_auc"], g["test_auc"])
    return pd.concat(ranked), rho


def plot_rank_agreement(frame: pd.DataFrame, path: str | Path, title: str) -> float:
    """Test rank against validation rank of each entry (and replicate), with the diagonal; writes ``path``.

    ``frame`` as for :func:`rank_agreement`. Each replicate has its own colour; the entries ranked first
    by validation are ringed and named in the legend. Returns the Spearman correlation shown in the
    title: the only one without replicates, else the mean over the replicates that have one (NaN if none).
    """
    ranked, rho = rank_agreement(frame)
    defined = [v for v in rho.values() if np.isfinite(v)]
    mean_rho = float(np.mean(defined)) if defined else float("nan")
    groups = ranked["replicate"].astype(str) if "replicate" in ranked else pd.Series("", index=ranked.index)
    n = int(groups.value_counts().max())
    fig = Figure(figsize=(6.4, 6))
    ax = fig.subplots()
    ax.plot([0.5, n + 0.5], [0.5, n + 0.5], ls=":", color="black", lw=0.8, label="same rank")
    for i, (name, r) in enumerate(rho.items()):
        g = ranked[(groups == name).to_numpy()]
        ax.scatter(g["val_rank"], g["test_rank"], s=30, color=f"C{i % 10}", alpha=0.75, lw=0,
                   label=f"{name} (ρ {r:.2f})" if name else None)
    top = ranked[ranked["val_rank"] == ranked.groupby(groups)["val_rank"].transform("min")]
    ax.scatter(top["val_rank"], top["test_rank"], s=160, facecolors="none", edgecolors="tab:red", lw=1.5,
               label="rank 1 by validation: " + ", ".join(dict.fromkeys(top["entry"].astype(str))))
    if len(rho) == 1:
        shown = f"Spearman ρ = {mean_rho:.3f} (n = {n})"
        ticks = ranked.groupby("val_rank")["entry"].agg(lambda e: ", ".join(map(str, e)))
        ax.set_xticks(ticks.index, [f"{e} ({r:g})" for r, e in ticks.items()], rotation=60, ha="right", fontsize=7)
    else:
        shown = f"mean Spearman ρ over {len(rho)} replicates = {mean_rho:.3f}"
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlim=(0.5, n + 0.5), ylim=(n + 0.5, 0.5), aspect="equal", title=f"{title}\n{shown}",
           xlabel="validation rank (1 = best)", ylabel="test rank (1 = best)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    save_png(fig, path, dpi=120)
    return mean_rho


def _split_for(board: Board) -> str:
    return "test" if board.info.get("test_labelled") else "val"


def _task_arrays(board: Board, table) -> tuple[np.ndarray, np.ndarray, str]:
    """``(y [N'] bool, score [N'], description)`` of the primary task, else the micro-averaged one-vs-rest."""
    if board.primary is not None:
        return board.primary.truth(table.labels), board.primary.score(table.probs), f"task '{board.primary.name}'"
    onehot = table.labels[:, None] == np.arange(len(board.classes))[None, :]
    return onehot.ravel(), table.probs.ravel(), "micro-averaged one-vs-rest"


def _shown_repeat(board: Board) -> str:
    """The title suffix of the figures drawn from one table per entry: a repeated run's are its first repeat's."""
    tags = board.info.get("repeats") or []
    return f", repeat {tags[0]} of {len(tags)}" if tags else ""


def draw_board(run_dir: str | Path, board: Board) -> list[Path]:
    """Draw every leaderboard figure into the run's ``plots/``; returns the files written.

    ROC curves of the top three ensembles and the best member, the confusion matrix of the top
    entry, AUC bars with CIs, a reliability diagram (``calibration.png``) of the top two entries and
    the best member with their temperature-scaled copies, each entry's spread over repeats or folds,
    validation rank against test rank (temperature-scaled copies left out), and the members' training
    curves, each where there is something to draw. In a repeated run the ROC, confusion and
    reliability figures show the first repeat's tables (their titles say so), at that repeat's own
    threshold; the board's rows are means over the repeats.
    """
    rd = RunDir(run_dir)
    split = _split_for(board)
    order = [(r.kind, r.entry) for r in board.frame.itertuples()]
    scored = [k for k in order if (board.entries[k].test_labelled if split == "test" else board.entries[k].val.has_labels)]
    best = board.info.get("best_member")
    pick = [k for k in scored if k[0] == "ensemble"][:3] + [k for k in scored if k == ("member", best)]
    written = []
    if pick:
        written.append(_draw_roc(board, pick, split, rd.plots / "roc.png"))
    if scored:
        written.append(_draw_confusion(board, scored[0], split, rd.plots / "confusion.png"))
    calibration = _calibration_pick(board, scored, split)
    if calibration:
        written.append(_draw_reliability(board, calibration, split, rd.plots / "calibration.png"))
    shown = board.frame[board.frame[f"{split}_auc"].notna()]
    if len(shown):
        written.append(_draw_auc_bars(shown, split, best, rd.plots / "auc_ci.png"))
    spread = board.repeats if board.repeats is not None else board.frame.assign(replicate="run")
    if board.repeats is not None:
        order = list(zip(board.frame["entry"], board.frame["kind"]))
        spread = spread.assign(_o=[order.index(k) if k in order else len(order)
                                   for k in zip(spread["entry"], spread["kind"])]).sort_values("_o", kind="stable")
        written.append(plot_spread(spread.drop(columns="_o"), rd.plots / "spread.png",
                                   f"AUC of each entry over its {'repeats' if board.info.get('repeats') else 'folds'}"))
    ranked = spread[~spread["entry"].map(is_calibrated).astype(bool)]  # a temperature-scaled copy is no new entry
    if ranked[["val_auc", "test_auc"]].notna().all(axis=1).sum() >= 2:
        written.append(rd.plots / "rank_agreement.png")
        plot_rank_agreement(ranked, written[-1], "Validation rank against test rank")
    histories = {}
    for member in rd.member_ids():
        path = rd.member(member).history
        if path.exists():
            h = pd.read_csv(path)
            if len(h) and "epoch" in h.columns:
                histories[member] = h
    if histories:
        written.append(plot_training_curves(histories, rd.plots / "training_curves.png"))
    return written


def _draw_roc(board: Board, pick: list[tuple[str, str]], split: str, path: Path) -> Path:
    """ROC curves of the entries ``pick`` (``(kind, name)`` keys, at least one) on ``split``."""
    curves = []
    for kind, name in pick:
        y, score, what = _task_arrays(board, getattr(board.entries[(kind, name)], split))
        curves.append((f"{name}" + (" (best member)" if kind == "member" else ""), y, score))
    withheld = " (test labels withheld)" if split == "val" and board.info.get("n_test") else ""
    return plot_roc(curves, f"ROC on {split}{withheld}, {what}{_shown_repeat(board)}", path)


def _calibration_pick(board: Board, scored: list[tuple[str, str]], split: str) -> list[tuple[str, str]]:
    """The entries of the reliability diagram: the first two of ``scored`` and the best member, each followed by
    its temperature-scaled copy when the board has one; only those whose rows are probabilities."""
    best = ("member", board.info.get("best_member"))
    top = scored[:2]
    if best in scored and best not in top:
        top = top + [best]
    keys = [k for key in top for k in (key, ("ensemble", calibrated_name(key[1]))) if k in scored]
    return [k for k in dict.fromkeys(keys) if getattr(board.entries[k], split).rows_sum_to_one().all()]


def _draw_reliability(board: Board, pick: list[tuple[str, str]], split: str, path: Path) -> Path:
    """The reliability diagram of the entries ``pick`` (``(kind, name)`` keys, at least one) on ``split``."""
    curves = []
    for kind, name in pick:
        t = getattr(board.entries[(kind, name)], split)
        best = kind == "member" and name == board.info.get("best_member")
        curves.append((name + (" (best member)" if best else ""), *metrics.calibration_problem(t.labels, t.probs)))
    what = (f"probability of '{board.classes[1]}'" if len(board.classes) == 2
            else "top label (largest probability)")
    withheld = " (test labels withheld)" if split == "val" and board.info.get("n_test") else ""
    return plot_reliability(curves, f"Reliability on {split}{withheld}, {what}{_shown_repeat(board)}", path)


def _draw_confusion(board: Board, top: tuple[str, str], split: str, path: Path) -> Path:
    """The confusion matrix of entry ``top``: at its threshold for one binary task, else of the argmax."""
    t = getattr(board.entries[top], split)
    frame = board.frame
    tags = board.info.get("repeats") or []
    if tags and board.repeats is not None:
        frame = board.repeats[board.repeats["replicate"] == repeat_label(tags[0])]
    row = frame[(frame["kind"] == top[0]) & (frame["entry"] == top[1])].iloc[0]
    if len(board.classes) == 2 and board.primary is not None and np.isfinite(row["threshold"]):
        p = board.primary
        m = metrics.threshold_metrics(p.truth(t.labels), p.score(t.probs), row["threshold"])
        matrix = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
        names = [board.classes[1 - p.positive[0]], board.classes[p.positive[0]]]
        how = f"threshold {row['threshold']:.4g} ({board.info['threshold']} on val)"
    else:
        matrix, names, how = metrics.argmax_metrics(t.labels, t.probs)["confusion"], board.classes, "argmax"
    return plot_confusion(matrix, names, f"{top[1]} on {split}, {how}{_shown_repeat(board)}", path)


def _draw_auc_bars(shown: pd.DataFrame, split: str, best: str | None, path: Path) -> Path:
    """AUC bars of the ``shown`` leaderboard rows, member ``best``'s AUC as the reference line."""
    col = f"{split}_auc"
    ref = shown.loc[(shown["kind"] == "member") & (shown["entry"] == best), col]
    return plot_auc_bars(list(shown["entry"]), list(shown["kind"]), shown[col], shown[f"{col}_lo"],
                         shown[f"{col}_hi"], f"{split} ROC-AUC with stratified-bootstrap 95% CI",
                         path, float(ref.iloc[0]) if len(ref) else None)
