"""Applying a fitted run to new images: every member and ensemble entry reproduces the run's own test tables,
the saved state of every ensemble method predicts as the fitted method, and ``medzoo predict RUN_DIR``."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medzoo.cli import main
from medzoo.config import load_config
from medzoo.core.rundir import RunDir
from medzoo.ensemble.calibration import calibrate_run
from medzoo.ensemble.combiners import STATE_FORMAT, make_method, method_entry, method_names, restore_method
from medzoo.ensemble.run import build_ensembles, default_methods
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo.apply import predict_run, read_images
from medzoo.zoo.predict import predict
from medzoo.zoo.schedule import train_zoo
from tests.test_train import tiny_config

MEMBERS = ('[[members]]\nmodel = "squeezenet1_1"\nid = "a"\nsize = 32\n'
           '[[members]]\nmodel = "squeezenet1_1"\nid = "b"\nsize = 40\nepochs = 2\nsnapshots = 2\ntta = true\n'
           'augment = {hflip = true, vflip = true}\n')
ENTRIES = ["a", "b.snap1", "b.snap2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of member ``a`` (32 px, no TTA) and snapshot member ``b`` (40 px, flip TTA with vflip, two snapshots),
    one epoch per cycle on the tiny dataset (12 unlabelled test images), with every default ensemble of the three."""
    tmp = tmp_path_factory.mktemp("apply")
    cfg = load_config(tiny_config(tmp, members=MEMBERS, epochs=1))
    train_zoo(cfg, results_dir=tmp / "res", progress=False, log=lambda m: None)
    rd = RunDir(tmp / "res" / "tiny")
    build_ensembles(rd.path, config={"members": ENTRIES}, log=None)
    return rd, tmp / "tiny.npz"


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_member_entry_reproduces_its_test_table(run, entry):
    rd, npz = run
    table = predict_run(rd.path, npz, entry=entry, progress=False)
    own = ProbabilityTable.read(rd.table("member", entry, "test"))
    assert table.ids == own.ids == [f"test_{i:05d}" for i in range(12)]
    np.testing.assert_allclose(table.probs, own.probs, rtol=0, atol=1e-6)
    assert table.meta["checkpoints"] == [own.meta["checkpoint"]] and table.meta["kind"] == "member"
    assert (table.meta["size"], table.meta["tta"]) == ((32, False) if entry == "a" else (40, True))


@pytest.mark.parametrize("method", default_methods({}, 2))
def test_an_ensemble_entry_reproduces_its_test_table_from_its_saved_state(run, method):
    rd, npz = run
    table = predict_run(rd.path, npz, entry=method, progress=False)
    own = ProbabilityTable.read(rd.table("ensemble", method, "test"))
    assert table.ids == own.ids and table.meta["members"] == ENTRIES
    np.testing.assert_allclose(table.probs, own.probs, rtol=0, atol=1e-6)
    state = json.loads(rd.ensemble_state(method).read_text())
    assert (state["format"], state["method"], state["members"]) == (STATE_FORMAT, method, ENTRIES)
    assert table.meta["weights"] == own.meta["weights"]


def test_the_saved_stacking_state_holds_the_logistic_regression(run):
    rd, _ = run
    state = json.loads(rd.ensemble_state("stacking").read_text())
    own = ProbabilityTable.read(rd.table("ensemble", "stacking", "test"))
    assert state["fitted"]["coef"] == own.meta["coef"] and state["fitted"]["intercept"] == own.meta["intercept"]
    assert np.array(state["fitted"]["coef"]).shape == (1, 3) and state["fitted"]["classes"] == [0, 1]


def test_a_bad_entry_name_raises_listing_the_entries(run):
    rd, npz = run
    with pytest.raises(ValueError) as e:
        predict_run(rd.path, npz, entry="stackin")
    assert str(e.value) == (f"{rd.path}: unknown entry 'stackin'; did you mean 'stacking'? known: a, b.snap1, "
                            f"b.snap2, geometric_mean, greedy, majority_vote, majority_vote_mean, mean, median, "
                            f"rank_mean, softmax_auc, stacking, subset_search")


def test_a_run_folder_without_tables_says_what_it_lacks(run, tmp_path):
    rd, npz = run
    board_only = tmp_path / "reference"  # what a committed reference holds: its board, no tables or checkpoints
    board_only.mkdir()
    (board_only / "config.json").write_text((rd.path / "config.json").read_text())
    with pytest.raises(ValueError, match=r"reference: no probability tables \(predictions/, ensembles/\) to take "
                                         r"entry 'greedy' from; .* train it with `medzoo bench`"):
        predict_run(board_only, npz, entry="greedy")


def test_image_files_a_csv_of_paths_and_the_command_line_agree(run, tmp_path, capsys):
    rd, _ = run
    rng = np.random.default_rng(3)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / "imgs" / f"case{i}.png")
    (tmp_path / "list.csv").write_text("path\n" + "".join(f"imgs/case{i}.png\n" for i in (2, 0)))
    folder = predict_run(rd.path, tmp_path / "imgs", entry="greedy", progress=False)
    listed = predict_run(rd.path, tmp_path / "list.csv", entry="greedy", progress=False)
    assert folder.ids == ["case0", "case1", "case2"] and listed.ids == ["case2", "case0"]
    np.testing.assert_allclose(listed.probs, folder.select(["case2", "case0"]).probs, rtol=0, atol=1e-12)

    out = tmp_path / "new.csv"
    args = ["predict", str(rd.path), str(tmp_path / "imgs"), "--entry", "greedy", "--out", str(out), "--format",
            "generic"]
    assert main(args) == 0
    written = ProbabilityTable.read(out)
    np.testing.assert_allclose(written.probs, folder.probs, rtol=0, atol=1e-9)
    assert written.meta["source"] == "medzoo predict" and written.meta["entry"] == "greedy"
    lines = (tmp_path / "new.generic.csv").read_text().splitlines()
    assert lines[0] == "image_id,normal,pneumonia" and [row.split(",")[0] for row in lines[1:]] == folder.ids

    assert main(["predict", str(rd.path), str(tmp_path / "imgs" / "case1.png"), "--entry", "a"]) == 0
    one = predict_run(rd.path, tmp_path / "imgs" / "case1.png", entry="a", progress=False)
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "case1:", f"  normal     {one.probs[0, 0]:.6f}", f"  pneumonia  {one.probs[0, 1]:.6f}"]

    best = rd.member("a").best  # a checkpoint, as before
    assert main(["predict", str(best), str(tmp_path / "imgs")]) == 0
    shown = [line.split(",") for line in capsys.readouterr().out.splitlines()[-3:]]
    np.testing.assert_allclose([[float(v) for v in row[1:]] for row in shown],
                               predict(best, [tmp_path / "imgs"]).probs, rtol=0, atol=1e-6)


def test_command_line_mistakes_are_one_line_errors(run, tmp_path, capsys):
    rd, npz = run
    assert main(["predict", str(rd.path), str(npz)]) == 1
    assert capsys.readouterr().err == (f"medzoo predict: error: {rd.path} is a run folder: name the entry to apply "
                                       f"with --entry ENTRY; entries: a, b.snap1, b.snap2, geometric_mean, greedy, "
                                       f"majority_vote, majority_vote_mean, mean, median, rank_mean, softmax_auc, "
                                       f"stacking, subset_search\n")
    assert main(["predict", str(rd.member("a").best), str(npz), "--entry", "a"]) == 1
    assert "--entry names an entry of a run folder" in capsys.readouterr().err
    assert main(["predict", str(rd.path), str(npz), "--entry", "a", "--format", "generic"]) == 1
    assert "give --out TABLE.csv" in capsys.readouterr().err


def test_a_temperature_scaled_entry_is_its_source_with_the_temperature_applied(run, tmp_path):
    rd, npz = run
    copy = RunDir(shutil.copytree(rd.path, tmp_path / "tiny"))  # calibrate adds entries the other tests list
    calibrate_run(copy.path, entries=["mean", "a"], log=None)
    for name, kind, source in (("mean+ts", "ensemble", predict_run(copy.path, npz, entry="mean", progress=False)),
                               ("a+ts", "member", predict_run(copy.path, npz, entry="a", progress=False))):
        table = predict_run(copy.path, npz, entry=name, progress=False)
        own = ProbabilityTable.read(copy.table("ensemble", name, "test"))
        assert table.ids == own.ids and table.meta["kind"] == "ensemble"
        np.testing.assert_allclose(table.probs, own.probs, rtol=0, atol=1e-6)
        assert not np.allclose(table.probs, source.probs, rtol=0, atol=1e-3)  # a temperature away from 1 moved it
        assert table.meta["temperature"] == own.meta["temperature"] != 1.0
        assert table.meta["calibrated_from"] == {"kind": kind, "name": name.removesuffix("+ts")}
    build_ensembles(copy.path, config={"members": ENTRIES[:2], "methods": ["mean"]}, log=None)  # mean, rebuilt
    with pytest.raises(ValueError, match=r"entry 'mean\+ts': ensemble 'mean' has changed since it was "
                                         r"temperature-scaled .* rerun `medzoo calibrate .* --entries mean`"):
        predict_run(copy.path, npz, entry="mean+ts", progress=False)


def test_an_npz_gives_its_test_split_unless_one_is_named(tmp_path):
    path = tmp_path / "test_only.npz"
    np.savez(path, test_images=np.zeros((2, 28, 28), dtype=np.uint8), test_labels=np.array([1, 0]))
    records = read_images([path])
    assert records.ids == ["test_00000", "test_00001"] and records.labels.tolist() == [1, 0]
    assert records.array == (path, "test_images")
    with pytest.raises(ValueError, match=rf"{path}: unknown split 'train'; known: test \(give one as {path}:<split>\)"):
        read_images([f"{path}:train"])
    with pytest.raises(ValueError, match="a CSV or an .npz of images is given alone"):
        read_images([path, tmp_path])


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """A 2-fold cross-validated member (one epoch per fold) on the tiny dataset."""
    tmp = tmp_path_factory.mktemp("apply_cv")
    cfg = load_config(tiny_config(tmp, members='[[members]]\nmodel = "squeezenet1_1"\nsize = 32\n[cv]\nfolds = 2\n',
                                  epochs=1))
    train_zoo(cfg, results_dir=tmp / "res", progress=False, log=lambda m: None)
    return RunDir(tmp / "res" / "tiny"), tmp / "tiny.npz"


def test_a_cross_validated_member_is_the_mean_of_its_fold_models(cv_run):
    rd, npz = cv_run
    table = predict_run(rd.path, npz, entry="squeezenet1_1", progress=False)
    bagged = ProbabilityTable.read(rd.table("member", "squeezenet1_1", "test"))
    np.testing.assert_allclose(table.probs, bagged.probs, rtol=0, atol=1e-6)
    assert table.meta["units"] == ["squeezenet1_1@f1", "squeezenet1_1@f2"] and len(set(table.meta["checkpoints"])) == 2
    folds = [ProbabilityTable.read(rd.table("member", "squeezenet1_1", f"test.fold{k}")).probs for k in (1, 2)]
    assert np.abs(table.probs - folds[0]).max() > 1e-4  # two models averaged, not one


def synthetic_tables(c: int, split: str, seed: int) -> list[ProbabilityTable]:
    """Three members' tables of 40 images and ``c`` classes, informative, with labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(40) % c
    tables = []
    for m in range(3):
        logits = rng.normal(size=(40, c)) + 1.5 * np.eye(c)[y] * (m + 1) / 3
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        tables.append(ProbabilityTable([f"i{k}" for k in range(40)], [f"c{j}" for j in range(c)], p, y,
                                       {"member": f"m{m}", "split": split}))
    return tables


@pytest.mark.parametrize("c", [2, 3])
def test_every_method_restored_from_its_json_state_predicts_as_fitted(c):
    val, test = synthetic_tables(c, "val", 0), synthetic_tables(c, "test", 1)
    options = {"weighted_mean": {"weights": {"m0": 1.0, "m1": 2.0, "m2": 0.5}}, "greedy": {"bags": 3, "steps": 5},
               "softmax_auc": {"temperature": "cv"}}
    names = [n for n in method_names() if c == 2 or not method_entry(n).get("binary_only")]
    for name in names:
        fitted = make_method(name, **options.get(name, {})).fit(val)
        restored = restore_method(json.loads(json.dumps(fitted.state(), allow_nan=False)))
        a, b = fitted.predict(test), restored.predict(test)
        np.testing.assert_array_equal(b.probs, a.probs, err_msg=name)
        assert b.meta == a.meta, name
        with pytest.raises(ValueError, match="restored from its saved state and only predicts"):
            restored.validation_table()


def test_a_state_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="s.json is not a fitted ensemble method's state: format None, expected "
                                         "'medzoo-ensemble-state'"):
        restore_method({"method": "mean"}, source="s.json")
    state = make_method("mean").fit(synthetic_tables(2, "val", 0)).state()
    with pytest.raises(ValueError, match=r"s.json lacks \['fitted'\]; this medzoo reads version 1"):
        restore_method({k: v for k, v in state.items() if k != "fitted"}, source="s.json")
