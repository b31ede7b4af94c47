"""``medzoo report RUN_DIR``: one self-contained HTML page of a whole run (``report.html``).

Every figure is embedded as a base64 PNG and the page's only script (sorting the leaderboard) is
inline, so the file opens anywhere, offline, and fetches nothing. Sections (their ``id`` in the
page, in ``SECTIONS``): the run's key figures, the dataset (counts per class and split, with bars),
the leaderboard (its header notes and every row, sortable by any column), the leaderboard's figures
(ROC, AUC intervals, confusion matrix, calibration, spread over repeats or folds, rank agreement),
the members (what each unit trained and its curves), heatmaps (``explain/<entry>/grid.png``), the
embedding views (``plots/embedding_*.png``), the environment and stage times, and the commands and
config that reproduce the run. A section whose inputs the run lacks says what makes them.
"""
from __future__ import annotations

import base64
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from medzoo import __version__
from medzoo.benchmarks.plots import plot_dataset_counts
from medzoo.core.fileio import write_text
from medzoo.core.rundir import TAG, RunDir
from medzoo.zoo.datasets import open_dataset

TEMPLATE = "report.html.j2"
SECTIONS = {
    "summary": "Summary",
    "dataset": "Dataset",
    "leaderboard": "Leaderboard",
    "figures": "ROC, confusion, calibration and spread",
    "members": "Members and training curves",
    "heatmaps": "Heatmaps",
    "embedding": "Embedding view",
    "environment": "Environment and stage times",
    "reproduce": "Reproduce",
}
BOARD_FIGURES = (("roc.png", "ROC curves"), ("auc_ci.png", "AUC with 95% intervals"),
                 ("confusion.png", "Confusion matrix of the top entry"),
                 ("calibration.png", "Reliability diagram"), ("spread.png", "Spread over repeats or folds"),
                 ("rank_agreement.png", "Validation rank against test rank"))
BOARD_COLUMNS = {"rank": "rank", "entry": "entry", "kind": "kind", "val_auc": "val AUC", "val_auc_sd": "± sd",
                 "test_auc": "test AUC", "test_auc_sd": "± sd", "test_auc_lo": "test 95% CI",
                 "delta_vs_best_member": "Δ vs best member", "delong_p": "p", "delong_p_holm": "p (Holm)",
                 "sensitivity": "sens", "specificity": "spec", "balanced_accuracy": "bal acc",
                 "test_ece": "test ECE", "test_brier": "test Brier", "repeats": "repeats", "members": "members"}
MEMBER_FIELDS = ("unit", "model", "size", "seed", "fold", "epochs", "best_epoch", "minutes", "val_auc", "test_auc",
                 "near_chance")


@dataclass(frozen=True)
class Figure:
    """An embedded PNG: its caption, its ``data:`` URI and the run-relative file it came from."""

    caption: str
    uri: str
    source: str


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's report (default ``RUN_DIR/report.html``) atomically; returns its path.

    Needs the run's ``config.json`` and ``leaderboard.csv`` (``medzoo leaderboard`` writes it);
    everything else is shown where the run has it.
    """
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise FileNotFoundError(f"no run folder at {rd.path}")
    for needed, how in ((rd.config_json, "medzoo train"), (rd.leaderboard_csv, "medzoo leaderboard")):
        if not needed.is_file():
            raise ValueError(f"{rd.path}: no {needed.name}; run `{how} ...` first (a report needs a trained, "
                             f"ranked run)")
    html = render(rd)
    return write_text(Path(out) if out else rd.report_html, html)


def render(rd: RunDir) -> str:
    """The report page of run ``rd`` as one HTML string."""
    config = rd.read_config()
    board = pd.read_csv(rd.leaderboard_csv)
    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    context = {
        "version": __version__,
        "run": rd.path.name,
        "config": config,
        "sections": SECTIONS,
        "summary": _summary(board, config),
        "dataset": _dataset(rd, config),
        "notes": _board_notes(rd),
        "board": _board_rows(board),
        "figures": [f for name, caption in BOARD_FIGURES if (f := _figure(rd, rd.plots / name, caption))],
        "members": _members(rd),
        "members_folder": rd.members.is_dir(),
        "curves": _figure(rd, rd.plots / "training_curves.png", "Training curves"),
        "heatmaps": [f for p in _board_order(board, rd.explain.glob("*/grid.png"))
                     if (f := _figure(rd, p, _heatmap_caption(p)))],
        "embeddings": [f for p in sorted(rd.plots.glob("embedding_*.png")) if (f := _figure(rd, p, p.stem[10:]))],
        "environment": _read_json(rd.environment_json) or {},
        "stages": _stages(rd),
        "commands": _commands(rd, config),
        "config_text": rd.config_toml.read_text() if rd.config_toml.is_file() else None,
        "config_json": json.dumps(config, indent=2),
    }
    return env.get_template(TEMPLATE).render(**context)


def _figure(rd: RunDir, path: Path, caption: str) -> Figure | None:
    if not path.is_file():
        return None
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return Figure(caption, f"data:image/png;base64,{data}", str(path.relative_to(rd.path)))


def _board_order(board: pd.DataFrame, grids) -> list[Path]:
    """``explain/<entry>/grid.png`` files in leaderboard order of their entries (repeat tags dropped), then by name."""
    rank = {e: k for k, e in enumerate(board["entry"])}
    return sorted(grids, key=lambda p: (rank.get(p.parent.name.split(TAG)[0], len(rank)), p.parent.name))


def _heatmap_caption(grid: Path) -> str:
    """What a ``grid.png`` of ``medzoo explain`` shows, from the groups of its ``picks.csv``."""
    picks = grid.parent / "picks.csv"
    groups = set(pd.read_csv(picks)["group"]) if picks.is_file() else set()
    what = ("the most confident true positives, false positives and false negatives (called at p >= 0.5)"
            if groups and groups <= {"TP", "FP", "FN"} else "the images given to medzoo explain")
    return f"{grid.parent.name}: heatmaps of {what}"


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _summary(board: pd.DataFrame, config: dict) -> dict:
    """The rank-1 entry, the best member by validation, and the board's size."""
    top = board.iloc[0]
    members = board[board["kind"] == "member"]
    best = members.iloc[0] if len(members) else None
    return {"dataset": config["dataset"], "top": top["entry"], "top_kind": top["kind"],
            "top_val": _number(top["val_auc"]), "top_test": _number(top["test_auc"]),
            "best_member": None if best is None else best["entry"],
            "best_member_test": None if best is None else _number(best["test_auc"]),
            "entries": len(board), "member_count": len(members)}


def _dataset(rd: RunDir, config: dict) -> dict:
    """Counts per split and class from the dataset the run trained on, when readable here, and their bar chart
    (drawn into the run's ``plots/class_counts.png``)."""
    try:
        ds = open_dataset(config["dataset"], data_root=config.get("data_root"))
    except (OSError, ValueError) as e:
        return {"error": f"the dataset {config['dataset']!r} is not readable here ({e}); its counts need the data"}
    counts = {s: ds.class_counts(s).tolist() for s in ds.splits}
    classes = list(ds.classes)
    if any(c[-1] for c in counts.values()):
        classes.append("unlabeled")
    else:
        counts = {s: c[:-1] for s, c in counts.items()}
    bars = plot_dataset_counts(ds, rd.plots / "class_counts.png")
    return {"error": None, "name": ds.name, "format": ds.card.format, "classes": classes, "counts": counts,
            "made": ds.describe_made() or "splits given by the data", "bars": _figure(rd, bars, "Images per class")}


def _board_notes(rd: RunDir) -> list[str]:
    """The header notes of ``leaderboard.md`` (its ``- `` lines above the table), without the markdown."""
    if not rd.leaderboard_md.is_file():
        return []
    notes = []
    for line in rd.leaderboard_md.read_text().splitlines():
        if line.startswith("|"):
            break
        if line.startswith("- "):
            notes.append(line[2:].replace("**", ""))
    return notes


def _board_columns(board: pd.DataFrame) -> dict[str, str]:
    """``{column: header}`` shown, in order: ``BOARD_COLUMNS`` with the task views' AUCs (ISIC 2017's melanoma,
    keratosis and their mean) after the test interval; on a board without test labels the validation interval,
    ECE and Brier in place of the test ones. Columns without any value are left out."""
    views = {c: c.replace("_auc", "").replace("_", " ") + " AUC" for c in board.columns
             if re.fullmatch(r"(val|test)_.+_auc", c) and c not in ("val_auc", "test_auc")}
    no_test = not board["test_auc"].notna().any()
    extra = {"val_auc_lo": "val 95% CI", "val_ece": "val ECE", "val_brier": "val Brier"} if no_test else {}
    shown = {}
    for c, header in BOARD_COLUMNS.items():
        shown[c] = header
        if c == "val_auc_sd":
            shown.update({k: v for k, v in extra.items() if k == "val_auc_lo"})
        if c == "test_auc_lo":
            shown.update(views)
        if c == "test_brier":
            shown.update({k: v for k, v in extra.items() if k != "val_auc_lo"})
    return {c: h for c, h in shown.items() if c in board.columns and board[c].notna().any()}


def _board_rows(board: pd.DataFrame) -> dict:
    """The shown columns' headers and each row's cells as ``(text, sort key)``; a sort key is a number or text,
    "" for a missing value (sorted last either way). An ensemble of every member on the board shows "all <M>"."""
    columns = _board_columns(board)
    everyone = set(board.loc[board["kind"] == "member", "entry"])
    rows = []
    for _, row in board.iterrows():
        cells = []
        for c in columns:
            v = row[c]
            if c == "members" and isinstance(v, str) and len(everyone) > 1 and set(v.split(", ")) == everyone:
                cells.append((f"all {len(everyone)}", v))
            elif c in ("test_auc_lo", "val_auc_lo") and isinstance(v, float) and not math.isnan(v):
                cells.append((f"[{v:.4f}, {row[c[:-3] + '_hi']:.4f}]", v))
            elif c in ("delong_p", "delong_p_holm") and isinstance(v, float) and v < 0.001:
                cells.append(("<0.001", v))
            elif isinstance(v, float):
                cells.append(("", "") if math.isnan(v) else (_number(v, signed=c.startswith("delta")), v))
            else:
                cells.append(("" if pd.isna(v) else str(v), v if isinstance(v, (int, bool)) else str(v)))
        rows.append({"kind": row["kind"], "cells": cells})
    return {"headers": list(columns.values()), "rows": rows}


def _number(v, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _members(rd: RunDir) -> list[dict]:
    """Each finished unit's ``done.json`` fields (``MEMBER_FIELDS``), in unit order."""
    out = []
    for unit in rd.member_ids():
        done = _read_json(rd.member(unit).done)
        if done:
            row = {k: done.get(k) for k in MEMBER_FIELDS}
            row["unit"] = row["unit"] or unit
            for k in ("val_auc", "test_auc"):
                row[k] = _number(row[k]) if isinstance(row[k], float) else row[k]
            out.append(row)
    return out


def _stages(rd: RunDir) -> dict:
    """Each recorded bench call (``stages.json``), when it started and its stage seconds, and ``names``: every
    stage any call recorded, in the order first seen (an interrupted or older call may lack some)."""
    calls = _read_json(rd.stages_json) or []
    return {"calls": calls, "names": list(dict.fromkeys(k for c in calls for k in c.get("seconds", {})))}


def _commands(rd: RunDir, config: dict) -> list[str]:
    """Shell commands that retrain the run from scratch into ``rerun/`` from a medzoo checkout, and rebuild its
    report; the config is the file the run was benched with (``config.toml``, saved by ``medzoo bench``)."""
    data = config.get("data_root")
    config_file = shlex.quote(str(rd.config_toml)) if rd.config_toml.is_file() else "CONFIG.toml"
    return [f"pip install -e '.[explain,tensorboard]'   # in a checkout of medzoo {__version__}",
            "export MEDZOO_DATA=/path/to/data   # the folder of the dataset files"
            + (f"; this run read them from {data}" if data else ""),
            f"medzoo bench {config_file} --results rerun",
            f"medzoo report rerun/{shlex.quote(config['run'])}"]
