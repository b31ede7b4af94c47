"""Batch mixing (mixup, cutmix): the mixed images and weights by hand, the mixed loss, and the config checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medzoo.config import load_config
from medzoo.zoo.augment import mix_batch
from medzoo.zoo.loop import _mixed_loss
from medzoo.zoo.schedule import train_zoo
from tests.test_train import read_history, tiny_config


def batch() -> torch.Tensor:
    """x [4, 3, 8, 10]: image i is constant i + 1 in every pixel, so a pasted box shows whose it is."""
    return torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 3, 8, 10).contiguous()


def test_mixup_blends_each_image_with_its_partner_by_one_beta_weight():
    x = batch()
    out, perm, lam = mix_batch(x, mixup=0.4, cutmix=0.0, rng=np.random.default_rng(0))
    rng = np.random.default_rng(0)  # the same draws in the same order: the weight, then the permutation
    assert lam == pytest.approx(rng.beta(0.4, 0.4), abs=0) and perm.tolist() == rng.permutation(4).tolist()
    expected = lam * torch.arange(1.0, 5.0) + (1 - lam) * (perm + 1).double()
    torch.testing.assert_close(out[:, :, 0, 0].double(), expected[:, None].expand(4, 3), rtol=0, atol=1e-6)
    assert torch.equal(x, batch())  # the input is left alone


def test_cutmix_pastes_one_box_from_the_partner_and_its_weight_is_the_area_kept():
    x = batch()
    out, perm, lam = mix_batch(x, mixup=0.0, cutmix=1.0, rng=np.random.default_rng(3))
    pasted = out != x  # partners that are the image itself change nothing; count on the others
    for i, j in enumerate(perm.tolist()):
        values = set(out[i].unique().tolist())
        assert values <= {i + 1.0, j + 1.0}
        if i != j:
            area = int(pasted[i, 0].sum())
            assert lam == pytest.approx(1 - area / 80, abs=1e-12)
            rows, cols = pasted[i, 0].nonzero(as_tuple=True)
            assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # one rectangle
    assert any(i != j for i, j in enumerate(perm.tolist()))  # the seed pastes at least one box


def test_both_on_each_batch_takes_one_of_the_two_and_a_seed_repeats_it():
    x = batch()
    kinds = []
    for seed in range(20):
        a = mix_batch(x, mixup=0.4, cutmix=1.0, rng=np.random.default_rng(seed))
        b = mix_batch(x, mixup=0.4, cutmix=1.0, rng=np.random.default_rng(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
        blended = not set(a[0].unique().tolist()) <= {1.0, 2.0, 3.0, 4.0}
        kinds.append("mixup" if blended else "cutmix")
    assert set(kinds) == {"mixup", "cutmix"}


def test_the_mixed_loss_is_the_weighted_sum_of_the_two_targets_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y, y2 = torch.tensor([0, 1]), torch.tensor([1, 1])
    loss = _mixed_loss(F.cross_entropy, logits, y, y2=y2, lam=0.25)
    # per-image CE: image 0 target 0: log(1 + e^-2); target 1: log(1 + e^2); image 1 target 1: log(1 + e^-1)
    a, b, c = math.log1p(math.exp(-2)), math.log1p(math.exp(2)), math.log1p(math.exp(-1))
    assert loss.item() == pytest.approx(0.25 * (a + c) / 2 + 0.75 * (b + c) / 2, abs=1e-6)


@pytest.mark.parametrize("key", ["mixup", "cutmix"])
def test_a_negative_alpha_is_refused_with_the_key(tmp_path, key):
    with pytest.raises(ValueError, match=rf"{key} = -0.2; must be >= 0"):
        load_config(tiny_config(tmp_path, **{key: -0.2}))


def test_a_mixed_config_trains_on_mixed_batches_and_repeats_exactly(tmp_path):
    def first_loss(name: str, **mix) -> str:
        (tmp_path / name).mkdir()
        cfg = load_config(tiny_config(tmp_path / name, epochs=1, **mix))
        train_zoo(cfg, results_dir=tmp_path / name / "res", progress=False, log=lambda m: None)
        return read_history(tmp_path / name / "res" / "tiny" / "members" / "squeezenet1_1" / "history.csv")[0]

    plain, mixed, again = first_loss("plain"), first_loss("mixed", mixup=0.4), first_loss("again", mixup=0.4)
    assert mixed["train_loss"] != plain["train_loss"]  # the loop got the mixing, so the loss it saw changed
    assert (mixed["train_loss"], mixed["val_auc"]) == (again["train_loss"], again["val_auc"])
