import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from medzoo.ensemble.aggregators import TEMPERATURE_GRID
from medzoo.ensemble.auc import auc
from medzoo.ensemble.combiners import COMBINERS, GreedySelection, SubsetSearch, all_subsets, make_method, method_params
from medzoo.ensemble.table import ProbabilityTable


def tables(p1, y, split="val", names=None):
    """One binary table per row of ``p1`` ``[M, N]``."""
    ids = [f"img{i}" for i in range(len(y))]
    names = names or [f"m{j}" for j in range(len(p1))]
    return [ProbabilityTable(ids, ["neg", "pos"], np.stack([1 - p, p], axis=1), y, {"member": nm, "split": split})
            for nm, p in zip(names, p1)]


def noisy_members(strengths, n, seed):
    """Members whose logit is ``strength * (2y - 1)`` plus independent unit noise."""
    rng = np.random.default_rng(seed)
    y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
    z = np.asarray(strengths)[:, None] * (2 * y - 1) + rng.normal(size=(len(strengths), n))
    return 1 / (1 + np.exp(-z)), y


@pytest.mark.parametrize("name", ["stacking", "greedy", "subset_search", "softmax_auc", "mean"])
def test_fitting_on_a_test_table_raises(name):
    p1, y = noisy_members([1.0, 1.0], 40, 0)
    with pytest.raises(ValueError, match="fits on validation tables only; the table of member 'm1' is marked split 'test'"):
        make_method(name).fit(tables(p1[:1], y) + tables(p1[1:], y, split="test", names=["m1"]))


def test_greedy_picks_the_much_better_member_most():
    p1, y = noisy_members([0.3, 3.0, 0.3, 0.3], 300, 1)
    greedy = make_method("greedy", steps=20, bags=10, bag_fraction=0.5).fit(tables(p1, y))
    counts, weights = greedy.info_["selection_counts"], greedy.weights_
    assert max(counts, key=counts.get) == "m1" and max(weights, key=weights.get) == "m1"
    assert weights["m1"] > 1 / 4 and sum(weights.values()) == pytest.approx(1)


def test_independent_noisy_members_ensemble_beats_each_member():
    p1, y = noisy_members([0.8] * 5, 400, 2)
    best_member = max(roc_auc_score(y, p) for p in p1)
    for name in ("mean", "softmax_auc", "greedy", "stacking", "subset_search"):
        method = make_method(name).fit(tables(p1, y))
        val = method.validation_table()
        assert auc(val.probs, val.labels) > best_member + 0.02, name
        if name != "mean":  # the learned ones: the table's AUC is the out-of-fold one
            assert auc(val.probs, y) == pytest.approx(method.info_["val_auc_out_of_fold"], abs=1e-12), name
            assert method.info_["folds"] == 5, name


@pytest.mark.parametrize("name, options", [("greedy", {"steps": 5, "bags": 3}), ("subset_search", {"aggregators": ["mean"]}),
                                           ("stacking", {})])
def test_validation_rows_come_from_fits_that_did_not_see_them(name, options):
    p1, y = noisy_members([0.9, 0.6, 0.3, 0.2], 60, 11)
    method = make_method(name, folds=3, seed=4, **options).fit(tables(p1, y))
    expected = np.empty((60, 2))
    for train, held in StratifiedKFold(3, shuffle=True, random_state=4).split(y, y):
        part = make_method(name, folds=3, seed=4, **options).fit(tables(p1[:, train], y[train]))
        expected[held] = part.predict(tables(p1[:, held], y[held])).probs
    np.testing.assert_allclose(method.validation_table().probs, expected, atol=1e-12)


@pytest.mark.parametrize("name, options", [("greedy", {"bags": 1}), ("subset_search", {})])
def test_a_member_perfect_on_validation_is_still_chosen_out_of_fold(name, options):
    p1, y = noisy_members([0.3, 0.3, 0.3], 80, 12)
    perfect = np.where(y == 1, 0.6, 0.4) + np.random.default_rng(0).uniform(-0.05, 0.05, 80)
    # first, so that greedy's ties (a noisy member added without changing the AUC) also go to it
    method = make_method(name, **options).fit(tables(np.vstack([perfect, p1]), y))
    assert method.info_["val_auc_out_of_fold"] == 1.0 == method.info_["val_auc_in_sample"]
    val = method.validation_table()
    assert auc(val.probs, y) == 1.0 and val.meta["val_auc_out_of_fold"] == 1.0


def test_subset_search_out_of_fold_exposes_an_overfit_subset():
    # ten members of pure noise on 24 images: the best of 1023 subsets looks good in-sample only
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 12)
    p1 = rng.uniform(size=(10, 24))
    search = make_method("subset_search", aggregators=["mean"]).fit(tables(p1, y))
    in_sample, oof = search.info_["val_auc_in_sample"], search.info_["val_auc_out_of_fold"]
    assert in_sample == pytest.approx(search.info_["top"][0]["val_auc"], abs=1e-12)
    assert in_sample > 0.8 and oof < in_sample - 0.25
    assert auc(search.validation_table().probs, y) == pytest.approx(oof, abs=1e-12)
    assert auc(search.predict(tables(p1, y)).probs, y) == pytest.approx(in_sample, abs=1e-12)


def test_greedy_single_bag_is_deterministic_with_ties_to_the_lowest_index():
    # identical members: every step ties, so the lowest index is chosen every time
    p1, y = noisy_members([1.0], 50, 3)
    greedy = make_method("greedy", steps=5, bags=1).fit(tables(np.repeat(p1, 3, axis=0), y))
    assert greedy.info_["selection_counts"] == {"m0": 5, "m1": 0, "m2": 0}


def test_stacking_validation_is_out_of_fold_and_predicts_test():
    p1, y = noisy_members([1.0, 0.5, 0.2], 200, 4)
    stack = make_method("stacking", folds=4).fit(tables(p1, y))
    val = stack.validation_table()
    in_sample = stack.predict(tables(p1, y))
    assert val.ids == in_sample.ids and not np.allclose(val.probs, in_sample.probs)
    assert stack.info_["folds"] == 4 and stack.info_["val_auc_out_of_fold"] == pytest.approx(auc(val.probs, y))
    assert stack.info_["val_auc_in_sample"] == pytest.approx(auc(in_sample.probs, y))
    assert len(stack.info_["coef"][0]) == 3
    tp1, ty = noisy_members([1.0, 0.5, 0.2], 60, 5)
    test = stack.predict(tables(tp1, np.full(60, -1), split="test"))
    assert test.split == "test" and test.probs.shape == (60, 2) and not test.has_labels
    np.testing.assert_allclose(test.probs.sum(axis=1), 1)


def test_subset_search_best_matches_brute_force_with_sklearn():
    p1, y = noisy_members([0.2, 1.0, 0.9, 0.1], 150, 6)
    search = make_method("subset_search", aggregators=["mean"]).fit(tables(p1, y))
    brute = {s: roc_auc_score(y, p1[list(s)].mean(axis=0))
             for k in range(1, 5) for s in itertools.combinations(range(4), k)}
    best = max(brute, key=lambda s: (brute[s], -len(s)))
    assert search.info_["selected"] == [f"m{j}" for j in best]
    assert search.info_["top"][0]["val_auc"] == pytest.approx(brute[best], abs=1e-12)
    ranked = sorted(brute.values(), reverse=True)[:len(search.info_["top"])]
    np.testing.assert_allclose([t["val_auc"] for t in search.info_["top"]], ranked, atol=1e-12)
    out = search.predict(tables(p1, y))
    np.testing.assert_allclose(out.probs[:, 1], p1[list(best)].mean(axis=0))


def test_subset_search_ties_prefer_fewer_members():
    p1, y = noisy_members([1.0], 60, 7)
    search = SubsetSearch(aggregators=["mean", "median"]).fit(tables(np.repeat(p1, 3, axis=0), y))
    assert search.info_["selected"] == ["m0"] and search.info_["aggregator"] == "mean"


def test_subset_search_default_aggregators_and_sidecar():
    p1, y = noisy_members([0.5, 0.9, 0.7], 80, 8)
    search = make_method("subset_search", temperature=50).fit(tables(p1, y))
    assert set(search.info_["best_val_auc_per_aggregator"]) == {
        "mean", "median", "geometric_mean", "rank_mean", "majority_vote", "majority_vote_mean", "softmax_auc"}
    assert search.info_["subsets_scored"] == 7 * 7
    side = search.sidecar()
    assert side["method"] == "subset_search" and side["members"] == ["m0", "m1", "m2"]


def test_subset_search_caps_members():
    with pytest.raises(ValueError, match="M = 17 members gives 131071, more than the 65535 allowed"):
        all_subsets(17)
    assert all_subsets(3).tolist()[:3] == [[True, False, False], [False, True, False], [True, True, False]]


def test_predict_needs_the_same_members_and_a_fit():
    p1, y = noisy_members([1.0, 0.5], 40, 9)
    with pytest.raises(ValueError, match="must be fitted"):
        make_method("greedy").predict(tables(p1, y))
    mean = make_method("mean").fit(tables(p1, y))
    with pytest.raises(ValueError, match="fitted on members \\['m0', 'm1'\\]; got tables of \\['a', 'b'\\]"):
        mean.predict(tables(p1, y, names=["a", "b"]))


def test_method_names_and_options_are_checked():
    with pytest.raises(ValueError, match="unknown ensemble method 'stacker'; did you mean 'stacking'\\?"):
        make_method("stacker")
    with pytest.raises(ValueError, match="method 'greedy' got unknown option\\(s\\) \\['step'\\]"):
        make_method("greedy", step=3)
    with pytest.raises(ValueError, match="method 'mean' got unknown option"):
        make_method("mean", temperature=3)
    assert set(COMBINERS.names()) == {"stacking", "greedy", "subset_search"}
    with pytest.raises(ValueError, match="subset_search cannot use weighted_mean"):
        make_method("subset_search", aggregators=["mean", "weighted_mean"])
    with pytest.raises(ValueError, match="unknown aggregator 'medain'; did you mean 'median'"):
        make_method("subset_search", aggregators=["medain"])


@pytest.mark.parametrize("name", [*sorted(COMBINERS.names()), "softmax_auc"])
def test_learned_methods_need_two_images_of_every_class(name):
    p1, _ = noisy_members([1.0, 0.5], 6, 14)
    y = np.array([0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match=f"{name} is scored out-of-fold on validation and needs at least 2 images "
                                         f"of every class; the smallest class has 1"):
        make_method(name).fit(tables(p1, y))


def softmax_weights(p1, y, temperature):
    """``softmax(temperature * AUC)`` weights ``[M]`` of the rows of ``p1`` ``[M, N]``, from sklearn's AUCs."""
    e = np.exp(temperature * np.array([roc_auc_score(y, p) for p in p1]))
    return e / e.sum()


def test_softmax_auc_is_scored_out_of_fold_and_predicts_with_the_fit_on_all_images():
    p1, y = noisy_members([1.0, 0.6, 0.3], 30, 15)
    method = make_method("softmax_auc", temperature=40, folds=3, seed=2).fit(tables(p1, y))
    expected = np.empty(30)
    for train, held in StratifiedKFold(3, shuffle=True, random_state=2).split(y, y):
        expected[held] = softmax_weights(p1[:, train], y[train], 40) @ p1[:, held]
    val = method.validation_table()
    np.testing.assert_allclose(val.probs[:, 1], expected, rtol=0, atol=1e-12)
    full = softmax_weights(p1, y, 40)
    assert list(method.weights_.values()) == pytest.approx(full.tolist(), abs=1e-12)
    np.testing.assert_allclose(method.predict(tables(p1, y)).probs[:, 1], full @ p1, rtol=0, atol=1e-12)
    side = val.meta
    assert side["folds"] == 3 and "in_sample" not in side
    assert side["val_auc_out_of_fold"] == pytest.approx(roc_auc_score(y, expected), abs=1e-12)
    assert side["val_auc_in_sample"] == pytest.approx(roc_auc_score(y, full @ p1), abs=1e-12)


def test_fitted_aggregators_take_folds_and_seed_and_the_others_do_not():
    assert method_params("softmax_auc") == {"temperature": 125.0, "folds": 5, "seed": 0}
    assert method_params("mean") == {} and "folds" not in method_params("majority_vote")
    with pytest.raises(ValueError, match="method 'mean' got unknown option\\(s\\) \\['folds'\\]"):
        make_method("mean", folds=3)
    with pytest.raises(ValueError, match="softmax_auc folds = 1; expected an integer >= 2"):
        make_method("softmax_auc", folds=1)
    with pytest.raises(ValueError, match="softmax_auc seed = -1; expected an integer >= 0"):
        make_method("softmax_auc", seed=-1)
    p1, y = noisy_members([1.0, 0.5], 40, 16)
    assert "folds" not in make_method("median").fit(tables(p1, y)).sidecar()


EPS = 1e-20


def perfect_and_reversed(eps, n=20):
    """Member A: eps on negatives, 2 eps on positives (AUC 1); member B: 0.9 on negatives, 0.1 on positives (AUC 0).

    On any images, softmax(T * [1, 0]) weighs B by e^-T / (1 + e^-T), so a positive beats a negative
    iff (1 - w) eps > 0.8 w, i.e. e^-T < 1.25 eps: the AUC is 1 from there on and 0 below.
    """
    y = np.tile([0, 1], n // 2)
    return np.stack([np.where(y == 1, 2 * eps, eps), np.where(y == 1, 0.1, 0.9)]), y


def test_temperature_cv_picks_the_smallest_temperature_of_the_best_inner_auc():
    # eps = 1e-20: e^-T < 1.25e-20 from T > 45.8, so T = 100, 125, 300, 1000 tie at AUC 1; the smallest wins
    p1, y = perfect_and_reversed(EPS)
    method = make_method("softmax_auc", temperature="cv").fit(tables(p1, y, names=["A", "B"]))
    info = method.info_
    assert info["temperature_grid"] == list(TEMPERATURE_GRID) == [1, 3, 10, 30, 100, 125, 300, 1000]
    assert info["temperature_inner_aucs"] == [0, 0, 0, 0, 1, 1, 1, 1] and info["temperature_inner_folds"] == 5
    assert info["temperature_chosen"] == 100
    # every out-of-fold fit chooses 100 as well, so each validation row is the T = 100 weighting
    w = np.exp(-100) / (1 + np.exp(-100))
    expected = np.where(y == 1, (1 - w) * 2 * EPS + w * 0.1, (1 - w) * EPS + w * 0.9)
    np.testing.assert_allclose(method.validation_table().probs[:, 1], expected, rtol=1e-12, atol=0)
    assert method.weights_ == pytest.approx({"A": 1 - w, "B": w}, rel=1e-12)
    assert method.info_["val_auc_out_of_fold"] == 1.0


def test_temperature_cv_picks_the_largest_when_only_it_is_sharp_enough():
    # eps = 1e-200: only e^-1000 (0 in floating point) is below 1.25e-200
    p1, y = perfect_and_reversed(1e-200)
    info = make_method("softmax_auc", temperature="cv").fit(tables(p1, y)).info_
    assert info["temperature_inner_aucs"] == [0] * 7 + [1] and info["temperature_chosen"] == 1000


def test_temperature_cv_ties_everywhere_pick_the_smallest():
    p1, y = noisy_members([1.0], 40, 17)
    info = make_method("softmax_auc", temperature="cv").fit(tables(np.repeat(p1, 2, axis=0), y)).info_
    assert len(set(info["temperature_inner_aucs"])) == 1 and info["temperature_chosen"] == 1


def test_temperature_cv_needs_two_images_of_every_class_in_each_fit():
    # 2 positives: out-of-fold scoring makes 2 folds, so each fit sees 1 positive, too few for inner folds
    p1, _ = noisy_members([1.0, 0.5], 10, 18)
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="softmax_auc with temperature 'cv' chooses it by inner out-of-fold AUC .* "
                                         "needs at least 2 images of every class; the smallest class has 1"):
        make_method("softmax_auc", temperature="cv").fit(tables(p1, y))


def test_subset_search_chooses_a_cv_temperature_once_per_fit():
    p1, y = perfect_and_reversed(EPS)
    search = make_method("subset_search", aggregators=["softmax_auc"], temperature="cv").fit(tables(p1, y))
    assert search.temperature_ == 100 == search.info_["temperature_chosen"] and search.info_["selected"] == ["m0"]
    plain = make_method("subset_search", aggregators=["mean"], temperature="cv").fit(tables(p1, y))
    assert "temperature_chosen" not in plain.info_


@pytest.mark.parametrize("name", ["softmax_auc", "subset_search"])
def test_a_temperature_is_a_number_or_cv(name):
    with pytest.raises(ValueError, match=f"{name} temperature = 'hot'; expected a finite number >= 0 or 'cv' "
                                         f"\\(chosen from \\[1.0, 3.0, 10.0"):
        make_method(name, temperature="hot")
    assert make_method(name, temperature="cv").get_params()["temperature"] == "cv"


def test_labels_needed_to_learn():
    p1, y = noisy_members([1.0, 0.5], 40, 10)
    with pytest.raises(ValueError, match="needs a label for every validation image; 40 of 40 are unknown"):
        make_method("softmax_auc").fit(tables(p1, np.full(40, -1)))
    assert make_method("mean").fit(tables(p1, np.full(40, -1))).validation_table().probs.shape == (40, 2)


def test_combiners_keep_scikit_learn_estimator_habits():
    p1, y = noisy_members([1.0, 0.5], 40, 16)
    greedy = GreedySelection(steps=3, bags=2, bag_fraction=1.5)  # __init__ only stores: the check is in fit
    assert greedy.get_params() == {"steps": 3, "bags": 2, "bag_fraction": 1.5, "folds": 5, "seed": 0}
    with pytest.raises(ValueError, match="greedy is not fitted; call fit\\(val_tables\\) first"):
        greedy.validation_table()
    with pytest.raises(ValueError, match="greedy needs steps >= 1, bags >= 1 and 0 < bag_fraction <= 1"):
        greedy.fit(tables(p1, y))
    with pytest.raises(ValueError, match="0 < bag_fraction <= 1"):
        make_method("greedy", bag_fraction=1.5)  # the factory validates too, as config checks do
    fitted = make_method("greedy", steps=3, bags=2).fit(tables(p1, y))
    assert {"members_", "classes_", "weights_", "info_", "counts_"} <= set(vars(fitted))
    clone = type(fitted)(**fitted.get_params())
    assert "members_" not in vars(clone) and clone.get_params() == fitted.get_params()
    np.testing.assert_array_equal(clone.fit(tables(p1, y)).validation_table().probs, fitted.validation_table().probs)
    mean = make_method("softmax_auc", temperature=7)
    assert type(mean)(**mean.get_params()).get_params() == {"name": "softmax_auc", "temperature": 7}
