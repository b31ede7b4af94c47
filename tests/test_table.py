"""The probability table: round trip, reading other tools' tables, validation errors, alignment."""
from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest

from medzoo.ensemble.table import ProbabilityTable, TableError, align, sidecar_path


def table(ids=("a", "b", "c"), probs=None, labels=(0, 1, -1), **meta):
    probs = [[0.9, 0.1], [0.25, 0.75], [1 / 3, 2 / 3]] if probs is None else probs
    return ProbabilityTable(list(ids), ["benign", "malignant"], np.array(probs), np.array(labels), meta)


def test_round_trip(tmp_path):
    t = table(member="resnet18", split="val", dataset="toy", config={"lr": 0.1, "size": 32})
    path = t.write(tmp_path / "predictions" / "resnet18" / "val.csv")
    assert path.read_text().splitlines() == [
        "image_id,label,benign,malignant", "a,benign,0.9,0.1", "b,malignant,0.25,0.75",
        "c,,0.3333333333,0.6666666667"]
    side = json.loads(sidecar_path(path).read_text())
    assert side["classes"] == ["benign", "malignant"] and side["n"] == 3 and side["member"] == "resnet18"
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    back = ProbabilityTable.read(path)
    assert back.ids == ["a", "b", "c"] and back.classes == ["benign", "malignant"]
    assert back.labels.tolist() == [0, 1, -1] and back.labels.dtype == np.int64
    assert np.abs(back.probs - t.probs).max() < 1e-10
    assert back.meta == {"member": "resnet18", "split": "val", "dataset": "toy", "config": {"lr": 0.1, "size": 32}}
    assert back.name == "resnet18" and back.split == "val" and not back.has_labels
    assert table(labels=(0, 1, 1)).has_labels
    assert sorted(p.name for p in path.parent.iterdir()) == ["val.csv", "val.json"]


def test_table_from_another_tool_without_sidecar(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("image_id,label,MEL,NV,UNK\nx1,NV,0.2,0.8,0\nx2,,0.5,0.5,0.0\n")
    t = ProbabilityTable.read(path)
    assert t.classes == ["MEL", "NV", "UNK"] and t.labels.tolist() == [1, -1] and t.meta == {}
    assert t.probs.tolist() == [[0.2, 0.8, 0.0], [0.5, 0.5, 0.0]]
    assert t.name == "?" and t.split is None
    empty = tmp_path / "empty.csv"
    empty.write_text("image_id,label,a,b\n")
    assert ProbabilityTable.read(empty).probs.shape == (0, 2)


def test_select_orders_rows_and_names_missing_ids():
    t = table(member="m")
    s = t.select(["c", "a"])
    assert s.ids == ["c", "a"] and s.labels.tolist() == [-1, 0] and s.probs[1].tolist() == [0.9, 0.1]
    with pytest.raises(TableError, match=r"table 'm' lacks 2 ids: \['x', 'y'\]"):
        t.select(["a", "x", "y"])


@pytest.mark.parametrize("kwargs, match", [
    ({"probs": [[0.5, 0.5], [0.5, 0.5]]}, r"probs has shape \(2, 2\), expected \(3, 2\)"),
    ({"ids": ("a", "b", "a")}, r"duplicate image ids \['a'\]"),
    ({"probs": [[0.5, 0.5], [np.nan, 0.5], [0.5, 0.5]]}, r"row 1 \(image_id 'b'\).*finite and in \[0, 1\]"),
    ({"probs": [[0.5, 0.5], [0.5, 0.5], [1.2, -0.2]]}, r"row 2 \(image_id 'c'\)"),
    ({"labels": (0, 2, -1)}, r"row 1 has label index 2, allowed 0..1 or -1"),
    ({"labels": (0, 1)}, r"2 labels for 3 ids"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(TableError, match=match):
        table(**kwargs)


def test_duplicate_classes_rejected():
    with pytest.raises(TableError, match="duplicate class names"):
        ProbabilityTable(["a"], ["x", "x"], np.array([[0.5, 0.5]]))


@pytest.mark.parametrize("text, match", [
    ("", "empty file"),
    ("id,label,a,b\n", "header .* must start with image_id,label"),
    ("image_id,label\n", "header .* must start with image_id,label"),
    ("image_id,label,a,b\nx,a,0.5\n", "line 2 has 3 fields, header has 4"),
    ("image_id,label,a,b\nx,c,0.5,0.5\n", r"line 2 has label 'c'; allowed \['a', 'b'\] or empty"),
    ("image_id,label,a,b\nx,a,0.5,half\n", "non-numeric probability"),
    ("image_id,label,a,b\nx,a,0.5,0.5\nx,b,0.5,0.5\n", r"duplicate image ids \['x'\]"),
    ("image_id,label,a,b\nx,a,0.5,inf\n", "finite and in"),
])
def test_read_errors(tmp_path, text, match):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TableError, match=match):
        ProbabilityTable.read(path)


def test_read_checks_the_sidecar_and_missing_files(tmp_path):
    path = table().write(tmp_path / "t.csv")
    side = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**side, "classes": ["malignant", "benign"]}))
    with pytest.raises(TableError, match="columns .* differ from the sidecar's classes"):
        ProbabilityTable.read(path)
    sidecar_path(path).write_text(json.dumps({**side, "n": 4}))
    with pytest.raises(TableError, match="3 rows but its sidecar says 4"):
        ProbabilityTable.read(path)
    with pytest.raises(TableError, match="no probability table at"):
        ProbabilityTable.read(tmp_path / "none.csv")


def test_a_csv_its_sidecar_does_not_describe_is_refused(tmp_path):
    path = table().write(tmp_path / "t.csv")
    path.write_text(path.read_text().replace("0.25,0.75", "0.75,0.25"))
    with pytest.raises(TableError, match="not the one its sidecar t.json describes"):
        ProbabilityTable.read(path)
    sidecar_path(path).unlink()
    assert ProbabilityTable.read(path).probs[1].tolist() == [0.75, 0.25]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = table().write(tmp_path / "t.csv")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sidecar_path(path).stat().st_mode & 0o777 == 0o666 & ~umask


def test_read_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("image_id,label,a,b\nx,a,0.5,0.5\n".encode("utf-8-sig"))
    assert ProbabilityTable.read(path).ids == ["x"]


def test_align_orders_by_the_first_table_and_merges_labels():
    a = table(labels=(-1, -1, -1), member="a")
    b = table(ids=("c", "a", "b"), probs=[[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]], labels=(1, 0, 1), member="b")
    ids, classes, probs, labels = align([a, b])
    assert ids == ["a", "b", "c"] and classes == ["benign", "malignant"]
    assert probs.shape == (2, 3, 2)
    assert probs[1].tolist() == [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]
    assert labels.tolist() == [0, 1, 1]


def test_align_errors():
    a = table(member="a")
    with pytest.raises(TableError, match=r"member 'b' does not cover .* missing 1 \['c'\], extra 1 \['z'\]"):
        align([a, table(ids=("a", "b", "z"), member="b")])
    other = ProbabilityTable(["a", "b", "c"], ["benign", "other"], a.probs, meta={"member": "c"})
    with pytest.raises(TableError, match=r"member 'c' has classes \['benign', 'other'\]"):
        align([a, other])
    with pytest.raises(TableError, match=r"member 'd' labels image 'b' as 'benign', member 'a' as 'malignant'"):
        align([a, table(labels=(0, 0, -1), member="d")])
    with pytest.raises(TableError, match="no tables"):
        align([])


def test_reading_rows_that_do_not_sum_to_one_warns_once_naming_the_first(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("image_id,label,a,b\nx,a,0.5,0.5\ny,b,0.5,0.4\nz,,0.7,0.2\nw,,0.5,0.5004\n")
    with pytest.warns(UserWarning) as caught:
        t = ProbabilityTable.read(path)
    assert [str(w.message) for w in caught] == [
        f"{path}: 2 of 4 rows do not sum to 1 (within 0.001); first: row 1 (image_id 'y') sums to 0.9"]
    assert t.rows_sum_to_one().tolist() == [True, False, False, True]


def test_tables_marked_as_scores_and_normalised_tables_read_silently(tmp_path):
    scores = ProbabilityTable(["x", "y"], ["a", "b", "c"], [[0.2, 0.3, 0.4], [0.1, 0.1, 0.1]],
                              meta={"method": "median", "rows_sum_to_one": False})
    scores.write(tmp_path / "median.csv")
    table().write(tmp_path / "t.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ProbabilityTable.read(tmp_path / "median.csv").meta["rows_sum_to_one"] is False
        ProbabilityTable.read(tmp_path / "t.csv")
