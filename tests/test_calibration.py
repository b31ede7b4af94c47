"""Temperature scaling (medzoo.ensemble.calibration): hand cases, a miscalibrated toy zoo, run folders and the CLI."""
import argparse
import json

import numpy as np
import pytest

from medzoo.benchmarks import metrics
from medzoo.benchmarks.leaderboard import build_leaderboard, write_leaderboard
from medzoo.cli import ensemble as cli_ensemble
from medzoo.ensemble import calibration
from medzoo.ensemble.auc import auc
from medzoo.ensemble.table import ProbabilityTable
from tests.test_leaderboard import BINARY, Y, A, binary_run, put


def table(probs, labels, **meta):
    probs = np.asarray(probs, dtype=float)
    return ProbabilityTable([f"i{k}" for k in range(len(probs))], [f"c{k}" for k in range(probs.shape[1])], probs,
                            labels, meta)


def test_temperature_of_a_binary_hand_case():
    # Every row says .9 for the positive class and 3 of the 4 are positive: the NLL is least where the
    # scaled probability is 3/4, sigma(ln 9 / T) = 3/4, ln 9 / T = ln 3: T = 2, and .9 -> 3 / (3 + 1).
    labels, probs = np.array([1, 1, 1, 0]), np.array([[.1, .9]] * 4)
    t = calibration.fit_temperature(labels, probs)
    assert t == pytest.approx(2.0, abs=1e-5)
    assert calibration.apply_temperature(probs, 2.0)[0] == pytest.approx([.25, .75])
    # NLL before: -(3 ln .9 + ln .1) / 4; after: -(3 ln .75 + ln .25) / 4, lower.
    assert calibration.nll(labels, probs) == pytest.approx(-(3 * np.log(.9) + np.log(.1)) / 4)
    assert calibration.nll(labels, calibration.apply_temperature(probs, t)) == pytest.approx(
        -(3 * np.log(.75) + np.log(.25)) / 4)


def test_temperature_of_a_three_class_hand_case():
    # Rows .8 .1 .1, 2 of 4 right: the best confidence is 1/2, 8^(1/T) / (8^(1/T) + 2) = 1/2, 8^(1/T) = 2: T = 3,
    # and the row becomes 2 1 1 over 4.
    labels, probs = np.array([0, 0, 1, 2]), np.array([[.8, .1, .1]] * 4)
    assert calibration.fit_temperature(labels, probs) == pytest.approx(3.0, abs=1e-5)
    assert calibration.apply_temperature(probs, 3.0)[0] == pytest.approx([.5, .25, .25])


def _overconfident(rng, n, classes=3, true_temperature=3.0):
    """True probabilities softmax(z), labels drawn from them, reported softmax(T * z): over-confident by T."""
    z = rng.normal(0.0, 1.5, (n, classes))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    reported = np.exp(true_temperature * z)
    return table(reported / reported.sum(axis=1, keepdims=True), labels)


@pytest.mark.parametrize("classes", [2, 3])
def test_temperature_scaling_recovers_an_overconfident_zoo(classes):
    rng = np.random.default_rng(0)
    val, test = _overconfident(rng, 4000, classes), _overconfident(rng, 4000, classes)
    t, val_out, test_out = calibration.temperature_scale(val, test)
    assert t == pytest.approx(3.0, abs=0.2)
    for before, after in ((val, val_out), (test, test_out)):  # test: the temperature fitted on val only
        assert metrics.expected_calibration_error(after.labels, after.probs) < \
            metrics.expected_calibration_error(before.labels, before.probs) / 3
        assert calibration.nll(after.labels, after.probs) < calibration.nll(before.labels, before.probs)
        assert (after.probs.argmax(axis=1) == before.probs.argmax(axis=1)).all()  # T > 0 keeps the argmax
    if classes == 2:  # a monotone map of column 1: the rank-based AUC is unchanged
        assert auc(test_out.probs, test_out.labels) == pytest.approx(auc(test.probs, test.labels), abs=1e-12)
    assert val_out.meta["temperature"] == test_out.meta["temperature"] == t
    assert val_out.meta["in_sample"] is True and "in_sample" not in test_out.meta
    assert val_out.meta["val_nll"][1] < val_out.meta["val_nll"][0]


def test_temperature_scaling_never_reads_test_labels():
    rng = np.random.default_rng(1)
    val, test = _overconfident(rng, 500), _overconfident(rng, 300)
    unlabelled = ProbabilityTable(test.ids, test.classes, test.probs)
    t, _, scaled = calibration.temperature_scale(val, test)
    t2, _, scaled_unlabelled = calibration.temperature_scale(val, unlabelled)
    assert t == t2 and (scaled.probs == scaled_unlabelled.probs).all()


def test_a_perfect_validation_table_drives_t_to_the_lower_bound():
    labels, probs = np.array([0, 1]), np.array([[.9, .1], [.2, .8]])  # every image right: sharper is always better
    assert calibration.fit_temperature(labels, probs) == pytest.approx(calibration.TEMPERATURE_BOUNDS[0], rel=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: calibration.fit_temperature(np.array([0, 1]), np.array([.3, .7])), r"probs \[N, C\].*shape \(2,\)"),
    (lambda: calibration.fit_temperature(np.array([0, 2]), np.array([[.5, .5]] * 2)), "in 0..1; got int64 values from"),
    (lambda: calibration.fit_temperature(np.array([0, 1]), np.array([[.5, .5]] * 2), bounds=(1, 0.5)),
     r"0 < lowest < highest temperature, both finite; got \(1, 0.5\)"),
    (lambda: calibration.apply_temperature(np.array([[.5, .5]]), 0), "temperature must be a finite number > 0, got 0"),
    (lambda: calibration.temperature_scale(table([[.5, .5]], None, member="m")),
     "fitted on validation labels; table 'm' lacks 1 of its 1"),
    (lambda: calibration.temperature_scale(table([[.6, .6]], [0], member="rank")), "table 'rank' has rows that do not"),
])
def test_bad_inputs_name_what_was_received(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_calibrated_names_keep_the_repeat_tag():
    assert calibration.calibrated_name("mean") == "mean+ts"
    assert calibration.calibrated_name("mean@s1") == "mean+ts@s1"
    assert calibration.is_calibrated("mean+ts@s1") and not calibration.is_calibrated("mean@s1")


def _files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_calibrate_run_writes_new_entries_and_leaves_the_sources(tmp_path):
    run = binary_run(tmp_path)
    board_before = build_leaderboard(run, bootstrap=0)
    holm_before = board_before.set_index("entry")["delong_p_holm"]
    before = _files(run)
    logged = []
    results = calibration.calibrate_run(run, log=logged.append)
    assert sorted(results) == ["a+ts", "b+ts", "mean+ts"]
    assert all(_files(run)[k] == v for k, v in before.items())  # the source tables are untouched
    for name, result in results.items():
        for split in ("val", "test"):
            side = json.loads((run / "ensembles" / name / f"{split}.json").read_text())
            assert side["temperature"] == result["temperature"] > 0
            assert side["method"] == "temperature" and side["split"] == split
        assert side["calibrated_from"]["name"] == name.removesuffix("+ts")
    assert json.loads((run / "ensembles" / "a+ts" / "val.json").read_text())["members"] == ["a"]
    assert json.loads((run / "ensembles" / "mean+ts" / "val.json").read_text())["members"] == ["a", "b"]
    assert len(logged) == 3 and "T " in logged[0] and "val NLL" in logged[0]
    # On the board: the scaled copy of a binary entry has its AUCs, val is in-sample (starred, ranked below)
    frame = write_leaderboard(run, bootstrap=0).set_index("entry")
    assert (run / "plots" / "calibration.png").exists()
    assert frame.loc["a+ts", "val_auc"] == frame.loc["a", "val_auc"] == 13 / 16
    assert frame.loc["a+ts", "test_auc"] == 13 / 16 and frame.loc["a+ts", "val_scored"] == "in-sample"
    assert frame.loc["a+ts", "rank"] > frame.loc["b", "rank"]
    assert frame.loc["a+ts", "delong_p"] == frame.loc["a", "delong_p"] == 1
    assert np.isnan(frame.loc["a+ts", "delong_p_holm"])
    assert frame.loc["b", "delong_p_holm"] == holm_before["b"]  # the copies are no new comparisons
    assert frame.attrs["info"]["rank_spearman"] == board_before.attrs["info"]["rank_spearman"]
    before_nll, after_nll = results["a+ts"]["val_nll"]  # fitted on val: its NLL falls (Brier and ECE need not)
    assert after_nll < before_nll
    # Calibrating again rewrites the copies; calibrated copies are never sources
    assert sorted(calibration.calibrate_run(run, log=None)) == ["a+ts", "b+ts", "mean+ts"]


def test_calibrate_run_names_repeats_and_skips_scores(tmp_path):
    run = tmp_path / "rep"
    for tag in ("s0", "s1"):
        for split in ("val", "test"):
            put(run, "member", f"a@{tag}", split, BINARY, np.stack([1 - A, A], 1), Y)
    put(run, "ensemble", "rank", "val", BINARY, np.stack([A, A], 1), Y, rows_sum_to_one=False)
    logged = []
    assert sorted(calibration.calibrate_run(run, log=logged.append)) == ["a+ts@s0", "a+ts@s1"]
    assert logged[-1] == "skipping ensemble 'rank': its rows are scores, not probabilities"
    assert sorted(calibration.calibrate_run(run, entries=["a@s1"], log=None)) == ["a+ts@s1"]
    assert sorted(calibration.calibrate_run(run, entries=["a"], log=None)) == ["a+ts@s0", "a+ts@s1"]
    with pytest.raises(ValueError, match="ensemble 'rank' cannot be temperature-scaled: its rows are scores"):
        calibration.calibrate_run(run, entries=["rank"], log=None)
    with pytest.raises(ValueError, match="unknown entry 'b'; .*entries with a val table in .*: a@s0, a@s1, rank"):
        calibration.calibrate_run(run, entries=["b"], log=None)
    with pytest.raises(ValueError, match=r"'a\+ts@s0' is already temperature-scaled"):
        calibration.calibrate_run(run, entries=["a+ts@s0"], log=None)


def test_a_member_and_an_ensemble_of_one_name_would_collide(tmp_path):
    run = tmp_path / "both"
    for kind in ("member", "ensemble"):
        put(run, kind, "mean", "val", BINARY, np.stack([1 - A, A], 1), Y)
    with pytest.raises(ValueError, match="member 'mean' and ensemble 'mean' would both be written to"):
        calibration.calibrate_run(run, log=None)


def test_cli_calibrate(tmp_path, capsys):
    run = binary_run(tmp_path)
    parser = argparse.ArgumentParser()
    cli_ensemble.register(parser.add_subparsers())
    args = parser.parse_args(["calibrate", str(run), "--entries", "a"])
    assert args.func(args) == 0
    assert "a+ts" in capsys.readouterr().out
    assert (run / "ensembles" / "a+ts" / "test.csv").exists() and not (run / "ensembles" / "b+ts").exists()
    args = parser.parse_args(["calibrate", str(tmp_path / "nowhere")])
    with pytest.raises(FileNotFoundError, match="no run directory"):
        args.func(args)
