"""The committed reference results keep their promises: honest picks, out-of-fold coverage, bagged test tables,
and the make bench reference's heatmaps and report."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medzoo.benchmarks.report import SECTIONS
from medzoo.core.rundir import RunDir
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo.crossval import read_folds
from medzoo.zoo.models import FAMILIES, model_info

RESULTS = Path(__file__).resolve().parents[1] / "results"
BOARDS = sorted(RESULTS.glob("*/leaderboard.csv"))
CV_RUN = RunDir(RESULTS / "breastmnist_cv")


@pytest.mark.parametrize("board", BOARDS, ids=[b.parent.name for b in BOARDS])
def test_no_committed_pick_rests_on_an_in_sample_score(board):
    frame = pd.read_csv(board, keep_default_na=False)
    top = frame[frame["rank"] == 1].iloc[0]
    assert top.get("val_scored", "") != "in-sample", f"{board}: rank 1 {top['entry']} is scored in-sample"


def test_the_cross_validated_reference_covers_train_and_val_exactly_once():
    folds = read_folds(CV_RUN.folds_csv("breastmnist"))
    assert len(folds) == 546 + 78 and sorted(set(folds.values())) == [1, 2, 3, 4, 5]
    members = CV_RUN.table_names("member", "val")
    assert len(members) >= 5
    for member in members:
        val = ProbabilityTable.read(CV_RUN.table("member", member, "val"))
        assert val.meta["out_of_fold"] and len(val.ids) == len(set(val.ids)) == len(folds)
        assert set(val.ids) == set(folds)


def test_the_cross_validated_references_bagged_tables_are_the_mean_of_the_folds():
    for kind in ("member", "ensemble"):
        for name in CV_RUN.table_names(kind, "test"):
            bagged = ProbabilityTable.read(CV_RUN.table(kind, name, "test"))
            parts = [ProbabilityTable.read(CV_RUN.table(kind, name, f"test.fold{k}")) for k in range(1, 6)]
            assert all(p.ids == bagged.ids for p in parts)
            if kind == "member":  # written with 10 significant digits
                np.testing.assert_allclose(bagged.probs, np.mean([p.probs for p in parts], axis=0), atol=1e-9)


def test_a_snapshot_member_gave_three_members_with_tables():
    snaps = [n for n in CV_RUN.table_names("member", "test") if ".snap" in n]
    assert len(snaps) >= 3 and all(CV_RUN.table("member", n, "val").exists() for n in snaps)


MAKE_BENCH = RunDir(RESULTS / "pneumoniamnist")


def test_the_make_bench_reference_has_heatmaps_of_every_family_and_an_ensemble():
    config = MAKE_BENCH.read_config()
    families = {model_info(m["model"]).family: m["id"] for m in config["members"]}
    assert set(families) == set(FAMILIES)
    for member in families.values():
        assert (MAKE_BENCH.explain / member / "grid.png").is_file(), member
    board = pd.read_csv(MAKE_BENCH.leaderboard_csv)
    explained = {p.parent.name for p in MAKE_BENCH.explain.glob("*/grid.png")}
    assert set(board.loc[board["kind"] == "ensemble", "entry"]) & explained


def test_the_make_bench_reference_report_is_self_contained_with_every_section():
    html = MAKE_BENCH.report_html.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert "No heatmaps yet" not in html and "No embedding view yet" not in html
