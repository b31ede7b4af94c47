import argparse
import json
import re

import numpy as np
import pandas as pd
import pytest

from medzoo.cli import submit as cli_submit
from medzoo.benchmarks.leaderboard import write_leaderboard
from medzoo.benchmarks.challenges import CHALLENGES
from medzoo.benchmarks.challenges.base import Submission, SubmissionError, challenge
from medzoo.benchmarks.challenges.medmnist import medmnist_flag, medmnist_index
from medzoo.benchmarks.submission import (build_submission, check_options, read_submission, submission_file_name,
                                          submit_run, top_entry, validate_submission, write_submission)
from medzoo.ensemble.run import build_ensembles
from medzoo.ensemble.table import ProbabilityTable

# MedMNIST 3.0.2, medmnist/evaluator.py, Evaluator.parse_and_evaluate: the file name is
# "{flag}{size_flag}_{split}|*|.csv" split on "_" (flag, then size or split) and the run is
# filename.split("@")[-1].split(".")[0]; the standard name is
# "{flag}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv".
MEDMNIST_NAME = re.compile(r"(?P<flag>[^_]+)(?:_(?P<size>\d+))?_(?P<split>train|val|test)[^@]*@(?P<run>[^.@]+)\.csv")


def medmnist_parse(filename: str) -> tuple[str, str | None, str, str]:
    """``(flag, size, split, run)`` read the way MedMNIST's ``parse_and_evaluate`` reads them."""
    flag, split_, *_ = filename.split("_")
    size = None
    if not split_.startswith(("train", "val", "test")):
        flag, size, split_, *_ = filename.split("_")
    split = next(s for s in ("train", "val", "test") if split_.startswith(s))
    return flag, size, split, filename.split("@")[-1].split(".")[0]

ISIC_IDS = ["ISIC_0000001", "ISIC_0000002.jpg", "ISIC_0000003", "ISIC_0000004"]
ISIC_PROBS = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [0.05, 0.9, 0.05]]
ISIC2019 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]


def isic2017_table(order=(0, 1, 2)):
    classes = ["melanoma", "nevus", "seborrheic_keratosis"]
    probs = np.array(ISIC_PROBS)[:, list(order)]
    return ProbabilityTable(ISIC_IDS, [classes[k] for k in order], probs)


def isic2019_table(classes=ISIC2019, n=3, seed=0):
    probs = np.random.default_rng(seed).dirichlet(np.ones(len(classes)), n)
    return ProbabilityTable([f"ISIC_{i:07d}" for i in range(n)], classes, probs)


def test_isic2017_derives_tasks_by_name_with_exact_text(tmp_path):
    path = write_submission(isic2017_table(), "isic2017", tmp_path / "s.csv")
    assert path.read_text() == ("image_id,melanoma,seborrheic_keratosis\n"
                                "ISIC_0000001,0.7,0.1\n"
                                "ISIC_0000002,0.1,0.3\n"
                                "ISIC_0000003,0.25,0.5\n"
                                "ISIC_0000004,0.05,0.05\n")


def test_isic2017_class_order_in_table_does_not_matter(tmp_path):
    a = write_submission(isic2017_table((0, 1, 2)), "isic2017", tmp_path / "a.csv").read_text()
    b = write_submission(isic2017_table((2, 0, 1)), "isic2017", tmp_path / "b.csv").read_text()
    assert a == b


def test_isic2017_spelling_variants_and_header_less_variant(tmp_path):
    t = ProbabilityTable(["ISIC_1"], ["Melanoma", "Nevus", "Seborrheic Keratosis"], [[0.2, 0.5, 0.3]])
    path = write_submission(t, "isic2017", tmp_path / "s.csv", header=False)
    assert path.read_text() == "ISIC_1,0.2,0.3\n"
    back = read_submission(path, "isic2017")
    assert not back.has_header and back.header == ["image_id", "melanoma", "seborrheic_keratosis"]
    assert back.values.tolist() == [[0.2, 0.3]]


def test_isic2017_missing_task_class_names_the_choices(tmp_path):
    t = ProbabilityTable(["a"], ["melanoma", "other"], [[0.4, 0.6]])
    with pytest.raises(SubmissionError, match="no table class for column 'seborrheic_keratosis'.*'other'"):
        write_submission(t, "isic2017", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()
    path = write_submission(t, "isic2017", tmp_path / "s.csv", class_map={"other": "seborrheic_keratosis"})
    assert path.read_text().splitlines()[1] == "a,0.4,0.6"


@pytest.mark.parametrize("unk, expected", [("zero", 0.0), ("uncertainty", None)])
def test_isic2019_columns_by_name_and_unk(tmp_path, unk, expected):
    shuffled = ["NV", "SCC", "MEL", "DF", "AK", "VASC", "BCC", "BKL"]
    t = isic2019_table(shuffled)
    path = write_submission(t, "isic2019", tmp_path / "s.csv", unk=unk)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
    back = read_submission(path, "isic2019")
    for j, col in enumerate(ISIC2019):
        np.testing.assert_allclose(back.values[:, j], t.probs[:, shuffled.index(col)], atol=1e-9)
    unk_col = back.column("UNK")
    np.testing.assert_allclose(unk_col, 0.0 if expected == 0.0 else 1 - t.probs.max(axis=1), atol=1e-9)


def test_isic2019_long_class_names_and_class_map():
    names = ["melanoma", "melanocytic nevus", "basal cell carcinoma", "actinic keratosis", "benign keratosis",
             "dermatofibroma", "vascular lesion", "squamous cell carcinoma"]
    sub = build_submission(isic2019_table(names), "isic2019")
    assert sub.header[1:] == [*ISIC2019, "UNK"]
    renamed = ["malignant melanoma", *names[1:]]
    with pytest.raises(SubmissionError, match="no table class for column 'MEL'"):
        build_submission(isic2019_table(renamed), "isic2019")
    sub2 = build_submission(isic2019_table(renamed), "isic2019", class_map={"malignant melanoma": "MEL"})
    np.testing.assert_array_equal(sub2.values, sub.values)


def test_isic2019_missing_class_is_an_error_but_unk_is_not():
    with pytest.raises(SubmissionError, match="column 'SCC'"):
        build_submission(isic2019_table(ISIC2019[:-1]), "isic2019")
    with pytest.raises(SubmissionError, match="unk='max'.*'zero' or 'uncertainty'"):
        build_submission(isic2019_table(), "isic2019", unk="max")


def test_isic2020_target_is_the_malignant_class(tmp_path):
    t = ProbabilityTable(["ISIC_0052060.jpg", "ISIC_0052349"], ["benign", "malignant"], [[0.9, 0.1], [0.25, 0.75]])
    path = write_submission(t, "isic2020", tmp_path / "s.csv")
    assert path.read_text() == "image_name,target\nISIC_0052060,0.1\nISIC_0052349,0.75\n"


def test_binary_format_needs_a_named_positive_class():
    t = ProbabilityTable(["a", "b"], ["x", "y"], [[0.9, 0.1], [0.3, 0.7]])
    with pytest.raises(SubmissionError, match="no table class for column 'target'"):
        build_submission(t, "isic2020")
    assert build_submission(t, "isic2020", positive="y").values[:, 0].tolist() == [0.1, 0.7]
    with pytest.raises(SubmissionError, match=r"positive class \['z'\]"):
        build_submission(t, "isic2020", positive="z")


def test_object_cxr_spells_ids_from_the_challenge_list(tmp_path):
    t = ProbabilityTable(["08002", "08001"], ["no_object", "foreign_object"], [[0.8, 0.2], [0.35, 0.65]])
    listing = tmp_path / "test.csv"
    listing.write_text("image_path\n/data/test/08001.jpg\n/data/test/08002.jpg\n")
    path = write_submission(t, "object-cxr", tmp_path / "s.csv", image_paths=listing)
    assert path.read_text() == "image_path,prediction\n/data/test/08002.jpg,0.2\n/data/test/08001.jpg,0.65\n"
    assert write_submission(t, "object-cxr", tmp_path / "ids.csv").read_text().splitlines()[1] == "08002,0.2"
    listing.write_text("/data/test/08001.jpg\n/data/test/08002.jpg\n/data/test/08003.jpg\n")
    with pytest.raises(SubmissionError, match=r"1 expected ids missing: \['/data/test/08003.jpg'\]"):
        write_submission(t, "object-cxr", tmp_path / "bad.csv", image_paths=listing)
    assert not (tmp_path / "bad.csv").exists()


def test_medmnist_header_less_sorted_by_integer_index(tmp_path):
    t = ProbabilityTable(["test_00002", "test_00000", "test_00001"], ["normal", "pneumonia"],
                         [[0.3, 0.7], [0.9, 0.1], [0.4, 0.6]])
    path = write_submission(t, "medmnist", tmp_path / "pneumoniamnist_test.csv")
    assert path.read_text() == "0,0.9,0.1\n1,0.4,0.6\n2,0.3,0.7\n"
    swapped = write_submission(t, "medmnist", tmp_path / "b.csv", classes=["pneumonia", "normal"])
    assert swapped.read_text().splitlines()[0] == "0,0.1,0.9"
    back = read_submission(path, "medmnist")
    assert back.ids == ["0", "1", "2"] and back.header == ["index", "score_0", "score_1"]


def test_medmnist_index_from_ids():
    assert [medmnist_index(i) for i in ["test_00012", "12", 7, "val-3"]] == [12, 12, 7, 3]
    with pytest.raises(SubmissionError, match="cannot read an integer index from id 'abc'"):
        medmnist_index("abc")


def test_medmnist_indices_must_be_contiguous_from_zero():
    t = ProbabilityTable(["0", "2"], ["a", "b"], [[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(SubmissionError, match=r"indices must be exactly 0\.\.1"):
        build_submission(t, "medmnist")
    with pytest.raises(SubmissionError, match="always without a header"):
        build_submission(t, "medmnist", header=True)


def test_generic_header_is_the_table_classes(tmp_path):
    t = ProbabilityTable(["img1.png", "img2.png"], ["b", "a"], [[0.25, 0.75], [1.0, 0.0]])
    path = write_submission(t, "generic", tmp_path / "s.csv")
    assert path.read_text() == "image_id,b,a\nimg1.png,0.25,0.75\nimg2.png,1,0\n"
    renamed = build_submission(t, "generic", class_map={"a": "A"})
    assert renamed.header == ["image_id", "b", "A"]
    with pytest.raises(SubmissionError, match="class_map: unknown class 'c'; table classes: "):
        build_submission(t, "generic", class_map={"c": "C"})
    with pytest.raises(SubmissionError, match="format 'medmnist': unknown option 'class_map'; did you mean 'classes'\\? allowed: classes, header"):
        build_submission(t, "medmnist", class_map={"a": "A"})


@pytest.mark.parametrize("fmt", sorted(CHALLENGES.names()))
def test_every_format_round_trips(tmp_path, fmt):
    if fmt == "isic2017":
        table = isic2017_table()
    elif fmt == "isic2019":
        table = isic2019_table()
    else:
        table = ProbabilityTable(["0", "1", "2"], ["benign", "malignant"], [[0.5, 0.5], [0.125, 0.875], [1.0, 0.0]])
    options = {"positive": "malignant"} if fmt in ("isic2020", "object-cxr") else {}
    sub = build_submission(table, fmt, **options)
    back = read_submission(write_submission(table, fmt, tmp_path / "s.csv", **options), fmt)
    assert back.header == sub.header and back.ids == sub.ids and back.has_header == CHALLENGES[fmt].get("header")
    np.testing.assert_allclose(back.values, sub.values, rtol=1e-9)


def test_expected_ids_missing_and_extra_are_listed_and_nothing_is_written(tmp_path):
    expected = ["ISIC_0000001.jpg", "ISIC_0000002", "ISIC_0000003", "ISIC_0000009"]
    target = tmp_path / "s.csv"
    with pytest.raises(SubmissionError, match=r"1 expected ids missing: \['ISIC_0000009'\].*"
                                              r"1 ids not in the expected list: \['ISIC_0000004'\]; nothing written to "):
        write_submission(isic2017_table(), "isic2017", target, expected_ids=expected)
    assert list(tmp_path.iterdir()) == []
    write_submission(isic2017_table(), "isic2017", target, expected_ids=[*expected[:3], "ISIC_0000004"])
    assert len(target.read_text().splitlines()) == 5


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = write_submission(isic2017_table(), "isic2017", tmp_path / "s.csv")
    before = target.read_text()
    with pytest.raises(SubmissionError):
        write_submission(isic2017_table(), "isic2017", target, expected_ids=["nope"])
    assert target.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_duplicate_ids_after_spelling():
    t = ProbabilityTable(["ISIC_1.jpg", "ISIC_1.png"], ["melanoma", "nevus", "seborrheic_keratosis"],
                         [[0.2, 0.5, 0.3], [0.1, 0.8, 0.1]])
    with pytest.raises(SubmissionError, match=r"1 duplicate ids: \['ISIC_1'\]"):
        build_submission(t, "isic2017")


def test_values_must_be_finite_and_in_unit_interval():
    sub = Submission("isic2020", ["image_name", "target"], ["a", "b", "c"], np.array([[0.5], [np.nan], [1.5]]))
    with pytest.raises(SubmissionError, match=r"2 rows with values not finite or outside \[0, 1\]: 'b': \[nan\], 'c': \[1.5\]"):
        validate_submission(sub)


def test_columns_must_be_the_required_ones_in_order(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("image_id,seborrheic_keratosis,melanoma\nISIC_1,0.1,0.2\n")
    with pytest.raises(SubmissionError, match="required \\['image_id', 'melanoma', 'seborrheic_keratosis'\\] in this order"):
        read_submission(path, "isic2017")
    path.write_text("ISIC_1,0.1\n")
    with pytest.raises(SubmissionError, match="not the required header image_name,target"):
        read_submission(path, "isic2020")
    path.write_text("index,score_0\n0,0.5\n")
    with pytest.raises(SubmissionError, match="medmnist files have no header row"):
        read_submission(path, "medmnist")


def test_unknown_format_and_option_suggest_the_closest():
    with pytest.raises(SubmissionError, match="unknown submission format 'isic-2017'; did you mean 'isic2017'"):
        build_submission(isic2017_table(), "isic-2017")
    with pytest.raises(SubmissionError, match="unknown option 'hedaer'; did you mean 'header'\\? allowed: "):
        build_submission(isic2017_table(), "isic2017", hedaer=False)
    with pytest.raises(SubmissionError, match="header=False is not allowed"):
        build_submission(isic2017_table(), "generic", header=False)


def test_duplicate_format_name_is_an_error():
    with pytest.raises(ValueError, match="'generic' is already registered"):
        challenge("generic", id_column="x", columns=None, score=None, description="")(lambda *a, **k: None)


def make_run(tmp_path, config=None):
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    isic2017_table().write(run / "predictions" / "resnet18" / "test.csv")
    isic2017_table((2, 1, 0)).write(run / "ensembles" / "mean" / "test.csv")
    (run / "leaderboard.csv").write_text("rank,entry,kind,val_auc,test_auc\n"
                                         "1,mean,ensemble,0.91,0.8\n2,resnet18,member,0.80,0.7\n")
    (run / "config.json").write_text(json.dumps(config or {}))
    return run


def test_top_entry_is_the_boards_rank_one_not_the_highest_val_auc(tmp_path):
    run = make_run(tmp_path)
    assert top_entry(run) == ("mean", "ensemble")
    (run / "leaderboard.csv").write_text("rank,entry,kind,val_auc,val_scored\n1,resnet18,member,0.80,\n"
                                         "2,mean,ensemble,0.99,in-sample\n")
    assert top_entry(run) == ("resnet18", "member")  # an in-sample score is ranked below the honest ones


def test_a_repeated_entry_submits_the_mean_of_its_repeats(tmp_path):
    run = make_run(tmp_path)
    first = isic2017_table()
    first.write(run / "ensembles" / "vote@s0" / "test.csv")
    ProbabilityTable(first.ids, first.classes, first.probs[:, ::-1]).write(run / "ensembles" / "vote@s1" / "test.csv")
    result = submit_run(run, "generic", entry="vote")
    a, b = (ProbabilityTable.read(run / "ensembles" / f"vote@s{s}" / "test.csv") for s in (0, 1))
    rows = result.path.read_text().splitlines()
    assert "mean of its 2 repeats" in result.checked and len(rows) == 5
    row = [float(v) for v in rows[1].split(",")[1:]]
    np.testing.assert_allclose(row, (a.probs[0] + b.probs[0]) / 2, atol=1e-6)
    assert not np.allclose(a.probs[0], b.probs[0])


def test_submit_run_defaults_to_the_top_entry_and_config_format(tmp_path):
    run = make_run(tmp_path, {"submission": {"format": "isic2017", "header": False}})
    result = submit_run(run)
    assert result.path == run / "submissions" / "isic2017-mean.csv" and result.rows == 4
    assert result.kind == "ensemble" and "not checked" in result.checked
    assert result.path.read_text().splitlines()[0] == "ISIC_0000001,0.7,0.1"
    other = submit_run(run, "generic", entry="resnet18")
    assert other.path.read_text().splitlines()[0] == "image_id,melanoma,nevus,seborrheic_keratosis"


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli_submit.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_submit_command_with_entry_prints_path_and_rows(tmp_path, capsys):
    run = make_run(tmp_path)
    assert run_cli(["submit", str(run), "--format", "isic2017", "--entry", "resnet18"]) == 0
    out = capsys.readouterr().out
    path = run / "submissions" / "isic2017-resnet18.csv"
    assert f"wrote {path}: 4 rows" in out and "member 'resnet18'" in out
    assert path.read_text().splitlines()[0] == "image_id,melanoma,seborrheic_keratosis"


def test_submit_command_unknown_entry_suggests(tmp_path):
    with pytest.raises(FileNotFoundError, match="entry 'resnet19'.*did you mean 'resnet18'"):
        run_cli(["submit", str(make_run(tmp_path)), "--format", "isic2017", "--entry", "resnet19"])


def test_submit_without_any_format_writes_generic_and_says_so(tmp_path):
    run = make_run(tmp_path)
    result = submit_run(run)
    assert result.path == run / "submissions" / "generic-mean.csv" and result.format == "generic"
    assert result.checked.startswith(f"format generic (none given; {run / 'config.json'} [submission] names none, "
                                     f"and {run / 'config.json'} names no dataset); not checked")
    assert result.path.read_text().splitlines()[:2] == ["image_id,seborrheic_keratosis,nevus,melanoma",
                                                        "ISIC_0000001,0.1,0.2,0.7"]
    assert submit_run(run, format="isic2017").path == run / "submissions" / "isic2017-mean.csv"


def test_submit_takes_the_entry_from_the_config(tmp_path):
    run = make_run(tmp_path, {"submission": {"format": "isic2020", "entry": "resnet18", "positive": "melanoma"}})
    result = submit_run(run)
    assert (result.entry, result.kind, result.path.name) == ("resnet18", "member", "isic2020-resnet18.csv")
    assert result.path.read_text().splitlines()[1] == "ISIC_0000001,0.7"


def test_submit_run_whose_data_is_absent_takes_the_card_format_and_its_own_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path / "no-data-here"))
    run = make_run(tmp_path, {"dataset": "isic2017"})
    result = submit_run(run, entry="resnet18")
    assert result.format == "isic2017" and result.path.name == "isic2017-resnet18.csv"
    assert result.checked.startswith("not checked against the dataset's test list (FileNotFoundError: ")


@pytest.mark.parametrize("section, message", [
    ({"formatt": "isic2017"}, "[submission] unknown key 'formatt'; did you mean 'format'? allowed: class_map, "
                              "classes, entry, format, header, image_paths, positive, unk"),
    ({"format": "isic217"}, "[submission] format: unknown submission format 'isic217'; did you mean 'isic2017'?"),
    ({"format": 2017}, "[submission] format = 2017; expected one of: generic, isic2017, isic2019"),
    ({"format": "medmnist", "class_map": {"a": "b"}},
     "[submission] unknown key 'class_map'; did you mean 'classes'? allowed with format 'medmnist': classes, entry, "
     "format, header"),
    ({"format": "isic2019", "unkk": "zero"}, "unknown key 'unkk'; did you mean 'unk'? allowed with format 'isic2019': "
                                             "class_map, entry, format, header, unk"),
    ({"format": "isic2019", "unk": "max"}, "[submission] isic2019: unk='max'; allowed 'zero' or 'uncertainty'"),
    ({"header": "no"}, "[submission] header = 'no'; expected true or false"),
    ({"format": "medmnist", "header": True}, "[submission] medmnist: header=True is not allowed; this format is "
                                             "always without a header row"),
    ({"format": "isic2020", "positive": 1},
     "[submission] positive = 1; expected a class name or a list of class names"),
    ({"class_map": ["mel"]}, "[submission] class_map = ['mel']; expected a table {table class = column} of names"),
    ({"format": "medmnist", "classes": "normal"}, "[submission] classes = 'normal'; expected the list of class names"),
    ({"entry": ""}, "[submission] entry = ''; expected a member id or ensemble name"),
    ("isic2017", "[submission] must be a table of options, got str 'isic2017'"),
])
def test_check_options_names_the_value_and_what_is_allowed(section, message):
    with pytest.raises(SubmissionError) as e:
        check_options(section)
    assert message in str(e.value)


def test_check_options_accepts_each_formats_options():
    for section in ({"format": "isic2017", "header": False, "class_map": {"mel": "melanoma"}},
                    {"format": "isic2019", "unk": "uncertainty"}, {"format": "object-cxr", "image_paths": "list.txt"},
                    {"format": "medmnist", "classes": ["normal", "pneumonia"], "entry": "greedy"},
                    {"header": False}, {}):
        assert check_options(section) == section
    assert check_options(None) == {}


def test_submit_run_checks_the_config_section_first(tmp_path):
    run = make_run(tmp_path, {"submission": {"formatt": "isic2017"}})
    with pytest.raises(SubmissionError, match=f"^{run / 'config.json'}: \\[submission\\] unknown key 'formatt'; "
                                              f"did you mean 'format'\\?"):
        submit_run(run)
    assert not (run / "submissions").exists()


def medmnist_run(tmp_path, card_file=None, run_name="quick.v1"):
    """A run over the shipped pneumoniamnist card (or a card whose data file is ``card_file``), with one member."""
    run = tmp_path / "run"
    dataset = "pneumoniamnist"
    if card_file is not None:
        dataset = str(tmp_path / "card.toml")
        (tmp_path / "card.toml").write_text(f'name = "pneumoniamnist"\nformat = "npz"\nfile = "{card_file}"\n'
                                            f'classes = ["normal", "pneumonia"]\nsubmission = "medmnist"\n')
    p = [0.2, 0.9, 0.6, 0.4]
    ProbabilityTable([f"test_{i:05d}" for i in (3, 2, 1, 0)], ["normal", "pneumonia"],
                     [[1 - x, x] for x in p[::-1]]).write(run / "predictions" / "resnet18" / "test.csv")
    (run / "config.json").write_text(json.dumps({"run": run_name, "dataset": dataset}))
    return run


def test_medmnist_submission_is_named_as_medmnist_parses_it(tmp_path):
    run = medmnist_run(tmp_path)
    result = submit_run(run, entry="resnet18", expected_ids=[f"test_{i:05d}" for i in range(4)])
    assert result.path == run / "submissions" / "pneumoniamnist_test_resnet18@quick-v1.csv"
    m = MEDMNIST_NAME.fullmatch(result.path.name)
    assert m and (m["flag"], m["size"], m["split"], m["run"]) == ("pneumoniamnist", None, "test", "quick-v1")
    assert medmnist_parse(result.path.name) == ("pneumoniamnist", None, "test", "quick-v1")
    # read as Evaluator.parse_and_evaluate reads it: pd.read_csv(path, index_col=0, header=None).sort_index().values
    scores = pd.read_csv(result.path, index_col=0, header=None).sort_index().values
    np.testing.assert_allclose(scores, [[0.8, 0.2], [0.1, 0.9], [0.4, 0.6], [0.6, 0.4]])


def test_medmnist_submission_name_carries_the_size_of_larger_files(tmp_path):
    run = medmnist_run(tmp_path, card_file=tmp_path / "pneumoniamnist_64.npz", run_name="run")
    result = submit_run(run, entry="resnet18", expected_ids=[str(i) for i in range(4)])
    assert result.path.name == "pneumoniamnist_64_test_resnet18@run.csv"
    assert medmnist_parse(result.path.name) == ("pneumoniamnist", "64", "test", "run")
    assert MEDMNIST_NAME.fullmatch(result.path.name)["size"] == "64"


def test_medmnist_flag_and_file_names():
    assert medmnist_flag("medmnist/pneumoniamnist.npz") == ("pneumoniamnist", "")
    assert medmnist_flag("retinamnist_224.npz") == ("retinamnist", "_224")
    assert medmnist_flag("breastmnist_28.npz") == ("breastmnist", "")
    with pytest.raises(SubmissionError, match="cannot read a MedMNIST flag from '_64.npz'"):
        medmnist_flag("_64.npz")
    assert submission_file_name("medmnist", "subset_search", "my run@2", "octmnist") == \
        "octmnist_test_subset_search@my-run-2.csv"
    assert submission_file_name("isic2017", "greedy", "r") == "isic2017-greedy.csv"
    with pytest.raises(SubmissionError, match="the run names no dataset; give the output path"):
        submission_file_name("medmnist", "greedy", "r")


def test_a_single_member_run_ranks_and_submits_its_member(tmp_path):
    run = tmp_path / "solo"
    for split in ("val", "test"):
        ProbabilityTable(["a", "b", "c", "d"], ["benign", "malignant"],
                         [[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]], [0, 1, 0, 1],
                         {"member": "resnet18", "split": split}
                         ).write(run / "predictions" / "resnet18" / f"{split}.csv")
    logged = []
    assert build_ensembles(run, log=logged.append) == {}
    assert logged == ["only one member (resnet18): ensembles need at least two; skipped"]
    frame = write_leaderboard(run, bootstrap=0, plots=False)
    rows = frame[["rank", "entry", "kind", "val_auc", "test_auc"]].values.tolist()
    assert rows == [[1, "resnet18", "member", 1.0, 1.0]]
    result = submit_run(run)
    assert (result.entry, result.kind, result.format) == ("resnet18", "member", "generic")
    assert result.path.read_text() == "image_id,benign,malignant\na,0.9,0.1\nb,0.4,0.6\nc,0.7,0.3\nd,0.2,0.8\n"
