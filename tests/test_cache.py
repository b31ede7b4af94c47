"""The image cache: decode once, hit the cache next time, re-read a changed file."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from medzoo.zoo import cache
from medzoo.zoo.cache import cached_images, decode_image, load_images, resize_array


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "arrays"))


def save(path, array, mode=None):
    Image.fromarray(np.asarray(array), mode).save(path)
    return path


def test_decode_gray_rgba_and_16_bit(tmp_path):
    gray = decode_image(save(tmp_path / "g.png", np.full((5, 7), 77, np.uint8)), 4)
    assert gray.shape == (4, 4, 3) and gray.dtype == np.uint8 and (gray == 77).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 90, 255
    assert decode_image(save(tmp_path / "a.png", rgba), 4)[0, 0].tolist() == [90, 0, 0]


def test_16_bit_and_float_images_are_scaled_by_bit_depth(tmp_path):
    deep = np.zeros((4, 4), np.uint16)
    deep[:, 0], deep[:, 1], deep[:, 2], deep[:, 3] = 65535, 32896, 1000, 0
    path = save(tmp_path / "d.png", deep)
    assert Image.open(path).mode.startswith("I")
    # x 255 / 65535: 65535 -> 255, 32896 -> 128 (= 32896 / 257), 1000 -> 3.89 -> 4; never stretched per image
    assert decode_image(path, 4)[0, :, 0].tolist() == [255, 128, 4, 0]
    as_int = np.array([[0, 65535, 32896, 1000]], np.int32)  # mode I within 0..65535: read as 16-bit
    assert decode_image(save(tmp_path / "i.tif", as_int), 4)[0, :, 0].tolist() == [0, 255, 128, 4]
    # mode I beyond 16 bits: x 255 / (2**32 - 1), so 70000 -> 0.004 -> 0, 2**31 - 1 -> 127.49 -> 127; -5 clipped
    wide = np.array([[0, 70000, 2**31 - 1, -5]], np.int32)
    assert decode_image(save(tmp_path / "w.tif", wide), 4)[0, :, 0].tolist() == [0, 0, 127, 0]
    floats = np.array([[-0.5, 0.0, 0.5, 2.0]], np.float32)  # mode F: [0, 1] clipped, 0.5 -> 127.5 -> 128
    assert decode_image(save(tmp_path / "f.tif", floats), 4)[0, :, 0].tolist() == [0, 0, 128, 255]


def test_8_bit_and_16_bit_copies_decode_alike(tmp_path):
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    a = decode_image(save(tmp_path / "eight.png", eight), 12)
    b = decode_image(save(tmp_path / "sixteen.png", eight.astype(np.uint16) * 256), 12)
    assert np.abs(a.astype(int) - b).max() <= 1
    c = decode_image(save(tmp_path / "exact.png", eight.astype(np.uint16) * 257), 12)
    assert (a == c).all()


def test_jpeg_is_resized_to_the_requested_size(tmp_path):
    path = save(tmp_path / "big.jpg", np.full((256, 192, 3), (200, 100, 50), np.uint8))
    out = decode_image(path, 64)
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - [200, 100, 50]).max() <= 3  # JPEG rounding only


def test_load_images_and_bad_files(tmp_path):
    paths = [save(tmp_path / f"{v}.png", np.full((3, 3, 3), v, np.uint8)) for v in (5, 250)]
    out = load_images(paths, 2)
    assert out.shape == (2, 2, 2, 3) and out[:, 0, 0, 0].tolist() == [5, 250]
    with pytest.raises(FileNotFoundError, match=r"rows\.csv line 4: image file .*gone\.png does not exist"):
        load_images([tmp_path / "gone.png"], 2, origins=["rows.csv line 4"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(save(tmp_path / "ok.jpg", np.zeros((32, 32, 3), np.uint8)).read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.jpg.*unreadable or truncated"):
        load_images([broken], 8)
    with pytest.raises(ValueError, match="image size 0"):
        load_images(paths, 0)


def test_second_load_hits_the_cache_and_a_changed_file_is_re_read(tmp_path, monkeypatch):
    paths = [save(tmp_path / f"{k}.png", np.full((4, 4, 3), 10 * k, np.uint8)) for k in range(3)]
    first = cached_images("toy", "train", paths, 2)
    assert first[:, 0, 0, 0].tolist() == [0, 10, 20]
    stored = list((tmp_path / "arrays" / "toy").iterdir())
    assert len(stored) == 1 and stored[0].name.startswith("train-2px-") and stored[0].suffix == ".npy"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(cache, "load_images", no_decoding)
    assert (cached_images("toy", "train", paths, 2) == first).all()
    monkeypatch.undo()
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "arrays"))

    st = os.stat(paths[1])
    save(paths[1], np.full((4, 4, 3), 99, np.uint8))
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = cached_images("toy", "train", paths, 2)
    assert again[:, 0, 0, 0].tolist() == [0, 99, 20]
    assert len(list((tmp_path / "arrays" / "toy").iterdir())) == 2  # old entry kept, no temp files left
    assert cached_images("toy", "train", paths, 3).shape == (3, 3, 3, 3)


def test_damaged_cache_file_is_rebuilt(tmp_path):
    paths = [save(tmp_path / "x.png", np.full((4, 4, 3), 42, np.uint8))]
    cached_images("toy", "val", paths, 2)
    (stored,) = (tmp_path / "arrays" / "toy").iterdir()
    stored.write_bytes(b"garbage")
    assert cached_images("toy", "val", paths, 2)[0, 0, 0, 0] == 42
    with pytest.raises(FileNotFoundError, match=r"l\.csv line 9: image file .*y\.png does not exist"):
        cached_images("toy", "val", [tmp_path / "y.png"], 2, origins=["l.csv line 9"])


def test_resize_array_matches_pil_and_replicates_gray():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    out = resize_array(gray, 32)
    assert out.shape == (5, 32, 32, 3) and out.flags.c_contiguous
    assert (out[..., 0] == out[..., 2]).all()
    pil = np.stack([np.asarray(Image.fromarray(g).resize((32, 32), Image.BILINEAR)) for g in gray])
    assert np.abs(pil.astype(int) - out[..., 0]).max() <= 1
    rgb = rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    small = resize_array(rgb, 14)
    pil = np.stack([np.asarray(Image.fromarray(g).resize((14, 14), Image.BILINEAR)) for g in rgb])
    assert np.abs(pil.astype(int) - small).max() <= 1
    assert (resize_array(rgb, 28) == rgb).all()
    with pytest.raises(ValueError, match=r"shape \(2, 28, 28, 3\) and dtype float32"):
        resize_array(rgb.astype(np.float32), 8)
