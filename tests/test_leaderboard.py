import argparse
import json
import math
import types

import numpy as np
import pandas as pd
import pytest

from medzoo.benchmarks import leaderboard, plots
from medzoo.cli import leaderboard as cli_leaderboard
from medzoo.benchmarks.leaderboard import build_leaderboard, check_options, config_options, write_leaderboard
from medzoo.ensemble.table import ProbabilityTable

# Binary run: the 4-by-4 example of test_metrics (4 positives, then 4 negatives) on val and on test.
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
A = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.5, 0.3, 0.2])
B = np.array([0.9, 0.5, 0.6, 0.3, 0.7, 0.5, 0.4, 0.1])
BINARY = ["normal", "pneumonia"]

# Three-class run (ISIC-like), labels 0 0 1 1 2 2, test labels withheld.
THREE = ["melanoma", "nevus", "seborrheic_keratosis"]
L3 = np.array([0, 0, 1, 1, 2, 2])
P1 = np.array([[.6, .3, .1], [.3, .4, .3], [.2, .7, .1], [.5, .4, .1], [.1, .2, .7], [.2, .2, .6]])
P2 = np.array([[.4, .4, .2], [.5, .3, .2], [.3, .6, .1], [.3, .3, .4], [.2, .3, .5], [.1, .6, .3]])


def put(run, kind, name, split, classes, probs, labels, **meta):
    folder = "predictions" if kind == "member" else "ensembles"
    ids = [f"{split}{i}" for i in range(len(probs))]
    ProbabilityTable(ids, classes, probs, labels, {"split": split, "member": name, **meta}).write(
        run / folder / name / f"{split}.csv")


def binary_run(tmp_path, test_labels=Y, name="binary"):
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"dataset": "no-such-card"}))
    for kind, name, score, meta in (("member", "a", A, {}), ("member", "b", B, {}),
                                    ("ensemble", "mean", (A + B) / 2, {"members": ["a", "b"], "method": "mean"})):
        probs = np.stack([1 - score, score], axis=1)
        put(run, kind, name, "val", BINARY, probs, Y, **meta)
        put(run, kind, name, "test", BINARY, probs, test_labels, **meta)
    (run / "members" / "a").mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [.9, .6, .5], "val_loss": [.8, .7, .65],
                  "val_auc": [.7, .78, .81], "lr": [.1, .05, .01], "seconds": [3, 3, 3]}).to_csv(
        run / "members" / "a" / "history.csv", index=False)
    return run


def three_class_run(tmp_path):
    run = tmp_path / "isic"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"dataset": "isic-like"}))
    for kind, name, probs, meta in (("member", "m1", P1, {}), ("member", "m2", P2, {}),
                                    ("ensemble", "avg", (P1 + P2) / 2, {"members": ["m1", "m2"]})):
        put(run, kind, name, "val", THREE, probs, L3, **meta)
        put(run, kind, name, "test", THREE, probs, None, **meta)
    return run


@pytest.fixture
def isic_card(monkeypatch):
    card = types.SimpleNamespace(name="isic-like", classes=THREE, views=[
        {"name": "melanoma", "positive": ["melanoma"]},
        {"name": "seborrheic_keratosis", "positive": ["seborrheic_keratosis"]}])
    monkeypatch.setattr(leaderboard, "load_card", lambda name: card if name == "isic-like" else (_ for _ in ()).throw(
        FileNotFoundError(f"no card {name}")))


def test_binary_leaderboard_values_by_hand(tmp_path, isic_card):
    frame = write_leaderboard(binary_run(tmp_path), bootstrap=200, plots=False)
    csv = pd.read_csv(tmp_path / "binary" / "leaderboard.csv").set_index("entry")
    # val AUCs: a 13/16, b 21/32, mean of the two: positives .9 .65 .6 .35 vs negatives .7 .5 .35 .15
    # -> 4 + 3 + 3 + 1.5 (tie) = 11.5 of 16.
    assert csv.loc["a", "val_auc"] == 13 / 16
    assert csv.loc["b", "val_auc"] == 21 / 32
    assert csv.loc["mean", "val_auc"] == 11.5 / 16
    assert list(frame["entry"]) == ["a", "mean", "b"] and list(frame["rank"]) == [1, 2, 3]
    assert list(frame["kind"]) == ["member", "ensemble", "member"]
    # DeLong against the best member a (test = val here): b's p is the hand value of test_metrics, 0.16006.
    assert csv.loc["a", "delta_vs_best_member"] == 0 and csv.loc["a", "delong_p"] == 1
    assert csv.loc["b", "delta_vs_best_member"] == pytest.approx(-5 / 32)
    assert csv.loc["b", "delong_p"] == pytest.approx(0.16006, abs=1e-5)
    # Youden on a's val scores: J = 1/2 at .8, .6 and .4; ties go to the highest, .8.
    # On test: sensitivity 2/4 (.9 .8), specificity 4/4; argmax calls .9 .8 .6 and .7 positive (.5 ties -> class 0)
    # -> accuracy 6/8.
    assert csv.loc["a", "threshold"] == 0.8
    assert csv.loc["a", "sensitivity"] == 0.5 and csv.loc["a", "specificity"] == 1.0
    assert csv.loc["a", "accuracy"] == 0.75
    assert csv.loc["a", "test_auc_lo"] <= 13 / 16 <= csv.loc["a", "test_auc_hi"]
    assert csv.loc["mean", "members"] == "a, b" and pd.isna(csv.loc["a", "members"])
    assert "views skipped" in " ".join(frame.attrs["info"]["notes"])
    md = (tmp_path / "binary" / "leaderboard.md").read_text()
    assert "# Leaderboard: no-such-card" in md and "val 8, test 8 (labelled)" in md
    assert "| 1 | a | member | 0.8125 (near chance) | 0.8125 |" in md  # 8 images: its interval holds 0.5


def test_binary_leaderboard_calibration_columns_by_hand(tmp_path):
    # ECE and Brier of the 4-by-4 example (worked in test_metrics): a 3.0/8 and 1.44/8, b 2.4/8 and 1.82/8.
    # mean = (A + B) / 2 = .9 .65 .6 .35 | .7 .5 .35 .15: bins (.6, .7] hold .65 (positive) and .7 (negative),
    # gap |1/2 - .675| = .175 for 2; (.3, .4] hold .35 and .35, gap .15 for 2; alone: .1 .4 | .5 .15.
    # ECE = (1.15 + .35 + .3) / 8 = 1.8 / 8. Brier: (.01 + .1225 + .16 + .4225 + .49 + .25 + .1225 + .0225) / 8.
    write_leaderboard(binary_run(tmp_path), bootstrap=0, plots=False)
    csv = pd.read_csv(tmp_path / "binary" / "leaderboard.csv").set_index("entry")
    for split in ("val", "test"):  # test = val here
        assert csv[f"{split}_ece"].to_dict() == pytest.approx({"a": 3.0 / 8, "b": 2.4 / 8, "mean": 1.8 / 8})
        assert csv[f"{split}_brier"].to_dict() == pytest.approx({"a": 1.44 / 8, "b": 1.82 / 8, "mean": 1.6 / 8})
    columns = list(csv.columns)
    assert columns[columns.index("balanced_accuracy") + 1:][:4] == ["val_ece", "val_brier", "test_ece", "test_brier"]
    md = (tmp_path / "binary" / "leaderboard.md").read_text()
    assert "| test ECE | test Brier |" in md and "| 0.3750 | 0.1800 |" in md
    assert "test ECE, Brier: of the probability of 'pneumonia'; Brier = mean (p - y)^2; ECE = " in md
    assert "over 10 equal-width bins" in md


def test_repeated_board_averages_the_calibration_columns(tmp_path):
    # a@s0 is A and a@s1 is B on val and test: the board's a is the mean of the two repeats' values.
    run = tmp_path / "rep"
    run.mkdir()
    for tag, a, b in (("s0", A, B), ("s1", B, A)):
        for name, score in ((f"a@{tag}", a), (f"b@{tag}", b)):
            for split in ("val", "test"):
                put(run, "member", name, split, BINARY, np.stack([1 - score, score], axis=1), Y)
    frame = write_leaderboard(run, bootstrap=0, plots=False).set_index("entry")
    for split in ("val", "test"):
        assert frame.loc["a", f"{split}_ece"] == pytest.approx((3.0 / 8 + 2.4 / 8) / 2)
        assert frame.loc["a", f"{split}_brier"] == pytest.approx((1.44 / 8 + 1.82 / 8) / 2)
    repeats = pd.read_csv(run / "leaderboard_repeats.csv")
    assert repeats.loc[repeats["entry"] == "a", "val_ece"].tolist() == pytest.approx([3.0 / 8, 2.4 / 8])
    assert "| 0.3375 | 0.203" in (run / "leaderboard.md").read_text()  # 0.20375, rounded either way


def test_threshold_never_reads_test_labels(tmp_path):
    base = build_leaderboard(binary_run(tmp_path), bootstrap=0)
    permuted = np.array([1, 0, 0, 1, 0, 1, 1, 0])
    shuffled = build_leaderboard(binary_run(tmp_path, test_labels=permuted, name="permuted"), bootstrap=0)
    base, shuffled = base.set_index("entry"), shuffled.set_index("entry")
    assert (base["threshold"] == shuffled["threshold"]).all()
    assert (base["val_auc"] == shuffled["val_auc"]).all()
    assert (base["test_auc"] != shuffled["test_auc"]).any()  # the test labels did change


def test_sensitivity_keyword_is_the_config_spelling_of_sens_rule(tmp_path):
    # [leaderboard] sensitivity = 1.0: a's val scores catch all 4 positives first at .4 (and b's at .3)
    frame = build_leaderboard(binary_run(tmp_path), bootstrap=0, sensitivity=1.0).set_index("entry")
    assert frame.loc["a", "threshold"] == 0.4 and frame.loc["b", "threshold"] == 0.3
    assert frame.attrs["info"]["threshold"] == "sens:1.0"


def test_three_class_views_and_unlabelled_test(tmp_path, isic_card):
    run = three_class_run(tmp_path)
    frame = write_leaderboard(run, bootstrap=100).set_index("entry")
    # m1 melanoma vs rest: positives .6 .3 vs .2 .5 .1 .2 -> 7 of 8; seborrheic keratosis vs rest:
    # positives .7 .6 beat all four others -> 1.0; their mean 0.9375.
    assert frame.loc["m1", "val_melanoma_auc"] == 7 / 8
    assert frame.loc["m1", "val_seborrheic_keratosis_auc"] == 1.0
    assert frame.loc["m1", "val_views_mean_auc"] == 0.9375
    # macro val AUC adds nevus vs rest: positives .7 .4 vs .3 .4 .2 .2 -> .7 beats 4, .4 beats 3 and ties 1:
    # 7.5 of 8; (7/8 + 7.5/8 + 1) / 3 = 0.9375.
    assert frame.loc["m1", "val_auc"] == pytest.approx((7 / 8 + 7.5 / 8 + 1) / 3)
    for col in ("test_auc", "test_auc_lo", "delong_p", "sensitivity", "accuracy", "test_melanoma_auc", "test_ece",
                "test_brier"):
        assert frame[col].isna().all(), col
    # top-label ECE and summed Brier of m1 (worked in test_metrics): 2.3 / 6 and 2.14 / 6
    assert frame.loc["m1", "val_ece"] == pytest.approx(2.3 / 6)
    assert frame.loc["m1", "val_brier"] == pytest.approx(2.14 / 6)
    assert math.isfinite(frame.loc["m1", "threshold"])  # chosen on validation, for the melanoma view
    md = (run / "leaderboard.md").read_text()
    assert "unlabelled: validation only" in md and "val 95% CI" in md and "test AUC" not in md
    assert "| val ECE | val Brier |" in md and "| 0.3833 | 0.3567 |" in md and "test ECE" not in md
    assert "val ECE, Brier: ECE of the top label" in md and "(on validation: no labelled test)" in md
    plots = {p.split("/")[-1] for p in frame.attrs["info"]["plots"]}
    assert plots == {"roc.png", "confusion.png", "auc_ci.png", "calibration.png"}


def test_score_tables_get_no_calibration_columns(tmp_path, isic_card):
    run = three_class_run(tmp_path)
    scores = np.array([[.6, .3, .3]] * 6)  # rows summing to 1.2: a rank or median ensemble's scores
    put(run, "ensemble", "median", "val", THREE, scores, L3, rows_sum_to_one=False)
    frame = build_leaderboard(run, bootstrap=0).set_index("entry")
    assert np.isnan(frame.loc["median", "val_ece"]) and np.isnan(frame.loc["median", "val_brier"])
    assert frame.loc["m1", "val_ece"] == pytest.approx(2.3 / 6)
    assert "ECE and Brier left empty for ensemble 'median': rows are scores, not probabilities" in \
        frame.attrs["info"]["notes"]


def test_binary_plots_are_written(tmp_path):
    run = binary_run(tmp_path)
    write_leaderboard(run, bootstrap=50)
    for name in ("roc.png", "confusion.png", "auc_ci.png", "calibration.png", "training_curves.png"):
        assert (run / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_repeated_run_figures_show_the_first_repeat_at_its_own_threshold(tmp_path, monkeypatch):
    # a@s0 separates perfectly (youden threshold 0.6); a@s1 scores 0.3 / 0.1 (threshold 0.3). The board's
    # threshold is their mean, 0.45, which on a@s0's test table would call one negative (0.5) positive.
    run = tmp_path / "rep"
    run.mkdir()
    s0 = np.array([.9, .8, .7, .6, .5, .4, .3, .2])
    s1 = np.array([.3, .3, .3, .3, .1, .1, .1, .1])
    for tag, score in (("s0", s0), ("s1", s1)):
        for split in ("val", "test"):
            put(run, "member", f"a@{tag}", split, BINARY, np.stack([1 - score, score], axis=1), Y)
    drawn = {}
    monkeypatch.setattr(plots, "plot_confusion", lambda m, names, title, path: drawn.update(matrix=m, title=title))
    monkeypatch.setattr(plots, "plot_roc", lambda curves, title, path: drawn.update(roc=title))
    frame = write_leaderboard(run, bootstrap=0).set_index("entry")
    assert frame.loc["a", "threshold"] == pytest.approx(0.45)
    assert drawn["matrix"].tolist() == [[4, 0], [0, 4]]
    assert drawn["title"] == "a on test, threshold 0.6 (youden on val), repeat s0 of 2"
    assert drawn["roc"].endswith(", repeat s0 of 2")


def test_an_ensemble_table_without_labels_gets_them_from_the_members(tmp_path):
    run = binary_run(tmp_path)
    probs = np.stack([1 - (A + B) / 2, (A + B) / 2], axis=1)
    put(run, "ensemble", "mean", "test", BINARY, probs, None, members=["a", "b"])
    frame = build_leaderboard(run, bootstrap=0).set_index("entry")
    assert frame.loc["mean", "test_auc"] == 11.5 / 16


def test_missing_tables_and_bad_rule_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no probability tables"):
        build_leaderboard(tmp_path)
    with pytest.raises(ValueError, match="allowed: youden, sens"):
        build_leaderboard(binary_run(tmp_path), threshold="yuden")


def test_cli_prints_the_table_and_reads_config_defaults(tmp_path, capsys):
    run = binary_run(tmp_path)
    (run / "config.json").write_text(json.dumps({"dataset": "x", "leaderboard": {"sensitivity": 1.0,
                                                                                  "bootstrap": 20}}))
    assert config_options(run) == {"sensitivity": 1.0, "bootstrap": 20}
    assert config_options(run, threshold="youden", bootstrap=None) == {"threshold": "youden", "bootstrap": 20}
    (run / "config.json").write_text(json.dumps({"leaderboard": {"bootstrp": 5}}))
    with pytest.raises(ValueError, match="unknown \\[leaderboard\\] key 'bootstrp'; did you mean 'bootstrap'\\?"):
        config_options(run)
    (run / "config.json").write_text(json.dumps({"dataset": "x", "leaderboard": {"sensitivity": 1.0,
                                                                                  "bootstrap": 20}}))
    parser = argparse.ArgumentParser()
    cli_leaderboard.register(parser.add_subparsers())
    args = parser.parse_args(["leaderboard", str(run), "--no-plots"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "threshold sens:1.0 on val; 20 bootstrap" in out and "mean" in out
    # sens:1.0 on a's val scores: first threshold catching all 4 positives is .4
    assert pd.read_csv(run / "leaderboard.csv").set_index("entry").loc["a", "threshold"] == 0.4


def test_in_sample_validation_scores_are_marked(tmp_path):
    run = binary_run(tmp_path)
    probs = np.stack([1 - (A + B) / 2, (A + B) / 2], axis=1)
    for name, meta in (("softmax_auc", {"in_sample": True}), ("greedy", {"val_auc_out_of_fold": 11.5 / 16})):
        for split in ("val", "test"):
            put(run, "ensemble", name, split, BINARY, probs, Y, members=["a", "b"], **meta)
    write_leaderboard(run, bootstrap=50, plots=False)
    csv = pd.read_csv(run / "leaderboard.csv").set_index("entry")
    assert csv.loc["softmax_auc", "val_scored"] == "in-sample"
    assert csv.loc["greedy", "val_scored"] == "out-of-fold"
    assert pd.isna(csv.loc["a", "val_scored"]) and pd.isna(csv.loc["mean", "val_scored"])
    md = (run / "leaderboard.md").read_text()
    assert "| softmax_auc | ensemble | 0.7188* |" in md and "| greedy | ensemble | 0.7188 |" in md
    assert "val AUC*: in-sample" in md


@pytest.mark.parametrize("section, message", [
    ({"bootstrp": 5}, "unknown [leaderboard] key 'bootstrp'; did you mean 'bootstrap'?"),
    ({"treshold": "youden"}, "unknown [leaderboard] key 'treshold'; did you mean 'threshold'?"),
    ({"threshold": "yuden"}, "[leaderboard] threshold: unknown threshold rule 'yuden'; allowed: youden, sens:<target>"),
    ({"threshold": "sens:1.5"}, "[leaderboard] threshold: threshold rule 'sens:1.5': target sensitivity must be in "
                                "(0, 1], got 1.5"),
    ({"threshold": "sens:high"}, "target sensitivity 'high' is not a number"),
    ({"sensitivity": 0}, "[leaderboard] sensitivity = 0; expected a number in (0, 1]"),
    ({"sensitivity": "0.9"}, "[leaderboard] sensitivity = '0.9'; expected a number in (0, 1]"),
    ({"threshold": "youden", "sensitivity": 0.9}, "[leaderboard] gives threshold = 'youden' and sensitivity = 0.9; "
                                                  "sensitivity = t is short for threshold = \"sens:t\": give one"),
    ({"bootstrap": -1}, "[leaderboard] bootstrap = -1; expected an integer >= 0"),
    ({"bootstrap": 2.5}, "[leaderboard] bootstrap = 2.5; expected an integer >= 0"),
    ({"seed": True}, "[leaderboard] seed = True; expected an integer >= 0"),
    (["youden"], "[leaderboard] must be a table of options, got list ['youden']"),
])
def test_check_options_names_the_value_and_what_is_allowed(section, message):
    with pytest.raises(ValueError) as e:
        check_options(section)
    assert message in str(e.value)


def test_check_options_accepts_what_the_leaderboard_accepts(tmp_path):
    for section in ({"threshold": "youden", "bootstrap": 0, "seed": 7}, {"threshold": "sens:0.95"},
                    {"threshold": 0.9}, {"sensitivity": 1.0, "bootstrap": 20}, {}):
        assert check_options(section) == section
    assert check_options(None) == {}
    run = binary_run(tmp_path)
    (run / "config.json").write_text(json.dumps({"leaderboard": {"bootstrap": "many"}}))
    with pytest.raises(ValueError, match=f"^{run / 'config.json'}: \\[leaderboard\\] bootstrap = 'many'; "
                                         f"expected an integer >= 0$"):
        config_options(run)
