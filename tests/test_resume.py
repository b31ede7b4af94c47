"""A training run stopped partway resumes from last.pt and ends exactly where an uninterrupted run ends."""
from __future__ import annotations

import json

import pytest
import torch

from tests.test_train import read_history, tiny_config
from medzoo.zoo.checkpoint import load_checkpoint
from medzoo.config import load_config
from medzoo.zoo.member import train_member
from medzoo.zoo.schedule import status, train_zoo


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


@pytest.mark.parametrize("mix", [{}, {"mixup": 0.4, "cutmix": 1.0}], ids=["plain", "mixed"])
def test_killed_run_resumes_to_the_same_weights_and_history(tmp_path, mix):
    cfg = load_config(tiny_config(tmp_path, epochs=3, augment={"hflip": True, "zoom": 0.2}, optimizer="sgd",
                                  schedule="cosine", warmup_epochs=1, **mix))
    member = cfg.members[0]
    train_member(cfg, member, tmp_path / "ref", progress=False)
    ref_dir = tmp_path / "ref" / "members" / member.id

    seen = []

    def kill_in_second_epoch(i, idx):
        seen.append(i)
        if len(seen) == 5:  # 3 batches per epoch: the 2nd batch of epoch 2
            raise Killed

    run_dir = tmp_path / "results" / "tiny" / "members" / member.id
    try:
        train_zoo(cfg, results_dir=tmp_path / "results", progress=False, on_batch=kill_in_second_epoch)
    except Killed:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    assert load_checkpoint(run_dir / "last.pt", weights_only=False)["epoch"] == 1
    assert [h["epoch"] for h in read_history(run_dir / "history.csv")] == ["1"]
    assert not (run_dir / "done.json").exists()
    assert [(r["state"], r["epoch"]) for r in status(tmp_path / "results" / "tiny")] == [("pending", 1)]

    # as if the kill had come between writing last.pt and best.pt/history.csv
    (run_dir / "best.pt").unlink()
    (run_dir / "history.csv").unlink()
    (result,) = train_zoo(cfg, results_dir=tmp_path / "results", progress=False)
    assert result["status"] == "trained" and result["epochs"] == 3

    history, ref_history = read_history(run_dir / "history.csv"), read_history(ref_dir / "history.csv")
    assert [h["epoch"] for h in history] == ["1", "2", "3"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(history) == strip(ref_history)

    last = load_checkpoint(run_dir / "last.pt", weights_only=False)
    ref_last = load_checkpoint(ref_dir / "last.pt", weights_only=False)
    assert last["epoch"] == ref_last["epoch"] == 3
    assert all(torch.equal(last["model"][k], ref_last["model"][k]) for k in ref_last["model"])
    best, ref_best = load_checkpoint(run_dir / "best.pt"), load_checkpoint(ref_dir / "best.pt")
    assert best["epoch"] == best["best_epoch"] == ref_best["epoch"]
    assert all(torch.equal(best["model"][k], ref_best["model"][k]) for k in ref_best["model"])
    done = json.loads((run_dir / "done.json").read_text())
    assert done["epochs"] == 3 and done["best_epoch"] == ref_best["epoch"]


def test_finished_training_without_tables_only_predicts(tmp_path):
    cfg = load_config(tiny_config(tmp_path, epochs=1))
    train_zoo(cfg, results_dir=tmp_path / "r", progress=False)
    mdir = tmp_path / "r" / "tiny" / "members" / cfg.members[0].id
    (mdir / "done.json").unlink()
    before = (mdir / "last.pt").stat().st_mtime_ns
    batches = []
    (result,) = train_zoo(cfg, results_dir=tmp_path / "r", progress=False, on_batch=lambda i, idx: batches.append(i))
    assert batches == [] and result["status"] == "trained" and (mdir / "done.json").exists()
    assert (mdir / "last.pt").stat().st_mtime_ns == before
