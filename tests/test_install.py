"""Install like a user: the wheel, in a fresh virtual environment outside the checkout, runs a whole bench.

The new environment reuses this one's installed packages (torch and the rest) through a ``.pth``
line, which adds the folder to ``sys.path`` without running the editable-install hook in it, so
the only medzoo it sees is the wheel's.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import write_class_tree

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ZOO = """
run = "chest_xray"
dataset = "chest_xray"
device = "cpu"

[train]
epochs = 1
batch_size = 8
patience = 0

[[members]]
model = "squeezenet1_1"
size = 32

[[members]]
model = "resnet18"
size = 32

[leaderboard]
bootstrap = 50
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the medzoo wheel built from this checkout."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy, so the build leaves nothing in the checkout and finds nothing stale there
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "results",
                                                                 "cache", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("medzoo-*.whl")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    py = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, cwd=tmp)
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True, cwd=tmp).stdout.strip()
    Path(own, "outer-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env


def run(env: Path, cwd: Path, *args: str, **extra_env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache"), **extra_env}
    environ.pop("PYTHONPATH", None)
    return subprocess.run(args, cwd=cwd, env={**environ, "PATH": f"{env / 'bin'}:{environ['PATH']}"},
                          capture_output=True, text=True)


def test_wheel_exposes_one_import_name_and_ships_cards_and_configs(venv, tmp_path):
    out = run(venv, tmp_path, "python", "-c",
              "import medzoo, medzoo.zoo.cards as d, medzoo.config as c; "
              "print(medzoo.__file__); print(d.known_cards()); print(c.shipped_configs())")
    assert out.returncode == 0, out.stderr
    where, cards, configs = out.stdout.splitlines()
    assert str(venv) in where and str(ROOT) not in where
    assert cards == "['breastmnist', 'isic2017', 'pneumoniamnist', 'retinamnist']"
    assert "'pneumoniamnist'" in configs and "'isic2017'" in configs
    for name in ("zoo", "ensemble", "benchmarks"):
        gone = run(venv, tmp_path, "python", "-c", f"import {name}")
        assert gone.returncode == 1 and f"No module named '{name}'" in gone.stderr


@pytest.mark.skipif(not (SHARED_DATA / "medmnist" / "pneumoniamnist.npz").exists(), reason="no ../shared/data")
def test_wheel_inspects_a_shipped_card(venv, tmp_path):
    out = run(venv, tmp_path, "medzoo", "data", "inspect", "pneumoniamnist", MEDZOO_DATA=str(SHARED_DATA))
    assert out.returncode == 0, out.stderr
    assert "3882" in out.stdout and "624" in out.stdout


def test_wheel_benches_a_kaggle_style_tree_through_to_a_submission(venv, tmp_path):
    write_class_tree(tmp_path / "chest_xray", {"train": 20, "test": 6})
    (tmp_path / "my.toml").write_text(ZOO)
    out = run(venv, tmp_path, "medzoo", "bench", "my.toml", "--no-estimate")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "no val split: carved 20% of train (8 of 40 images) as val" in out.stdout
    run_dir = tmp_path / "results" / "chest_xray"
    rows = (run_dir / "submissions").glob("generic-*.csv")
    (sub,) = list(rows)
    lines = sub.read_text().splitlines()
    assert lines[0] == "image_id,normal,pneumonia" and len(lines) == 1 + 12
    assert len((run_dir / "splits" / "chest_xray.csv").read_text().splitlines()) == 1 + 40 + 12
