"""``medzoo check`` on tiny generated images: counts, missing classes, unreadable and identical images, the plan."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medzoo.cli import main
from medzoo.zoo.check import check
from medzoo.zoo.config import parse_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "arrays"))
    monkeypatch.delenv("MEDZOO_DATA", raising=False)


def picture(path: Path, seed: int) -> Path:
    """A random RGB picture, 8x8 to 32x32 pixels, different for every seed."""
    rng = np.random.default_rng(seed)
    w, h = rng.integers(8, 33, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def tree(root: Path, counts: dict) -> Path:
    """``root/<split>/<class>/<split><class><k>.png``, ``counts = {split: {class: n}}``, all pictures distinct."""
    seed = 0
    for split, per in counts.items():
        for cls, n in per.items():
            for k in range(n):
                seed += 1
                picture(root / split / cls / f"{split}{cls}{k}.png", seed)
    return root


COUNTS = {"train": {"a": 6, "b": 7}, "val": {"a": 5, "b": 5}, "test": {"a": 2, "b": 3}}


def zoo(tmp_path: Path, **card) -> dict:
    """A two-member config on the dataset ``tmp_path/xray`` (a card written beside it)."""
    lines = ['name = "xray"', 'format = "folder"', 'root = "xray"'] + [f"{k} = {v!r}" for k, v in card.items()]
    (tmp_path / "xray.toml").write_text("\n".join(lines).replace("'", '"') + "\n")
    return {"run": "r", "dataset": str(tmp_path / "xray.toml"), "data_root": str(tmp_path), "device": "cpu",
            "train": {"epochs": 3, "batch_size": 4},
            "members": [{"model": "squeezenet1_1", "size": 32},
                        {"model": "resnet18", "size": 40, "id": "res", "epochs": 2, "max_train_batches": 2}]}


def run_check(tmp_path: Path, config: dict, **kw):
    lines = []
    report = check(parse_config(config), results_dir=tmp_path / "results", log=lines.append, estimate=False, **kw)
    return report, lines


def test_counts_plan_and_cache_on_a_clean_dataset(tmp_path):
    tree(tmp_path / "xray", COUNTS)
    report, lines = run_check(tmp_path, zoo(tmp_path))
    assert report.errors == []
    assert report.counts == {"train": {"images": 13, "unlabeled": 0, "classes": {"a": 6, "b": 7}},
                             "val": {"images": 10, "unlabeled": 0, "classes": {"a": 5, "b": 5}},
                             "test": {"images": 5, "unlabeled": 0, "classes": {"a": 2, "b": 3}}}
    assert report.warnings == ["split 'test': class(es) with fewer than 5 images {'a': 2, 'b': 3}; "
                               "scores on so few images are noisy"]
    assert report.duplicates == []
    # 13 train images in batches of 4 (the last partial batch dropped): 3 per epoch, capped at 2 for res
    assert report.plan == [
        {"id": "squeezenet1_1", "model": "squeezenet1_1", "size": 32, "epochs": 3, "batch_size": 4, "batches": 3,
         "units": 1, "val_images": 10, "state": "pending", "epochs_left": 3, "finals": 1},
        {"id": "res", "model": "resnet18", "size": 40, "epochs": 2, "batch_size": 4, "batches": 2,
         "units": 1, "val_images": 10, "state": "pending", "epochs_left": 2, "finals": 1}]
    assert report.estimate is None
    assert "decoded 28 images at 40, 32 px: all readable (now cached)" in lines
    assert lines[-1] == "check passed: 0 error(s), 1 warning(s)"
    cached = sorted(p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (tmp_path / "arrays" / "xray").iterdir())
    assert cached == ["test-32px", "test-40px", "train-32px", "train-40px", "val-32px", "val-40px"]


def test_cross_split_byte_identical_copy_is_an_error_naming_both_files(tmp_path):
    root = tree(tmp_path / "xray", COUNTS)
    shutil.copy(root / "train" / "a" / "traina0.png", root / "test" / "a" / "renamed.png")
    with pytest.raises(ValueError) as err:
        run_check(tmp_path, zoo(tmp_path))
    (line,) = [e for e in str(err.value).splitlines() if "identical" in e]
    assert line.startswith("1 set(s) of identical images span splits (train+test 1): train 'traina0' (")
    assert str(root / "train" / "a" / "traina0.png") in line and str(root / "test" / "a" / "renamed.png") in line
    assert "byte-identical files" in line


def test_cross_split_copy_allowed_by_the_card(tmp_path):
    root = tree(tmp_path / "xray", COUNTS)
    shutil.copy(root / "train" / "a" / "traina0.png", root / "val" / "a" / "renamed.png")
    report, _ = run_check(tmp_path, zoo(tmp_path, duplicates="warn"))
    assert report.errors == []
    assert [w for w in report.warnings if "identical" in w][0].startswith(
        "1 set(s) of identical images span splits (train+val 1): train 'traina0'")
    assert report.duplicates == [[("train", "traina0"), ("val", "renamed")]]
    report, _ = run_check(tmp_path, zoo(tmp_path, duplicates="allow"))
    assert report.errors == [] and not any("identical" in w for w in report.warnings)
    assert any(n.startswith('allowed by the card (duplicates = "allow"): 1 set(s) of identical images span')
               for n in report.notes)


def test_png_and_bmp_of_the_same_picture_are_pixel_identical(tmp_path):
    root = tree(tmp_path / "xray", COUNTS)
    Image.open(root / "train" / "a" / "traina1.png").save(root / "train" / "b" / "again.bmp")
    report, _ = run_check(tmp_path, zoo(tmp_path))
    assert report.errors == []
    assert report.duplicates == [[("train", "traina1"), ("train", "again")]]
    (line,) = [w for w in report.warnings if "identical" in w]
    assert line.startswith("1 set(s) of identical images within a split (train 1), 1 of them with different "
                           "labels: train 'traina1' (")
    assert line.endswith(f"{root / 'train' / 'b' / 'again.bmp'}), pixel-identical at 40 px; "
                         f"each copy counts again in training or scoring")


def test_class_missing_from_val_is_an_error_from_test_a_warning(tmp_path):
    tree(tmp_path / "xray", {"train": {"a": 5, "b": 5, "c": 5}, "val": {"a": 5, "b": 5}, "test": {"c": 5}})
    (tmp_path / "xray" / "val" / "c").mkdir()
    with pytest.raises(ValueError) as err:
        run_check(tmp_path, zoo(tmp_path))
    lines = str(err.value).splitlines()
    assert lines[0] == "dataset 'xray': 1 error(s):"
    assert lines[1].startswith("split 'val' has no image of class(es) ['c'] (counts {'a': 5, 'b': 5, 'c': 0}): "
                               "the validation ROC-AUC is NaN")


def test_truncated_image_is_an_error_naming_the_file(tmp_path):
    root = tree(tmp_path / "xray", COUNTS)
    bad = root / "val" / "b" / "valb2.png"
    bad.write_bytes(bad.read_bytes()[:50])
    lines = []
    with pytest.raises(ValueError, match=r"cannot decode image .*valb2\.png.*unreadable or truncated"):
        check(parse_config(zoo(tmp_path)), results_dir=tmp_path, log=lines.append, estimate=False)
    assert "decoded 28 images at 40, 32 px: 1 unreadable (the splits holding them are not cached)" in lines
    assert lines[-1] == "check failed: 1 error(s), 1 warning(s)"


def test_estimate_covers_every_unfinished_member(tmp_path):
    tree(tmp_path / "xray", COUNTS)
    config = zoo(tmp_path)
    config["members"] = [{"model": "squeezenet1_1", "size": 32, "id": "s1"},
                         {"model": "squeezenet1_1", "size": 32, "id": "s2", "epochs": 1}]
    report = check(parse_config(config), results_dir=tmp_path / "results", log=lambda line: None)
    assert report.estimate["device"] == "cpu"
    assert sorted(report.estimate["seconds"]) == ["s1", "s2"]
    assert report.estimate["total"] == pytest.approx(sum(report.estimate["seconds"].values()))
    done = tmp_path / "results" / "r" / "members" / "s1"
    done.mkdir(parents=True)
    (done / "done.json").write_text('{"epochs": 3, "val_auc": 0.9, "minutes": 1.0}')
    lines = []
    report = check(parse_config(config), results_dir=tmp_path / "results", log=lines.append)
    assert [(r["id"], r["state"], r["epochs_left"]) for r in report.plan] == [("s1", "done", 0), ("s2", "pending", 1)]
    assert list(report.estimate["seconds"]) == ["s2"]
    assert [line.split()[:7] for line in lines if line.startswith("  s")] == [
        ["s1", "squeezenet1_1", "32", "3", "4", "3", "done"], ["s2", "squeezenet1_1", "32", "1", "4", "3", "pending"]]
    assert [line.split()[-1] for line in lines if line.startswith("  s")][0] == "-"


def test_plan_counts_every_repeat_and_fold(tmp_path):
    tree(tmp_path / "xray", COUNTS)
    config = {**zoo(tmp_path), "seeds": [0, 1], "cv": {"folds": 3}}
    config["members"] = config["members"][:1]
    done = tmp_path / "results" / "r" / "members" / "squeezenet1_1@s0@f2"
    done.mkdir(parents=True)
    (done / "done.json").write_text('{"epochs": 3, "val_auc": 0.9, "minutes": 1.0}')
    report, lines = run_check(tmp_path, config)
    # 23 train+val images in 3 folds: 15 to fit (3 batches of 4), 7 held out; 5 of 6 runs left, 3 epochs each
    assert report.plan == [{"id": "squeezenet1_1", "model": "squeezenet1_1", "size": 32, "epochs": 3, "batch_size": 4,
                            "batches": 3, "units": 6, "val_images": 7, "state": "1/6 done", "epochs_left": 15,
                            "finals": 5}]
    assert "2 repeats, 3-fold cross-validation over train+val" in next(line for line in lines if "plan:" in line)


def test_check_command_exit_codes(tmp_path, capsys):
    root = tree(tmp_path / "xray", COUNTS)
    config = tmp_path / "zoo.toml"
    config.write_text(f'run = "r"\ndataset = "{tmp_path / "xray.toml"}"\ndata_root = "{tmp_path}"\n'
                      f'device = "cpu"\n[[members]]\nmodel = "squeezenet1_1"\nsize = 32\n')
    zoo(tmp_path)
    assert main(["check", str(config), "--no-estimate", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dataset 'xray': 2 classes, format folder")
    assert out[-1] == "check passed: 0 error(s), 1 warning(s)"
    shutil.copy(root / "val" / "b" / "valb0.png", root / "test" / "b" / "leak.png")
    assert main(["check", str(config), "--no-estimate", "--results", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert ("medzoo check: error: dataset 'xray': 1 error(s):\n1 set(s) of identical images span splits "
            "(val+test 1): val 'valb0'") in err
