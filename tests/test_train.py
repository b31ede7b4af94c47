"""Training a member end to end on tiny generated images, the config parser, and the loss/metric helpers."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.ensemble.table import ProbabilityTable
from medzoo.core.fileio import file_digest
from medzoo.zoo.checkpoint import load_checkpoint, model_from_checkpoint
from medzoo.config import load_config
from medzoo.zoo.config import parse_config
from medzoo.zoo.predict import predict, predict_probs
from medzoo.zoo.loop import (accumulation_steps, class_weights, focal_loss, make_optimizer, make_scheduler,
                             validation_auc)
from medzoo.zoo.member import train_member
from medzoo.zoo.schedule import status, train_zoo


def write_tiny_npz(path: Path, n_train: int = 24, n_val: int = 12, n_test: int = 12, test_labels: bool = False,
                   signal: int = 60, seed: int = 0) -> Path:
    """A MedMNIST-style npz of 28x28 grayscale noise; class 1 has a brighter centre square."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        y = np.arange(n) % 2
        x = rng.integers(0, 150, (n, 28, 28)).astype(np.uint8)
        x[y == 1, 8:20, 8:20] += signal
        arrays[f"{split}_images"] = x
        if split != "test" or test_labels:
            arrays[f"{split}_labels"] = y
    np.savez(path, **arrays)
    return path


def tiny_config(tmp_path: Path, members: str = '[[members]]\nmodel = "squeezenet1_1"\nsize = 32\n', **train) -> Path:
    """A zoo config over a tiny npz dataset in ``tmp_path``; ``train`` keys go to ``[train]``."""
    npz = tmp_path / "tiny.npz"
    if not npz.exists():
        write_tiny_npz(npz)
    card = tmp_path / "tiny.toml"
    card.write_text(f'name = "tiny"\nformat = "npz"\nfile = "{npz}"\nclasses = ["normal", "pneumonia"]\n')
    opts = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "patience": 0, "warmup_epochs": 0, **train}
    lines = [f"{k} = {_toml(v)}" for k, v in opts.items()]
    path = tmp_path / "zoo.toml"
    path.write_text(f'run = "tiny"\ndataset = "{card}"\nseed = 0\ndevice = "cpu"\n[train]\n'
                    + "\n".join(lines) + "\n" + members)
    return path


def _toml(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def read_history(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_training_writes_checkpoints_history_tables_and_done(tmp_path):
    cfg = load_config(tiny_config(tmp_path, augment={"hflip": True}))
    (result,) = train_zoo(cfg, results_dir=tmp_path / "results", progress=False)
    run = tmp_path / "results" / "tiny"
    mdir = run / "members" / "squeezenet1_1"
    for name in ("best.pt", "last.pt", "history.csv", "curves.png", "done.json"):
        assert (mdir / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["members"][0]["train"]["augment"]["hflip"] is True

    history = read_history(mdir / "history.csv")
    assert [h["epoch"] for h in history] == ["1", "2"]
    assert list(history[0]) == ["epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds", "effective_batch"]
    assert history[0]["effective_batch"] == "8"

    val = ProbabilityTable.read(run / "predictions" / "squeezenet1_1" / "val.csv")
    test = ProbabilityTable.read(run / "predictions" / "squeezenet1_1" / "test.csv")
    assert val.labels.tolist() == [0, 1] * 6
    assert test.labels.tolist() == [-1] * 12  # the npz has no test labels
    assert np.allclose(val.probs.sum(axis=1), 1.0)
    best = mdir / "best.pt"
    assert val.meta["checkpoint"] == file_digest(best) == test.meta["checkpoint"]
    assert (val.meta["member"], val.meta["split"], val.meta["dataset"], val.meta["size"]) == \
        ("squeezenet1_1", "val", "tiny", 32)
    assert val.meta["config"]["train"]["epochs"] == 2

    done = json.loads((mdir / "done.json").read_text())
    assert done["val_auc"] == pytest.approx(validation_auc(val.labels, val.probs), abs=1e-12)
    assert done["epochs"] == 2 and result["status"] == "trained" and result["test_auc"] is None
    ckpt = load_checkpoint(best)
    assert ckpt["epoch"] == ckpt["best_epoch"] == done["best_epoch"]
    assert float(history[ckpt["best_epoch"] - 1]["val_auc"]) == pytest.approx(ckpt["best_auc"])
    assert status(run) == [{"member": "squeezenet1_1", "model": "squeezenet1_1", "state": "done",
                            "val_auc": done["val_auc"], "minutes": done["minutes"], "epoch": 2, "near_chance": False}]

    again = train_zoo(cfg, results_dir=tmp_path / "results", progress=False)
    assert again[0]["status"] == "done"

    images = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    folder = tmp_path / "new"
    folder.mkdir()
    from PIL import Image

    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"case{i}.png")
    table = predict(best, [folder], out=tmp_path / "new.csv", tta=True)
    model, ck = model_from_checkpoint(best)
    expected = predict_probs(model, images, mean=ck["mean"], std=ck["std"], device=torch.device("cpu"),
                             flips=((), (-1,)))
    assert table.ids == ["case0", "case1", "case2"]
    assert table.labels.tolist() == [-1, -1, -1]
    assert np.allclose(table.probs, expected, atol=1e-6)
    assert ProbabilityTable.read(tmp_path / "new.csv").meta["checkpoint"] == file_digest(best)


def test_same_seed_gives_identical_history_and_weights(tmp_path):
    cfg = load_config(tiny_config(tmp_path, augment={"hflip": True, "rotate": 10.0}, epochs=2))
    outs = []
    for name in ("a", "b"):
        train_member(cfg, cfg.members[0], tmp_path / name, progress=False)
        mdir = tmp_path / name / "members" / "squeezenet1_1"
        hist = [{k: v for k, v in h.items() if k != "seconds"} for h in read_history(mdir / "history.csv")]
        outs.append((hist, load_checkpoint(mdir / "last.pt", weights_only=False)["model"]))
    assert outs[0][0] == outs[1][0]
    assert all(torch.equal(outs[0][1][k], outs[1][1][k]) for k in outs[0][1])


def test_failed_member_is_recorded_and_the_zoo_moves_on(tmp_path):
    members = ('[[members]]\nmodel = "squeezenet1_1"\nsize = 32\nid = "broken"\npretrained = "/no/such.pth"\n'
               '[[members]]\nmodel = "squeezenet1_1"\nsize = 32\nid = "fine"\nepochs = 1\n')
    cfg = load_config(tiny_config(tmp_path, members=members))
    results = train_zoo(cfg, results_dir=tmp_path / "r", progress=False)
    assert [(r["member"], r["status"]) for r in results] == [("broken", "failed"), ("fine", "trained")]
    failed = json.loads((tmp_path / "r" / "tiny" / "members" / "broken" / "failed.json").read_text())
    assert "/no/such.pth" in failed["error"] and failed["error"].startswith("FileNotFoundError")
    states = {r["member"]: r["state"] for r in status(tmp_path / "r" / "tiny")}
    assert states == {"broken": "failed", "fine": "done"}


def test_cli_train_then_status(tmp_path, capsys):
    import argparse

    from medzoo.cli import train as cli_train

    parser = argparse.ArgumentParser(prog="medzoo")
    cli_train.register(parser.add_subparsers())

    def main(argv):
        args = parser.parse_args(argv)
        return args.func(args)

    config = tiny_config(tmp_path, epochs=3)
    assert main(["train", str(config), "--results", str(tmp_path / "r"), "--epochs", "1"]) == 0
    assert main(["status", str(tmp_path / "r" / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "squeezenet1_1" in out and "done" in out and "val AUC" in out and "1 epochs" in out


def _raw(**over):
    raw = {"run": "r", "dataset": "d", "members": [{"model": "resnet18", "size": 32}]}
    return {**raw, **over}


@pytest.mark.parametrize("raw, message", [
    (_raw(trian={}), "unknown key 'trian'; did you mean 'train'?"),
    (_raw(train={"lrr": 0.1}), "unknown key 'lrr'; did you mean 'lr'?"),
    (_raw(train={"optimizer": "adamm"}), "unknown [train] optimizer 'adamm'; did you mean 'adam'? allowed: sgd, adam, adamw"),
    (_raw(train={"schedule": "step"}), "allowed: cosine, plateau, none"),
    (_raw(train={"epochs": 2.5}), "[train] epochs = 2.5; expected int"),
    (_raw(train={"batch_size": 0}), "batch_size = 0; must be > 0"),
    (_raw(train={"augment": {"hflipp": True}}), "did you mean 'hflip'?"),
    (_raw(train={"augment": {"zoom": 1.5}}), "zoom"),
    (_raw(members=[{"model": "resnet5"}]), "unknown model 'resnet5'"),
    (_raw(members=[{"model": "inception_v3", "size": 32}]), "below inception_v3's minimum input size 75"),
    (_raw(members=[{"model": "resnet18"}, {"model": "resnet18"}]), "member id 'resnet18' is used twice"),
    (_raw(device="gpu"), "allowed: auto, cpu, cuda, cuda:N"),
    (_raw(train={"batch_size": 4, "effective_batch": 10}), "effective_batch = 10 must be a multiple of batch_size = 4"),
    ({"dataset": "d", "members": [{"model": "resnet18"}]}, "lacks required key 'run'"),
])
def test_config_errors_name_what_is_allowed(raw, message):
    with pytest.raises(ValueError) as e:
        parse_config(raw)
    assert message in str(e.value)


def test_config_defaults_member_overrides_and_command_line_overrides():
    raw = _raw(train={"epochs": 5, "lr": 0.1, "augment": {"hflip": True}},
               members=[{"model": "resnet18", "lr": 0.01, "augment": {"vflip": True}},
                        {"model": "inception_v3", "id": "inc"}])
    cfg = parse_config(raw, overrides={"train": {"epochs": 2}})
    a, b = cfg.members
    assert (a.id, a.size, a.train.lr, a.train.epochs) == ("resnet18", 224, 0.01, 2)
    assert (a.train.augment.hflip, a.train.augment.vflip) == (True, True)
    assert (b.id, b.size, b.train.lr, b.train.augment.vflip) == ("inc", 299, 0.1, False)
    assert cfg.train.epochs == 2
    with pytest.raises(ValueError, match="unknown member 'resnet81'; did you mean 'resnet18'"):
        cfg.member("resnet81")


def test_effective_batch_sets_accumulation_for_the_world_size():
    from medzoo.zoo.config import TrainConfig

    cfg = TrainConfig(batch_size=4, effective_batch=16)
    assert [accumulation_steps(cfg, w) for w in (1, 2, 4)] == [4, 2, 1]
    assert accumulation_steps(TrainConfig(accumulate=3), 2) == 3
    with pytest.raises(ValueError, match="effective_batch = 16 is not a multiple of batch_size 4 x 3 processes"):
        accumulation_steps(cfg, 3)


def test_class_weights_balance_the_classes():
    assert class_weights(np.array([0, 0, 0, 1]), 2).tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weights(np.array([0, 0, 2]), 3).tolist() == pytest.approx([0.5, 0.0, 1.0])


def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    target = torch.tensor([0, 0])
    # p_true = 0.5 and 0.75: (1 - p)^2 * -log p
    expected = (0.25 * math.log(2) + 0.0625 * -math.log(0.75)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item())
    w = torch.tensor([3.0, 1.0])
    assert focal_loss(logits, torch.tensor([0, 1]), gamma=0.0, weight=w).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]), weight=w).item())


def test_validation_auc_binary_multiclass_and_undefined():
    assert validation_auc(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])) == 0.75
    probs = np.eye(3)[[0, 1, 2, 0]] * 0.7 + 0.1
    assert validation_auc(np.array([0, 1, 2, 0]), probs) == 1.0
    assert math.isnan(validation_auc(np.array([1, 1]), np.array([[0.5, 0.5], [0.2, 0.8]])))


def test_cosine_schedule_with_linear_warmup():
    from medzoo.zoo.config import TrainConfig

    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(epochs=3, warmup_epochs=1, lr=1.0, schedule="cosine")
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=2)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    c = 0.5 * (1 + math.cos(math.pi / 4))
    assert lrs == pytest.approx([0.5, 1.0, 1.0, c, 0.5, 1 - c])
