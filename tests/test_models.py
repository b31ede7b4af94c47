import argparse
import re

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.inception import InceptionAux

from medzoo.cli import models as cli_models
from medzoo.zoo.checkpoint import model_from_checkpoint, save_checkpoint
from medzoo.zoo.models import (
    IMAGENET_MEAN, IMAGENET_STD, SmallInputInceptionAux, adapt_first_conv, built_head, create_model, forward_logits,
    head_parameters, imagenet_weights_path, list_models, model_info, register, resolve_head, set_backbone_trainable,
)

EXPECTED = (
    [f"resnet{d}" for d in (18, 34, 50, 101, 152)] + [f"densenet{d}" for d in (121, 161, 169, 201)]
    + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
    + ["inception_v3", "squeezenet1_0", "squeezenet1_1"]
)


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: a second thread only spins when the machine is shared
    yield
    torch.set_num_threads(threads)


def test_registry_holds_exactly_the_zoo():
    assert list_models() == sorted(EXPECTED)


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_one_tiny_batch_at_min_size(name):
    torch.manual_seed(0)
    size = model_info(name).min_size
    model = create_model(name, num_classes=3).train()
    x = torch.rand(2, 3, size, size)
    logits, aux = forward_logits(model, x)
    assert logits.shape == (2, 3)
    assert (aux is not None) == (name == "inception_v3")
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    if aux is not None:
        assert aux.shape == (2, 3)
        loss = loss + 0.4 * torch.nn.functional.cross_entropy(aux, torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is not None for p in head_parameters(model, name))


def test_metadata():
    inception = model_info("inception_v3")
    assert (inception.family, inception.min_size, inception.default_size) == ("inception", 75, 299)
    r50 = model_info("resnet50")
    assert (r50.family, r50.min_size, r50.default_size, r50.mean, r50.std) == (
        "resnet", 32, 224, IMAGENET_MEAN, IMAGENET_STD)
    assert {model_info(n).family for n in list_models()} == {"resnet", "densenet", "vgg", "inception", "squeezenet"}


@pytest.mark.parametrize("name", ["vgg11", "inception_v3"])
def test_min_size_is_the_real_minimum_where_the_architecture_has_one(name):
    model = create_model(name, num_classes=2).train()
    size = model_info(name).min_size
    with pytest.raises(RuntimeError):
        forward_logits(model, torch.rand(2, 3, size - 1, size - 1))


def test_heads_replaced_per_family():
    assert create_model("resnet18", 4).fc.out_features == 4
    assert create_model("densenet121", 4).classifier.out_features == 4
    with torch.device("meta"):  # shapes only
        vgg, small = create_model("vgg11", 4, head="torchvision"), create_model("vgg11", 4)
    assert vgg.classifier[6].out_features == 4 and vgg.classifier[3].out_features == 4096
    assert small.classifier[3].out_features == 4 and small.classifier[0].in_features == 512  # from scratch
    squeeze = create_model("squeezenet1_1", 4)
    assert squeeze.classifier[1].out_channels == 4 and squeeze.num_classes == 4
    inception = create_model("inception_v3", 4)
    assert inception.fc.out_features == 4 and inception.AuxLogits.fc.out_features == 4


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'; did you mean 'resnet50'.*known: densenet121"):
        create_model("resnet5", 2)
    with pytest.raises(ValueError, match=r"unknown model 'xyz'; known: "):
        model_info("xyz")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register("resnet18", "resnet")(lambda: None)
    with pytest.raises(ValueError, match="unknown family 'transformer'"):
        register("vit", "transformer")


def test_small_input_aux_head_is_torchvisions_at_299px():
    torch.manual_seed(0)
    ours, theirs = SmallInputInceptionAux(768, 3).eval(), InceptionAux(768, 3).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 768, 17, 17)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours(torch.randn(2, 768, 3, 3)).shape == (2, 3)  # 75 px input; torchvision's head fails here


def test_adapt_first_conv_values():
    w = torch.tensor([1.0, 2.0, 6.0]).view(1, 3, 1, 1)
    assert adapt_first_conv(w, 1).flatten().tolist() == [9.0]
    assert adapt_first_conv(w, 2).flatten().tolist() == [4.5, 4.5]


def test_state_dict_file_round_trip_and_head_transfer(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet18", 5).eval()
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    x = torch.rand(2, 3, 32, 32)

    same = create_model("resnet18", 5, pretrained=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(same(x), source(x), rtol=0, atol=0)

    ckpt = tmp_path / "best.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, ckpt)
    with pytest.warns(UserWarning, match=r"fc\.weight, fc\.bias"):
        other = create_model("resnet18", 2, pretrained=ckpt)
    torch.testing.assert_close(other.layer4[1].conv2.weight, source.layer4[1].conv2.weight, rtol=0, atol=0)
    assert other.fc.weight.shape == (2, 512)

    gray = create_model("resnet18", 5, pretrained=path, in_chans=1).eval()
    g = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gray(g), source(g.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)

    with pytest.raises(ValueError, match="do not fit this model"):
        create_model("resnet34", 5, pretrained=path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("resnet18", 5, pretrained=tmp_path / "nope.pth")

    resume = tmp_path / "last.pt"
    torch.save({"model": source.state_dict(), "rng": np.random.get_state()}, resume)
    with pytest.raises(ValueError, match="last.pt is a resume file: use that run's best.pt"):
        create_model("resnet18", 5, pretrained=resume)


def test_pretrained_imagenet_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url = imagenet_weights_path("squeezenet1_1")
    assert path == tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    with pytest.raises(FileNotFoundError) as err:
        create_model("squeezenet1_1", 2, pretrained=True)
    message = str(err.value)
    assert str(path) in message and str(path.parent) in message and url in message
    assert "weights='DEFAULT'" in message

    torch.manual_seed(1)
    imagenet = torchvision.models.squeezenet1_1(weights=None)
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)
    model = create_model("squeezenet1_1", 2, pretrained=True)
    torch.testing.assert_close(model.features[0].weight, imagenet.features[0].weight, rtol=0, atol=0)
    assert model.classifier[1].out_channels == 2 and built_head(model) == "torchvision"


def test_pretrained_must_be_bool_or_path():
    with pytest.raises(ValueError, match="pretrained must be True, False or a path, got 1"):
        create_model("squeezenet1_1", 2, pretrained=1)


@pytest.mark.parametrize("name, head, tensors", [("resnet18", "auto", 2), ("inception_v3", "auto", 4),
                                                 ("vgg11_bn", "small", 4), ("vgg11_bn", "torchvision", 2)])
def test_freeze_and_unfreeze_backbone(name, head, tensors):
    model = create_model(name, 2, head=head)
    owned = {id(p) for p in head_parameters(model, name)}
    assert len(owned) == tensors
    set_backbone_trainable(model, name, False)
    assert {id(p) for p in model.parameters() if p.requires_grad} == owned
    set_backbone_trainable(model, name, True)
    assert all(p.requires_grad for p in model.parameters())


def test_models_command_lists_every_model(capsys):
    parser = argparse.ArgumentParser()
    cli_models.register(parser.add_subparsers())
    args = parser.parse_args(["models"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in lines if line.startswith("resnet18 "))
    assert row[:6] == ["resnet18", "resnet", "11.2", "11.2", "224", "32"]
    vgg = next(line.split() for line in lines if line.startswith("vgg11_bn "))
    assert vgg[2:4] == ["9.5", "128.8"]  # the small head from scratch, torchvision's with weights
    inception = next(line.split() for line in lines if line.startswith("inception_v3 "))
    assert inception[4:6] == ["299", "75"]
    assert sum(line.split()[0] in EXPECTED for line in lines if line.strip()) == len(EXPECTED)
    heads = [line.split()[:2] for line in lines if line.startswith("  ")]
    assert ["vgg", "small"] in heads and ["squeezenet", "small"] in heads and len(heads) == 7


def test_auto_head_is_small_from_scratch_where_the_family_has_one():
    assert [resolve_head("vgg11_bn", p) for p in (False, None, True, "weights.pth")] == [
        "small", "small", "torchvision", "torchvision"]
    assert resolve_head("squeezenet1_1", False) == "small" and resolve_head("resnet18", False) == "torchvision"
    assert resolve_head("vgg11_bn", True, head="small") == "small"
    assert resolve_head("vgg11_bn", False, head="torchvision") == "torchvision"
    assert set(model_info("vgg11").heads) == {"torchvision", "small"} and set(model_info("resnet18").heads) == {
        "torchvision"}
    assert model_info("squeezenet1_0").heads["small"].startswith("Dropout -> 1x1 conv (512 -> C) -> global average")


def test_bad_head_values_raise_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"^head must be one of 'auto', 'torchvision', 'small', got 'big'$"):
        create_model("vgg11", 2, head="big")
    with pytest.raises(ValueError, match=r"^resnet18 has no 'small' head; its heads: 'torchvision' \(or 'auto'\)$"):
        create_model("resnet18", 2, head="small")


def test_small_vgg_head_parameters_and_output_at_32px():
    torch.manual_seed(0)
    model = create_model("vgg11_bn", 3).train()
    assert built_head(model) == "small"
    head = sum(p.numel() for p in head_parameters(model, "vgg11_bn"))
    assert head == (512 * 512 + 512) + (512 * 3 + 3) == 264_195
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.features.parameters()) + head
    logits, aux = forward_logits(model, torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 3) and aux is None
    with torch.device("meta"):  # shapes only
        torchvision_head = create_model("vgg11_bn", 3, head="torchvision")
    assert sum(p.numel() for p in torchvision_head.classifier.parameters()) == (
        25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 3 + 3)


def test_squeezenet_small_head_keeps_negative_logits_and_gradients():
    """torchvision's ReLU after the last conv: class maps all below 0 give logits all 0 and no gradient at all."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    for head in ("torchvision", "small"):
        model = create_model("squeezenet1_1", 2, head=head).eval()
        with torch.no_grad():
            model.classifier[1].bias.fill_(-10.0)
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
        grad = sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None)
        if head == "torchvision":
            assert torch.equal(logits, torch.zeros(2, 2)) and grad == 0
        else:
            assert (logits < -5).all() and grad > 0


def test_pretrained_file_with_torchvisions_head_builds_torchvisions_head(tmp_path):
    with torch.device("meta"):
        shapes = torchvision.models.vgg11(weights=None).state_dict()
    imagenet = {k: torch.full(v.shape, 0.5) for k, v in shapes.items()}  # ImageNet's layout, 1000 classes
    path = tmp_path / "vgg11.pth"
    torch.save(imagenet, path)
    dropped = r"its 'torchvision' head not loaded .*: classifier\.6\.weight, classifier\.6\.bias \("
    with pytest.warns(UserWarning, match=dropped):
        model = create_model("vgg11", 2, pretrained=path)
    assert built_head(model) == "torchvision" and model.classifier[6].out_features == 2
    assert (model.classifier[3].weight == 0.5).all() and (model.features[0].weight == 0.5).all()
    assert not (model.classifier[6].weight == 0.5).any()

    every = ", ".join(f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias"))
    with pytest.warns(UserWarning, match=f"its 'small' head not loaded .*: {re.escape(every)} \\("):
        small = create_model("vgg11", 2, pretrained=path, head="small")  # ImageNet features, a fresh small head
    assert (small.features[0].weight == 0.5).all() and not (small.classifier[0].weight == 0.5).any()

    small_path = tmp_path / "small.pth"
    torch.save(small.state_dict(), small_path)
    with pytest.raises(ValueError, match=r"do not fit this model.*this vgg11 has the 'torchvision' head: weights saved "
                                         r"from one with the 'small' head load with head='small'"):
        create_model("vgg11", 2, pretrained=small_path)


@pytest.mark.parametrize("name, head", [("vgg11_bn", "small"), ("squeezenet1_1", "small"),
                                        ("squeezenet1_1", "torchvision")])
def test_checkpoint_rebuilds_the_head_it_was_trained_with(name, head, tmp_path):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    model = create_model(name, 2, head=head).eval()
    path = save_checkpoint({"arch": name, "classes": ["a", "b"], "head": resolve_head(name, False, head),
                            "model": model.state_dict()}, tmp_path / "best.pt")
    rebuilt, ckpt = model_from_checkpoint(path)
    assert built_head(rebuilt) == ckpt["head"] == head
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_checkpoint_without_head_key_is_torchvisions(tmp_path):
    """Checkpoints written before they recorded the head were all built with torchvision's."""
    model = create_model("squeezenet1_1", 2, head="torchvision")
    old = save_checkpoint({"arch": "squeezenet1_1", "classes": ["a", "b"], "model": model.state_dict()},
                          tmp_path / "best.pt")
    rebuilt, _ = model_from_checkpoint(old)
    assert built_head(rebuilt) == "torchvision" and isinstance(rebuilt.classifier[2], torch.nn.ReLU)


def test_the_head_speed_benchmark_compares_both_heads(capsys):
    from medzoo.benchmarks import speed_heads

    assert speed_heads.main(["--models", "squeezenet1_1", "--batches", "1", "--batch-size", "2", "--threads", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[:3] == ["squeezenet1_1", "0.72", "0.72"] and float(row[-1]) > 0


def test_the_compile_benchmark_weighs_against_the_steps_of_the_shipped_bench():
    from medzoo.benchmarks.speed_compile import bench_steps

    # benchmarks/pneumoniamnist.toml: resnet18 12 epochs, squeezenet1_1 24, of 60 batches each
    assert bench_steps(["resnet18", "squeezenet1_1", "alexnet"]) == {"resnet18": 720, "squeezenet1_1": 1440}
