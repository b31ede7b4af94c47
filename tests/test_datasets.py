"""Dataset cards and readers on tiny generated data, with hand-checked counts and labels."""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medzoo.cli import data as cli_data
from medzoo.zoo.cards import card_for_path
from medzoo.zoo.datasets import load_arrays, load_card, open_dataset

REAL_DATA = Path(os.environ.get("MEDZOO_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "arrays"))
    monkeypatch.delenv("MEDZOO_DATA", raising=False)


def img(path: Path, value: int = 0, size=(6, 4), mode="RGB") -> Path:
    """A constant image of ``value`` (every channel) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def labels_by_id(ds, split):
    r = ds.records(split)
    return dict(zip(r.ids, r.labels.tolist()))


def test_folder_tree_with_split_folders(tmp_path):
    root = tmp_path / "xray"
    for name in ("n1", "n2", "n3"):
        img(root / "train" / "normal" / f"{name}.png")
    img(root / "train" / "pneumonia" / "p1.jpeg")
    img(root / "valid" / "normal" / "n4.jpg")
    img(root / "valid" / "pneumonia" / "p2.bmp")
    img(root / "test" / "t1.png")
    img(root / "test" / "t2.png")
    write(root / "train" / "normal" / ".DS_Store", "")
    ds = open_dataset({"name": "xray", "format": "folder", "root": "xray"}, data_root=tmp_path)
    assert ds.splits == ("train", "val", "test")
    assert ds.classes == ["normal", "pneumonia"]
    assert labels_by_id(ds, "train") == {"n1": 0, "n2": 0, "n3": 0, "p1": 1}
    assert labels_by_id(ds, "val") == {"n4": 0, "p2": 1}
    assert labels_by_id(ds, "test") == {"t1": -1, "t2": -1}
    assert ds.class_counts("train").tolist() == [3, 1, 0]
    assert ds.class_counts("test").tolist() == [0, 0, 2]
    assert ds.made is None


def test_folder_of_classes_is_split_by_the_card(tmp_path):
    for k in range(8):
        img(tmp_path / "derm" / "benign" / f"b{k}.png")
    for k in range(4):
        img(tmp_path / "derm" / "malignant" / f"m{k}.png")
    card = {"name": "derm", "format": "folder", "root": str(tmp_path / "derm"),
            "split": {"ratios": {"train": 0.75, "val": 0.25}, "seed": 3}}
    ds = open_dataset(card)
    assert ds.splits == ("train", "val")
    assert ds.class_counts("train").tolist() == [6, 3, 0]
    assert ds.class_counts("val").tolist() == [2, 1, 0]
    assert ds.made["mode"] == "ratios"
    assert sorted(ds.records("train").ids + ds.records("val").ids) == sorted(
        [f"b{k}" for k in range(8)] + [f"m{k}" for k in range(4)])


def test_csv_label_names_find_image_folder_and_extension(tmp_path):
    for k, v in enumerate((10, 20, 30)):
        img(tmp_path / "set" / "pictures" / f"img{k}.jpg", v)
    img(tmp_path / "set" / "other" / "unrelated.png")
    csv = write(tmp_path / "set" / "labels.csv", "filename,diagnosis\nimg0,cyst\nimg1,tumour\nimg2,cyst\n")
    with pytest.raises(ValueError, match=r"split\(s\) \['test'\] came out empty from 3 images"):
        open_dataset(str(csv))  # the default ratios 0.75/0.20/0.05 leave no test image
    ds = open_dataset(str(csv), data_root="/nonexistent", overrides={"split": {"ratios": {"train": 0.67, "val": 0.33}}})
    assert ds.classes == ["cyst", "tumour"]
    assert ds.splits == ("train", "val")
    rec = ds.records("train")
    assert rec.paths[0].parent == tmp_path / "set" / "pictures"
    all_labels = {k: v for s in ds.splits for k, v in labels_by_id(ds, s).items()}
    assert all_labels == {"img0": 0, "img1": 1, "img2": 0}


def test_csv_images_spread_over_two_folders_ham10000_style(tmp_path):
    img(tmp_path / "HAM10000_images_part_1" / "ISIC_1.jpg", 1)
    img(tmp_path / "HAM10000_images_part_2" / "ISIC_2.jpg", 2)
    write(tmp_path / "HAM10000_metadata.csv", "lesion_id,image_id,dx\nL1,ISIC_1,nv\nL2,ISIC_2,mel\n")
    card = {"name": "ham", "format": "csv", "labels": "HAM10000_metadata.csv", "label_column": "dx",
            "split": {"ratios": {"train": 0.5, "val": 0.5}, "group_column": "lesion_id"}}
    ds = open_dataset(card, tmp_path)
    paths = {k: p for s in ds.splits for k, p in zip(ds.records(s).ids, ds.records(s).paths)}
    assert paths == {"ISIC_1": tmp_path / "HAM10000_images_part_1" / "ISIC_1.jpg",
                     "ISIC_2": tmp_path / "HAM10000_images_part_2" / "ISIC_2.jpg"}
    assert ds.classes == ["mel", "nv"]
    card["images"] = ["HAM10000_images_part_1"]
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv line 3: no image for id 'ISIC_2' in .*part_1"):
        open_dataset(card, tmp_path)


def test_csv_integer_labels_map_to_card_classes(tmp_path):
    for k in range(4):
        img(tmp_path / "im" / f"{k}.png")
    write(tmp_path / "tr.csv", "id,label\n0,1\n1,0\n")
    write(tmp_path / "te.csv", "id,label\n2,2\n3,0\n")
    card = {"name": "ints", "format": "csv", "classes": ["a", "b", "c"],
            "splits": {"train": {"labels": "tr.csv", "images": "im"}, "test": {"labels": "te.csv", "images": "im"}}}
    with pytest.warns(UserWarning, match=r"carving 20% of train's 2 images as val leaves val empty, so none"):
        ds = open_dataset(card, data_root=tmp_path)
    assert labels_by_id(ds, "train") == {"0": 1, "1": 0}
    assert labels_by_id(ds, "test") == {"2": 2, "3": 0}


def isic2017_tree(root: Path) -> dict:
    """ISIC 2017 layout in miniature: one-hot floats, nevus is the all-zero row, unlabeled test."""
    write(root / "GT_train.csv", "image_id,melanoma,seborrheic_keratosis\n"
          "ISIC_1,1.0,0.0\nISIC_2,0.0,0.0\nISIC_3,0.0,1.0\nISIC_4,0.0,0.0\n")
    write(root / "GT_val.csv", "image_id,melanoma,seborrheic_keratosis\nISIC_5,0,1\nISIC_6,1,0\nISIC_10,0,0\n")
    for k in range(1, 5):
        img(root / "Training_Data" / f"ISIC_{k}.jpg", 40 * k)
    for k in (5, 6, 10):
        img(root / "Validation_Data" / f"ISIC_{k}.jpg", 20 * k + 5)
    for k in (7, 8):
        img(root / "Test_Data" / f"ISIC_{k}.jpg", 30 * k)
        img(root / "Test_Data" / f"ISIC_{k}_superpixels.png")
    write(root / "Training_Data" / "ISIC_1_superpixels.txt", "not an image")
    return {"name": "mini2017", "format": "csv", "classes": ["melanoma", "seborrheic_keratosis", "nevus"],
            "negative_class": "nevus", "submission": "isic2017", "exclude": ["*_superpixels.png"],
            "views": [{"name": "melanoma", "positive": ["melanoma"]}],
            "splits": {"train": {"labels": "GT_train.csv"}, "val": {"labels": "GT_val.csv"},
                       "test": {"images": "Test_Data"}}}


def test_csv_isic2017_onehot_with_negative_class_and_unlabeled_test(tmp_path):
    ds = open_dataset(isic2017_tree(tmp_path), data_root=tmp_path)
    assert ds.classes == ["melanoma", "seborrheic_keratosis", "nevus"]
    assert labels_by_id(ds, "train") == {"ISIC_1": 0, "ISIC_2": 2, "ISIC_3": 1, "ISIC_4": 2}
    assert labels_by_id(ds, "val") == {"ISIC_5": 1, "ISIC_6": 0, "ISIC_10": 2}
    assert labels_by_id(ds, "test") == {"ISIC_7": -1, "ISIC_8": -1}
    assert ds.card.submission == "isic2017"
    assert ds.records("train").paths[0] == tmp_path / "Training_Data" / "ISIC_1.jpg"


def test_csv_isic2019_class_without_samples_is_kept_with_a_warning(tmp_path):
    write(tmp_path / "gt.csv", "image,MEL,NV,BCC,UNK\nA,1,0,0,0\nB,0,1,0,0\nC,0,0,1,0\nD,0,1,0,0\n")
    for k in "ABCD":
        img(tmp_path / "ISIC_2019_Input" / f"{k}.jpg")
    card = {"name": "mini2019", "format": "csv", "labels": "gt.csv",
            "split": {"ratios": {"train": 0.5, "val": 0.5}}}
    with pytest.warns(UserWarning, match=r"\['UNK'\].*kept"):
        ds = open_dataset(card, data_root=tmp_path)
    assert ds.classes == ["MEL", "NV", "BCC", "UNK"]
    total = sum(ds.class_counts(s) for s in ds.splits)
    assert total.tolist() == [1, 2, 1, 0, 0]


def test_npz_given_splits_gray_and_rgb(tmp_path):
    gray = np.broadcast_to(np.array([10, 20, 30], np.uint8)[:, None, None], (3, 4, 4)).copy()
    np.savez(tmp_path / "g.npz", train_images=gray, train_labels=np.array([[1], [0], [1]], np.uint8),
             val_images=gray[2:], val_labels=np.array([1]), test_images=gray[:2], test_labels=np.array([0, 1]))
    ds = open_dataset({"name": "g", "format": "npz", "file": "g.npz", "classes": ["no", "yes"]}, tmp_path)
    assert ds.splits == ("train", "val", "test") and ds.made is None
    assert labels_by_id(ds, "train") == {"train_00000": 1, "train_00001": 0, "train_00002": 1}
    arr = load_arrays(ds, "train", 8)
    assert arr.images.shape == (3, 8, 8, 3) and arr.images.dtype == np.uint8
    assert arr.images[:, 0, 0, :].tolist() == [[10] * 3, [20] * 3, [30] * 3]
    assert (arr.images == arr.images[:, :1, :1, :]).all()
    assert arr.labels.tolist() == [1, 0, 1] and arr.classes == ["no", "yes"]
    np.savez(tmp_path / "t.npz", train_images=gray, train_labels=np.array([1, 0, 1]), test_images=gray[:2])
    ds = open_dataset({"name": "t", "format": "npz", "file": "t.npz", "classes": ["no", "yes"]}, tmp_path)
    # no val given: one of the three train images (20% of 3, rounded by the deal) is carved out as val
    assert [ds.class_counts(s).tolist() for s in ds.splits] == [[1, 1, 0], [0, 1, 0], [0, 0, 2]]
    rgb = np.zeros((2, 4, 4, 3), np.uint8)
    rgb[1, ..., 2] = 200
    np.savez(tmp_path / "c.npz", val_images=rgb, val_labels=np.array([2, 0]))
    with pytest.warns(UserWarning, match=r"class\(es\) \['1'\] have no labeled image"):
        ds = open_dataset({"name": "c", "format": "npz", "file": str(tmp_path / "c.npz")})
    assert ds.classes == ["0", "1", "2"]
    assert load_arrays(ds, "val", 4).images[1, 2, 3].tolist() == [0, 0, 200]


def test_npz_pool_is_split_and_data_root_from_environment(tmp_path, monkeypatch):
    np.savez(tmp_path / "p.npz", images=np.zeros((10, 2, 2), np.uint8), labels=np.array([0] * 6 + [1] * 4))
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path))
    ds = open_dataset({"name": "p", "format": "npz", "file": "p.npz", "classes": ["x", "y"],
                       "split": {"ratios": {"train": 0.5, "val": 0.5}}})
    assert ds.class_counts("train").tolist() == [3, 2, 0] and ds.class_counts("val").tolist() == [3, 2, 0]
    a = load_arrays(ds, "val", 2)
    assert a.ids == ds.records("val").ids and a.labels.tolist() == ds.records("val").labels.tolist()


def test_npz_download_checksum_and_missing_file(tmp_path):
    src = tmp_path / "src" / "m.npz"
    src.parent.mkdir()
    np.savez(src, train_images=np.zeros((2, 3, 3), np.uint8), train_labels=np.array([0, 1]),
             val_images=np.zeros((1, 3, 3), np.uint8), val_labels=np.array([1]))
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    root = tmp_path / "root"
    card = {"name": "m", "format": "npz", "file": "medmnist/m.npz", "url": src.as_uri(), "md5": md5}
    ds = open_dataset(card, root)
    assert (root / "medmnist" / "m.npz").read_bytes() == src.read_bytes()
    assert len(ds.records("train")) == 2
    with pytest.warns(UserWarning, match="checksum differs"):
        open_dataset({**card, "md5": "0" * 32}, root)
    with pytest.raises(ValueError, match="checksum does not match"):
        open_dataset({**card, "md5": "0" * 32}, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "medmnist" / "m.npz").exists()
    with pytest.raises(FileNotFoundError, match=r"needs .*elsewhere[/\\]medmnist[/\\]m\.npz.*no download url"):
        open_dataset({k: v for k, v in card.items() if k != "url"}, tmp_path / "elsewhere")


def test_shipped_cards():
    isic = load_card("isic2017")
    assert isic.format == "csv" and isic.submission == "isic2017"
    assert isic.classes == ["melanoma", "seborrheic_keratosis", "nevus"]
    assert isic.views == [{"name": "melanoma", "positive": ["melanoma"]},
                          {"name": "seborrheic_keratosis", "positive": ["seborrheic_keratosis"]}]
    expected = {"pneumoniamnist": ["normal", "pneumonia"], "breastmnist": ["malignant", "normal_benign"],
                "retinamnist": [f"grade_{k}" for k in range(5)]}
    for name, classes in expected.items():
        card = load_card(name)
        assert card.classes == classes and card.submission == "medmnist" and card.format == "npz"
        assert card.raw["url"] == f"https://zenodo.org/records/10519652/files/{name}.npz?download=1"
        assert len(card.raw["md5"]) == 32


@pytest.mark.skipif(not (REAL_DATA / "isic2017").is_dir(), reason="real data not present")
def test_real_data_counts():
    ds = open_dataset("isic2017", REAL_DATA)
    assert [ds.class_counts(s).tolist() for s in ds.splits] == [[374, 254, 1372, 0], [30, 42, 78, 0], [0, 0, 0, 600]]
    with pytest.warns(UserWarning, match="checksum"):
        ds = open_dataset("pneumoniamnist", REAL_DATA)
    assert [len(ds.records(s)) for s in ds.splits] == [3882, 524, 624]


def test_card_for_path_and_overrides(tmp_path):
    assert card_for_path(tmp_path) == {"name": tmp_path.name, "format": "folder", "root": str(tmp_path)}
    card = load_card({"name": "x", "format": "npz", "file": "x.npz", "split": {"seed": 1}},
                     overrides={"split": {"fold": 2, "folds": 5}})
    assert card.raw["split"] == {"seed": 1, "fold": 2, "folds": 5}
    assert cli_data.parse_overrides(["split.fold=2", "negative_class=nevus", "classes=['a', 'b']"]) == {
        "split": {"fold": 2}, "negative_class": "nevus", "classes": ["a", "b"]}


@pytest.mark.parametrize("card, error, match", [
    ({"name": "x", "format": "foldr", "root": "r"}, ValueError, "unknown format 'foldr'; did you mean 'folder'"),
    ({"name": "x", "format": "csv", "negatve_class": "n"}, ValueError, "did you mean 'negative_class'"),
    ({"name": "x", "format": "csv", "split": {"fold": 1, "seeds": 2}}, ValueError, "did you mean 'seed'"),
    ({"name": "x", "format": "csv", "splits": {"tset": {}}}, ValueError, "did you mean 'test'"),
    ({"name": "x", "format": "csv", "classes": ["a"], "views": [{"name": "v", "positive": ["b"]}]},
     ValueError, "view 'v'.*unknown class 'b'"),
    ({"name": "x", "format": "csv", "duplicates": "warm"}, ValueError,
     "unknown duplicates value 'warm'; did you mean 'warn'\\? allowed: error, warn, allow"),
])
def test_bad_cards(card, error, match):
    with pytest.raises(error, match=match):
        load_card(card)


def test_unknown_card_name_suggests(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="did you mean 'isic2017'"):
        load_card("isic2016")
    (tmp_path / "chest_xray").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"dataset 'chest_xary' is neither a shipped card .* nor an existing "
                                                r"path .*did you mean 'chest_xray'\?"):
        load_card("chest_xary")
    with pytest.raises(FileNotFoundError, match=r"^dataset 'sub/chest_xray.csv' is neither a shipped card"):
        load_card("sub/chest_xray.csv")


def csv_set(tmp_path: Path, text: str, images=("a", "b", "c"), **card) -> dict:
    for k in images:
        img(tmp_path / "im" / f"{k}.png")
    write(tmp_path / "l.csv", text)
    return {"name": "bad", "format": "csv", "splits": {"train": {"labels": "l.csv", "images": "im"}}, **card}


@pytest.mark.parametrize("text, card, error, match", [
    ("image_id,label\na,x\nzz,y\n", {}, FileNotFoundError, r"l\.csv line 3: no image for id 'zz'.*add the file or delete the row"),
    ("image_id,label\na,x\nb,sqaure\n", {"classes": ["x", "square"]}, ValueError, r"line 3: unknown class 'sqaure'; did you mean 'square'"),
    ("image_id,label\na,x\nb,y\na,y\n", {}, ValueError, r"line 4: duplicate image id 'a'.*also at .*line 2"),
    ("image_id,label\n", {}, ValueError, r"split 'train': .*l\.csv has no rows"),
    ("picture,label\na,x\n", {}, ValueError, r"no usable id column among \['picture', 'label'\].*id_column"),
    ("image_id,label\na,x\nb,\n", {}, ValueError, r"line 3: image 'b' has no label while other images"),
    ("image_id,m,k\na,1,1\n", {"classes": ["m", "k", "n"], "negative_class": "n"}, ValueError, r"line 2: more than one class"),
    ("image_id,m,k\na,0,0\n", {"classes": ["m", "k"]}, ValueError, r"line 2: all class columns are 0.*negative_class"),
    ("image_id,m,k\na,0,0.5\n", {"classes": ["m", "k", "n"], "negative_class": "n"}, ValueError, r"line 2: one-hot class columns hold 0 or 1"),
    ("image_id,site,age\na,x,4\n", {}, ValueError, r"cannot tell the label column among \['site', 'age'\]"),
])
def test_bad_csv_input(tmp_path, text, card, error, match):
    with pytest.raises(error, match=match):
        open_dataset(csv_set(tmp_path, text, **card), tmp_path)


def test_bad_folder_input(tmp_path):
    img(tmp_path / "r" / "train" / "a" / "x.png")
    img(tmp_path / "r" / "train" / "b" / "x.jpg")
    with pytest.raises(ValueError, match=r"duplicate image id 'x' in split 'train'"):
        open_dataset({"name": "f", "format": "folder", "root": "r"}, tmp_path)
    (tmp_path / "r" / "train" / "b" / "x.jpg").unlink()
    img(tmp_path / "r" / "train" / "loose.png")
    with pytest.raises(ValueError, match="both class folders .* and loose images"):
        open_dataset({"name": "f", "format": "folder", "root": "r"}, tmp_path)
    (tmp_path / "r" / "test").mkdir()
    (tmp_path / "r" / "train" / "loose.png").unlink()
    with pytest.raises(ValueError, match=r"split 'test': no images in"):
        open_dataset({"name": "f", "format": "folder", "root": "r"}, tmp_path)
    with pytest.raises(ValueError, match=r"unknown class 'a'"):
        open_dataset({"name": "f", "format": "folder", "root": "r/train", "classes": ["b"]}, tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder .*nowhere does not exist"):
        open_dataset({"name": "f", "format": "folder", "root": "nowhere"}, tmp_path)


def test_truncated_image_names_file_and_row(tmp_path):
    card = csv_set(tmp_path, "image_id,label\na,x\nb,y\n")
    bad = tmp_path / "im" / "b.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.warns(UserWarning, match="so none is carved"):
        ds = open_dataset(card, tmp_path)
    with pytest.raises(ValueError, match=r"l\.csv line 3: cannot decode image .*b\.png.*unreadable or truncated"):
        load_arrays(ds, "train", 4)


def test_inspect_command_prints_counts_and_draws_png(tmp_path, capsys):
    isic2017_tree(tmp_path)
    (tmp_path / "mini.toml").write_text(
        'name = "mini2017"\nformat = "csv"\nclasses = ["melanoma", "seborrheic_keratosis", "nevus"]\n'
        'negative_class = "nevus"\nexclude = ["*_superpixels.png"]\n[splits.train]\nlabels = "GT_train.csv"\n'
        '[splits.val]\nlabels = "GT_val.csv"\n[splits.test]\nimages = "Test_Data"\n')
    parser = argparse.ArgumentParser(prog="medzoo")
    cli_data.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "plots" / "dist.png"
    args = parser.parse_args(["data", "inspect", str(tmp_path / "mini.toml"), "--data-root", str(tmp_path),
                              "--out", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[1].split() == ["split", "images", "melanoma", "seborrheic_keratosis", "nevus", "unlabeled"]
    assert text[2].split() == ["train", "4", "1", "1", "2", "0"]
    assert text[3].split() == ["val", "3", "1", "1", "1", "0"]
    assert text[4].split() == ["test", "2", "0", "0", "0", "2"]
    assert text[0].startswith("mini2017: 3 classes")
    assert text[0].endswith("; splits given by the data")
    assert text[5:7] == ["decoded 9 images at 64 px: all readable (now cached)",
                         "no identical images (compared at 64 px)"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name[:9] for p in (tmp_path / "arrays" / "mini2017").iterdir()) == [
        "test-64px", "train-64p", "val-64px-"]

    bad = tmp_path / "Training_Data" / "ISIC_2.jpg"
    bad.write_bytes(bad.read_bytes()[:60])
    (tmp_path / "Test_Data" / "ISIC_9.jpg").write_bytes((tmp_path / "Training_Data" / "ISIC_3.jpg").read_bytes())
    args = parser.parse_args(["data", "inspect", str(tmp_path / "mini.toml"), "--data-root", str(tmp_path),
                              "--out", str(out), "--size", "16"])
    with pytest.raises(ValueError) as err:
        args.func(args)
    errors = str(err.value).splitlines()
    assert errors[0] == "dataset 'mini2017': 2 error(s):"
    assert errors[1].startswith(f"{tmp_path / 'GT_train.csv'} line 3: cannot decode image {bad} (")
    assert errors[2].startswith("1 set(s) of identical images span splits (train+test 1): train 'ISIC_3' (")
    assert "byte-identical files" in errors[2]
    printed = capsys.readouterr().out
    assert "decoded 10 images at 16 px: 1 unreadable (the splits holding them are not cached)" in printed
