"""The embedding view: penultimate features through a hook, their t-SNE map, its files and ``medzoo embed``."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from tests.test_train import tiny_config, write_tiny_npz
from medzoo.cli import main
from medzoo.config import load_config
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo.checkpoint import model_from_checkpoint
from medzoo.zoo.embedding import default_member, embed_run, final_layer, penultimate_features, tsne
from medzoo.zoo.loader import BatchLoader
from medzoo.zoo.models import create_model, model_info
from medzoo.zoo.schedule import train_zoo

CPU = torch.device("cpu")
TWO = ('[[members]]\nmodel = "resnet18"\nsize = 32\n'
       '[[members]]\nmodel = "squeezenet1_1"\nsize = 32\n')


def train_run(root, members: str = TWO, test_labels: bool = True, **train):
    """A trained tiny run (one epoch) under ``root``; returns its run folder."""
    root.mkdir()
    write_tiny_npz(root / "tiny.npz", n_train=24, n_val=16, n_test=20, test_labels=test_labels)
    cfg = load_config(tiny_config(root, members=members, epochs=1, **train))
    results = train_zoo(cfg, results_dir=root / "results", progress=False)
    assert all(r["status"] == "trained" for r in results)
    return root / "results" / "tiny"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("embed") / "labelled")


def logits_of(model, images, name):
    x = next(iter(BatchLoader(images, np.zeros(len(images), dtype=np.int64), len(images), shuffle=False,
                              mean=model_info(name).mean, std=model_info(name).std)))[0]
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name, head, path, dim", [
    ("resnet18", "torchvision", "fc", 512), ("squeezenet1_1", "small", "classifier.1", 512),
    ("vgg11_bn", "small", "classifier.3", 512), ("densenet121", "torchvision", "classifier", 1024)])
def test_features_are_the_input_of_the_final_layer(name, head, path, dim):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, head=head)
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3)).astype(np.uint8)
    info = model_info(name)
    feats = penultimate_features(model, images, mean=info.mean, std=info.std, device=CPU, batch_size=2)
    assert model.training  # left as it was
    layer = final_layer(model)
    assert layer is model.get_submodule(path)
    assert feats.shape == (5, dim) and feats.dtype == np.float32
    assert dim == (layer.in_features if isinstance(layer, torch.nn.Linear) else layer.in_channels)
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    through = torch.from_numpy(feats) @ weight.T + layer.bias.detach()  # SqueezeNet's 1x1 conv as a Linear
    assert torch.allclose(through, logits_of(model, images, name), atol=1e-5)


def test_final_layer_of_the_other_heads():
    squeeze = create_model("squeezenet1_1", 2, head="torchvision")
    assert final_layer(squeeze) is squeeze.classifier[1]
    inception = create_model("inception_v3", 2)
    assert final_layer(inception) is inception.fc
    with pytest.raises(ValueError, match="penultimate features are not known"):
        final_layer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)))


def test_tsne_is_deterministic_for_a_seed():
    feats = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    a, used = tsne(feats, perplexity=30, seed=3)
    b, _ = tsne(feats, perplexity=30, seed=3)
    assert a.shape == (30, 2) and used == pytest.approx(29 / 3)
    assert np.array_equal(a, b)
    assert tsne(feats, perplexity=5, seed=3)[1] == 5
    with pytest.raises(ValueError, match="at least 4 images, got 3"):
        tsne(feats[:3])
    with pytest.raises(ValueError, match="perplexity = 0; must be > 0"):
        tsne(feats, perplexity=0)


def test_embed_run_writes_the_map_and_its_csv(run):
    e = embed_run(run, "resnet18", device="cpu")
    table = ProbabilityTable.read(run / "predictions" / "resnet18" / "test.csv")
    assert e.split == "test" and e.unit == "resnet18" and e.ids == table.ids  # test is labelled: the default
    assert e.features.shape == (20, 512) and e.coords.shape == (20, 2)
    assert e.png == run / "plots" / "embedding_resnet18_test.png"
    assert e.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model, _ = model_from_checkpoint(run / "members" / "resnet18" / "best.pt")
    probs = torch.softmax(model.fc(torch.from_numpy(e.features)).double(), dim=1).detach().numpy()
    assert np.allclose(probs, table.probs, atol=1e-6)  # the table's checkpoint, at its size, as it predicted

    hand = int((table.probs.argmax(axis=1) != table.labels).sum())
    assert int(e.misclassified.sum()) == hand
    assert e.title.startswith(f"resnet18, 32px, on test: 20 images, {hand} misclassified (x)\n")
    assert "t-SNE of penultimate features (no TTA), perplexity 6.33, seed 0" in e.title
    with open(run / "embeddings" / "resnet18_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "x", "y", "label", "pred", "prob"]
    assert [r["id"] for r in rows] == table.ids
    assert np.array_equal([[float(r["x"]), float(r["y"])] for r in rows], e.coords)
    assert [r["label"] for r in rows] == table.label_names()
    assert [r["pred"] for r in rows] == [table.classes[k] for k in table.probs.argmax(axis=1)]
    assert [float(r["prob"]) for r in rows] == table.probs.max(axis=1).tolist()
    assert sum(r["label"] != r["pred"] for r in rows) == hand

    again = embed_run(run, "resnet18", device="cpu", out=run / "again.png")
    assert np.array_equal(again.coords, e.coords) and again.png.is_file()
    other = embed_run(run, "resnet18", device="cpu", seed=1, out=run / "other.png")
    assert not np.array_equal(other.coords, e.coords)


def test_embed_run_on_val_of_the_small_head(run):
    e = embed_run(run, "squeezenet1_1", split="val", perplexity=4, device="cpu")
    table = ProbabilityTable.read(run / "predictions" / "squeezenet1_1" / "val.csv")
    assert e.features.shape == (16, 512) and e.ids == table.ids and e.perplexity == 4
    assert e.csv == run / "embeddings" / "squeezenet1_1_val.csv" and e.png.is_file()
    assert int(e.misclassified.sum()) == int((table.probs.argmax(axis=1) != table.labels).sum())


def test_a_bad_perplexity_is_refused_before_any_model_runs(run, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("features were computed before the perplexity was checked")
    monkeypatch.setattr("medzoo.zoo.embedding.penultimate_features", never)
    with pytest.raises(ValueError, match="perplexity = -1.0; must be > 0"):
        embed_run(run, "resnet18", perplexity=-1.0, device="cpu")


def test_unlabelled_test_defaults_to_val_and_colours_by_prediction(tmp_path):
    run = train_run(tmp_path / "unlabelled", members='[[members]]\nmodel = "squeezenet1_1"\nsize = 32\n',
                    test_labels=False)
    assert embed_run(run, "squeezenet1_1", device="cpu").split == "val"
    e = embed_run(run, "squeezenet1_1", split="test", device="cpu")
    assert not e.labelled and int(e.misclassified.sum()) == 0
    assert e.title.startswith("squeezenet1_1, 32px, on test: 20 images\nlabels unknown: coloured by predicted class")
    with open(e.csv, newline="") as f:
        assert {r["label"] for r in csv.DictReader(f)} == {""}


def test_cross_validated_member_uses_its_first_fold_model(tmp_path):
    root = tmp_path / "cv"
    root.mkdir()
    write_tiny_npz(root / "tiny.npz", n_train=24, n_val=16, n_test=20, test_labels=True)
    path = tiny_config(root, members='[[members]]\nmodel = "squeezenet1_1"\nsize = 32\n', epochs=1)
    path.write_text(path.read_text() + "[cv]\nfolds = 2\n")
    train_zoo(load_config(path), results_dir=root / "results", progress=False)
    run = root / "results" / "tiny"
    own = run / "members" / "squeezenet1_1@f1" / "tables" / "squeezenet1_1"
    for split, n in (("val", 20), ("test", 20)):
        e = embed_run(run, "squeezenet1_1", split=split, device="cpu")
        table = ProbabilityTable.read(own / f"{split}.csv")
        assert e.unit == "squeezenet1_1@f1" and e.ids == table.ids and len(e.ids) == n
        assert np.array_equal(e.preds, table.probs.argmax(axis=1))
        assert "model of fold unit squeezenet1_1@f1 (1 of 2)" in e.title
        assert ("on its held-out fold" in e.title) == (split == "val")


def test_default_member_is_the_best_member_on_the_leaderboard(run):
    with pytest.raises(ValueError, match=r"leaderboard.csv is missing: name the member with --member ID; "
                                         r"members: resnet18, squeezenet1_1"):
        default_member(run)
    (run / "leaderboard.csv").write_text("rank,entry,kind,val_auc\n1,mean,ensemble,0.99\n2,squeezenet1_1,member,"
                                         "0.9\n3,resnet18,member,0.8\n4,gone,member,0.95\n")
    try:
        assert default_member(run) == "squeezenet1_1"
    finally:
        (run / "leaderboard.csv").unlink()


def test_cli_embed(run, tmp_path, capsys):
    out = tmp_path / "map.png"
    assert main(["embed", str(run), "--member", "resnet18", "--split", "val", "--perplexity", "5", "--seed", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and f"wrote {out}" in printed and "resnet18 on val: 16 images" in printed
    assert (run / "embeddings" / "resnet18_val.csv").is_file()

    (run / "leaderboard.csv").write_text("rank,entry,kind,val_auc\n1,resnet18,member,0.9\n2,squeezenet1_1,member,"
                                         "0.8\n")
    try:
        assert main(["embed", str(run), "--out", str(tmp_path / "best.png")]) == 0
    finally:
        (run / "leaderboard.csv").unlink()
    assert "member resnet18: the best member by validation AUC" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--member", "resnet81"], "unknown member 'resnet81'; did you mean 'resnet18'? allowed: resnet18, squeezenet1_1"),
    (["--member", "resnet18", "--split", "train"], "unknown split 'train'; allowed: test, val"),
    ([], "leaderboard.csv is missing: name the member with --member ID; members: resnet18, squeezenet1_1"),
])
def test_cli_embed_errors(run, capsys, args, message):
    assert main(["embed", str(run), *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medzoo embed: error: ") and message in err


def test_cli_embed_without_a_run_folder(tmp_path, capsys):
    assert main(["embed", str(tmp_path / "nope"), "--member", "x"]) == 1
    assert f"no run folder at {tmp_path / 'nope'}" in capsys.readouterr().err
