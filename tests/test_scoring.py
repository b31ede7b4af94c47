import argparse
import json

import numpy as np
import pytest

from medzoo.cli import submit as cli_submit
from medzoo.benchmarks.challenges import CHALLENGES
from medzoo.benchmarks.challenges.base import SubmissionError, challenge
from medzoo.benchmarks.metrics import specificity_at_sensitivity
from medzoo.benchmarks.scoring import score_submission

ISIC2017_TRUTH = ("image_id,melanoma,seborrheic_keratosis\n"
                  "ISIC_A,1.0,0.0\nISIC_B,0.0,1.0\nISIC_C,0.0,0.0\nISIC_D,1.0,0.0\nISIC_E,0.0,0.0\n")
ISIC2017_ROWS = ["ISIC_A,0.9,0.1", "ISIC_B,0.3,0.6", "ISIC_C,0.4,0.7", "ISIC_D,0.2,0.2", "ISIC_E,0.1,0.3"]
ISIC2017_HEADER = "image_id,melanoma,seborrheic_keratosis"


def write(path, text):
    path.write_text(text)
    return path


def test_isic2017_toy_scores_by_hand(tmp_path):
    truth = write(tmp_path / "truth.csv", ISIC2017_TRUTH)
    sub = write(tmp_path / "sub.csv", "\n".join([ISIC2017_HEADER, *ISIC2017_ROWS]) + "\n")
    s = score_submission(sub, truth, "isic2017")
    # melanoma: positives A .9, D .2 vs negatives B .3, C .4, E .1 -> 3 + 1 of 6 pairs
    assert s["melanoma_auc"] == pytest.approx(4 / 6)
    # ranking A+, C-, B-, D+ -> precisions 1 and 2/4
    assert s["melanoma_average_precision"] == pytest.approx(0.75)
    # catching D needs threshold .2: only E is a true negative
    assert s["melanoma_specificity_at_95_sensitivity"] == pytest.approx(1 / 3)
    # keratosis: positive B .6 beats A, D, E, loses to C -> 3 / 4
    assert s["seborrheic_keratosis_auc"] == pytest.approx(0.75)
    assert s["seborrheic_keratosis_average_precision"] == pytest.approx(0.5)
    assert s["seborrheic_keratosis_specificity_at_95_sensitivity"] == pytest.approx(0.75)
    assert s["mean_auc"] == pytest.approx((4 / 6 + 0.75) / 2)
    assert s["n"] == 5


def test_isic2017_shuffled_rows_header_less_and_jpg_ids_score_the_same(tmp_path):
    truth = write(tmp_path / "truth.csv", ISIC2017_TRUTH)
    base = score_submission(write(tmp_path / "a.csv", "\n".join([ISIC2017_HEADER, *ISIC2017_ROWS]) + "\n"),
                            truth, "isic2017")
    shuffled = [ISIC2017_ROWS[k] for k in (3, 0, 4, 2, 1)]
    assert score_submission(write(tmp_path / "b.csv", "\n".join(shuffled) + "\n"), truth, "isic2017") == base
    jpg_truth = write(tmp_path / "t2.csv", ISIC2017_TRUTH.replace(",1.0,", ".jpg,1.0,").replace(",0.0,", ".jpg,0.0,"))
    assert score_submission(tmp_path / "b.csv", jpg_truth, "isic2017") == base


def test_mismatched_ids_are_listed(tmp_path):
    truth = write(tmp_path / "truth.csv", ISIC2017_TRUTH)
    rows = [*ISIC2017_ROWS[:4], "ISIC_Z,0.1,0.3"]
    sub = write(tmp_path / "sub.csv", "\n".join([ISIC2017_HEADER, *rows]) + "\n")
    with pytest.raises(SubmissionError, match=r"1 truth ids missing from the submission \['ISIC_E'\], "
                                              r"1 submission ids not in the truth \['ISIC_Z'\]"):
        score_submission(sub, truth, "isic2017")


def test_invalid_submission_is_rejected_before_scoring(tmp_path):
    truth = write(tmp_path / "truth.csv", ISIC2017_TRUTH)
    rows = [*ISIC2017_ROWS[:4], "ISIC_E,1.2,0.3"]
    sub = write(tmp_path / "sub.csv", "\n".join([ISIC2017_HEADER, *rows]) + "\n")
    with pytest.raises(SubmissionError, match=r"outside \[0, 1\]: 'ISIC_E': \[1.2, 0.3\]"):
        score_submission(sub, truth, "isic2017")


ISIC2019_COLS = "MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"


def test_isic2019_ties_are_undecided_and_per_class_auc(tmp_path):
    truth_rows = {"a": "MEL", "b": "NV", "c": "NV", "d": "BCC", "e": "MEL"}
    cols = ISIC2019_COLS.split(",")
    truth = write(tmp_path / "truth.csv", f"image,{ISIC2019_COLS}\n" + "".join(
        f"{i}," + ",".join("1.0" if c == k else "0.0" for c in cols) + "\n" for i, k in truth_rows.items()))
    scores = {"a": (0.8, 0.1, 0.05), "b": (0.1, 0.7, 0.1), "c": (0.1, 0.4, 0.4), "d": (0.1, 0.5, 0.3), "e": (0.6, 0.2, 0.1)}
    sub = write(tmp_path / "sub.csv", f"image,{ISIC2019_COLS}\n" + "".join(
        f"{i}," + ",".join(map(str, v)) + ",0,0,0,0,0,0\n" for i, v in reversed(scores.items())))
    s = score_submission(sub, truth, "isic2019")
    # a, b, e right; c ties NV/BCC -> undecided (argmax alone would say NV, right); d says NV, truth BCC
    assert s["undecided"] == 1
    assert s["balanced_accuracy"] == pytest.approx((2 / 2 + 1 / 2 + 0 / 1) / 3)
    assert s["auc_MEL"] == 1.0
    assert s["auc_NV"] == pytest.approx(5 / 6)
    assert s["auc_BCC"] == pytest.approx(3 / 4)
    assert np.isnan(s["auc_AK"]) and np.isnan(s["auc_UNK"])
    assert s["mean_auc"] == pytest.approx((1 + 5 / 6 + 3 / 4) / 3)


def test_isic2019_truth_must_be_one_hot(tmp_path):
    truth = write(tmp_path / "truth.csv", f"image,{ISIC2019_COLS}\na,1,1,0,0,0,0,0,0,0\n")
    sub = write(tmp_path / "sub.csv", f"image,{ISIC2019_COLS}\na,1,0,0,0,0,0,0,0,0\n")
    with pytest.raises(SubmissionError, match="row 2 is not one-hot"):
        score_submission(sub, truth, "isic2019")


def test_isic2020_auc_and_average_precision(tmp_path):
    truth = write(tmp_path / "truth.csv", "image_name,patient_id,target\nI1,p,1\nI2,p,0\nI3,q,1\nI4,q,0\n")
    sub = write(tmp_path / "sub.csv", "image_name,target\nI4,0.2\nI3,0.4\nI2,0.6\nI1,0.8\n")
    s = score_submission(sub, truth, "isic2020")
    assert s["auc"] == pytest.approx(3 / 4)
    assert s["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["n"] == 4


def test_object_cxr_truth_annotations_and_paths(tmp_path):
    truth = write(tmp_path / "dev.csv", 'image_name,annotation\n08001.jpg,"0 10 10 20 20"\n08002.jpg,\n'
                                        '08003.jpg,"1 5 5 9 9"\n08004.jpg,\n')
    sub = write(tmp_path / "sub.csv", "image_path,prediction\n"
                                      "dev/08001.jpg,0.9\ndev/08002.jpg,0.7\ndev/08003.jpg,0.3\ndev/08004.jpg,0.1\n")
    assert score_submission(sub, truth, "object-cxr")["auc"] == pytest.approx(3 / 4)


def test_medmnist_binary_and_multiclass_like_the_evaluator(tmp_path):
    np.savez(tmp_path / "toy.npz", test_labels=np.array([[0], [1], [1], [0]]), val_labels=np.array([1, 0]))
    sub = write(tmp_path / "toy_test.csv", "3,0.4,0.6\n0,0.8,0.2\n2,0.6,0.4\n1,0.1,0.9\n")
    s = score_submission(sub, tmp_path / "toy.npz", "medmnist")
    assert s["auc"] == pytest.approx(3 / 4)
    assert s["acc"] == pytest.approx(0.5)  # last column > 0.5 -> [0, 1, 0, 1]
    truth = write(tmp_path / "truth.csv", "index,label\n0,0\n1,1\n2,2\n")
    sub3 = write(tmp_path / "s3.csv", "0,0.6,0.3,0.1\n1,0.2,0.5,0.3\n2,0.5,0.1,0.4\n")
    s3 = score_submission(sub3, truth, "medmnist")
    # class 0: 0.6 vs 0.2, 0.5 -> 1; class 1: 0.5 vs 0.3, 0.1 -> 1; class 2: 0.4 vs 0.1, 0.3 -> 1
    assert s3["auc"] == pytest.approx(1.0) and s3["acc"] == pytest.approx(2 / 3)
    with pytest.raises(SubmissionError, match="no array 'train_labels'"):
        score_submission(sub, tmp_path / "toy.npz", "medmnist", split="train")


def test_generic_labels_by_name(tmp_path):
    truth = write(tmp_path / "truth.csv", "image_id,label\nx1,cat\nx2,dog\nx3,dog\nx4,cat\n")
    sub = write(tmp_path / "sub.csv", "image_id,dog,cat\nx1,0.2,0.8\nx2,0.6,0.4\nx3,0.3,0.7\nx4,0.4,0.6\n")
    s = score_submission(sub, truth, "generic")
    # dog positives .6, .3 vs negatives .2, .4 -> 3 of 4
    assert s["auc_dog"] == pytest.approx(3 / 4) and s["auc_cat"] == pytest.approx(3 / 4)
    assert s["accuracy"] == pytest.approx(3 / 4)


def test_specificity_at_sensitivity_pins_ties():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.9, 0.1])
    # catching the 0.5 positive also flags the tied 0.5 negative
    assert specificity_at_sensitivity(y, s, 0.95) == pytest.approx(0.5)
    assert np.isnan(specificity_at_sensitivity(np.zeros(3), np.ones(3)))


def test_every_format_has_a_scorer_and_names_are_unique():
    assert all(callable(e.get("score")) for e in CHALLENGES)
    with pytest.raises(ValueError, match="'isic2017' is already registered"):
        challenge("isic2017", id_column="x", columns=None, score=lambda *a: None, description="")(lambda *a: None)


def test_options_are_checked(tmp_path):
    with pytest.raises(SubmissionError, match="unknown scoring option 'splt'; did you mean 'split'"):
        score_submission(tmp_path / "s.csv", tmp_path / "t.npz", "medmnist", splt="val")
    with pytest.raises(SubmissionError, match="takes no scoring options"):
        score_submission(tmp_path / "s.csv", tmp_path / "t.csv", "isic2017", split="val")


def test_score_command_prints_and_writes_json(tmp_path, capsys):
    truth = write(tmp_path / "truth.csv", ISIC2017_TRUTH)
    sub = write(tmp_path / "sub.csv", "\n".join([ISIC2017_HEADER, *ISIC2017_ROWS]) + "\n")
    parser = argparse.ArgumentParser()
    cli_submit.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["score", str(sub), "--truth", str(truth), "--format", "isic2017",
                              "--json", str(tmp_path / "s.json")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "mean_auc" in out and "0.7083" in out
    assert json.loads((tmp_path / "s.json").read_text())["seborrheic_keratosis_auc"] == 0.75
