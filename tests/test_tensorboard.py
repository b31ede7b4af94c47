"""The optional TensorBoard view of a unit's training: the history's values per epoch, once each, also on resume."""
from __future__ import annotations

import sys

import pytest

from tests.test_train import read_history, tiny_config
from medzoo.config import load_config
from medzoo.zoo import tblog
from medzoo.zoo.schedule import train_zoo

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                       reason="the tensorboard extra: pip install 'medzoo[tensorboard]'").EventAccumulator

TWO_MEMBERS = ('[[members]]\nmodel = "squeezenet1_1"\nsize = 32\n'
               '[[members]]\nmodel = "resnet18"\nsize = 32\ntensorboard = true\n')


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files in ``folder``, as TensorBoard shows them."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_matches_history(mdir) -> None:
    """Every tag holds exactly one value per history.csv row, equal to it."""
    history = read_history(mdir / "history.csv")
    board = scalars(mdir / "tensorboard")
    assert sorted(board) == sorted(["loss/train", "loss/val", "auc/val", "lr"])
    for column, tag in tblog.TAGS.items():
        assert [s for s, _ in board[tag]] == [int(h["epoch"]) for h in history], tag
        for (_, value), h in zip(board[tag], history):
            assert value == pytest.approx(float(h[column]), abs=1e-6), (tag, h["epoch"])


def test_tensorboard_logs_the_history_per_epoch(tmp_path):
    cfg = load_config(tiny_config(tmp_path, tensorboard=True))
    (result,) = train_zoo(cfg, results_dir=tmp_path / "results", progress=False)
    mdir = tmp_path / "results" / "tiny" / "members" / "squeezenet1_1"
    assert result["status"] == "trained"
    assert [h["epoch"] for h in read_history(mdir / "history.csv")] == ["1", "2"]
    assert_matches_history(mdir)


def test_tensorboard_is_per_member_and_off_by_default(tmp_path):
    cfg = load_config(tiny_config(tmp_path, members=TWO_MEMBERS, epochs=1))
    assert [m.train.tensorboard for m in cfg.members] == [False, True] and cfg.train.tensorboard is False
    train_zoo(cfg, results_dir=tmp_path / "results", progress=False)
    members = tmp_path / "results" / "tiny" / "members"
    assert not (members / "squeezenet1_1" / "tensorboard").exists()
    assert_matches_history(members / "resnet18")


def test_resumed_run_shows_each_epoch_once(tmp_path, monkeypatch):
    cfg = load_config(tiny_config(tmp_path, epochs=3, tensorboard=True))
    mdir = tmp_path / "results" / "tiny" / "members" / "squeezenet1_1"
    log = tblog.Board.log

    def kill_before_logging_epoch_2(board, row):
        if row["epoch"] == 2:
            raise Killed  # after last.pt and history.csv of epoch 2, before its events
        log(board, row)

    monkeypatch.setattr(tblog.Board, "log", kill_before_logging_epoch_2)
    with pytest.raises(Killed):
        train_zoo(cfg, results_dir=tmp_path / "results", progress=False)
    assert [s for s, _ in scalars(mdir / "tensorboard")["loss/train"]] == [1]
    monkeypatch.setattr(tblog.Board, "log", log)

    (result,) = train_zoo(cfg, results_dir=tmp_path / "results", progress=False)
    assert result["status"] == "trained" and result["epochs"] == 3
    assert len(list((mdir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert_matches_history(mdir)


def test_switching_tensorboard_on_at_resume_shows_the_earlier_epochs(tmp_path):
    results = tmp_path / "results"
    off = load_config(tiny_config(tmp_path, epochs=3))
    batches = []

    def kill_in_second_epoch(i, idx):
        batches.append(i)
        if len(batches) == 5:  # 3 batches per epoch: the 2nd batch of epoch 2
            raise Killed

    with pytest.raises(Killed):
        train_zoo(off, results_dir=results, progress=False, on_batch=kill_in_second_epoch)
    mdir = results / "tiny" / "members" / "squeezenet1_1"
    assert not (mdir / "tensorboard").exists()
    on = load_config(tiny_config(tmp_path, epochs=3, tensorboard=True))  # no --extend needed: logging only
    (result,) = train_zoo(on, results_dir=results, progress=False)
    assert result["epochs"] == 3
    assert_matches_history(mdir)


def test_missing_tensorboard_fails_the_config_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    assert not tblog.tensorboard_installed()
    with pytest.raises(ValueError, match=r"member\(s\) squeezenet1_1\) needs the tensorboard package.*"
                                         r"pip install 'medzoo\[tensorboard\]'"):
        load_config(tiny_config(tmp_path, tensorboard=True))
    with pytest.raises(ValueError, match=r"member\(s\) resnet18\) needs"):
        load_config(tiny_config(tmp_path, members=TWO_MEMBERS))
    assert load_config(tiny_config(tmp_path)).members[0].train.tensorboard is False
    assert not (tmp_path / "results").exists()

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'medzoo\[tensorboard\]'"):
        tblog.Board(tmp_path, [])


def test_tensorboard_key_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"\[train\] tensorboard = 'yes'; expected bool"):
        load_config(tiny_config(tmp_path, tensorboard="yes"))
    with pytest.raises(ValueError, match=r"\[train\]: unknown key 'tensorbord'; did you mean 'tensorboard'\?"):
        load_config(tiny_config(tmp_path, tensorbord=True))
