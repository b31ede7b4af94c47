"""Split making: stratified ratios, groups that never straddle, k folds, seeds, assignment files."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medzoo.zoo.datasets import open_dataset
from medzoo.zoo.cards import split_name
from medzoo.zoo.splits import check_ratios, read_split_csv, stratified_folds, stratified_split, write_split_csv


def counts(labels, assign):
    """{split: {class: n}} as plain dicts."""
    out = {}
    for lab, s in zip(labels, assign):
        out.setdefault(s, Counter())[lab] += 1
    return {s: dict(c) for s, c in out.items()}


def test_stratified_ratios_hand_counts():
    labels = np.array([0] * 20 + [1] * 8)
    assign = stratified_split(labels, {"train": 0.75, "val": 0.25}, seed=0)
    assert counts(labels, assign) == {"train": {0: 15, 1: 6}, "val": {0: 5, 1: 2}}
    labels = np.array([1] * 20 + [0] * 40 + [-1] * 20)
    assign = stratified_split(labels, {"train": 0.75, "val": 0.20, "test": 0.05}, seed=5)
    assert counts(labels, assign) == {"train": {0: 30, 1: 15, -1: 15}, "val": {0: 8, 1: 4, -1: 4},
                                      "test": {0: 2, 1: 1, -1: 1}}


def test_stratified_totals_stay_within_one_of_the_ratio():
    labels = np.random.default_rng(1).integers(0, 5, 103)
    assign = stratified_split(labels, {"train": 0.6, "val": 0.3, "test": 0.1}, seed=2)
    n = Counter(assign)
    for s, r in {"train": 0.6, "val": 0.3, "test": 0.1}.items():
        assert abs(n[s] - r * 103) <= 1
    for c in range(5):
        k = (labels == c).sum()
        assert abs((assign[labels == c] == "val").sum() - 0.3 * k) < 1


def test_seed_determines_the_assignment():
    labels = np.array([0, 1] * 25)
    a = stratified_split(labels, {"train": 0.5, "val": 0.5}, seed=7)
    assert (a == stratified_split(labels, {"train": 0.5, "val": 0.5}, seed=7)).all()
    assert (a != stratified_split(labels, {"train": 0.5, "val": 0.5}, seed=8)).any()
    f = stratified_folds(labels, 5, seed=7)
    assert (f == stratified_folds(labels, 5, seed=7)).all()
    assert (f != stratified_folds(labels, 5, seed=8)).any()


def test_groups_never_straddle_splits():
    rng = np.random.default_rng(0)
    groups = [f"patient{g}" for g in rng.integers(0, 40, 200)]
    labels = rng.integers(0, 3, 200)
    assign = stratified_split(labels, {"train": 0.7, "val": 0.2, "test": 0.1}, seed=3, groups=groups)
    for g in set(groups):
        assert len({s for s, h in zip(assign, groups) if h == g}) == 1
    assert set(assign) == {"train", "val", "test"}
    folds = stratified_folds(labels, 4, seed=3, groups=groups)
    for g in set(groups):
        assert len({f for f, h in zip(folds, groups) if h == g}) == 1


def test_groups_hand_counts():
    # Four patients with two images each, one of them with a third: 9 images.
    groups = ["a", "a", "b", "b", "c", "c", "d", "d", "d"]
    labels = np.zeros(9, dtype=int)
    assign = stratified_split(labels, {"train": 0.5, "val": 0.5}, seed=0, groups=groups)
    per_group = {g: {s for s, h in zip(assign, groups) if h == g} for g in "abcd"}
    assert all(len(v) == 1 for v in per_group.values())
    # Whole patients move: the sizes are 4/5 (two pairs vs pair + triple), never 4.5/4.5.
    assert sorted(Counter(assign).values()) == [4, 5]
    # A group's stratum is its most common label: patient "x" (labels 1, 1, 0) counts as class 1.
    labels = np.array([1, 1, 0, 0, 0, 0])
    groups = ["x", "x", "x", "y", "z", "w"]
    assign = stratified_split(labels, {"train": 0.5, "val": 0.5}, seed=0, groups=groups)
    assert len(set(assign[:3])) == 1


def test_k_folds_partition_and_stratify():
    labels = np.array([0] * 10 + [1] * 5)
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    for f in range(5):
        assert counts(labels, folds == f)[True] == {0: 2, 1: 1}
    with pytest.raises(ValueError, match="folds = 1; need an integer >= 2"):
        stratified_folds(labels, 1)


def test_ratio_and_name_errors():
    assert check_ratios({"val": 0.2, "train": 0.8}) == {"train": 0.8, "val": 0.2}
    assert split_name("valid") == "val" and split_name("Validation") == "val" and split_name("testing") == "test"
    with pytest.raises(ValueError, match="unknown split 'tset'; did you mean 'test'"):
        check_ratios({"train": 0.9, "tset": 0.1})
    with pytest.raises(ValueError, match="summing to 1"):
        check_ratios({"train": 0.9, "val": 0.2})
    with pytest.raises(ValueError, match="positive fractions"):
        check_ratios({"train": 1.0, "val": 0.0})


def test_split_csv_round_trip_and_errors(tmp_path):
    path = write_split_csv(tmp_path / "run" / "splits" / "s.csv", ["b", "a", "c"], ["train", "val", "test"])
    assert path.read_text().splitlines() == ["image_id,split", "b,train", "a,val", "c,test"]
    assert read_split_csv(path) == {"b": "train", "a": "val", "c": "test"}
    (tmp_path / "dup.csv").write_text("image_id,split\na,train\na,val\n")
    with pytest.raises(ValueError, match=r"dup\.csv line 3: duplicate image_id 'a'"):
        read_split_csv(tmp_path / "dup.csv")
    (tmp_path / "hdr.csv").write_text("id,fold\na,1\n")
    with pytest.raises(ValueError, match="header must be image_id,split"):
        read_split_csv(tmp_path / "hdr.csv")
    (tmp_path / "name.csv").write_text("image_id,split\na,trian\n")
    with pytest.raises(ValueError, match=r"name\.csv line 2: unknown split 'trian'; did you mean 'train'"):
        read_split_csv(tmp_path / "name.csv")


def lesion_set(root: Path, n: int = 24) -> dict:
    """n images, 3 per lesion, classes alternating by lesion; a CSV with a lesion_id column."""
    rows = ["image,label,lesion_id"]
    (root / "im").mkdir()
    for k in range(n):
        lesion = k // 3
        rows.append(f"img{k},{'mel' if lesion % 2 else 'nev'},L{lesion}")
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "im" / f"img{k}.png")
    (root / "gt.csv").write_text("\n".join(rows) + "\n")
    return {"name": "lesions", "format": "csv", "labels": "gt.csv", "images": "im"}


def lesion_of(ds, split):
    return {f"L{int(k[3:]) // 3}" for k in ds.records(split).ids}


def test_dataset_grouped_ratios_folds_and_assignment(tmp_path):
    card = lesion_set(tmp_path)
    ds = open_dataset({**card, "split": {"ratios": {"train": 0.5, "val": 0.25, "test": 0.25},
                                         "group_column": "lesion_id", "seed": 1}}, tmp_path)
    assert [len(ds.records(s)) for s in ds.splits] == [12, 6, 6]
    seen = [lesion_of(ds, s) for s in ds.splits]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert ds.records("train").groups[:1] == [f"L{int(ds.records('train').ids[0][3:]) // 3}"]

    val = []
    for fold in range(4):
        ds = open_dataset({**card, "split": {"folds": 4, "fold": fold, "group_column": "lesion_id"}}, tmp_path)
        assert ds.splits == ("train", "val") and len(ds.records("val")) == 6
        assert not lesion_of(ds, "train") & lesion_of(ds, "val")
        assert ds.class_counts("val").tolist() == [3, 3, 0]
        val += ds.records("val").ids
    assert sorted(val) == sorted(f"img{k}" for k in range(24))

    ds = open_dataset({**card, "split": {"folds": 3, "fold": 2, "ratios": {"test": 0.25}}}, tmp_path)
    assert [ds.class_counts(s).tolist() for s in ds.splits] == [[6, 6, 0], [3, 3, 0], [3, 3, 0]]
    ds.write_splits(tmp_path / "assign.csv")
    again = open_dataset({**card, "split": {"assignment": str(tmp_path / "assign.csv")}}, tmp_path)
    for s in ds.splits:
        assert again.records(s).ids == ds.records(s).ids
    assert again.made["mode"] == "assignment"


def test_dataset_split_errors_and_resplit_of_given_splits(tmp_path):
    card = lesion_set(tmp_path)
    with pytest.raises(ValueError, match="split.fold = 4, allowed 0..3"):
        open_dataset({**card, "split": {"folds": 4, "fold": 4}}, tmp_path)
    with pytest.raises(ValueError, match="group_column 'patient' is not in the label file"):
        open_dataset({**card, "split": {"group_column": "patient"}}, tmp_path)
    with pytest.raises(ValueError, match=r"gt\.csv line 2: id 'img0' does not match group_pattern"):
        open_dataset({**card, "split": {"group_pattern": r"img(\d\d)"}}, tmp_path)
    (tmp_path / "meta.csv").write_text("image,patient\n" + "".join(f"img{k},P{k % 5}\n" for k in range(23)))
    with pytest.raises(ValueError, match=r"meta\.csv: no 'patient' for 1 image\(s\), e\.g\. \['img23'\]"):
        open_dataset({**card, "split": {"group_column": "patient", "group_file": "meta.csv"}}, tmp_path)

    given = {"name": "g", "format": "csv", "classes": ["nev", "mel"],
             "splits": {"train": {"labels": "gt.csv", "images": "im"}}}
    with pytest.raises(ValueError, match=r"given splits \['train'\]; to re-split .* split.pool"):
        open_dataset({**given, "split": {"ratios": {"train": 0.75, "val": 0.25}}}, tmp_path)
    ds = open_dataset({**given, "split": {"pool": ["train"], "ratios": {"train": 0.75, "val": 0.25}}}, tmp_path)
    assert [ds.class_counts(s).tolist() for s in ds.splits] == [[9, 9, 0], [3, 3, 0]]


def test_dataset_group_pattern_keeps_a_patient_together(tmp_path):
    for person in range(6):
        for view in "abc":
            cls = "pneumonia" if person % 2 else "normal"
            (tmp_path / "xr" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "xr" / cls / f"person{person}_{view}.png")
    ds = open_dataset({"name": "xr", "format": "folder", "root": "xr",
                       "split": {"ratios": {"train": 2 / 3, "val": 1 / 3}, "group_pattern": r"^(person\d+)_"}},
                      tmp_path)
    people = {s: {k.split("_")[0] for k in ds.records(s).ids} for s in ds.splits}
    assert not people["train"] & people["val"]
    assert [ds.class_counts(s).tolist() for s in ds.splits] == [[6, 6, 0], [3, 3, 0]]


def chest_tree(root: Path, train: int = 10, test: int = 3) -> Path:
    """Kaggle chest X-ray style: ``train/<class>/`` and ``test/<class>/``, no val folder."""
    for split, n in (("train", train), ("test", test)):
        for cls in ("normal", "pneumonia"):
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / split / cls / f"{cls}{split}{k}.png")
    return root


def test_val_is_carved_out_of_train_when_the_data_gives_none(tmp_path):
    chest_tree(tmp_path / "chest_xray")
    card = {"name": "chest_xray", "format": "folder", "root": "chest_xray"}
    ds = open_dataset(card, tmp_path)
    assert ds.splits == ("train", "val", "test")
    # 20% of 10 images per class: 2 + 2 go to val, 8 + 8 stay in train; test is untouched
    assert [ds.class_counts(s).tolist() for s in ds.splits] == [[8, 8, 0], [2, 2, 0], [3, 3, 0]]
    assert ds.made == {"mode": "val_carve", "fraction": 0.2, "seed": 0, "group": None, "pool": ["train"]}
    assert ds.describe_made() == ("dataset 'chest_xray' has no val split: carved 20% of train (4 of 20 images) "
                                  "as val, stratified, seed 0")
    assert sorted(ds.records("train").ids + ds.records("val").ids) == sorted(
        f"{c}train{k}" for c in ("normal", "pneumonia") for k in range(10))
    assert ds.records("test").ids == [f"{c}test{k}" for c in ("normal", "pneumonia") for k in range(3)]
    ids, names = ds.assignment()
    written = read_split_csv(ds.write_splits(tmp_path / "splits.csv"))
    assert written == dict(zip(ids, names)) and Counter(written.values()) == {"train": 16, "val": 4, "test": 6}

    again = open_dataset(card, tmp_path)
    assert again.records("val").ids == ds.records("val").ids
    other = [open_dataset({**card, "split": {"seed": seed}}, tmp_path).records("val").ids for seed in (1, 2, 3)]
    assert any(ids != ds.records("val").ids for ids in other)
    half = open_dataset({**card, "split": {"val_fraction": 0.5, "seed": 4}}, tmp_path)
    assert [half.class_counts(s).tolist() for s in half.splits] == [[5, 5, 0], [5, 5, 0], [3, 3, 0]]
    assert half.describe_made().endswith("carved 50% of train (10 of 20 images) as val, stratified, seed 4")


def test_carved_val_keeps_a_group_together(tmp_path):
    lesion_set(tmp_path)  # 24 images, 3 per lesion, 8 lesions
    (tmp_path / "test.csv").write_text("image,label,lesion_id\nimg0,nev,L0\n")
    given = {"name": "lesions", "format": "csv", "classes": ["nev", "mel"], "split": {"group_column": "lesion_id"},
             "splits": {"train": {"labels": "gt.csv", "images": "im"}, "test": {"labels": "test.csv", "images": "im"}}}
    ds = open_dataset(given, tmp_path)
    assert not lesion_of(ds, "train") & lesion_of(ds, "val")
    # 20% of 8 lesions, dealt by class: one lesion of each class (3 + 3 images) goes to val
    assert [ds.class_counts(s).tolist() for s in ds.splits] == [[9, 9, 0], [3, 3, 0], [1, 0, 0]]
    assert ds.made["group"] == "lesion_id"
    assert ds.describe_made() == ("dataset 'lesions' has no val split: carved 20% of train (6 of 24 images) as "
                                  "val, stratified, grouped by lesion_id, seed 0")


def test_carve_errors(tmp_path):
    chest_tree(tmp_path / "x", train=1, test=1)
    card = {"name": "x", "format": "folder", "root": "x"}
    with pytest.warns(UserWarning, match=r"carving 20% of train's 2 images as val leaves val empty, so none is"):
        ds = open_dataset(card, tmp_path)
    assert ds.splits == ("train", "test") and ds.made is None and ds.describe_made() is None
    with pytest.raises(ValueError, match=r"carving 20% of train's 2 images as val leaves val empty; change"):
        open_dataset({**card, "split": {"val_fraction": 0.2}}, tmp_path)
    for bad in (1.5, 0, "a fifth", True):
        with pytest.raises(ValueError, match=rf"split.val_fraction = {bad!r}; allowed: a fraction between 0 and 1"):
            open_dataset({**card, "split": {"val_fraction": bad}}, tmp_path)
    with pytest.raises(ValueError, match=r"val_fraction carves val .* the data gives no splits \(use split.ratios\)"):
        open_dataset({**card, "root": "x/train", "split": {"val_fraction": 0.3}}, tmp_path)
    with pytest.raises(ValueError, match=r"did you mean 'val_fraction'"):
        open_dataset({**card, "split": {"val_fracton": 0.3}}, tmp_path)
