"""``medzoo report``: one self-contained page with every section, written by ``medzoo bench`` at its end."""
from __future__ import annotations

import base64
import re
import shutil

import pandas as pd
import pytest

from medzoo.benchmarks.report import SECTIONS, _board_rows, write_report
from medzoo.cli import main
from medzoo.core.rundir import RunDir
from tests.test_train import tiny_config

MEMBERS = ('[[members]]\nmodel = "squeezenet1_1"\nid = "a"\nsize = 32\n'
           '[[members]]\nmodel = "resnet18"\nid = "b"\nsize = 32\n')
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """A tiny two-member run made by ``medzoo bench`` (which ends by writing the report), and its config file."""
    tmp = tmp_path_factory.mktemp("report")
    config = tiny_config(tmp, members=MEMBERS, epochs=1)
    config.write_text(config.read_text() + "[leaderboard]\nbootstrap = 20\n")
    assert main(["bench", str(config), "--results", str(tmp / "res"), "--no-estimate"]) == 0
    return RunDir(tmp / "res" / "tiny"), config


def images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


def test_bench_ends_with_a_report_that_has_every_section(benched):
    rd, config = benched
    html = rd.report_html.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for section, title in SECTIONS.items():
        assert f'<section id="{section}">' in html and f'<a href="#{section}">{title}</a>' in html
    assert rd.config_toml.read_text() == config.read_text()
    assert f"medzoo bench {rd.config_toml} --results rerun" in html


def test_the_report_is_self_contained(benched):
    rd, _ = benched
    html = rd.report_html.read_text()
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # every reference is embedded or in the page
    assert "<link" not in html and "@import" not in html and "url(" not in html and "<iframe" not in html
    assert "://" not in re.sub(r'src="data:[^"]*"', "", html).replace("http://www.w3.org", "")
    drawn = {"class_counts.png", "roc.png", "auc_ci.png", "confusion.png", "calibration.png", "training_curves.png",
             "embedding_b_val.png"}  # the tiny test split is unlabelled: no rank plot, and the view is of val
    assert drawn == {p.name for p in rd.plots.glob("*.png")}
    shown = images(html)
    assert len(shown) == len(drawn) + len(list(rd.explain.glob("*/grid.png")))
    for uri in shown:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG)


def test_every_leaderboard_row_is_in_the_table_in_rank_order(benched):
    rd, _ = benched
    html = rd.report_html.read_text()
    board = pd.read_csv(rd.leaderboard_csv)
    body = html.split('<table class="board" id="board">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr class="(member|ensemble)">(.*?)</tr>', body, flags=re.S)
    assert [kind for kind, _ in rows] == board["kind"].tolist()
    entries = [re.findall(r"<td[^>]*>(.*?)</td>", cells)[1] for _, cells in rows]
    assert entries == board["entry"].tolist()
    first = re.findall(r'data-key="([^"]*)"', rows[0][1])
    assert first[0] == "1" and float(first[3]) == pytest.approx(board["val_auc"].iloc[0], abs=1e-12)


def test_bench_explains_the_rank_1_entry_and_each_member_and_the_report_shows_them_in_board_order(benched, tmp_path):
    rd, _ = benched
    board = pd.read_csv(rd.leaderboard_csv)
    explained = {p.parent.name for p in rd.explain.glob("*/grid.png")}
    assert explained == {board["entry"].iloc[0], "a", "b"}
    html = rd.report_html.read_text()
    heat = html.split('<section id="heatmaps">', 1)[1].split("</section>", 1)[0]
    order = [e for e in board["entry"] if e in explained]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in images(heat)] == [
        (rd.explain / e / "grid.png").read_bytes() for e in order]
    assert "t-SNE of b_val (plots/embedding_b_val.png)" in html  # b, resnet18, has the best validation AUC here
    bare = tmp_path / "copy"
    shutil.copytree(rd.path, bare, ignore=shutil.ignore_patterns("explain", "embedding_*", "*.pt"))
    html = write_report(bare).read_text()
    assert "No heatmaps yet" in html and "No embedding view yet" in html


def test_a_run_without_a_leaderboard_is_refused_and_nothing_is_written(benched, tmp_path, capsys):
    rd, _ = benched
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(rd.config_json.read_text())
    assert main(["report", str(bare)]) == 1
    assert "no leaderboard.csv; run `medzoo leaderboard ...` first" in capsys.readouterr().err
    assert not (bare / "report.html").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert f"medzoo report: error: no run folder at {tmp_path / 'nowhere'}\n" == capsys.readouterr().err


def test_ranked_maps_a_repeated_boards_rows_to_the_first_repeats_tables(tmp_path):
    rd = RunDir(tmp_path / "run")
    for kind, name in [("member", "densenet121@s1"), ("member", "densenet121@s0"), ("member", "vgg"),
                       ("ensemble", "greedy@s0"), ("ensemble", "greedy@s1"), ("ensemble", "mean")]:
        rd.table_dir(kind, name).mkdir(parents=True)
    assert rd.ranked() == []
    rd.leaderboard_csv.write_text("rank,entry,kind\n2,vgg,member\n1,greedy,ensemble\n3,gone,ensemble\n"
                                  "10,mean,ensemble\n4,densenet121,member\n")  # ranked by the rank column
    assert rd.ranked() == ["greedy@s0", "vgg", "densenet121@s0", "mean"]
    assert rd.ranked("member") == ["vgg", "densenet121@s0"]


def test_a_board_without_test_labels_shows_the_validation_interval_and_the_task_views():
    nan = float("nan")
    board = pd.DataFrame({"rank": [1], "entry": ["mean"], "kind": ["ensemble"], "val_auc": [0.83],
                          "val_auc_lo": [0.78], "val_auc_hi": [0.88], "test_auc": [nan], "test_auc_lo": [nan],
                          "val_melanoma_auc": [0.74], "val_views_mean_auc": [0.82], "test_melanoma_auc": [nan],
                          "val_ece": [0.1], "test_ece": [nan], "members": ["a, b"]})
    rows = _board_rows(board)
    assert rows["headers"] == ["rank", "entry", "kind", "val AUC", "val 95% CI", "val melanoma AUC",
                               "val views mean AUC", "val ECE", "members"]
    assert [text for text, _ in rows["rows"][0]["cells"]] == ["1", "mean", "ensemble", "0.8300", "[0.7800, 0.8800]",
                                                              "0.7400", "0.8200", "0.1000", "a, b"]


def test_an_ensemble_of_every_member_shows_all_m_and_a_subset_its_names():
    nan = float("nan")
    board = pd.DataFrame({"rank": [1, 2, 3, 4], "entry": ["mean", "pair", "a", "b"],
                          "kind": ["ensemble", "ensemble", "member", "member"], "val_auc": [0.9, 0.8, 0.7, 0.6],
                          "test_auc": [0.8, 0.7, 0.6, 0.5],
                          "members": ["b, a", "a", nan, nan]})
    cells = [dict(zip(_board_rows(board)["headers"], row["cells"]))["members"] for row in _board_rows(board)["rows"]]
    assert cells == [("all 2", "b, a"), ("a", "a"), ("", ""), ("", "")]


def test_a_copied_run_without_members_says_so_and_a_run_with_them_lists_each(benched, tmp_path):
    rd, _ = benched
    members = rd.report_html.read_text().split('<section id="members">', 1)[1].split("</section>", 1)[0]
    assert re.findall(r'<tr><td class="text">([^<]*)</td>', members) == ["a", "b"]  # each unit's first cell
    copy = tmp_path / "tiny"
    shutil.copytree(rd.path, copy, ignore=shutil.ignore_patterns("members"))
    members = write_report(copy).read_text().split('<section id="members">', 1)[1].split("</section>", 1)[0]
    assert "This folder has no <code>members/</code>" in members and "No finished members" not in members


def test_the_stage_table_has_every_stage_any_call_recorded(benched, tmp_path):
    rd, _ = benched
    copy = tmp_path / "tiny"
    shutil.copytree(rd.path, copy)
    (copy / "stages.json").write_text('[{"started": null, "seconds": {"train": 10.0}}, {"call": "c", "started": '
                                      '"2026-12-02T10:00:00", "seconds": {"check": 1.5, "train": 7.0, "report": 2.0}}]')
    html = write_report(copy).read_text()
    table = html.split("bench call started", 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<th>([^<]*) \(s\)</th>", table) == ["train", "check", "report"]
    assert re.findall(r"<tr><td[^>]*>([^<]*)</td>((?:<td>[^<]*</td>)*)</tr>", table) == [
        ("", "<td>10.0</td><td></td><td></td>"), ("2026-12-02T10:00:00", "<td>7.0</td><td>1.5</td><td>2.0</td>")]
