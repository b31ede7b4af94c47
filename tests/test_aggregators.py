import numpy as np
import pytest

from medzoo.ensemble.aggregators import AGGREGATORS, aggregate, get_aggregator, softmax_auc_weights, validation_aucs


def binary(*members):
    """``[M, N, 2]`` from each member's positive probabilities."""
    p = np.array(members, dtype=float)
    return np.stack([1 - p, p], axis=2)


A = [0.2, 0.4, 0.6, 0.8]
B = [0.6, 0.6, 0.2, 1.0]
C = [0.1, 0.7, 0.4, 0.3]


def test_weighted_mean_three_members_four_images_by_hand():
    # weights 1, 2, 1 -> 0.25, 0.5, 0.25; image 0: 0.25*0.2 + 0.5*0.6 + 0.25*0.1 = 0.375
    out = aggregate("weighted_mean", binary(A, B, C), weights=[1, 2, 1])
    np.testing.assert_allclose(out[:, 1], [0.375, 0.575, 0.35, 0.775], atol=1e-15)
    np.testing.assert_allclose(out[:, 0], [0.625, 0.425, 0.65, 0.225], atol=1e-15)


def test_weighted_mean_per_member_and_class():
    # class 0 weighted 1:3, class 1 weighted 3:1
    out = aggregate("weighted_mean", binary(A[:2], B[:2]), weights=[[1, 3], [3, 1]])
    np.testing.assert_allclose(out[:, 0], [0.25 * 0.8 + 0.75 * 0.4, 0.25 * 0.6 + 0.75 * 0.4])
    np.testing.assert_allclose(out[:, 1], [0.75 * 0.2 + 0.25 * 0.6, 0.75 * 0.4 + 0.25 * 0.6])


def test_weighted_mean_errors_say_what_was_received():
    probs = binary(A, B, C, A, B)
    with pytest.raises(ValueError, match="got 3 weights, 5 members"):
        aggregate("weighted_mean", probs, weights=[1, 2, 3])
    with pytest.raises(ValueError, match=r"got weights of shape \(5, 3\); expected \[5\] .* or \[5, 2\]"):
        aggregate("weighted_mean", probs, weights=np.ones((5, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        aggregate("weighted_mean", probs, weights=[1, -1, 1, 1, 1])
    with pytest.raises(ValueError, match="sum to 0"):
        aggregate("weighted_mean", probs, weights=[0, 0, 0, 0, 0])


def test_mean_and_median_by_hand():
    np.testing.assert_allclose(aggregate("mean", binary(A, B, C))[:, 1], [0.3, 1.7 / 3, 0.4, 0.7])
    np.testing.assert_allclose(aggregate("median", binary(A, B, C))[:, 1], [0.2, 0.6, 0.4, 0.8])
    # four members: mean of the two middle values
    np.testing.assert_allclose(aggregate("median", binary(A, B, C, [0.5] * 4))[:, 1], [0.35, 0.55, 0.45, 0.65])


def test_geometric_mean_renormalised_by_hand():
    out = aggregate("geometric_mean", binary([0.8, 0.9], [0.2, 0.6]))
    # image 0: sqrt(0.8*0.2) = 0.4 for both classes -> 0.5; image 1: sqrt(0.54) vs sqrt(0.04)
    g1, g0 = np.sqrt(0.9 * 0.6), np.sqrt(0.1 * 0.4)
    np.testing.assert_allclose(out[:, 1], [0.5, g1 / (g1 + g0)], atol=1e-15)
    np.testing.assert_allclose(out.sum(axis=1), 1)


def test_rank_mean_by_hand():
    # member 1 ranks 1,2,3,4 -> 0, 1/3, 2/3, 1; member 2 ranks 4, 2.5, 2.5, 1 -> 1, 1/2, 1/2, 0
    out = aggregate("rank_mean", binary([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.3, 0.1]))
    np.testing.assert_allclose(out[:, 1], [0.5, 5 / 12, 7 / 12, 0.5])
    np.testing.assert_allclose(out[:, 0], 1 - out[:, 1])


VOTES = binary([0.9, 0.6, 0.4, 0.5],
               [0.8, 0.7, 0.1, 0.2],
               [0.3, 0.9, 0.2, 0.2],
               [0.2, 0.1, 0.7, 0.2])


def test_vote_fraction_with_a_tie_and_the_threshold_boundary():
    out = aggregate("majority_vote", VOTES)
    # image 0: 2 of 4 vote positive (a tie is simply 0.5); image 1: 3 of 4; image 2: 1 of 4;
    # image 3: only 0.5 >= 0.5 votes positive
    np.testing.assert_allclose(out[:, 1], [0.5, 0.75, 0.25, 0.25])
    np.testing.assert_allclose(out[:, 0], 1 - out[:, 1])
    assert not np.isin(out, [0.0, 1.0]).all()  # a score, not a one-hot vector


def test_tutorial_vote_mean_of_winning_side_and_tie_rule():
    out = aggregate("majority_vote_mean", VOTES)
    # image 0: 2-2 tie -> mean of all members; image 1: positives 0.6, 0.7, 0.9 win;
    # image 2: negatives 0.4, 0.1, 0.2 win; image 3: negatives 0.2, 0.2, 0.2 win
    np.testing.assert_allclose(out[:, 1], [0.55, 2.2 / 3, 0.7 / 3, 0.2], atol=1e-15)
    np.testing.assert_allclose(out[:, 0], 1 - out[:, 1])


def test_vote_thresholds_per_member():
    # member 0 needs 0.95: on image 0 it now votes negative, so negatives 0.9, 0.3, 0.2 win
    out = aggregate("majority_vote_mean", VOTES, threshold=[0.95, 0.5, 0.5, 0.5])
    assert out[0, 1] == pytest.approx((0.9 + 0.3 + 0.2) / 3)
    frac = aggregate("majority_vote", VOTES, threshold=[0.95, 0.5, 0.5, 0.5])
    assert frac[0, 1] == 0.25
    with pytest.raises(ValueError, match="one per member \\(4\\)"):
        aggregate("majority_vote", VOTES, threshold=[0.5, 0.5])


def test_multiclass_votes_go_to_argmax_lowest_class_on_ties():
    probs = np.array([[[0.4, 0.4, 0.2]], [[0.1, 0.2, 0.7]], [[0.3, 0.5, 0.2]]])
    np.testing.assert_allclose(aggregate("majority_vote", probs), [[1 / 3, 1 / 3, 1 / 3]])
    with pytest.raises(ValueError, match="two-class tasks; got 3 classes"):
        aggregate("majority_vote_mean", probs)
    with pytest.raises(ValueError, match="threshold only for two classes"):
        aggregate("majority_vote", probs, threshold=0.5)


def test_softmax_auc_weights_by_hand():
    e = np.e
    np.testing.assert_allclose(softmax_auc_weights([0.9, 0.8], temperature=10), [e / (e + 1), 1 / (e + 1)])
    np.testing.assert_allclose(softmax_auc_weights([0.9, 0.8], temperature=0), [0.5, 0.5])
    # default T = 125: a 0.01 AUC gap is a factor e^1.25
    np.testing.assert_allclose(softmax_auc_weights([0.80, 0.79]), [1 / (1 + np.exp(-1.25)), 1 / (1 + np.exp(1.25))])
    per_class = softmax_auc_weights([[0.9, 0.8], [0.8, 0.9]], temperature=10)
    np.testing.assert_allclose(per_class, [[e / (e + 1), 1 / (e + 1)], [1 / (e + 1), e / (e + 1)]])


def test_softmax_auc_is_the_weighted_mean_with_those_weights():
    probs = binary(A, B, C)
    aucs = [0.7, 0.75, 0.72]
    np.testing.assert_allclose(aggregate("softmax_auc", probs, aucs=aucs, temperature=50),
                               aggregate("weighted_mean", probs, weights=softmax_auc_weights(aucs, 50)))
    with pytest.raises(ValueError, match=r"got aucs of shape \(2,\); expected \[3\] or \[3, 2\]"):
        aggregate("softmax_auc", probs, aucs=[0.7, 0.8])


def test_validation_aucs_per_member_or_per_class():
    y = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(validation_aucs(binary([0.1, 0.4, 0.35, 0.8], [0.9, 0.1, 0.8, 0.2]), y), [0.75, 0.5])
    rng = np.random.default_rng(0)
    assert validation_aucs(rng.dirichlet([1, 1, 1], size=(2, 9)), np.tile([0, 1, 2], 3)).shape == (2, 3)


PARAMS = {"weighted_mean": {"weights": [3.0]}, "softmax_auc": {"aucs": [0.7]}}


@pytest.mark.parametrize("name", sorted(AGGREGATORS.names()))
def test_single_member_comes_back_unchanged(name):
    # Aggregator.__call__ returns one member as it is; rows that do not sum to 1 show it is not a renormalised copy
    probs = np.array([[[0.3, 0.6], [0.9, 0.05], [0.5, 0.5], [0.0, 1.0]]])
    np.testing.assert_array_equal(aggregate(name, probs, **PARAMS.get(name, {})), probs[0])


@pytest.mark.parametrize("name, params", [("mean", {}), ("median", {}), ("geometric_mean", {}),
                                          ("weighted_mean", {"weights": [1.0, 3.0]}),
                                          ("softmax_auc", {"aucs": [0.7, 0.9]})])
def test_two_identical_members_give_that_member(name, params):
    # M = 2 takes the full formula (no single-member short cut); rows sum to 1 as geometric_mean renormalises
    member = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(aggregate(name, np.stack([member, member]), **params), member, rtol=0, atol=1e-12)


P3 = np.array([[[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]],
               [[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4], [0.1, 0.6, 0.3]],
               [[0.4, 0.4, 0.2], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1], [0.2, 0.2, 0.6]]])


def test_three_class_median_by_hand():
    # middle of three per image and class, e.g. image 0 class 0: {0.2, 0.5, 0.4} -> 0.4
    np.testing.assert_allclose(aggregate("median", P3), [[0.4, 0.3, 0.25], [0.5, 0.2, 0.4],
                                                         [0.2, 0.7, 0.1], [0.2, 0.4, 0.3]], atol=1e-15)


def test_three_class_vote_fraction_by_hand():
    # argmax per member (ties to the lower class): member 0 -> 2, 0, 1, 0 (0.4 = 0.4 on image 3);
    # member 1 -> 0, 2, 2, 1; member 2 -> 0 (0.4 = 0.4), 0, 1, 2
    np.testing.assert_allclose(aggregate("majority_vote", P3), [[2 / 3, 0, 1 / 3], [2 / 3, 0, 1 / 3],
                                                                [0, 2 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]])


def test_three_class_rank_mean_by_hand():
    # each class column ranked over the 4 images, (rank - 1) / 3, ties averaged:
    # class 0: m0 [.2 .6 .1 .4] -> [1/3 1 0 2/3]; m1 [.5 .2 .3 .1] -> [1 1/3 2/3 0];
    #          m2 [.4 .5 .2 .2] -> [2/3 1 1/6 1/6] (ranks 1.5, 1.5)  => mean [2/3 7/9 5/18 5/18]
    # class 1: m0 [.3 .2 .8 .4] -> [1/3 0 1 2/3]; m1 [.25 .2 .3 .6] -> [1/3 0 2/3 1];
    #          m2 [.4 .1 .7 .2] -> [2/3 0 1 1/3]  => mean [4/9 0 8/9 2/3]
    # class 2: m0 [.5 .2 .1 .2] -> [1 1/2 0 1/2]; m1 [.25 .6 .4 .3] -> [0 1 2/3 1/3];
    #          m2 [.2 .4 .1 .6] -> [1/3 2/3 0 1]  => mean [4/9 13/18 2/9 11/18]
    expected = np.array([[2 / 3, 7 / 9, 5 / 18, 5 / 18], [4 / 9, 0, 8 / 9, 2 / 3], [4 / 9, 13 / 18, 2 / 9, 11 / 18]]).T
    np.testing.assert_allclose(aggregate("rank_mean", P3), expected, atol=1e-15)


def test_three_class_geometric_mean_by_hand():
    # image 0: sqrt of products [.16 .04 .04] = [.4 .2 .2] -> / 0.8 = [1/2 1/4 1/4]
    # image 1: sqrt of [.25 .04 .04] = [.5 .2 .2] -> / 0.9 = [5/9 2/9 2/9]
    # image 2: sqrt of [.01 .09 0] = [.1 .3 ~1e-154] (0 floored at the smallest float) -> [1/4 3/4 ~0]
    a = [[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]
    b = [[0.2, 0.4, 0.4], [0.5, 0.1, 0.4], [0.1, 0.9, 0.0]]
    np.testing.assert_allclose(aggregate("geometric_mean", np.array([a, b])),
                               [[1 / 2, 1 / 4, 1 / 4], [5 / 9, 2 / 9, 2 / 9], [1 / 4, 3 / 4, 0]], rtol=0, atol=1e-12)


def test_zero_weight_subset_names_the_members_and_weights():
    with pytest.raises(ValueError, match=r"member weights sum to 0 over the subset of members \[1, 2\]: "
                                         r"their weights are \[0.0, 0.0\]"):
        get_aggregator("weighted_mean").over_subsets(binary(A, B, C), np.array([[True, True, False], [False, True, True]]),
                                                     weights=[1, 0, 0])


@pytest.mark.parametrize("name", sorted(AGGREGATORS.names()))
def test_every_aggregator_on_three_classes(name):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1, 1], size=(4, 5))
    params = {"weighted_mean": {"weights": np.ones((4, 3))}, "softmax_auc": {"aucs": np.full((4, 3), 0.7)}}.get(name, {})
    if name == "majority_vote_mean":
        pytest.skip("two-class rule; its error is tested above")
    out = aggregate(name, probs, **params)
    assert out.shape == (5, 3) and np.isfinite(out).all() and (out >= 0).all() and (out <= 1 + 1e-12).all()


@pytest.mark.parametrize("name", sorted(AGGREGATORS.names()))
@pytest.mark.parametrize("classes", [2, 3])
def test_over_subsets_matches_calling_on_each_subset(name, classes):
    if name == "majority_vote_mean" and classes == 3:
        pytest.skip("two-class rule")
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(classes), size=(4, 30))
    weights, aucs = rng.random(4) + 0.1, rng.random(4)
    masks = ((np.arange(1, 16)[:, None] >> np.arange(4)) & 1).astype(bool)
    agg = get_aggregator(name)
    given = {"weighted_mean": {"weights": weights}, "softmax_auc": {"aucs": aucs}}.get(name, {})
    out = agg.over_subsets(probs, masks, **given)
    for s, mask in enumerate(masks):
        sub = {k: np.asarray(v)[mask] for k, v in given.items()}
        np.testing.assert_allclose(out[s], agg(probs[mask], **sub), rtol=0, atol=1e-15)
    only_positive = agg.subset_evaluator(probs, columns=[1], **given)(masks)
    np.testing.assert_array_equal(only_positive[:, :, 0], out[:, :, 1])


def test_registry_rejects_duplicates_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="'mean' is already registered"):
        AGGREGATORS.register("mean")(lambda probs: None)
    with pytest.raises(ValueError, match="unknown aggregator 'meen'; did you mean 'mean'\\? known: "):
        aggregate("meen", binary(A))
    with pytest.raises(ValueError, match="'mean' got unknown parameter\\(s\\) \\['weights'\\]; allowed: none"):
        aggregate("mean", binary(A, B), weights=[1, 2])
    with pytest.raises(ValueError, match="expected \\[M members, N images, C classes\\]"):
        aggregate("mean", np.ones((3, 2)))
