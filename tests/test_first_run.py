"""A user's first run: the whole config is checked before any work, and a failure never changes finished work."""
from __future__ import annotations

import ast
import configparser
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import medzoo
from medzoo.benchmarks.bench import read_stage_history, record_stages
from medzoo.cli import main
from medzoo.config import config_path, load_config
from medzoo.core.fileio import TEMP_SUFFIX
from medzoo.zoo.config import config_differences
from tests.images import write_class_tree
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def with_section(path: Path, text: str) -> Path:
    path.write_text(path.read_text().replace("[[members]]", text + "\n[[members]]", 1))
    return path


@pytest.mark.parametrize("section, match", [
    ("[ensemble]\ntemprature = 100", r"\[ensemble\] key 'temprature'; did you mean 'temperature'\?"),
    ("[submission]\nformatt = \"isic2017\"", r"'formatt'; did you mean 'format'\?"),
    ("[leaderboard]\nbootstrapp = 10", r"'bootstrapp'; did you mean 'bootstrap'\?"),
    ("[ensemble]\nmethods = [\"greddy\"]", r"'greddy'; did you mean 'greedy'\?"),
    ("[ensemble]\nweights = {squeezenet = 1.0}", r"\[ensemble\] weights is given per member; missing members "
                                                  r"\['squeezenet1_1'\], unknown members \['squeezenet'\]"),
    ('[[members]]\nmodel = "resnet18"\nid = "a, b"\nsize = 32', r"id 'a, b' must be a plain folder name without "
                                                               r"'@' \(it marks repeats and folds\) or ','"),
    ('[[members]]\nmodel = "resnet18"\nid = "a@s1"\nsize = 32', r"id 'a@s1' must be a plain folder name"),
])
def test_a_typo_in_any_section_fails_before_training(tmp_path, capsys, section, match):
    config = with_section(tiny_config(tmp_path), section)
    with pytest.raises(ValueError, match=match):
        load_config(config)
    started = time.perf_counter()
    assert main(["train", str(config), "--results", str(tmp_path / "r")]) == 1
    assert time.perf_counter() - started < 5
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_per_member_options_name_the_members_once_for_all_their_repeats(tmp_path):
    members = ('[[members]]\nmodel = "squeezenet1_1"\nid = "a"\nsize = 32\n'
               '[[members]]\nmodel = "squeezenet1_1"\nid = "b"\nsize = 32\nsnapshots = 2\nschedule = "cosine"\n')
    config = tiny_config(tmp_path, members=members)
    config.write_text("seeds = [0, 1]\n" + config.read_text().replace(
        "[[members]]", '[ensemble]\nweights = {a = 1.0, "b.snap1" = 1.0, "b.snap2" = 2.0}\n[[members]]', 1))
    assert [m.id for m in load_config(config).members] == ["a", "b"]


def test_shipped_configs_are_found_by_name_and_a_wrong_name_suggests(tmp_path):
    assert config_path("pneumoniamnist") == ROOT / "benchmarks" / "pneumoniamnist.toml"
    with pytest.raises(FileNotFoundError, match=r"no config file at pneumonimnist; .*did you mean 'pneumoniamnist'"):
        config_path("pneumonimnist")


def test_config_differences_name_each_key_and_members():
    base = {"run": "r", "dataset": "d", "data_root": "/a", "train": {"epochs": 10},
            "members": [{"id": "a", "model": "resnet18", "train": {"epochs": 10, "lr": 0.1}}]}
    given = {"run": "r", "dataset": "e", "data_root": "/b", "train": {"epochs": 10, "new_key": 1},
             "members": [{"id": "a", "model": "resnet18", "train": {"epochs": 5, "lr": 0.1}},
                         {"id": "b", "model": "vgg11", "train": {}}]}
    assert config_differences(base, given) == [
        "dataset: 'd' in the run folder, 'e' now",
        "members.a.train.epochs: 10 in the run folder, 5 now",
        "members.b: not in the run folder",
    ]
    assert config_differences(given, base) == [
        "dataset: 'e' in the run folder, 'd' now",
        "members.a.train.epochs: 5 in the run folder, 10 now",
        "members.b: in the run folder, not in the config",
        "train.new_key: 1 in the run folder, absent now",
    ]


def test_committed_reference_runs_match_their_configs():
    for run in ("pneumoniamnist", "isic2017", "breastmnist"):
        recorded = json.loads((ROOT / "results" / run / "config.json").read_text())
        assert config_differences(recorded, load_config(ROOT / "benchmarks" / f"{run}.toml").to_dict()) == []


def test_a_failed_train_leaves_a_finished_run_as_it_was(tmp_path, capsys):
    config = tiny_config(tmp_path, epochs=1)
    results = tmp_path / "r"
    assert main(["train", str(config), "--results", str(results)]) == 0
    recorded = (results / "tiny" / "config.json").read_text()
    assert json.loads(recorded)["dataset"] == str(tmp_path / "tiny.toml")

    broken = tmp_path / "broken.toml"
    broken.write_text(config.read_text().replace(str(tmp_path / "tiny.toml"), str(tmp_path / "tiyn.toml")))
    assert main(["train", str(broken), "--results", str(results)]) == 1
    assert "tiyn.toml" in capsys.readouterr().err
    assert (results / "tiny" / "config.json").read_text() == recorded

    longer = tmp_path / "longer.toml"
    longer.write_text(config.read_text().replace("epochs = 1", "epochs = 2"))
    assert main(["train", str(longer), "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert "was written by a different config: members.squeezenet1_1.train.epochs: 1 in the run folder, 2 now" in err
    assert "--extend" in err
    assert (results / "tiny" / "config.json").read_text() == recorded
    assert main(["train", str(longer), "--results", str(results), "--extend"]) == 0
    assert json.loads((results / "tiny" / "config.json").read_text())["train"]["epochs"] == 2


def test_a_dataset_error_writes_no_config(tmp_path, capsys):
    config = tiny_config(tmp_path)
    config.write_text(config.read_text().replace(str(tmp_path / "tiny.toml"), str(tmp_path / "nowhere")))
    assert main(["train", str(config), "--results", str(tmp_path / "r")]) == 1
    assert f"dataset '{tmp_path / 'nowhere'}' is neither a shipped card" in capsys.readouterr().err
    assert not (tmp_path / "r" / "tiny" / "config.json").exists()


def test_a_class_missing_from_val_fails_before_training(tmp_path, capsys):
    write_class_tree(tmp_path / "xray", {"train": 4, "val": 3, "test": 2})
    for f in (tmp_path / "xray" / "val" / "pneumonia").iterdir():
        f.unlink()
    (tmp_path / "xray" / "val" / "pneumonia").rmdir()
    config = tiny_config(tmp_path)
    config.write_text(config.read_text().replace(str(tmp_path / "tiny.toml"), str(tmp_path / "xray")))
    assert main(["train", str(config), "--results", str(tmp_path / "r")]) == 1
    assert "class(es) ['pneumonia'] have no image in val (counts {'normal': 3, 'pneumonia': 0})" in capsys.readouterr().err
    assert not (tmp_path / "r" / "tiny" / "members").exists()


def test_an_os_error_is_one_line_naming_the_path(tmp_path, capsys):
    (tmp_path / "r").write_text("a file where the results folder should be")
    assert main(["train", str(tiny_config(tmp_path)), "--results", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medzoo train: error: ") and "\n" not in err and str(tmp_path / "r") in err


def test_stage_history_of_an_older_medzoo_is_read_as_one_call(tmp_path):
    old = tmp_path / "stages.json"
    old.write_text('{"ensemble": 1.63, "train": 1083.18}')
    assert read_stage_history(old) == [{"started": None, "seconds": {"ensemble": 1.63, "train": 1083.18}}]
    old.write_text('"nonsense"')
    with pytest.raises(ValueError, match="stages.json: expected a list"):
        read_stage_history(old)


def test_two_calls_sharing_a_run_folder_each_keep_their_stage_record(tmp_path):
    # Call b starts while a is training; a's later writes must not drop b's record, nor b's a's.
    path = tmp_path / "stages.json"
    path.write_text('{"train": 10.0}')  # an older medzoo's single call
    a = {"call": "a", "started": "2026-12-02T10:00:00", "seconds": {"check": 1.0, "train": 5.0}}
    b = {"call": "b", "started": "2026-12-02T10:01:00", "seconds": {"check": 2.0, "train": 3.0}}
    record_stages(path, b)
    record_stages(path, a)
    b["seconds"]["ensemble"] = 0.5
    record_stages(path, b)
    assert [h.get("call") for h in read_stage_history(path)] == [None, "b", "a"]
    assert read_stage_history(path)[1]["seconds"] == {"check": 2.0, "train": 3.0, "ensemble": 0.5}
    assert read_stage_history(path)[2]["seconds"] == {"check": 1.0, "train": 5.0}


def readme_block(kind: str, first_line: str) -> str:
    """The README's fenced ``kind`` block whose first line is ``first_line``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"```{kind}\n{first_line}\n") + len(kind) + 4
    return text[start:text.index("```", start)]


def test_the_readme_script_runs(tmp_path):
    write_class_tree(tmp_path / "chest_xray", {"train": 16, "test": 5})
    (tmp_path / "my_zoo.toml").write_text(readme_block("toml", "# my_zoo.toml"))
    script = readme_block("python", "# my_zoo.py")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"MEDZOO_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    sub = tmp_path / "results" / "chest_xray" / "submissions"
    (csv,) = sub.glob("generic-*.csv")
    assert len(csv.read_text().splitlines()) == 1 + 10


def test_training_removes_temp_files_of_a_killed_write(tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    member = tmp_path / "r" / "tiny" / "members" / "squeezenet1_1"
    table = tmp_path / "r" / "tiny" / "predictions" / "squeezenet1_1"
    member.mkdir(parents=True)
    table.mkdir(parents=True)
    leftovers = [member / f".last.pt.0123abcd{TEMP_SUFFIX}", table / f".val.csv.89ab4567{TEMP_SUFFIX}"]
    for f in leftovers:
        f.write_bytes(b"half a checkpoint")
    (member / "notes.tmp").write_text("the user's own file")
    assert main(["train", str(config), "--results", str(tmp_path / "r")]) == 0
    assert not any(f.exists() for f in leftovers)
    assert (member / "notes.tmp").read_text() == "the user's own file"


def declared_requirements() -> set[str]:
    """Distribution names in setup.cfg's install_requires, lower case."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].split("\n")
    return {re.split(r"[<>=;! ]", line.strip())[0].lower() for line in lines if line.strip()}


def test_every_third_party_import_is_declared():
    distribution = {"PIL": "pillow", "sklearn": "scikit-learn"}
    imported = set()
    for folder in ("medzoo", "zoo", "ensemble", "benchmarks", "data"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "medzoo"}
    assert {distribution.get(m, m).lower() for m in third_party} <= declared_requirements()
    assert {"torch", "numpy", "threadpoolctl", "pillow", "filelock"} <= {distribution.get(m, m).lower()
                                                                      for m in third_party}


def test_every_script_entry_point_resolves_to_its_owner():
    for name, module in medzoo.API.items():
        assert getattr(medzoo, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="module 'medzoo' has no attribute 'train'"):
        medzoo.train


def test_a_dataset_path_is_the_same_dataset_from_another_folder():
    base = {"run": "r", "dataset": "/data/a/chest_xray", "members": []}
    assert config_differences(base, {**base, "dataset": "/mnt/b/chest_xray"}) == []
    assert config_differences(base, {**base, "dataset": "/data/a/chest_xary"}) == [
        "dataset: '/data/a/chest_xray' in the run folder, '/data/a/chest_xary' now"]
    assert config_differences({**base, "dataset": "isic2017"}, {**base, "dataset": "isic2019"}) == [
        "dataset: 'isic2017' in the run folder, 'isic2019' now"]


def test_made_splits_that_changed_since_the_run_started_are_refused(tmp_path, capsys):
    write_class_tree(tmp_path / "xray", {"train": 10, "test": 2})
    config = tiny_config(tmp_path, epochs=1)
    config.write_text(config.read_text().replace(str(tmp_path / "tiny.toml"), str(tmp_path / "xray")))
    assert main(["train", str(config), "--results", str(tmp_path / "r")]) == 0
    saved = (tmp_path / "r" / "tiny" / "splits" / "xray.csv").read_text()
    write_class_tree(tmp_path / "more", {"train": 2}, seed=1)
    for f in (tmp_path / "more" / "train" / "normal").iterdir():
        f.rename(tmp_path / "xray" / "train" / "normal" / f"extra_{f.name}")
    assert main(["train", str(config), "--results", str(tmp_path / "r")]) == 1
    assert "the splits made now differ from those this run started with (" in capsys.readouterr().err
    assert (tmp_path / "r" / "tiny" / "splits" / "xray.csv").read_text() == saved


def test_a_wrong_submission_format_fails_before_the_check(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert main(["bench", str(config), "--results", str(tmp_path / "r"), "--format", "genric"]) == 1
    assert "unknown submission format 'genric'; did you mean 'generic'?" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
