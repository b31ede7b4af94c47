import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medzoo.ensemble.auc import (Z95, auc, auc_bounds, auc_interval, binary_auc, binary_auc_bounds, class_aucs,
                                 hanley_mcneil_se, midranks, near_chance)


def test_four_samples_by_hand():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered
    assert binary_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75


def test_tie_counts_one_half():
    # positive 0.5 ties negative 0.5 (1/2) and beats 0.2; positive 0.9 beats both: 3.5 / 4
    assert binary_auc([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == 0.875


def test_all_tied_is_one_half():
    assert binary_auc(np.full(6, 0.3), [0, 1, 0, 1, 1, 0]) == 0.5


SCORES = {
    "continuous": lambda rng, n: rng.random(n),
    "few_values": lambda rng, n: rng.integers(0, 4, n) / 3,
    "negative": lambda rng, n: rng.normal(size=n) * 1e3,
    "near_ties": lambda rng, n: 0.5 + rng.integers(0, 3, n) * 1e-12,
    "signed_zero": lambda rng, n: np.where(rng.random(n) < 0.5, -0.0, 0.0) + (rng.random(n) < 0.3),
}


@pytest.mark.parametrize("kind", sorted(SCORES))
def test_batched_equals_sklearn(kind):
    rng = np.random.default_rng(0)
    for n in (2, 7, 50, 301):
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        rows = np.stack([SCORES[kind](rng, n) for _ in range(4)])
        got = binary_auc(rows, y)
        want = [roc_auc_score(y, r) for r in rows]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        assert binary_auc(rows[0], y) == pytest.approx(want[0], abs=1e-12)


def test_many_rows_use_the_threaded_path_and_agree():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    rows = rng.random((400, 3000))  # > one block of rows
    got = binary_auc(rows, y)
    for k in (0, 199, 399):
        assert got[k] == pytest.approx(roc_auc_score(y, rows[k]), abs=1e-12)


def test_task_auc_binary_uses_positive_column_and_multiclass_is_macro_ovr():
    rng = np.random.default_rng(2)
    p = rng.dirichlet([1, 1], size=40)
    y = rng.integers(0, 2, 40)
    assert auc(p, y) == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)
    p3 = rng.dirichlet([1, 1, 1], size=60)
    y3 = np.r_[0, 1, 2, rng.integers(0, 3, 57)]
    assert auc(p3, y3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"), abs=1e-12)
    batch = np.stack([p3, p3[::-1]])
    np.testing.assert_allclose(auc(batch, y3), [auc(p3, y3), auc(p3[::-1], y3)], atol=1e-15)
    np.testing.assert_allclose(class_aucs(p3, y3), [roc_auc_score(y3 == j, p3[:, j]) for j in range(3)], atol=1e-12)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="both classes; got 3 positives and 0 negatives"):
        binary_auc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        binary_auc([0.1, np.nan, 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="expected \\[N\\] or \\[K, N\\] with N = 3"):
        binary_auc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="class index 2 has 0 of 4 images"):
        class_aucs(np.full((4, 3), 1 / 3), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels must be class indices 0..1"):
        auc(np.full((3, 2), 0.5), [0, 1, -1])


def test_midranks_average_ties():
    np.testing.assert_array_equal(midranks(np.array([[0.3, 0.1, 0.3, 0.7]])), [[2.5, 1, 2.5, 4]])


def test_bounds_by_hand():
    # bins=2 puts 0, 0.4, 0.6 in bin 0 and 1.0 in bin 1: positive 1.0 beats both negatives (2 pairs
    # known); positive 0.4 shares bin 0 with negatives 0 and 0.6 (2 pairs unknown) -> [2/4, 4/4]
    lo, hi = binary_auc_bounds(np.array([[0.0, 0.4, 0.6, 1.0]]), [0, 1, 0, 1], bins=2)
    assert (lo[0], hi[0]) == (0.5, 1.0)
    assert lo[0] <= binary_auc([0.0, 0.4, 0.6, 1.0], [0, 1, 0, 1]) == 0.75 <= hi[0]


@pytest.mark.parametrize("kind", sorted(SCORES))
def test_bounds_contain_the_exact_auc(kind):
    rng = np.random.default_rng(3)
    y = np.r_[0, 1, rng.integers(0, 2, 198)]
    rows = np.stack([SCORES[kind](rng, 200) for _ in range(5)])
    exact = binary_auc(rows, y)
    for bins in (4, 64, 1 << 14):
        lo, hi = binary_auc_bounds(rows, y, bins=bins)
        assert (lo <= exact + 1e-15).all() and (exact <= hi + 1e-15).all()


def test_bounds_are_exact_for_tied_scores():
    # vote fractions: few distinct values, so every shared bin holds equal scores (ties, counted 1/2)
    rng = np.random.default_rng(4)
    y = np.r_[0, 1, rng.integers(0, 2, 98)]
    rows = rng.integers(0, 5, (3, 100)) / 4
    lo, hi = binary_auc_bounds(rows, y)
    np.testing.assert_allclose(lo, binary_auc(rows, y), atol=1e-15)
    np.testing.assert_allclose(hi, lo, atol=1e-15)
    p3 = np.stack([1 - rows, rows], axis=-1)
    lo2, hi2 = auc_bounds(p3, y)
    np.testing.assert_allclose(lo2, lo)


def binary_probs(p1):
    return np.stack([1 - np.asarray(p1, dtype=float), p1], axis=1)


def test_hanley_mcneil_four_samples_by_hand():
    # A = 3/4, 2 positives, 2 negatives: Q1 = A / (2 - A) = 3/5, Q2 = 2A^2 / (1 + A) = 9/14;
    # SE^2 = (A(1 - A) + (Q1 - A^2) + (Q2 - A^2)) / 4 = (3/16 + 3/80 + 9/112) / 4 = (171/560) / 4 = 171/2240
    se = np.sqrt(171 / 2240)
    assert hanley_mcneil_se(0.75, 2, 2) == pytest.approx(se, abs=1e-15)
    a, low, high = auc_interval(binary_probs([0.1, 0.4, 0.35, 0.8]), [0, 0, 1, 1])
    # 0.75 +- 1.96 * 0.2763: [0.2084, 1.2916], clipped to [0, 1]; it holds 0.5, so within noise of chance
    assert (a, high) == (0.75, 1.0) and low == pytest.approx(0.75 - Z95 * se, abs=1e-15)
    assert near_chance(binary_probs([0.1, 0.4, 0.35, 0.8]), [0, 0, 1, 1])


def test_a_perfect_member_has_no_error_and_is_not_near_chance():
    assert hanley_mcneil_se(1.0, 2, 2) == 0.0 == hanley_mcneil_se(0.0, 3, 5)
    assert auc_interval(binary_probs([0.1, 0.2, 0.8, 0.9]), [0, 0, 1, 1]) == (1.0, 1.0, 1.0)
    assert not near_chance(binary_probs([0.1, 0.2, 0.8, 0.9]), [0, 0, 1, 1])


def test_ten_against_ten_at_auc_point_nine_is_clear_of_chance():
    # nine positives above every negative, one below all: 90 of 100 pairs, A = 0.9;
    # Q1 - A^2 = A(1 - A)^2 / (2 - A) = 9/1100, Q2 - A^2 = A^2 (1 - A) / (1 + A) = 81/1900
    y = np.r_[np.zeros(10), np.ones(10)].astype(int)
    p1 = np.r_[np.linspace(0.3, 0.6, 10), np.full(9, 0.9), 0.1]
    se = np.sqrt((9 / 100 + 9 * 9 / 1100 + 9 * 81 / 1900) / 100)  # 0.0740
    a, low, high = auc_interval(binary_probs(p1), y)
    assert a == pytest.approx(0.9, abs=1e-15) and low == pytest.approx(0.9 - Z95 * se, abs=1e-12)  # 0.755
    assert high == 1.0 and not near_chance(binary_probs(p1), y)


def test_more_classes_use_the_macro_auc_and_the_mean_of_the_class_errors():
    # one-vs-rest AUCs 1, 1 and 6/8 (class 2's positives 0.8 and 0.12 against 0.1, 0.05, 0.15, 0.2);
    # each class has 2 positives and 4 negatives: SE(1) = 0 and SE(3/4)^2 = (3/16 + 3/80 + 3 * 9/112) / 8 = 261/4480
    probs = np.array([[0.8, 0.1, 0.1], [0.7, 0.25, 0.05], [0.05, 0.8, 0.15], [0.1, 0.7, 0.2],
                      [0.1, 0.1, 0.8], [0.44, 0.44, 0.12]])
    y = np.array([0, 0, 1, 1, 2, 2])
    a, low, high = auc_interval(probs, y)
    assert a == pytest.approx(11 / 12, abs=1e-15) and high == 1.0
    assert low == pytest.approx(11 / 12 - Z95 * np.sqrt(261 / 4480) / 3, abs=1e-12)  # 0.759
    assert not near_chance(probs, y)
    with pytest.raises(ValueError, match="expected \\[N, C\\]"):
        auc_interval(probs[None], y)
