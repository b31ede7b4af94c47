"""The run folder ``results/<run>/``: the one place that spells its layout.

::

    config.json                     the resolved zoo config (written when training starts)
    config.toml                     the config file ``medzoo bench`` ran (its last call's)
    environment.json  stages.json   what ran a bench, and each call's stage seconds
    splits/<dataset>.csv            image_id,split when the splits were made, not given
    splits/<dataset>.folds.csv      image_id,fold of train+val under [cv]
    members/<unit>/                 best.pt last.pt snap<j>.pt history.csv curves.png claim.json done.json failed.json
    members/<unit>/tables/<entry>/<split>.csv   a fold unit's own tables (held-out fold as val, test)
    predictions/<member>/<split>.csv   ensembles/<method>/<split>.csv   (probability tables; under [cv]
                                    val is out-of-fold, test the fold models' mean, test.fold<k> each one's)
    ensembles/<method>/state.json   the fitted method, to apply it without a refit
    members/<unit>/tensorboard/     the unit's TensorBoard view (``tensorboard = true``)
    embeddings/<member>_<split>.csv  the t-SNE coordinates of ``medzoo embed`` (its figure in plots/)
    leaderboard.csv  leaderboard.md  leaderboard_repeats.csv (a repeated run's rows per repeat)
    plots/*.png  submissions/*.csv  explain/<entry>/ (heatmaps)  report.html
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from medzoo.core.fileio import write_json

TABLE_FOLDERS = {"member": "predictions", "ensemble": "ensembles"}
TAG = "@"  # names' repeat and fold tags: members/resnet18@s1@f2, predictions/resnet18@s1, ensembles/mean@s1


class MemberDir:
    """The files of one member under ``members/<id>/``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.best = folder / "best.pt"
        self.last = folder / "last.pt"
        self.history = folder / "history.csv"
        self.curves = folder / "curves.png"
        self.claim = folder / "claim.json"
        self.done = folder / "done.json"
        self.failed = folder / "failed.json"

    def snapshot(self, j: int) -> Path:
        """The weights at the end of cosine cycle ``j`` (1-based) of a snapshot member."""
        return self.folder / f"snap{j}.pt"

    def table(self, entry: str, split: str) -> Path:
        """A fold unit's own table of ``entry`` (val: its held-out fold)."""
        return self.folder / "tables" / entry / f"{split}.csv"

    @property
    def id(self) -> str:
        return self.folder.name


class RunDir:
    """Every path of one run folder, and its ``config.json``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_json = self.path / "config.json"
        self.config_toml = self.path / "config.toml"
        self.environment_json = self.path / "environment.json"
        self.stages_json = self.path / "stages.json"
        self.leaderboard_csv = self.path / "leaderboard.csv"
        self.leaderboard_md = self.path / "leaderboard.md"
        self.leaderboard_repeats_csv = self.path / "leaderboard_repeats.csv"
        self.plots = self.path / "plots"
        self.submissions = self.path / "submissions"
        self.members = self.path / "members"
        self.explain = self.path / "explain"
        self.report_html = self.path / "report.html"

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def of(cls, results_dir: str | Path, run: str) -> "RunDir":
        """``results_dir/<run>``."""
        return cls(Path(results_dir) / run)

    def read_config(self) -> dict:
        """``config.json`` as a dict; ``{}`` when the run has none. Invalid JSON raises naming the file."""
        if not self.config_json.is_file():
            return {}
        try:
            config = json.loads(self.config_json.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.config_json}: not valid JSON ({e}); restore it or delete the run folder") from None
        if not isinstance(config, dict):
            raise ValueError(f"{self.config_json}: expected a JSON object, got {type(config).__name__}")
        return config

    def write_config(self, config: dict) -> Path:
        """Write ``config.json`` atomically."""
        return write_json(self.config_json, config)

    def splits_csv(self, dataset: str) -> Path:
        """Where the split of every image is saved when the splits were made: ``splits/<dataset>.csv``."""
        return self.path / "splits" / f"{dataset}.csv"

    def folds_csv(self, dataset: str) -> Path:
        """The fold of every train+val image under ``[cv]``: ``splits/<dataset>.folds.csv``."""
        return self.path / "splits" / f"{dataset}.folds.csv"

    def member(self, member_id: str) -> MemberDir:
        return MemberDir(self.members / member_id)

    def member_ids(self) -> list[str]:
        """The member folders present, sorted."""
        return sorted(p.name for p in self.members.iterdir() if p.is_dir()) if self.members.is_dir() else []

    def tables(self, kind: str) -> Path:
        """The folder of one kind's tables: ``predictions/`` (members) or ``ensembles/``."""
        if kind not in TABLE_FOLDERS:
            raise ValueError(f"table kind {kind!r}; allowed: {', '.join(TABLE_FOLDERS)}")
        return self.path / TABLE_FOLDERS[kind]

    def table_dir(self, kind: str, name: str) -> Path:
        """``predictions/<name>/`` or ``ensembles/<name>/``."""
        return self.tables(kind) / name

    def table(self, kind: str, name: str, split: str) -> Path:
        """One probability table: ``predictions/<name>/<split>.csv`` or ``ensembles/<name>/<split>.csv``."""
        return self.table_dir(kind, name) / f"{split}.csv"

    def ensemble_state(self, method: str) -> Path:
        """A built method's fitted state: ``ensembles/<method>/state.json``."""
        return self.table_dir("ensemble", method) / "state.json"

    def ranked(self, kind: str | None = None) -> list[str]:
        """The run's table names in ``leaderboard.csv``'s ``rank`` order (rank 1 first; only ``kind``'s rows when given).

        A repeated run's board row (``greedy``) stands for its tables ``greedy@s<seed>``; the first repeat's
        is taken. Rows without a table in the run are left out; [] without a leaderboard.
        """
        if not self.leaderboard_csv.is_file():
            return []
        with open(self.leaderboard_csv, newline="") as f:
            rows = [r for r in csv.DictReader(f) if kind is None or r.get("kind") == kind]
        rows.sort(key=lambda r: float(r.get("rank") or "inf"))
        tables = {k: self.table_names(k) for k in {r["kind"] for r in rows}}
        out = []
        for row in rows:
            names = tables[row["kind"]]
            name = row["entry"] if row["entry"] in names else next(
                (n for n in names if n.split(TAG)[0] == row["entry"]), None)
            if name is not None and name not in out:
                out.append(name)
        return out

    def table_names(self, kind: str, split: str | None = None) -> list[str]:
        """Sorted names of the folders of one kind (those holding ``<split>.csv`` when ``split`` is given)."""
        root = self.tables(kind)
        if not root.is_dir():
            return []
        return sorted(d.name for d in root.iterdir() if d.is_dir() and (split is None or (d / f"{split}.csv").exists()))
