"""The one Registry, and the ensemble methods derived from it: a new aggregator needs no edit elsewhere."""
import argparse
from pathlib import Path

import numpy as np
import pytest

from medzoo.benchmarks.leaderboard import write_leaderboard
from medzoo.core.registry import Registry
from medzoo.cli.ensemble import register as register_ensemble_command
from medzoo.ensemble.aggregators import AGGREGATORS, Parts, aggregate
from medzoo.ensemble.combiners import COMBINERS, Combiner, combiner, make_method, method_names
from medzoo.ensemble.run import build_ensembles, check_ensemble_config, config_keys, default_methods, methods_table
from medzoo.ensemble.table import ProbabilityTable

MEMBERS = ("alpha", "beta", "gamma")


def test_a_duplicate_name_is_an_error():
    reg = Registry("widget")
    reg.register("knob")(lambda: None)
    with pytest.raises(ValueError, match="widget 'knob' is already registered"):
        reg.register("knob")(lambda: None)


def test_an_unknown_name_suggests_the_closest():
    reg = Registry("widget")
    for name in ("knob", "lever", "dial"):
        reg.register(name)(lambda: None)
    with pytest.raises(ValueError, match="unknown widget 'nob'; did you mean 'knob'\\? known: knob, lever, dial"):
        reg["nob"]


def test_names_filter_by_metadata_in_registration_order():
    reg = Registry("widget")

    @reg.register("knob", default=True, round=True)
    def knob():
        """Turns.

        More text that is not the description.
        """

    reg.register("lever", default=True)(lambda: None)
    reg.register("dial", round=True)(lambda: None)
    assert reg.names() == ["knob", "lever", "dial"]
    assert reg.names(default=True) == ["knob", "lever"]
    assert reg.names(default=True, round=True) == ["knob"]
    assert reg.names(round=None) == ["lever"]  # an unset key reads as None
    assert reg["knob"].description == "Turns." and reg["knob"].target is knob and reg["dial"].get("default") is None
    reg.unregister("lever")
    assert "lever" not in reg and len(reg) == 2
    with pytest.raises(ValueError, match="unknown widget 'lever'"):
        reg.unregister("lever")


def test_method_names_are_unique_across_aggregators_and_combiners():
    assert len(set(method_names())) == len(method_names())
    with pytest.raises(ValueError, match="method name 'mean' is already taken by an aggregator"):
        combiner("mean")(type("Mean", (Combiner,), {}))


def _square_normalise(pooled: np.ndarray, columns=None) -> np.ndarray:
    """``[..., N, C]`` pooled square roots -> squared and renormalised rows (``columns`` of them)."""
    out = pooled ** 2 / (pooled ** 2).sum(axis=-1, keepdims=True)
    return out if columns is None else out[..., columns]


@pytest.fixture
def root_mean():
    """A throwaway aggregator, registered by one decorator and nothing else, removed afterwards."""
    @AGGREGATORS.register("root_mean", default=True)
    def root_mean(probs: np.ndarray) -> Parts:
        """Mean of the members' square-root probabilities, squared and renormalised."""
        return Parts(np.sqrt(probs), None, _square_normalise)

    try:
        yield "root_mean"
    finally:
        AGGREGATORS.unregister("root_mean")


def write_run(root, n_val=40, n_test=20, seed=0):
    """A run directory with binary val and test predictions of three members."""
    rng = np.random.default_rng(seed)
    for split, n in (("val", n_val), ("test", n_test)):
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        for k, m in enumerate(MEMBERS):
            p = 1 / (1 + np.exp(-((k + 1) * 0.6 * (2 * y - 1) + rng.normal(size=n))))
            ProbabilityTable([f"{split}{i}" for i in range(n)], ["normal", "pneumonia"], np.stack([1 - p, p], 1),
                             y, {"member": m, "split": split}).write(root / "predictions" / m / f"{split}.csv")
    return root


def test_an_aggregator_added_by_one_decorated_function_is_everywhere(root_mean, tmp_path):
    probs = np.array([[[0.36, 0.64]], [[0.64, 0.36]]])
    np.testing.assert_allclose(aggregate(root_mean, probs), [[0.5, 0.5]])
    assert root_mean in default_methods({}, n_classes=2) and root_mean in default_methods({}, n_classes=3)
    assert f"| `{root_mean}` | aggregator | yes |" in methods_table()

    parser = argparse.ArgumentParser(prog="medzoo")
    sub = parser.add_subparsers(dest="command")
    register_ensemble_command(sub)
    assert f"softmax_auc, {root_mean}; learned:" in " ".join(sub.choices["ensemble"].format_help().split())

    run = write_run(tmp_path)
    results = build_ensembles(run, log=None)
    assert root_mean in results and results[root_mean]["val_auc"] > 0.5
    out = ProbabilityTable.read(run / "ensembles" / root_mean / "test.csv")
    assert out.meta["method"] == root_mean and out.meta["weights"] is None
    search = ProbabilityTable.read(run / "ensembles" / "subset_search" / "val.csv").meta
    assert root_mean in search["best_val_auc_per_aggregator"]  # the search's default aggregators take it too

    board = write_leaderboard(run, bootstrap=0, plots=False)
    assert root_mean in board["entry"].tolist()
    assert f"| {root_mean} |" in (run / "leaderboard.md").read_text()


class FirstMember(Combiner):
    """A throwaway combiner: the first member's probabilities."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _validate_params(self) -> None:
        if self.seed < 0:
            raise ValueError(f"first_member needs seed >= 0; got {self.seed}")

    def _fit(self, probs, labels):
        self.info_["chosen"] = self.members_[0]

    def _predict(self, probs):
        return probs[0]


@pytest.fixture
def first_member():
    combiner("first_member", default=True)(FirstMember)
    try:
        yield "first_member"
    finally:
        COMBINERS.unregister("first_member")


def test_a_combiner_added_by_one_decorated_class_gets_a_config_table(first_member):
    assert default_methods({}, n_classes=2)[-1] == first_member and first_member in config_keys()
    assert check_ensemble_config({"first_member": {"seed": 2}}) == {"first_member": {"seed": 2}}
    with pytest.raises(ValueError, match="unknown \\[ensemble.first_member\\] key 'sed'; did you mean 'seed'\\?"):
        check_ensemble_config({"first_member": {"sed": 2}})
    with pytest.raises(ValueError, match="\\[ensemble.first_member\\] seed = -1; expected an integer >= 0"):
        check_ensemble_config({"first_member": {"seed": -1}})
    method = make_method(first_member, seed=1)
    assert method.get_params() == {"seed": 1} and type(method)(**method.get_params()).seed == 1


def test_the_readme_method_table_is_the_registry_s():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert methods_table() in readme
