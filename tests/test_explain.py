"""``medzoo explain``: heatmaps for a member of every family and for an ensemble, the default picks, the figures,
and the errors for a missing extra, a bad method and a bad entry."""
from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from medzoo.cli import main
from medzoo.config import load_config
from medzoo.core.rundir import RunDir
from medzoo.ensemble.calibration import calibrate_run
from medzoo.ensemble.run import build_ensembles
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo.cache import resize_array
from medzoo.zoo.checkpoint import model_from_checkpoint
from medzoo.zoo.explain import (INSTALL_HINT, METHODS, TARGET_LAYERS, Pick, combine_maps, explain_run, pick_images,
                                resize_maps, target_layer, unit_maps)
from medzoo.zoo.models import FAMILIES, create_model, model_info
from medzoo.zoo.schedule import train_zoo
from tests.test_train import tiny_config, write_tiny_npz

SIZES = {"r": ("resnet18", 64), "d": ("densenet121", 64), "v": ("vgg11_bn", 32), "i": ("inception_v3", 107),
         "s": ("squeezenet1_1", 48)}  # small sizes, where the default CAM layer is a block before the last
for _module in ("pytorch_grad_cam", "captum"):
    pytest.importorskip(_module, reason="the explain extra: pip install 'medzoo[explain]'")
WEIGHTS = {"r": 1.0, "d": 2.0, "v": 0.0, "i": 3.0, "s": 1.5}
MEMBERS = "".join(f'[[members]]\nmodel = "{model}"\nid = "{m}"\nsize = {size}\n' for m, (model, size) in SIZES.items())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One member of each family, one epoch on 16 tiny images (8 labelled test images), and a weighted mean of
    them with vgg's weight 0."""
    tmp = tmp_path_factory.mktemp("explain")
    write_tiny_npz(tmp / "tiny.npz", n_train=16, n_val=8, n_test=8, test_labels=True)
    cfg = load_config(tiny_config(tmp, members=MEMBERS, epochs=1))
    train_zoo(cfg, results_dir=tmp / "res", progress=False, log=lambda m: None)
    rd = RunDir(tmp / "res" / "tiny")
    build_ensembles(rd.path, config={"methods": ["weighted_mean"], "members": list(SIZES), "weights": WEIGHTS},
                    log=None)
    return rd


@pytest.fixture(scope="module")
def ensemble(run):
    return explain_run(run.path, "weighted_mean", per_group=2)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(5)
    for k in range(3):
        x = rng.integers(0, 150, (28, 28)).astype(np.uint8)
        x[8:20, 8:20] += 60 * (k % 2)
        Image.fromarray(x).save(folder / f"case{k}.png")
    return folder


def test_every_model_family_has_a_target_layer():
    assert set(TARGET_LAYERS) == set(FAMILIES)


@pytest.mark.parametrize("arch, size, expected", [
    ("resnet18", 224, "layer4"), ("resnet18", 64, "layer3"), ("resnet18", 32, "layer2"),  # 7x7, 4x4, 4x4 maps
    ("densenet121", 224, "features"), ("densenet121", 32, "features.denseblock2"),
    ("squeezenet1_1", 224, "features"), ("squeezenet1_1", 64, "features.7"),
    ("inception_v3", 299, "Mixed_7c"), ("inception_v3", 107, "Mixed_6e"),
])
def test_the_default_cam_layer_is_the_deepest_that_keeps_a_4x4_map(arch, size, expected):
    model = create_model(arch, num_classes=2)
    chosen = target_layer(model, model_info(arch).family, size=size)
    assert chosen is model.get_submodule(expected)


@pytest.mark.parametrize("member", list(SIZES))
def test_a_member_of_each_family_gets_maps_of_its_image_size(run, member):
    result = explain_run(run.path, member, per_group=2)
    size = SIZES[member][1]
    assert result.kind == "member" and result.split == "test" and result.note is None
    assert result.maps.shape == (len(result.picks), size, size) and len(result.picks) >= 1
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert (result.maps.max(axis=(1, 2)) - result.maps.min(axis=(1, 2)) > 0.5).any()  # Grad-CAM is flat for an
    # image without evidence for the class: some of a one-epoch model's are, not all
    assert [p.target for p in result.picks] == ["pneumonia"] * len(result.picks)


def test_inceptions_auxiliary_head_is_explained_at_mixed_6e(run):
    main_head = explain_run(run.path, "i", per_group=1, out=run.path / "explain" / "i_main")
    aux = explain_run(run.path, "i", per_group=1, layer="aux")
    assert aux.maps.shape == main_head.maps.shape == (len(aux.picks), 107, 107)
    assert aux.maps.min() >= 0 and aux.maps.max() <= 1 and not np.allclose(aux.maps, main_head.maps)
    with pytest.raises(ValueError, match="layer 'aux' is Inception's auxiliary head; resnet18 is a resnet model"):
        explain_run(run.path, "r", per_group=1, layer="aux")


def test_a_layer_path_is_read_and_a_1x1_layer_map_warns(run):
    with pytest.warns(UserWarning, match=r"resnet18: gradcam reads a 1x1 map at 64 px \(layer 'avgpool'\)"):
        result = explain_run(run.path, "r", per_group=1, layer="avgpool")
    assert (result.maps == 0).all()


def test_the_ensemble_map_is_the_weighted_mean_of_its_members_maps(run, ensemble):
    state = json.loads(run.ensemble_state("weighted_mean").read_text())
    weights = {m: w for m, w in state["weights"].items() if w > 0}
    assert sorted(weights) == ["d", "i", "r", "s"] and sorted(ensemble.member_maps) == sorted(weights)
    with np.load(run.path.parents[1] / "tiny.npz") as z:
        raw = z["test_images"][[int(p.image_id.removeprefix("test_")) for p in ensemble.picks]]
    alone = {}
    for m in weights:
        model, ckpt = model_from_checkpoint(run.member(m).best)
        maps = unit_maps(model, ckpt, resize_array(raw, SIZES[m][1]), np.ones(len(raw), dtype=int), "gradcam")
        alone[m] = resize_maps(maps, 107)  # the display size: the largest input size of the members
    expected = sum(w * alone[m] for m, w in weights.items()) / sum(weights.values())
    assert ensemble.maps.shape == (len(raw), 107, 107) and ensemble.split == "test"
    np.testing.assert_allclose(ensemble.maps, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(combine_maps(np.stack([alone[m] for m in weights]), np.array(list(weights.values()))),
                               expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["gradcam++", "eigencam", "integrated_gradients", "occlusion"])
def test_every_method_gives_maps_in_0_1(run, pngs, method):
    result = explain_run(run.path, "s", images=[pngs], method=method)
    assert result.maps.shape == (3, 48, 48) and result.maps.min() >= 0 and result.maps.max() <= 1
    assert (result.maps.max(axis=(1, 2)) > result.maps.min(axis=(1, 2))).all()


def test_picks_are_the_most_confident_tp_fp_fn_ties_by_id():
    p1 = np.array([0.9, 0.9, 0.7, 0.6, 0.95, 0.2, 0.1, 0.4, 0.3, 0.55])
    labels = np.array([1, 1, 1, 0, 0, 1, 1, 1, 0, 1])
    ids = ["j", "c", "a", "f", "e", "b", "h", "g", "d", "i"]
    table = ProbabilityTable(ids, ["neg", "pos"], np.stack([1 - p1, p1], axis=1), labels)
    picks = pick_images(table, 1, per_group=2)
    assert [(p.group, p.image_id) for p in picks] == [("TP", "c"), ("TP", "j"), ("FP", "e"), ("FP", "f"),
                                                      ("FN", "h"), ("FN", "b")]
    assert [p.prob for p in picks] == [0.9, 0.9, 0.95, 0.6, 0.1, 0.2]
    assert picks[0] == Pick("c", "TP", "pos", "pos", "pos", 0.9)
    assert [p.image_id for p in pick_images(table, 1, per_group=5) if p.group == "TP"] == ["c", "j", "a", "i"]


def test_multiclass_picks_without_and_with_a_target_class():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1],
                      [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 1, 2, 2, -1])
    table = ProbabilityTable(list("abcdef"), ["x", "y", "z"], probs, labels)
    assert [(p.group, p.image_id, p.target) for p in pick_images(table, None, per_group=1)] == [
        ("TP", "b", "y"), ("FP", "c", "x"), ("FN", "e", "x")]
    assert [(p.group, p.image_id, p.prob) for p in pick_images(table, 0, per_group=3)] == [
        ("TP", "a", 0.7), ("FP", "c", 0.6), ("FP", "e", 0.5)]


def test_figures_overlays_and_picks_csv_are_written(run, ensemble):
    result = ensemble
    folder = run.path / "explain" / "weighted_mean"
    assert result.folder == folder and result.grid == folder / "grid.png"
    for path in [result.grid, result.members_png, *result.overlays]:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 100
    assert sorted(p.name for p in result.overlays) == sorted(f"{p.image_id}.png" for p in result.picks)
    with open(result.picks_csv) as f:
        rows = list(csv.DictReader(f))
    table = ProbabilityTable.read(run.table("ensemble", "weighted_mean", "test"))
    assert rows == [{"image_id": p.image_id, "group": p.group, "label": p.label, "predicted": p.predicted,
                     "target": "pneumonia", "prob": f"{p.prob:.6f}"} for p in pick_images(table, 1, 2)]


def test_without_test_labels_the_picks_come_from_val(run, tmp_path):
    copy = RunDir(tmp_path / "copy")
    copy.path.mkdir()
    for part in ("config.json", "predictions/s", "members/s"):
        (shutil.copytree if (run.path / part).is_dir() else shutil.copy)(run.path / part, copy.path / part)
    test = ProbabilityTable.read(copy.table("member", "s", "test"))
    ProbabilityTable(test.ids, test.classes, test.probs, None, test.meta).write(copy.table("member", "s", "test"))
    result = explain_run(copy.path, "s", per_group=1)
    assert result.split == "val" and result.note == "the test split has no labels: images picked from val"
    assert all(p.image_id.startswith("val_") for p in result.picks)


def test_a_missing_library_names_the_extra(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    for method, package in (("gradcam", "grad-cam"), ("occlusion", "captum")):
        with pytest.raises(ImportError) as e:
            explain_run(run.path, "s", method=method)
        assert f"needs the {package} package" in str(e.value) and INSTALL_HINT in str(e.value)


def test_bad_names_list_the_allowed_ones(run):
    with pytest.raises(ValueError) as e:
        explain_run(run.path, "s", method="gradcan")
    assert str(e.value) == ("unknown explain method 'gradcan'; did you mean 'gradcam'? known: "
                            + ", ".join(METHODS.names()))
    with pytest.raises(ValueError, match=r"unknown class 'tumour'; classes: normal, pneumonia"):
        explain_run(run.path, "s", target="tumour")
    with pytest.raises(ValueError, match=r"no module 'layer9' in this resnet model"):
        explain_run(run.path, "r", layer="layer9")
    with pytest.raises(ValueError, match=r"occlusion attributes the input pixels and reads no layer; layer 'layer3' "
                                         r"is for the CAM methods: gradcam, gradcam\+\+, eigencam"):
        explain_run(run.path, "r", method="occlusion", layer="layer3")


def test_a_layer_one_member_lacks_is_refused_before_any_model_runs(run, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a member was explained before the layer was checked on all of them")
    monkeypatch.setattr("medzoo.zoo.explain.unit_maps", never)
    with pytest.raises(ValueError, match=r"member 'd': no module 'layer3' in this densenet model"):
        explain_run(run.path, "weighted_mean", layer="layer3")  # resnet18 has a layer3, the other families not
    with pytest.raises(ValueError, match="member 'd': layer 'aux' is Inception's auxiliary head; densenet121 is a "
                                         "densenet model"):
        explain_run(run.path, "weighted_mean", layer="aux")  # members in name order: d first


def test_a_temperature_scaled_entry_is_explained_by_its_source_models(run, pngs, tmp_path):
    copy = shutil.copytree(run.path, tmp_path / "tiny")
    calibrate_run(copy, entries=["weighted_mean"], log=None)
    scaled = explain_run(copy, "weighted_mean+ts", images=pngs, out=tmp_path / "scaled")
    source = explain_run(copy, "weighted_mean", images=pngs, out=tmp_path / "source")
    np.testing.assert_array_equal(scaled.maps, source.maps)
    assert [p.prob for p in scaled.picks] != [p.prob for p in source.picks]  # the captions show the scaled p
    assert scaled.kind == "ensemble" and scaled.members_png.is_file()
    calibrate_run(copy, entries=["r"], log=None)
    member = explain_run(copy, "r+ts", images=pngs, out=tmp_path / "member")  # a member's copy: no members.png
    assert member.kind == "member" and member.members_png is None
    np.testing.assert_array_equal(member.maps, explain_run(copy, "r", images=pngs, out=tmp_path / "r").maps)


def test_the_command_line_writes_the_figures(run, pngs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["explain", "--help"])
    assert e.value.code == 0 and f"one of {', '.join(METHODS.names())}" in " ".join(capsys.readouterr().out.split())
    assert main(["explain", str(run.path), "--entry", "s", "--images", str(pngs), "--method", "eigencam",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"grid: {tmp_path / 'out' / 'grid.png'}" in out and (tmp_path / "out" / "case1.png").is_file()

    run.leaderboard_csv.write_text("rank,entry,kind\n2,r,member\n1,weighted_mean,ensemble\n")
    assert main(["explain", str(run.path), "--per-group", "1", "--target", "normal"]) == 0
    assert "explained weighted_mean (the leaderboard's rank 1)" in capsys.readouterr().out
    run.leaderboard_csv.unlink()

    assert main(["explain", str(run.path), "--entry", "s", "--method", "cam"]) == 1
    assert capsys.readouterr().err.startswith("medzoo explain: error: unknown explain method 'cam'; ")
    assert main(["explain", str(run.path)]) == 1
    assert capsys.readouterr().err == (f"medzoo explain: error: {run.leaderboard_csv} is missing: name the entry "
                                       f"with --entry; entries: d, i, r, s, v, weighted_mean\n")
