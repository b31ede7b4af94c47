import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medzoo.zoo.augment import affine_grid, augment_batch, check_augment, color_affine, random_affine
from medzoo.zoo.loader import BatchLoader

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def image_2x2() -> torch.Tensor:
    """uint8 [1, 3, 2, 2]: channel k holds [[10, 20], [30, 40]] + k."""
    base = torch.tensor([[10, 20], [30, 40]], dtype=torch.uint8)
    return torch.stack([base + k for k in range(3)])[None]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hflip_and_vflip_of_a_known_image():
    x = image_2x2()
    h = augment_batch(x, {"hflip": 1.0}, gen(), ZERO, ONE) * 255
    torch.testing.assert_close(h[0, 0], torch.tensor([[20.0, 10.0], [40.0, 30.0]]))
    torch.testing.assert_close(h[0, 2], torch.tensor([[22.0, 12.0], [42.0, 32.0]]))
    v = augment_batch(x, {"vflip": 1.0}, gen(), ZERO, ONE) * 255
    torch.testing.assert_close(v[0, 1], torch.tensor([[31.0, 41.0], [11.0, 21.0]]))
    same = augment_batch(x, {"hflip": 0.0}, gen(), ZERO, ONE) * 255
    torch.testing.assert_close(same, x.float())
    # the same flips through the warp (a rotation of at most 1e-6 degrees forces it)
    warped = augment_batch(x, {"hflip": 1.0, "rotate": 1e-6}, gen(), ZERO, ONE) * 255
    torch.testing.assert_close(warped, h, atol=1e-3, rtol=0)


def test_hflip_plus_vflip_is_a_half_turn_and_flips_are_per_image():
    x = torch.randint(0, 256, (64, 3, 5, 7), dtype=torch.uint8, generator=gen(3))
    half_turn = torch.rot90(x.float(), 2, dims=(2, 3))
    both = augment_batch(x, {"hflip": 1.0, "vflip": 1.0}, gen(), ZERO, ONE) * 255
    torch.testing.assert_close(both, half_turn, atol=1e-4, rtol=0)
    warped = augment_batch(x, {"hflip": 1.0, "vflip": 1.0, "rotate": 1e-6}, gen(), ZERO, ONE) * 255
    torch.testing.assert_close(warped, half_turn, atol=1e-3, rtol=0)
    some = augment_batch(x, {"hflip": True}, gen(), ZERO, ONE) * 255
    flipped = [torch.allclose(s, xi.float().flip(-1), atol=1e-4) for s, xi in zip(some, x)]
    kept = [torch.allclose(s, xi.float(), atol=1e-4) for s, xi in zip(some, x)]
    assert all(f != k for f, k in zip(flipped, kept)) and 16 < sum(flipped) < 48


def test_normalisation_of_a_constant_image():
    x = torch.full((2, 3, 4, 4), 51, dtype=torch.uint8)  # 0.2
    out = augment_batch(x, None, gen(), mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    expected = torch.tensor([0.2, 0.0, -0.4]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(augment_batch(x.float() / 255, None, gen()), x.float() / 255)


def test_zoom_crops_inside_the_image_and_rotation_fills_with_the_mean():
    x = torch.full((8, 3, 16, 16), 200, dtype=torch.uint8)
    zoomed = augment_batch(x, {"zoom": 0.5, "hflip": True}, gen(), ZERO, ONE)
    torch.testing.assert_close(zoomed, torch.full_like(zoomed, 200 / 255))
    rotated = augment_batch(x, {"rotate": 180}, gen(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    inside = (200 / 255 - 0.5) / 0.5
    assert rotated.max() <= inside + 1e-5 and rotated.min() >= -1e-6  # between the fill (0) and the image
    assert (rotated < inside - 0.1).any()  # some corners rotated in from outside
    torch.testing.assert_close(rotated[:, :, 7:9, 7:9], torch.full((8, 3, 2, 2), inside))


def test_random_affine_is_a_scaled_rotation_within_the_limits():
    theta = random_affine(500, 32, 32, check_augment({"rotate": 30, "zoom": 0.25}), gen())
    angle = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    scale = theta[:, 0, 0].hypot(theta[:, 1, 0])
    assert angle.abs().max() <= math.radians(30) + 1e-6 and angle.abs().max() > math.radians(25)
    assert scale.min() >= 0.75 - 1e-6 and scale.max() <= 1.0 + 1e-6
    torch.testing.assert_close(theta[:, 1, 1], theta[:, 0, 0])
    torch.testing.assert_close(theta[:, 0, 1], -theta[:, 1, 0])
    assert (theta[:, :, 2].abs() <= (1 - scale)[:, None] + 1e-6).all()


def test_affine_grid_matches_torch():
    theta = torch.randn(3, 2, 3, generator=gen())
    torch.testing.assert_close(affine_grid(theta, 5, 7), F.affine_grid(theta, [3, 3, 5, 7], align_corners=False))


def test_brightness_and_contrast_values():
    # gray image with two levels, 40 and 160: mean gray level 100
    x = torch.tensor([40, 160], dtype=torch.uint8).view(1, 1, 1, 2).expand(3, 3, 1, 2).contiguous()
    cfg = {"brightness": 0.5, "contrast": 0.5}
    b, c = color_affine(3, check_augment(cfg), gen(7))
    out = augment_batch(x, cfg, gen(7), ZERO, ONE) * 255
    expected = ((torch.tensor([40.0, 160.0]) - 100) * c[:, None] + 100) * b[:, None]
    torch.testing.assert_close(out[:, 0, 0], expected.clamp(0, 255), atol=1e-3, rtol=0)
    assert not torch.allclose(b, torch.ones(3)) and not torch.allclose(c, torch.ones(3))
    b, _ = color_affine(4, check_augment({"brightness": 0.9}), gen(1))
    bright = augment_batch(torch.full((4, 3, 1, 1), 250, dtype=torch.uint8), {"brightness": 0.9}, gen(1),
                           mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))
    raw = (250 / 255 * b).clamp(0, 1)[:, None]  # [4, 1]
    expected = (raw - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.25, 0.2, 0.1])
    torch.testing.assert_close(bright[:, :, 0, 0], expected)
    assert (b > 1.03).any() and (b < 0.97).any()  # both clamped and unclamped images


def test_bad_augmentation_config():
    with pytest.raises(ValueError, match=r"unknown augmentation option\(s\) \['rotation'\]; allowed: hflip"):
        check_augment({"rotation": 10})
    with pytest.raises(ValueError, match=r"augment.zoom must be in \[0, 1\), got 1.5"):
        check_augment({"zoom": 1.5})
    assert check_augment({"hflip": True})["hflip"] == 0.5


def make_split(n=10, size=4):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 3


def test_batches_are_the_rows_they_name():
    images, labels = make_split()
    loader = BatchLoader(images, labels, 4, shuffle=True, seed=1, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    seen = []
    for x, y, idx in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 4, 4) and x.is_contiguous()
        raw = (x * torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1) + torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1))
        torch.testing.assert_close(raw * 255, torch.from_numpy(images[idx.numpy()]).permute(0, 3, 1, 2).float(),
                                   atol=1e-3, rtol=0)
        assert y.tolist() == labels[idx.numpy()].tolist()
        seen += idx.tolist()
    assert [len(b[2]) for b in loader] == [4, 4, 2] and len(loader) == 3
    assert sorted(seen) == list(range(10)) and seen != list(range(10))


def test_same_seed_and_epoch_give_the_same_batches():
    images, labels = make_split(12, 8)
    aug = {"hflip": True, "rotate": 20, "zoom": 0.2, "brightness": 0.2, "contrast": 0.2}

    def epoch(seed, e):
        loader = BatchLoader(images, labels, 5, shuffle=True, seed=seed, augment=aug)
        loader.set_epoch(e)
        return list(loader)

    a, b, c, d = epoch(0, 1), epoch(0, 1), epoch(0, 2), epoch(1, 1)
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert not torch.equal(a[0][2], c[0][2]) and not torch.equal(a[0][2], d[0][2])


def test_no_shuffle_keeps_order_and_drop_last():
    images, labels = make_split()
    loader = BatchLoader(images, labels, 4, shuffle=False, drop_last=True)
    assert len(loader) == 2
    assert [b[2].tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("n, world", [(12, 3), (10, 3), (7, 4)])
def test_shards_are_disjoint_equal_and_cover_the_split(n, world):
    images, labels = make_split(n)
    loaders = [BatchLoader(images, labels, 2, shuffle=True, seed=5, rank=r, world_size=world) for r in range(world)]
    shards = [loader.shard(3).tolist() for loader in loaders]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards) and len({len(loader) for loader in loaders}) == 1
    flat = [i for s in shards for i in s]
    assert sorted(set(flat)) == list(range(n))
    assert len(flat) - len(set(flat)) == per_rank * world - n  # only the padding repeats
    if n % world == 0:
        assert all(not set(a) & set(b) for k, a in enumerate(shards) for b in shards[k + 1:])
    assert shards != [loader.shard(4).tolist() for loader in loaders]


def test_channels_last_and_bad_inputs():
    images, labels = make_split()
    plain, _, _ = next(iter(BatchLoader(images, labels, 4, shuffle=False)))
    for augment in (None, {"hflip": 0.0, "brightness": 0.0}, {"rotate": 10}):
        x, _, _ = next(iter(BatchLoader(images, labels, 4, shuffle=False, channels_last=True, augment=augment)))
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if augment != {"rotate": 10}:
            torch.testing.assert_close(x, plain)
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, H, W, 3\], got torch.float32"):
        BatchLoader(images.astype(np.float32), labels, 4, shuffle=False)
    with pytest.raises(ValueError, match=r"labels must be \[N\] = \[10\], got \(9,\)"):
        BatchLoader(images, labels[:9], 4, shuffle=False)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\), got 2"):
        BatchLoader(images, labels, 4, shuffle=False, rank=2, world_size=2)
