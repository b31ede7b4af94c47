import argparse
import json
import warnings

import numpy as np
import pytest

from medzoo.ensemble.aggregators import TEMPERATURE_GRID, softmax_auc_weights
from medzoo.ensemble.auc import auc, auc_interval
from medzoo.ensemble.run import build_ensembles, check_ensemble_config, load_member_tables
from medzoo.ensemble.table import ProbabilityTable, TableError

MEMBERS = ("alpha", "beta", "gamma")


def write_run(root, n_val=120, n_test=80, members=MEMBERS, test_labels=True, seed=0):
    """A run directory with binary predictions of ``members`` on val and test."""
    rng = np.random.default_rng(seed)
    for split, n in (("val", n_val), ("test", n_test)):
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        for k, m in enumerate(members):
            p = 1 / (1 + np.exp(-((k + 1) * 0.6 * (2 * y - 1) + rng.normal(size=n))))
            labels = y if split == "val" or test_labels else np.full(n, -1)
            ProbabilityTable([f"{split}{i}" for i in range(n)], ["normal", "pneumonia"], np.stack([1 - p, p], 1),
                             labels, {"member": m, "split": split, "dataset": "toy"}
                             ).write(root / "predictions" / m / f"{split}.csv")
    return root


def test_every_default_method_writes_val_and_test_tables(tmp_path):
    run = write_run(tmp_path, test_labels=False)
    results = build_ensembles(run, config={"weights": {"alpha": 1, "beta": 1, "gamma": 2}}, log=None)
    assert list(results) == ["mean", "weighted_mean", "median", "geometric_mean", "rank_mean", "majority_vote",
                             "majority_vote_mean", "softmax_auc", "greedy", "stacking", "subset_search"]
    for method, res in results.items():
        val = ProbabilityTable.read(run / "ensembles" / method / "val.csv")
        test = ProbabilityTable.read(run / "ensembles" / method / "test.csv")
        assert res["dir"] == str(run / "ensembles" / method) and res["test"] is True
        assert res["members"] == list(MEMBERS) and val.meta["members"] == list(MEMBERS)
        assert val.meta["method"] == method and val.split == "val" and test.split == "test"
        assert val.meta["dataset"] == "toy" and val.classes == ["normal", "pneumonia"]
        assert res["val_auc"] == pytest.approx(auc(val.probs, val.labels)) == pytest.approx(val.meta["val_auc"])
        assert len(test.ids) == 80 and not test.has_labels
        assert res["left_out"] == [] == val.meta["left_out"] == test.meta["left_out"]
    side = json.loads((run / "ensembles" / "weighted_mean" / "test.json").read_text())
    assert side["weights"] == {"alpha": 0.25, "beta": 0.25, "gamma": 0.5}
    greedy = json.loads((run / "ensembles" / "greedy" / "val.json").read_text())
    assert set(greedy["selection_counts"]) == set(MEMBERS) and sum(greedy["weights"].values()) == pytest.approx(1)
    for method in ("softmax_auc", "greedy", "stacking", "subset_search"):  # by out-of-fold AUC, in-sample apart
        side = json.loads((run / "ensembles" / method / "val.json").read_text())
        assert side["val_auc"] == results[method]["val_auc"] == pytest.approx(side["val_auc_out_of_fold"], abs=1e-12)
        assert side["folds"] == 5 and 0.5 < side["val_auc_in_sample"] <= 1 and "in_sample" not in side
    subset = json.loads((run / "ensembles" / "subset_search" / "val.json").read_text())
    assert subset["selected"] and subset["top"][0]["val_auc"] == pytest.approx(subset["val_auc_in_sample"])
    assert "folds" not in json.loads((run / "ensembles" / "mean" / "val.json").read_text())


def test_test_tables_are_the_method_applied_to_test(tmp_path):
    run = write_run(tmp_path)
    build_ensembles(run, methods=["softmax_auc"], config={"temperature": 40}, log=None)
    val_tables, test_tables = load_member_tables(run)
    aucs = [auc(t.probs, t.labels) for t in val_tables]
    w = softmax_auc_weights(aucs, 40)
    out = ProbabilityTable.read(run / "ensembles" / "softmax_auc" / "test.csv")
    np.testing.assert_allclose(out.probs, sum(wi * t.probs for wi, t in zip(w, test_tables)), atol=1e-9)
    assert out.meta["weights"] == pytest.approx(dict(zip(MEMBERS, w)))


def add_noise_member(root, name="noise", seed=5):
    """A member whose probabilities ignore the labels (uniform noise), on the run's val and test images."""
    rng = np.random.default_rng(seed)
    for split in ("val", "test"):
        ref = ProbabilityTable.read(root / "predictions" / "alpha" / f"{split}.csv")
        p = rng.uniform(size=len(ref.ids))
        ProbabilityTable(ref.ids, ref.classes, np.stack([1 - p, p], 1), ref.labels,
                         {"member": name, "split": split, "dataset": "toy"}
                         ).write(root / "predictions" / name / f"{split}.csv")
    return ProbabilityTable.read(root / "predictions" / name / "val.csv")


def test_a_member_near_chance_is_left_out_logged_and_recorded(tmp_path):
    run = write_run(tmp_path)
    noise = add_noise_member(run)
    a, low, high = auc_interval(noise.probs, noise.labels)
    assert low < 0.5 < high
    logged = []
    res = build_ensembles(run, methods=["mean", "weighted_mean"], log=logged.append,
                          config={"weights": {"alpha": 1, "beta": 1, "gamma": 2, "noise": 5}})
    assert logged.count(f"leaving out member 'noise': validation AUC {a:.4f} (95% CI {low:.4f}-{high:.4f}) is "
                        f"within noise of chance; name it in [ensemble] members to keep it") == 1
    assert res["mean"]["members"] == list(MEMBERS) and res["mean"]["left_out"] == ["noise"]
    for split in ("val", "test"):
        side = json.loads((run / "ensembles" / "mean" / f"{split}.json").read_text())
        assert side["left_out"] == ["noise"] and side["members"] == list(MEMBERS)
    test_tables = load_member_tables(run, members=list(MEMBERS))[1]
    mean = ProbabilityTable.read(run / "ensembles" / "mean" / "test.csv")
    np.testing.assert_allclose(mean.probs, sum(t.probs for t in test_tables) / 3, atol=1e-9)
    # the per-member weights are restricted to the members kept: 1, 1, 2 -> 0.25, 0.25, 0.5
    weighted = json.loads((run / "ensembles" / "weighted_mean" / "val.json").read_text())
    assert weighted["weights"] == {"alpha": 0.25, "beta": 0.25, "gamma": 0.5}


def test_a_member_near_chance_is_kept_when_named(tmp_path):
    run = write_run(tmp_path)
    add_noise_member(run)
    logged = []
    res = build_ensembles(run, methods=["mean"], config={"members": [*MEMBERS, "noise"]}, log=logged.append)
    assert res["mean"]["members"] == [*MEMBERS, "noise"] and res["mean"]["left_out"] == []
    assert not [line for line in logged if "leaving out" in line]


def test_leaving_out_near_chance_members_can_leave_too_few(tmp_path):
    run = write_run(tmp_path, members=("alpha",))
    add_noise_member(run)
    logged = []
    assert build_ensembles(run, log=logged.append) == {}
    assert logged[0].startswith("leaving out member 'noise'")
    assert logged[1:] == ["only one member (alpha): ensembles need at least two; skipped"]
    assert not (run / "ensembles").exists()


def test_softmax_auc_with_a_cv_temperature(tmp_path):
    run = write_run(tmp_path)
    res = build_ensembles(run, methods=["softmax_auc"], config={"temperature": "cv"}, log=None)
    side = json.loads((run / "ensembles" / "softmax_auc" / "val.json").read_text())
    inner, chosen = side["temperature_inner_aucs"], side["temperature_chosen"]
    assert len(inner) == len(TEMPERATURE_GRID) and inner[TEMPERATURE_GRID.index(chosen)] == max(inner)
    aucs = [auc(t.probs, t.labels) for t in load_member_tables(run)[0]]
    assert list(side["weights"].values()) == pytest.approx(list(softmax_auc_weights(aucs, side["temperature_chosen"])))
    assert res["softmax_auc"]["val_auc"] == pytest.approx(side["val_auc_out_of_fold"])


def test_members_still_being_written_are_skipped_and_logged(tmp_path):
    run = write_run(tmp_path, members=("alpha", "beta", "gamma", "delta"))
    for m in ("alpha", "gamma"):
        (run / "members" / m).mkdir(parents=True)
        (run / "members" / m / "done.json").write_text("{}")
    (run / "members" / "beta").mkdir()
    (run / "predictions" / "delta" / "val.csv").unlink()
    logged = []
    res = build_ensembles(run, methods=["mean"], log=logged.append)
    assert res["mean"]["members"] == ["alpha", "gamma"]
    assert logged[:2] == [f"skipping member 'beta': not finished: no {run / 'members' / 'beta' / 'done.json'}",
                          f"skipping member 'delta': no {run / 'predictions' / 'delta' / 'val.csv'}"]
    with pytest.raises(ValueError, match="member 'beta' cannot be used: not finished: no .*done.json"):
        build_ensembles(run, methods=["mean"], config={"members": ["alpha", "beta"]}, log=None)
    (run / "members" / "gamma" / "done.json").unlink()
    (run / "members" / "alpha" / "done.json").unlink()
    with pytest.raises(FileNotFoundError, match="expected predictions/<member>/val.csv and members/<member>/done.json"):
        build_ensembles(run, methods=["mean"], log=None)


def test_mismatched_ids_are_named(tmp_path):
    run = write_run(tmp_path)
    t = ProbabilityTable.read(run / "predictions" / "beta" / "val.csv")
    t.ids[3] = "stranger"
    t.write(run / "predictions" / "beta" / "val.csv")
    with pytest.raises(TableError, match="member 'beta' does not cover the same images as 'alpha': "
                                         "missing 1 \\['val3'\\], extra 1 \\['stranger'\\]"):
        build_ensembles(run, methods=["mean"], log=None)


def test_mismatched_classes_are_named(tmp_path):
    run = write_run(tmp_path)
    t = ProbabilityTable.read(run / "predictions" / "gamma" / "test.csv")
    t.classes = ["normal", "virus"]
    t.write(run / "predictions" / "gamma" / "test.csv")
    with pytest.raises(TableError, match="member 'gamma' has classes \\['normal', 'virus'\\]"):
        build_ensembles(run, methods=["mean"], log=None)


def test_a_member_without_test_is_named(tmp_path):
    run = write_run(tmp_path)
    (run / "predictions" / "beta" / "test.csv").unlink()
    with pytest.raises(TableError, match="members \\['beta'\\] have no test.csv"):
        build_ensembles(run, methods=["mean"], log=None)


def test_without_test_tables_only_val_is_written(tmp_path):
    run = write_run(tmp_path)
    for m in MEMBERS:
        (run / "predictions" / m / "test.csv").unlink()
    res = build_ensembles(run, methods=["mean"], config={"members": ["alpha", "gamma"]}, log=None)
    assert res["mean"]["test"] is False and res["mean"]["members"] == ["alpha", "gamma"]
    assert (run / "ensembles" / "mean" / "val.csv").exists() and not (run / "ensembles" / "mean" / "test.csv").exists()


def test_config_errors_are_clear(tmp_path):
    run = write_run(tmp_path)
    with pytest.raises(ValueError, match="unknown \\[ensemble\\] key 'temperatur'; did you mean 'temperature'\\?"):
        build_ensembles(run, config={"temperatur": 3}, log=None)
    with pytest.raises(ValueError, match="weighted_mean needs member weights"):
        build_ensembles(run, methods=["weighted_mean"], log=None)
    with pytest.raises(ValueError, match="unknown ensemble method 'greddy'; did you mean 'greedy'\\?"):
        build_ensembles(run, methods=["mean", "greddy"], log=None)
    assert not (run / "ensembles").exists()  # names are checked before anything is written
    with pytest.raises(ValueError, match="unknown member 'delta'"):
        build_ensembles(run, config={"members": ["alpha", "delta"]}, log=None)
    with pytest.raises(ValueError, match="weights is given per member; missing members \\['gamma'\\]"):
        build_ensembles(run, methods=["weighted_mean"], config={"weights": {"alpha": 1, "beta": 2}}, log=None)
    with pytest.raises(FileNotFoundError, match="no member tables under"):
        build_ensembles(tmp_path / "nowhere", log=None)


@pytest.mark.parametrize("config, message", [
    ({"temprature": 100}, "unknown [ensemble] key 'temprature'; did you mean 'temperature'?"),
    ({"methods": ["mean", "greddy"]}, "[ensemble] methods: unknown ensemble method 'greddy'; did you mean 'greedy'?"),
    ({"methods": "mean"}, "[ensemble] methods = 'mean'; expected a list of method names"),
    ({"members": ["alpha", "alpha"]},
     "[ensemble] members = ['alpha', 'alpha']; expected a list of member ids, each once"),
    ({"temperature": 0}, "[ensemble] temperature = 0; expected a finite number > 0 or 'cv'"),
    ({"temperature": "hot"}, "[ensemble] temperature = 'hot'; expected a finite number > 0 or 'cv' "
                             "(chosen from [1.0, 3.0, 10.0, 30.0, 100.0, 125.0, 300.0, 1000.0]"),
    ({"subset_search": {"temperature": -1}},
     "[ensemble.subset_search] temperature = -1; expected a finite number > 0 or 'cv'"),
    ({"folds": 1}, "[ensemble] folds = 1; expected an integer >= 2"),
    ({"threshold": 1.5}, "[ensemble] threshold = 1.5; expected a finite number in (0, 1)"),
    ({"threshold": {"alpha": 0}}, "[ensemble] threshold.alpha = 0; expected a finite number in (0, 1)"),
    ({"members": ["alpha", "beta"], "threshold": {"alpha": 0.4}},
     "[ensemble] threshold is given per member; missing members ['beta'], unknown members []"),
    ({"weights": [1, 2]}, "[ensemble] weights = [1, 2]; expected a table {member = weight, ...}"),
    ({"weights": {"alpha": "heavy"}}, "[ensemble] weights.alpha = 'heavy'; expected a number or a list of numbers"),
    ({"weights": {"alpha": -1, "beta": 1}},
     "[ensemble] weights = {'alpha': -1, 'beta': 1}: weights must be finite and non-negative; got [-1.0, 1.0]"),
    ({"weights": {"alpha": 0, "beta": 0}}, "weights sum to 0"),
    ({"weights": {"alpha": [1, 2], "beta": 1}}, "give every member one number, or every member a list"),
    ({"seed": 1.5}, "[ensemble] seed = 1.5; expected an integer >= 0"),
    ({"seed": True}, "[ensemble] seed = True; expected an integer >= 0"),
    ({"greedy": {"stpes": 3}}, "unknown [ensemble.greedy] key 'stpes'; did you mean 'steps'? allowed: bag_fraction, "
                               "bags, folds, seed, steps"),
    ({"greedy": 3}, "[ensemble.greedy] must be a table of options, got 3"),
    ({"greedy": {"steps": 2.5}}, "[ensemble.greedy] steps = 2.5; expected an integer"),
    ({"greedy": {"bag_fraction": 1.5}},
     "[ensemble.greedy] greedy needs steps >= 1, bags >= 1 and 0 < bag_fraction <= 1; "
     "got steps=50, bags=20, bag_fraction=1.5"),
    ({"stacking": {"folds": 1}}, "[ensemble.stacking] folds = 1; expected an integer >= 2"),
    ({"stacking": {"C": 0}}, "[ensemble.stacking] C = 0; expected a finite number > 0"),
    ({"stacking": {"fold": 3}},
     "unknown [ensemble.stacking] key 'fold'; did you mean 'folds'? allowed: C, folds, seed"),
    ({"subset_search": {"aggregators": ["meen"]}},
     "[ensemble.subset_search] unknown aggregator 'meen'; did you mean 'mean'?"),
    ({"subset_search": {"aggregators": "mean"}}, "[ensemble.subset_search] aggregators = 'mean'; expected a list"),
    ({"subset_search": {"aggregators": ["weighted_mean"]}}, "subset_search cannot use weighted_mean"),
    ({"subset_search": {"top": -1}}, "[ensemble.subset_search] top = -1; expected an integer >= 0"),
    ({"methods": ["weighted_mean"]}, "[ensemble] weighted_mean needs member weights"),
    ("mean", "[ensemble] must be a table of options, got str 'mean'"),
])
def test_check_config_names_the_key_the_value_and_what_is_allowed(config, message):
    with pytest.raises(ValueError) as e:
        check_ensemble_config(config)
    assert message in str(e.value)


@pytest.mark.parametrize("config, message", [
    ({"threshold": 0.3}, "[ensemble] threshold is for two-class tasks; the tables have 3 classes"),
    ({"methods": ["majority_vote_mean"]}, "[ensemble] method majority_vote_mean is for two-class tasks"),
    ({"subset_search": {"aggregators": ["mean", "majority_vote_mean"]}},
     "[ensemble] subset_search aggregator majority_vote_mean is for two-class tasks"),
    ({"weights": {"a": [1, 2], "b": [1, 1]}},
     "[ensemble] weights: got 2 weights per member, the tables have 3 classes"),
])
def test_check_config_with_the_class_count(config, message):
    check_ensemble_config(config)
    with pytest.raises(ValueError) as e:
        check_ensemble_config(config, n_classes=3)
    assert message in str(e.value)


def test_check_config_accepts_a_full_config_and_returns_a_copy():
    config = {"methods": ["mean", "greedy", "subset_search"], "members": ["a", "b"], "temperature": "cv", "folds": 4,
              "threshold": {"a": 0.4, "b": 0.6}, "weights": {"a": [1, 0.5], "b": [0, 2]}, "seed": 3,
              "greedy": {"steps": 5, "bags": 1, "bag_fraction": 1}, "stacking": {"folds": 3, "C": 0.5},
              "subset_search": {"aggregators": ["mean", "median"], "top": 3}}
    checked = check_ensemble_config(config, n_classes=2)
    assert checked == config and checked is not config
    assert check_ensemble_config(None) == {}


def test_a_config_value_error_stops_the_run_before_anything_is_written(tmp_path):
    run = write_run(tmp_path)
    with pytest.raises(ValueError, match=r"\[ensemble\.greedy\] steps = 0\.5; expected an integer"):
        build_ensembles(run, methods=["mean", "greedy"], config={"greedy": {"steps": 0.5}}, log=None)
    with pytest.raises(ValueError, match="weights is given per member; missing members \\['gamma'\\]"):
        build_ensembles(run, methods=["mean"], config={"weights": {"alpha": 1, "beta": 2}}, log=None)
    assert not (run / "ensembles").exists()


def test_one_member_builds_no_ensemble(tmp_path):
    run = write_run(tmp_path, members=("resnet18",))
    logged = []
    assert build_ensembles(run, log=logged.append) == {}
    assert logged == ["only one member (resnet18): ensembles need at least two; skipped"]
    assert not (run / "ensembles").exists()
    with pytest.raises(ValueError, match="unknown ensemble method 'meen'"):
        build_ensembles(run, methods=["meen"], log=None)


def test_score_tables_are_marked_so_reading_them_does_not_warn(tmp_path):
    probs = {"m1": [0.6, 0.3, 0.1], "m2": [0.2, 0.2, 0.6], "m3": [0.1, 0.5, 0.4]}
    for m, row in probs.items():
        ProbabilityTable(["v0", "v1", "v2"], ["a", "b", "c"], [row, row, row], [0, 1, 2], {"member": m}
                         ).write(tmp_path / "predictions" / m / "val.csv")
    # each member's AUC is 0.5 (one row for every image), so they are kept only when named
    build_ensembles(tmp_path, methods=["mean", "median"], config={"members": list(probs)}, log=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        median = ProbabilityTable.read(tmp_path / "ensembles" / "median" / "val.csv")
        mean = ProbabilityTable.read(tmp_path / "ensembles" / "mean" / "val.csv")
    assert median.probs[0] == pytest.approx([0.2, 0.3, 0.4]) and median.meta["rows_sum_to_one"] is False
    assert mean.probs[0] == pytest.approx([0.3, 1 / 3, 11 / 30]) and "rows_sum_to_one" not in mean.meta


def test_ensemble_command(tmp_path, capsys):
    from medzoo.cli.ensemble import register

    run = write_run(tmp_path)
    (run / "config.json").write_text(json.dumps({"ensemble": {"temperature": 5, "greedy": {"steps": 3, "bags": 2}}}))
    parser = argparse.ArgumentParser(prog="medzoo")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ensemble", str(run), "--methods", "softmax_auc", "greedy", "--temperature", "10"])
    assert args.func(args) == 0
    side = json.loads((run / "ensembles" / "softmax_auc" / "val.json").read_text())
    aucs = [auc(t.probs, t.labels) for t in load_member_tables(run)[0]]
    assert list(side["weights"].values()) == pytest.approx(list(softmax_auc_weights(aucs, 10)))
    assert json.loads((run / "ensembles" / "greedy" / "val.json").read_text())["steps"] == 3
    assert "softmax_auc" in capsys.readouterr().out


def test_the_ensemble_layer_imports_neither_torch_nor_zoo():
    import subprocess
    import sys

    code = ("import sys, medzoo, medzoo.ensemble.run, medzoo.cli.ensemble, medzoo.ensemble.combiners; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('medzoo.zoo')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_per_member_weights_of_a_repeated_run_apply_to_every_repeat(tmp_path):
    run = write_run(tmp_path, members=("alpha@s0", "alpha@s1", "beta@s0", "beta@s1", "gamma"))  # gamma: one seed
    config = {"methods": ["weighted_mean"], "weights": {"alpha": 1.0, "beta": 3.0, "gamma": 4.0}}
    assert sorted(build_ensembles(run, config=config, log=None)) == ["weighted_mean@s0", "weighted_mean@s1"]
    for seed in (0, 1):
        table = ProbabilityTable.read(run / "ensembles" / f"weighted_mean@s{seed}" / "test.csv")
        assert table.meta["weights"] == {f"alpha@s{seed}": 0.125, f"beta@s{seed}": 0.375, "gamma": 0.5}
        member = {m: ProbabilityTable.read(run / "predictions" / m / "test.csv").probs
                  for m in (f"alpha@s{seed}", f"beta@s{seed}", "gamma")}
        np.testing.assert_allclose(table.probs, 0.125 * member[f"alpha@s{seed}"] + 0.375 * member[f"beta@s{seed}"]
                                   + 0.5 * member["gamma"], rtol=0, atol=1e-9)
