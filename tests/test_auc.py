import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medzoo.ensemble.auc import auc, auc_bounds, binary_auc, binary_auc_bounds, class_aucs, midranks


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
