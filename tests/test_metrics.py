import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medzoo.benchmarks import metrics

# The 4-by-4 example used throughout: 4 positives then 4 negatives, two predictors A and B on the same cases.
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
A = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.5, 0.3, 0.2])
B = np.array([0.9, 0.5, 0.6, 0.3, 0.7, 0.5, 0.4, 0.1])  # one positive/negative tie at 0.5


def test_auc_of_the_4_by_4_example_by_pair_counting():
    # A: positives beat 4, 4, 3, 2 of the 4 negatives -> 13 of 16 pairs.
    # B: 0.9 beats 4, 0.5 beats 2 and ties 1 (2.5), 0.6 beats 3, 0.3 beats 1 -> 10.5 of 16 pairs.
    assert metrics.auc_score(Y, A) == 13 / 16
    assert metrics.auc_score(Y, B) == 10.5 / 16
    probs = np.stack([1 - A, A], axis=1)
    assert metrics.auc_score(Y, probs) == 13 / 16  # two classes: AUC of column 1


def test_macro_auc_skips_an_absent_class_and_matches_sklearn():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.6, .3, .1], [.3, .4, .3], [.2, .7, .1], [.5, .4, .1], [.1, .2, .7], [.2, .2, .6]])
    assert metrics.auc_score(labels, probs) == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    # class 0 OvR: positives .6 .3 vs negatives .2 .5 .1 .2 -> .6 beats 4, .3 beats 3: 7 of 8
    assert metrics.per_class_auc(labels, probs)[0] == 7 / 8
    three = np.array([[.5, .3, .2], [.3, .5, .2], [.2, .5, .3], [.6, .2, .2]])
    per = metrics.per_class_auc(np.array([0, 1, 1, 0]), three)
    assert math.isnan(per[2])
    assert metrics.auc_score(np.array([0, 1, 1, 0]), three) == np.nanmean(per)


def test_midranks_give_ties_their_mean_rank_on_every_row():
    x = np.array([[10, 20, 20, 30], [3, 3, 3, 1]])
    assert metrics.midranks(x).tolist() == [[1, 2.5, 2.5, 4], [3, 3, 3, 1]]


def test_delong_covariance_of_the_4_by_4_example_worked_by_hand():
    # Sun & Xu placements. A: V10 (share of negatives below each positive) = 1, 1, 3/4, 1/2;
    # V01 (share of positives above each negative) = 1/2, 3/4, 1, 1; AUC = 13/16.
    # Deviations from 13/16: V10 -> 3/16, 3/16, -1/16, -5/16; squares sum 44/256 = 11/64, so S10 = 11/192;
    # V01 -> -5/16, -1/16, 3/16, 3/16, S01 = 11/192. var(A) = S10/4 + S01/4 = 11/384.
    # B (the 0.5 tie counts 1/2): V10 = 1, 5/8, 3/4, 1/4; V01 = 1/4, 5/8, 3/4, 1; AUC = 21/32.
    # Deviations 11/32, -1/32, 3/32, -13/32 (squares 300/1024), S10 = S01 = 25/256, var(B) = 25/512.
    # cov: products of A's and B's deviations, V10: (33 - 3 - 3 + 65)/512 = 46/256,
    # V01: (65 + 1 + 9 + 33)/512 = 54/256; each /3 (ddof 1) /4 (cases): cov(A, B) = 100/3072 = 25/768.
    aucs, cov = metrics.delong_covariance(Y, np.stack([A, B]))
    assert aucs == pytest.approx([13 / 16, 21 / 32])
    assert cov == pytest.approx(np.array([[11 / 384, 25 / 768], [25 / 768, 25 / 512]]))


def test_paired_delong_p_value_of_the_4_by_4_example():
    # var(A - B) = 11/384 + 25/512 - 2 * 25/768 = (44 + 75 - 100) / 1536 = 19/1536.
    # z = (13/16 - 21/32) / sqrt(19/1536) = 1.40488..., two-sided p = erfc(z / sqrt 2) = 0.16006.
    aucs, delta, p = metrics.delong_test(Y, np.stack([A, B]), ref=0)
    assert delta == pytest.approx([0, -5 / 32])
    assert p[1] == pytest.approx(math.erfc((5 / 32) / math.sqrt(19 / 1536) / math.sqrt(2)))
    assert p[1] == pytest.approx(0.16006, abs=1e-5)
    assert p[0] == 1.0


def test_delong_p_of_identical_predictors_is_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.random(50) + y * 0.3
    _, delta, p = metrics.delong_test(y, np.stack([s, s, s]), ref=1)
    assert delta.tolist() == [0, 0, 0]
    assert p.tolist() == [1, 1, 1]


def test_delong_of_two_class_tables_equals_the_binary_test_on_column_1():
    pa, pb = np.stack([1 - A, A], 1), np.stack([1 - B, B], 1)
    _, cov_tables = metrics.delong_covariance(Y, np.stack([pa, pb]))
    _, cov_binary = metrics.delong_covariance(Y, np.stack([A, B]))
    assert cov_tables == pytest.approx(cov_binary)


def test_macro_delong_variance_agrees_with_the_bootstrap_variance():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    probs[np.arange(300), labels] += 0.3
    probs /= probs.sum(1, keepdims=True)
    auc, cov = metrics.delong_covariance(labels, probs[None])
    assert auc[0] == pytest.approx(metrics.auc_score(labels, probs))
    boot = metrics.bootstrap_auc(labels, probs, n_boot=2000, seed=1)
    assert cov[0, 0] == pytest.approx(boot.var(), rel=0.15)


def test_bootstrap_replicates_equal_sklearn_on_the_resampled_cases():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet([1, 1, 1], 60)
    idx = metrics.stratified_bootstrap_indices(labels, 4, seed=7)
    reps = metrics.bootstrap_auc(labels, probs, 4, seed=7, max_elements=100)  # several batches
    expect = [np.mean([roc_auc_score(labels[i] == k, probs[i, k]) for k in range(3)]) for i in idx]
    assert reps == pytest.approx(expect)
    y = labels == 0
    reps = metrics.bootstrap_auc(y, probs[:, 0], 3, seed=2)
    idx = metrics.stratified_bootstrap_indices(y, 3, seed=2)
    assert reps == pytest.approx([roc_auc_score(y[i], probs[i, 0]) for i in idx])


def test_stratified_bootstrap_keeps_each_class_count_and_is_seeded():
    strata = np.array([0, 1, 1, 2, 2, 2])
    idx = metrics.stratified_bootstrap_indices(strata, 50, seed=0)
    assert idx.shape == (50, 6)
    assert (strata[idx] == [0, 1, 1, 2, 2, 2]).all()
    assert (idx == metrics.stratified_bootstrap_indices(strata, 50, seed=0)).all()
    assert (idx != metrics.stratified_bootstrap_indices(strata, 50, seed=1)).any()


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_cases():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    s = rng.normal(size=80) + y
    point = metrics.auc_score(y, s)
    lo, hi = metrics.auc_ci(y, s, n_boot=1000, seed=0)
    assert lo < point < hi
    y4, s4 = np.tile(y, 4), np.tile(s, 4)  # same AUC, four times the cases: CI about half as wide
    lo4, hi4 = metrics.auc_ci(y4, s4, n_boot=1000, seed=0)
    assert metrics.auc_score(y4, s4) == pytest.approx(point)
    assert lo4 < point < hi4
    assert 0.35 < (hi4 - lo4) / (hi - lo) < 0.65
    assert all(math.isnan(v) for v in metrics.auc_ci(y, s, n_boot=0))


def test_youden_threshold_by_hand():
    # Validation cases sorted by score: .9 P, .8 N, .7 P, .6 P, .3 N, .2 N.
    # Thresholds .9: J = 1/3 - 0; .8: 1/3 - 1/3; .7: 2/3 - 1/3; .6: 1 - 1/3 = 2/3 (max); .3: 1 - 2/3; .2: 0.
    y = np.array([1, 0, 1, 1, 0, 0])
    s = np.array([.9, .8, .7, .6, .3, .2])
    assert metrics.choose_threshold(y, s, "youden") == 0.6
    # sens:0.5 -> first threshold reaching 2/3 >= 0.5 is .7; sens:1 -> .6.
    assert metrics.choose_threshold(y, s, "sens:0.5") == 0.7
    assert metrics.choose_threshold(y, s, 1.0) == 0.6


def test_youden_ties_go_to_the_highest_threshold():
    # .9 P: J = 1/2; .8 N: 0; .7 P: 1 - 1/2 = 1/2 again -> keep .9
    y = np.array([1, 0, 1, 0])
    s = np.array([.9, .8, .7, .1])
    assert metrics.choose_threshold(y, s, "youden") == 0.9


def test_threshold_metrics_by_hand():
    # score >= 0.5: predicted positive .9 .8 .6 -> tp 2 (.9 .6), fp 1 (.8); fn 1 (.4), tn 2 (.3 .1)
    y = np.array([1, 0, 1, 1, 0, 0])
    s = np.array([.9, .8, .6, .4, .3, .1])
    m = metrics.threshold_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    assert m["sensitivity"] == 2 / 3 and m["specificity"] == 2 / 3
    assert m["ppv"] == 2 / 3 and m["npv"] == 2 / 3 and m["f1"] == 4 / 6
    assert math.isnan(metrics.threshold_metrics(y, s, 2.0)["ppv"])  # nothing called positive


def test_average_precision_by_hand():
    # A sorted: P P N P N P N N; precision at each positive 1, 1, 3/4, 4/6 -> mean 0.854166...
    assert metrics.average_precision(Y, A) == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)


def test_argmax_metrics_by_hand():
    labels = np.array([0, 0, 1, 2])
    probs = np.array([[.6, .3, .1], [.2, .5, .3], [.1, .8, .1], [.3, .3, .4]])
    m = metrics.argmax_metrics(labels, probs)
    assert m["accuracy"] == 3 / 4
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert m["confusion"].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("rule, expected", [("youden", ("youden", None)), ("sens:0.95", ("sens", 0.95)),
                                            ("Sensitivity:0.9", ("sens", 0.9)), (0.8, ("sens", 0.8))])
def test_parse_threshold_rule(rule, expected):
    assert metrics.parse_threshold_rule(rule) == expected


@pytest.mark.parametrize("rule, message", [("yuden", "allowed: youden, sens:<target>"),
                                           ("sens:abc", "is not a number"), ("sens:1.5", "must be in (0, 1]")])
def test_bad_threshold_rule_names_what_is_allowed(rule, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        metrics.parse_threshold_rule(rule)


def test_single_class_labels_give_nan_auc_and_a_clear_bootstrap_error():
    assert math.isnan(metrics.auc_score(np.ones(4), A[:4]))
    with pytest.raises(ValueError, match="single class"):
        metrics.bootstrap_auc(np.ones(4), A[:4], 10)


def test_holm_of_four_p_values_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06.
    assert metrics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Capped at 1: 0.3 * 4 = 1.2.
    assert metrics.holm([0.3, 0.4, 0.5, 0.6]).tolist() == [1, 1, 1, 1]


def test_holm_skips_nan_and_gives_ties_equal_values():
    # m = 2 defined p-values: 0.01 * 2 = 0.02, 0.04 * 1 = 0.04.
    out = metrics.holm([np.nan, 0.04, 0.01, np.nan])
    assert np.isnan(out[[0, 3]]).all()
    assert out[[1, 2]] == pytest.approx([0.04, 0.02])
    # Ties: 0.02 * 3 = 0.06, 0.02 * 2 = 0.04 -> running max keeps 0.06 for both; 0.5 * 1 = 0.5.
    assert metrics.holm([0.5, 0.02, 0.02]) == pytest.approx([0.5, 0.06, 0.06])
    assert metrics.holm([]).shape == (0,)


@pytest.mark.parametrize("bad, message", [([[0.1, 0.2]], "one-dimensional"), ([0.1, 1.5], "must lie in")])
def test_holm_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        metrics.holm(bad)


def _random_zoo(seed: int, classes: int = 0, r: int = 1, k: int = 3, n: int = 60):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, max(classes, 2), n)
    if classes:
        s = rng.dirichlet(np.ones(classes), (r, k, n))
        s[..., np.arange(n), labels] += rng.random((r, k, 1)) * 0.5
    else:
        s = rng.random((r, k, n)) + labels * rng.random((r, k, 1))
    return labels, s


@pytest.mark.parametrize("classes", [0, 2, 3])
def test_repeated_delong_with_one_repeat_is_delong_test(classes):
    labels, s = _random_zoo(5, classes)
    aucs, delta, p, parts = metrics.repeated_delong(labels, s, ref=1)
    expect = metrics.delong_test(labels, s[0], ref=1)
    for got, want in zip((aucs, delta, p), expect):
        assert np.array_equal(got, want)
    assert p[1] == 1.0  # ref against itself, as delong_test gives it
    assert parts["var_repeats"].tolist() == [0, 0, 0]
    assert np.array_equal(parts["auc_per_repeat"], expect[0][None])


def test_repeated_delong_of_identical_repeats_is_the_delong_p_of_one():
    labels, s = _random_zoo(6, 3)
    copies = np.repeat(s, 4, axis=0)  # [4, K, N, C], every repeat the same
    aucs, delta, p, parts = metrics.repeated_delong(labels, copies)
    expect = metrics.delong_test(labels, s[0])
    for got, want in zip((aucs, delta, p), expect):
        assert got == pytest.approx(want)
    assert parts["var_repeats"] == pytest.approx([0, 0, 0])


def test_repeated_delong_of_the_4_by_4_example_by_hand():
    # Repeat 0 scores (A, B), repeat 1 scores (A, A): per-repeat deltas of predictor 1 are -5/32 and 0.
    # Mean delta -5/64. Averaged placements of predictor 1 are those of (A + B) / 2, so the test-set part is
    # var(A - (A + B) / 2) = var(A - B) / 4 = 19/6144 (see the paired example above). Between repeats: the sample
    # variance of two values is their squared difference over 2, (5/32)^2 / 2 = 25/2048, over R = 2: 25/4096.
    scores = np.stack([np.stack([A, B]), np.stack([A, A])])
    aucs, delta, p, parts = metrics.repeated_delong(Y, scores)
    assert aucs == pytest.approx([13 / 16, (13 / 16 + 21 / 32) / 2])
    assert delta == pytest.approx([0, -5 / 64])
    assert parts["var_test_set"] == pytest.approx([0, 19 / 6144])
    assert parts["var_repeats"] == pytest.approx([0, 25 / 4096])
    total = 19 / 6144 + 25 / 4096  # = 113/12288
    assert p[1] == pytest.approx(math.erfc((5 / 64) / math.sqrt(total) / math.sqrt(2)))
    ignoring = math.erfc((5 / 64) / math.sqrt(19 / 6144) / math.sqrt(2))
    assert p[1] > ignoring + 0.1  # the training variance widens the test: about 0.42 against 0.16
    assert p[0] == 1.0


@pytest.mark.parametrize("shape, ref, message", [((2, 8), 0, r"\[R, K, N\]"), ((1, 2, 8), 2, r"0\.\.1, got 2"),
                                                 ((1, 2, 8), -1, r"0\.\.1, got -1")])
def test_repeated_delong_rejects_bad_shapes_and_refs(shape, ref, message):
    with pytest.raises(ValueError, match=message):
        metrics.repeated_delong(Y, np.broadcast_to(A, shape), ref)


def test_repeated_delong_docstring_names_the_test():
    assert metrics.repeated_delong.__doc__.startswith(metrics.REPEATED_DELONG_NAME)


def test_mean_sd_by_hand():
    assert metrics.mean_sd([0.8, 0.9, 1.0]) == pytest.approx((0.9, 0.1))
    mean, sd = metrics.mean_sd([0.8])
    assert mean == 0.8 and math.isnan(sd)
    assert metrics.mean_sd([np.nan, 0.7, 0.9]) == pytest.approx((0.8, math.sqrt(0.02)))
    assert all(math.isnan(v) for v in metrics.mean_sd([np.nan]))


def test_spearman_by_hand():
    # d = 0, -1, 1, 0: rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Tie: x ranks 1, 2.5, 2.5, 4; centred (-1.5, 0, 0, 1.5) . (-1.5, -0.5, 0.5, 1.5) = 4.5 over sqrt(4.5 * 5).
    assert metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert metrics.spearman([4, 3, np.nan, 1], [1, 2, 9, 3]) == pytest.approx(-1.0)  # NaN pair skipped
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(2,\)"):
        metrics.spearman([1, 2, 3], [1, 2])


# Calibration. A on the 4-by-4 example, 10 equal-width bins (k/10, (k+1)/10]: its eight probabilities
# .9 .8 .6 .4 | .7 .5 .3 .2 fall in eight different bins, so each bin's gap is |y - p| of one image:
# .1 .2 .4 .6 | .7 .5 .3 .2, ECE = 3.0 / 8; Brier = (.01 + .04 + .16 + .36 + .49 + .25 + .09 + .04) / 8 = 1.44 / 8.
# B shares one bin: its two 0.5s (a positive and a negative) -> frequency 1/2 = mean 0.5, gap 0; the other gaps
# .1 .4 .7 | .7 .4 .1 sum to 2.4, ECE = 2.4 / 8; Brier = (.01 + .25 + .16 + .49 + .49 + .25 + .16 + .01) / 8.
L3 = np.array([0, 0, 1, 1, 2, 2])
P3 = np.array([[.6, .3, .1], [.3, .4, .3], [.2, .7, .1], [.5, .4, .1], [.1, .2, .7], [.2, .2, .6]])


def test_ece_and_brier_of_the_4_by_4_example_by_hand():
    assert metrics.expected_calibration_error(Y, A) == pytest.approx(3.0 / 8)
    assert metrics.brier_score(Y, A) == pytest.approx(1.44 / 8)
    assert metrics.expected_calibration_error(Y, B) == pytest.approx(2.4 / 8)
    assert metrics.brier_score(Y, B) == pytest.approx(1.82 / 8)
    table = np.stack([1 - B, B], axis=1)  # two classes: column 1, the same numbers
    assert metrics.expected_calibration_error(Y, table) == pytest.approx(2.4 / 8)
    assert metrics.brier_score(Y, table) == pytest.approx(1.82 / 8)
    confidence, frequency, counts = metrics.reliability(*metrics.calibration_problem(Y, B))
    assert confidence == pytest.approx([.1, .3, .4, .5, .6, .7, .9])
    assert frequency.tolist() == [0, 1, 0, 0.5, 1, 0, 1] and counts.tolist() == [1, 1, 1, 2, 1, 1, 1]


def test_ece_with_shared_bins_by_hand():
    # Two bins [0, .5], (.5, 1]. High: .9 .8 .75 with 2 of 3 positive: |2/3 - 49/60| = 9/60.
    # Low: .3 .2 .1 with 1 of 3 positive: |1/3 - 1/5| = 8/60. Three images each: ECE = (9/60 + 8/60) / 2 = 17/120.
    y, p = np.array([1, 0, 1, 1, 0, 0]), np.array([.9, .8, .75, .3, .2, .1])
    assert metrics.expected_calibration_error(y, p, n_bins=2) == pytest.approx(17 / 120)
    assert metrics.calibration_error(y.astype(bool), p, n_bins=2) == pytest.approx(17 / 120)
    # A bin's upper edge belongs to it, as in calibration_curve: 0.5 falls in [0, .5].
    assert metrics.reliability(np.array([True, False]), np.array([.5, .5]), n_bins=2)[2].tolist() == [2]


def test_top_label_ece_and_multiclass_brier_by_hand():
    # Top labels (confidence, right?): .6 yes, .4 no, .7 yes, .5 no, .7 yes, .6 yes. Bins: (.5, .6] .6 .6 both
    # right -> gap .4 for 2; (.3, .4] -> .4 for 1; (.6, .7] -> .3 for 2; (.4, .5] -> .5 for 1: ECE = 2.3 / 6.
    assert metrics.expected_calibration_error(L3, P3) == pytest.approx(2.3 / 6)
    # Squared errors against one-hot, summed per row: .26 .74 .14 .62 .14 .24 -> 2.14 / 6.
    assert metrics.brier_score(L3, P3) == pytest.approx(2.14 / 6)
    event, confidence = metrics.calibration_problem(L3, P3)
    assert event.tolist() == [True, False, True, False, True, True]
    assert confidence.tolist() == [.6, .4, .7, .5, .7, .6]


def test_perfect_predictions_have_zero_ece_and_brier():
    y = np.array([0, 1, 1])
    assert metrics.expected_calibration_error(y, y.astype(float)) == 0
    assert metrics.brier_score(y, y.astype(float)) == 0
    assert metrics.brier_score(np.array([2, 0]), np.array([[0., 0, 1], [1, 0, 0]])) == 0


@pytest.mark.parametrize("labels, probs, n_bins, message", [
    (Y, A[:4], 10, r"labels of shape \(8,\) and probs of shape \(4,\)"),
    (Y, A + 0.2, 10, r"probabilities in \[0, 1\]; got values from 0.4 to 1.1"),
    (np.array([0, 3]), np.array([[.5, .5, 0], [.2, .3, .5]]), 10, r"class index in 0..2; got labels from 0 to 3"),
    (Y, A, 0, "n_bins must be an integer >= 1, got 0"),
])
def test_calibration_errors_name_what_was_received(labels, probs, n_bins, message):
    with pytest.raises(ValueError, match=message):
        metrics.expected_calibration_error(labels, probs, n_bins)
