"""``medzoo predict`` from either checkpoint of a trained member, and one-line errors for files it cannot read."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from medzoo.config import load_config
from medzoo.zoo.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint
from medzoo.zoo.predict import predict, predict_probs
from medzoo.zoo.schedule import train_zoo
from tests.test_train import tiny_config


@pytest.fixture(scope="module")
def member_dir(tmp_path_factory):
    """A member trained for one epoch: ``best.pt`` and ``last.pt`` (with optimizer, scheduler and RNG state)."""
    root = tmp_path_factory.mktemp("predict")
    train_zoo(load_config(tiny_config(root, epochs=1)), results_dir=root / "r", progress=False)
    return root / "r" / "tiny" / "members" / "squeezenet1_1"


def test_last_pt_loads_safely_and_predicts_like_its_model(member_dir, tmp_path):
    last = load_checkpoint(member_dir / "last.pt")
    assert {"optimizer", "scheduler", "rng"} <= set(last) and last["epoch"] == 1
    assert last["rng"]["numpy"][1].dtype == np.uint32
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"case{i}.png")
    table = predict(member_dir / "last.pt", [tmp_path])
    model, ckpt = model_from_checkpoint(member_dir / "last.pt")
    expected = predict_probs(model, images, mean=ckpt["mean"], std=ckpt["std"], device=torch.device("cpu"))
    assert table.ids == ["case0", "case1"] and table.classes == ["normal", "pneumonia"]
    np.testing.assert_allclose(table.probs, expected, atol=1e-6)
    best_model, _ = model_from_checkpoint(member_dir / "best.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), best_model.state_dict().values()))


def test_a_last_pt_that_cannot_be_read_safely_points_at_best_pt(tmp_path):
    state = {"format": FORMAT, "model": {}, "where": pathlib.PurePosixPath("/data")}
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path / "last.pt")
    assert str(e.value) == (f"{tmp_path / 'last.pt'} is a resume checkpoint (last.pt); predict with best.pt beside it: "
                            f"{tmp_path / 'best.pt'}")
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ValueError) as e:
        model_from_checkpoint(tmp_path / "other.pt")
    assert str(e.value).startswith(f"{tmp_path / 'other.pt'} is not a readable checkpoint (UnpicklingError: "
                                   f"Unsupported global: GLOBAL pathlib")
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    assert load_checkpoint(tmp_path / "last.pt", weights_only=False)["where"] == pathlib.PurePosixPath("/data")
