"""Cross-validated, repeated and snapshot members: units, folds, out-of-fold and bagged tables, the repeated board."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medzoo.benchmarks.leaderboard import collect, to_markdown, write_leaderboard
from medzoo.config import load_config
from medzoo.core.rundir import RunDir
from medzoo.ensemble.run import build_ensembles
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo.config import TrainConfig, parse_config
from medzoo.zoo.crossval import read_folds
from medzoo.zoo.loop import make_scheduler
from medzoo.zoo.member import train_member
from medzoo.zoo.schedule import status, train_zoo

from tests.test_train import tiny_config

SQUEEZE = '[[members]]\nmodel = "squeezenet1_1"\nsize = 32\n'


def raw(members=None, **top) -> dict:
    return {"run": "r", "dataset": "tiny", **top,
            "members": members or [{"model": "resnet18", "size": 32}, {"model": "squeezenet1_1", "size": 32}]}


def test_units_name_every_seed_fold_and_snapshot():
    cfg = parse_config(raw([{"model": "resnet18", "size": 32, "seeds": [0, 1]},
                            {"model": "squeezenet1_1", "size": 32, "snapshots": 2, "epochs": 4}], cv={"folds": 2}))
    assert [u.name for u in cfg.units()] == ["resnet18@s0@f1", "resnet18@s0@f2", "squeezenet1_1@f1",
                                             "squeezenet1_1@f2", "resnet18@s1@f1", "resnet18@s1@f2"]
    u = cfg.units()[-1]
    assert (u.seed, u.tag, u.fold, u.entries) == (1, "s1", 2, ("resnet18@s1",))
    assert cfg.units()[2].entries == ("squeezenet1_1.snap1", "squeezenet1_1.snap2")
    assert cfg.repeats == (0, 1)
    plain = parse_config(raw(seed=7))
    assert [(u.name, u.seed, u.fold) for u in plain.units()] == [("resnet18", 7, None), ("squeezenet1_1", 7, None)]
    assert parse_config(raw(seeds=[3, 4])).units()[1].name == "squeezenet1_1@s3"


@pytest.mark.parametrize("change, message", [
    ({"cv": {"folds": 1}}, "folds must be >= 2"),
    ({"cv": {"seed": 1}}, "needs folds = K"),
    ({"seeds": [1, 1]}, "distinct integers"),
    ({"members": [{"model": "resnet18", "seeds": [0, 1]}, {"model": "vgg11", "seeds": [2, 3]}]}, "same list"),
    ({"members": [{"model": "resnet18", "id": "a@b"}]}, "without '@'"),
    ({"members": [{"model": "resnet18", "snapshots": 3, "epochs": 10}]}, "epochs divisible"),
    ({"members": [{"model": "resnet18", "snapshots": 2, "epochs": 4, "schedule": "none"}]}, "cosine"),
    ({"members": [{"model": "resnet18", "snapshots": 2, "epochs": 4, "average": "ema"}]}, "choose one"),
    ({"members": [{"model": "resnet18", "average": "mean"}]}, "allowed"),
    ({"members": [{"model": "resnet18", "ema_decay": 1.0}]}, "ema_decay"),
])
def test_bad_repeats_folds_and_snapshots_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        parse_config({**raw(), **change})


def test_snapshot_schedule_restarts_each_cycle():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, TrainConfig(epochs=4, snapshots=2, warmup_epochs=0), 2)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    c = 0.5 * (1 + np.cos(np.pi / 4))  # cycle of 4 steps: 1, cos(pi/4), 0.5, cos(3pi/4) halves
    np.testing.assert_allclose(lrs, [1, c, 0.5, 1 - c] * 2, atol=1e-12)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """A 3-fold run of two squeezenets (one epoch, the second shared by both repeats) with two seeds on the tiny
    dataset (24 train, 12 val, 12 test)."""
    tmp = tmp_path_factory.mktemp("cv")
    second = '[[members]]\nmodel = "squeezenet1_1"\nid = "sq"\nsize = 32\nseeds = [5]\n'
    path = tiny_config(tmp, members=SQUEEZE + "seeds = [0, 1]\n" + second + "[cv]\nfolds = 3\n", epochs=1)
    (tmp / "tiny.npz").unlink()
    from tests.test_train import write_tiny_npz
    write_tiny_npz(tmp / "tiny.npz", test_labels=True)
    cfg = load_config(path)
    results = train_zoo(cfg, results_dir=tmp / "res", progress=False, log=lambda m: None)
    return cfg, RunDir(tmp / "res" / "tiny"), results


def test_out_of_fold_tables_cover_train_and_val_exactly_once(cv_run):
    cfg, run, results = cv_run
    assert [r["status"] for r in results] == ["trained"] * 9
    folds = read_folds(run.folds_csv("tiny"))
    pooled = [f"train_{i:05d}" for i in range(24)] + [f"val_{i:05d}" for i in range(12)]
    assert sorted(folds) == sorted(pooled)
    labels = np.array([int(i.split("_")[1]) % 2 for i in folds])  # write_tiny_npz: label = index % 2
    counts = [np.bincount(labels[np.array(list(folds.values())) == k], minlength=2).tolist() for k in (1, 2, 3)]
    assert counts == [[6, 6]] * 3  # stratified: 18 of each class in 3 folds
    for entry in ("squeezenet1_1@s0", "squeezenet1_1@s1"):
        oof = ProbabilityTable.read(run.table("member", entry, "val"))
        assert sorted(oof.ids) == sorted(pooled) and len(oof.ids) == 36
        assert oof.meta["out_of_fold"] and oof.meta["units"] == [f"{entry}@f{k}" for k in (1, 2, 3)]
        for k in (1, 2, 3):  # each image predicted by the fold model that held it out
            own = ProbabilityTable.read(run.member(f"{entry}@f{k}").table(entry, "val"))
            assert {folds[i] for i in own.ids} == {k}
            np.testing.assert_array_equal(oof.select(own.ids).probs, own.probs)


def test_bagged_test_table_is_the_mean_of_the_fold_tables(cv_run):
    _, run, _ = cv_run
    bagged = ProbabilityTable.read(run.table("member", "squeezenet1_1@s0", "test"))
    fold_tables = [ProbabilityTable.read(run.table("member", "squeezenet1_1@s0", f"test.fold{k}")) for k in (1, 2, 3)]
    np.testing.assert_allclose(bagged.probs, np.mean([t.probs for t in fold_tables], axis=0), atol=1e-12)
    assert bagged.meta["bagged"] == 3
    assert not np.allclose(fold_tables[0].probs, fold_tables[1].probs)  # three models, not one


def test_repeats_differ_and_status_lists_every_unit(cv_run):
    _, run, _ = cv_run
    a, b = (ProbabilityTable.read(run.table("member", f"squeezenet1_1@s{s}", "test")) for s in (0, 1))
    assert not np.allclose(a.probs, b.probs)
    rows = status(run.path)
    assert [r["member"] for r in rows] == [*(f"squeezenet1_1@s0@f{k}" for k in (1, 2, 3)),
                                           *(f"sq@f{k}" for k in (1, 2, 3)),
                                           *(f"squeezenet1_1@s1@f{k}" for k in (1, 2, 3))]
    assert {r["state"] for r in rows} == {"done"}
    assert json.loads(run.member("squeezenet1_1@s1@f2").done.read_text())["seed"] == 1


def test_ensembles_per_repeat_and_per_fold_and_their_board(cv_run):
    _, run, _ = cv_run
    built = build_ensembles(run.path, ["mean"], {"members": ["squeezenet1_1", "sq"]}, log=None)
    assert sorted(built) == ["mean@s0", "mean@s1"]
    assert built["mean@s1"]["members"] == ["squeezenet1_1@s1", "sq"]  # the untagged member joins every repeat
    for k in (1, 2, 3):
        fold = ProbabilityTable.read(run.table("ensemble", "mean@s0", f"test.fold{k}"))
        parts = [ProbabilityTable.read(run.table("member", m, f"test.fold{k}")) for m in ("sq", "squeezenet1_1@s0")]
        np.testing.assert_allclose(fold.probs, (parts[0].probs + parts[1].probs) / 2, atol=1e-12)
    frame = write_leaderboard(run.path, bootstrap=0, plots=False)
    assert sorted(frame["entry"]) == ["mean", "sq", "squeezenet1_1"]
    assert list(frame.set_index("entry").loc[["mean", "sq", "squeezenet1_1"], "repeats"]) == [2, 1, 2]
    info = frame.attrs["info"]
    assert (info["n_val"], info["folds"], info["out_of_fold"], info["repeats"]) == (36, 3, True, ["s0", "s1"])
    assert "out-of-fold over all 36 train+val images (3 folds" in to_markdown(frame)


def test_a_member_with_several_units_needs_one_named(cv_run):
    cfg, run, _ = cv_run
    with pytest.raises(ValueError, match="trains as 6 units"):
        train_member(cfg, "squeezenet1_1", run.path)


def test_snapshots_give_one_member_per_cycle(tmp_path):
    cfg = load_config(tiny_config(tmp_path, members=SQUEEZE + "snapshots = 3\n", epochs=3))
    results = train_zoo(cfg, results_dir=tmp_path / "res", progress=False, log=lambda m: None)
    run = RunDir(tmp_path / "res" / "tiny")
    assert list(results[0]["entries"]) == ["squeezenet1_1.snap1", "squeezenet1_1.snap2", "squeezenet1_1.snap3"]
    assert run.table_names("member", "val") == list(results[0]["entries"])
    assert all(run.member("squeezenet1_1").snapshot(j).exists() for j in (1, 2, 3))
    tables = [ProbabilityTable.read(run.table("member", e, "val")) for e in results[0]["entries"]]
    assert not np.allclose(tables[0].probs, tables[2].probs)


def _put(run, kind, name, split, probs, labels):
    folder = "predictions" if kind == "member" else "ensembles"
    ProbabilityTable([f"{split}{i}" for i in range(len(probs))], ["no", "yes"],
                     np.stack([1 - probs, probs], 1), labels, {"split": split, "member": name}).write(
        run / folder / name / f"{split}.csv")


def test_a_repeated_board_gives_means_spreads_and_holm(tmp_path):
    run = tmp_path / "rep"
    (run).mkdir()
    (run / "config.json").write_text(json.dumps({"dataset": "no-such-card"}))
    y = np.array([1, 1, 0, 0])
    # AUCs by hand (positives first): a@s0 val 1.0 test 0.75, a@s1 val 0.75 test 1.0; b val 0.5, test 1.0 then 0.5
    good, half, worse = np.array([.9, .8, .2, .1]), np.array([.9, .1, .8, .2]), np.array([.9, .3, .5, .1])
    for tag, a_val, a_test, b_test in (("s0", good, worse, good), ("s1", worse, good, half)):
        _put(run, "member", f"a@{tag}", "val", a_val, y)
        _put(run, "member", f"a@{tag}", "test", a_test, y)
        _put(run, "member", f"b@{tag}", "val", half, y)
        _put(run, "member", f"b@{tag}", "test", b_test, y)
    frame = write_leaderboard(run, bootstrap=0, plots=False)
    a = frame[frame["entry"] == "a"].iloc[0]
    assert (a["rank"], a["repeats"]) == (1, 2)
    assert a["val_auc"] == pytest.approx(0.875) and a["val_auc_sd"] == pytest.approx(np.std([1, .75], ddof=1))
    assert a["test_auc"] == pytest.approx(0.875)
    b = frame[frame["entry"] == "b"].iloc[0]
    assert b["val_auc"] == pytest.approx(0.5) and b["delta_vs_best_member"] == pytest.approx(-0.125)
    assert b["delong_p_holm"] == pytest.approx(b["delong_p"])  # one comparison: Holm leaves it
    assert np.isnan(a["delong_p_holm"])
    info = frame.attrs["info"]
    assert info["repeats"] == ["s0", "s1"] and info["pick_was_test_best"] == [False, True]
    md = to_markdown(frame)
    assert "0.8750 ± 0.1768" in md and "test-best in 1 of 2 repeats" in md and "between-repeat variance" in md
    repeats = RunDir(run).leaderboard_repeats_csv.read_text().splitlines()
    assert len(repeats) == 5 and "seed 0" in repeats[1]


def test_an_in_sample_score_never_ranks_first(tmp_path):
    run = tmp_path / "ins"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"dataset": "no-such-card"}))
    y = np.array([1, 1, 0, 0])
    _put(run, "member", "a", "val", np.array([.9, .3, .5, .1]), y)
    _put(run, "ensemble", "fit", "val", np.array([.9, .8, .2, .1]), y)
    t = ProbabilityTable.read(run / "ensembles" / "fit" / "val.csv")
    t.meta["in_sample"] = True
    t.write(run / "ensembles" / "fit" / "val.csv")
    frame = collect(run, bootstrap=0).frame
    assert list(frame["entry"]) == ["a", "fit"]  # 0.75 honest above 1.0 in-sample


@pytest.mark.parametrize("average", ["ema", "swa"])
def test_averaged_weights_are_the_kept_ones(tmp_path, average):
    cfg = load_config(tiny_config(tmp_path, members=SQUEEZE, epochs=2, average=average, ema_decay=0.5, swa_start=0.0))
    train_zoo(cfg, results_dir=tmp_path / "res", progress=False, log=lambda m: None)
    files = RunDir(tmp_path / "res" / "tiny").member("squeezenet1_1")
    best = torch.load(files.best, weights_only=False)["model"]
    last = torch.load(files.last, weights_only=False)
    key = "features.0.weight"
    assert not torch.equal(best[key], last["model"][key])  # not the raw weights
    averaged = {k.removeprefix("module."): v for k, v in last["averaged"].items() if k.startswith("module.")}
    torch.testing.assert_close(best[key], averaged[key])
    if average == "swa":
        assert int(last["averaged"]["n_averaged"]) == 2  # both epochs averaged (swa_start = 0)
    else:
        torch.testing.assert_close(last["kept_model"][key], best[key])
