"""Two-process gloo DistributedDataParallel training on the CPU, as torchrun would launch it."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from medzoo.ensemble.table import ProbabilityTable
from tests.test_train import read_history, tiny_config, write_tiny_npz
from medzoo.zoo.checkpoint import model_from_checkpoint
from medzoo.config import load_config
from medzoo.zoo.predict import predict_probs
from medzoo.zoo.loop import validation_auc
from medzoo.zoo.schedule import train_zoo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _train_rank(rank: int, world: int, port: int, config: str, results: str, out: str) -> None:
    _as_rank(rank, world, port)
    epochs: list[list[int]] = []

    def record(i, idx):
        if i == 0:
            epochs.append([])
        epochs[-1] += idx.tolist()

    train_zoo(load_config(config), results_dir=results, progress=False, on_batch=record)
    Path(out, f"rank{rank}.json").write_text(json.dumps(epochs))


def _dying_rank(rank: int, world: int, port: int, config: str, results: str, out: str) -> None:
    _as_rank(rank, world, port)

    batches = []

    def die(i, idx):
        batches.append(i)
        if rank == 1 and len(batches) == 4:  # 3 batches per epoch: in the second epoch
            os._exit(3)

    try:
        train_zoo(load_config(config), results_dir=results, progress=False, on_batch=die)
        Path(out, f"rank{rank}.txt").write_text("finished")
    except Exception as e:
        Path(out, f"rank{rank}.txt").write_text(f"{type(e).__name__}: {e}")


def test_two_process_ddp_shards_gathers_and_writes_once(tmp_path):
    write_tiny_npz(tmp_path / "tiny.npz", n_val=13)  # 13 images: the val shards are padded by one
    config = tiny_config(tmp_path, epochs=2, batch_size=4, effective_batch=16, augment={"hflip": True})
    results = tmp_path / "results"
    mp.spawn(_train_rank, args=(2, _free_port(), str(config), str(results), str(tmp_path)), nprocs=2, join=True)

    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2
    for a, b in zip(*seen):
        assert len(a) == len(b) == 12 and not set(a) & set(b)
        assert sorted(a + b) == list(range(24))
    assert seen[0][0] != seen[0][1]  # a new shuffle each epoch

    run = results / "tiny"
    mdir = run / "members" / "squeezenet1_1"
    assert sorted(p.name for p in mdir.iterdir()) == ["best.pt", "curves.png", "done.json", "history.csv", "last.pt"]
    assert sorted(p.name for p in (run / "predictions" / "squeezenet1_1").iterdir()) == \
        ["test.csv", "test.json", "val.csv", "val.json"]
    history = read_history(mdir / "history.csv")
    assert [h["epoch"] for h in history] == ["1", "2"]
    assert {h["effective_batch"] for h in history} == {"16"}  # 4 per batch x 2 processes x 2 accumulated

    model, ckpt = model_from_checkpoint(mdir / "best.pt")
    cfg = load_config(config)
    from medzoo.zoo.datasets import load_arrays, open_dataset

    val = load_arrays(open_dataset(cfg.dataset), "val", 32)
    single = predict_probs(model, val.images, mean=ckpt["mean"], std=ckpt["std"], device=torch.device("cpu"))
    auc = validation_auc(val.labels, single)
    done = json.loads((mdir / "done.json").read_text())
    assert float(history[ckpt["best_epoch"] - 1]["val_auc"]) == pytest.approx(auc, abs=1e-9)
    assert done["val_auc"] == pytest.approx(auc, abs=1e-9)
    table = ProbabilityTable.read(run / "predictions" / "squeezenet1_1" / "val.csv")
    assert len(table.ids) == 13 and np.allclose(table.probs, single, atol=1e-6)


def test_a_dying_rank_ends_the_job_with_a_clear_message_and_both_ranks_resume(tmp_path):
    config = tiny_config(tmp_path, epochs=2, batch_size=4)
    text = config.read_text().replace('device = "cpu"', 'device = "cpu"\ndist_timeout = 30')
    config.write_text(text)
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_dying_rank, args=(r, 2, port, str(config), str(tmp_path / "r"), str(tmp_path)))
             for r in (0, 1)]
    start = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert time.monotonic() - start < 90, "rank 0 hung"
    assert procs[1].exitcode == 3
    message = (tmp_path / "rank0.txt").read_text()
    assert message.startswith("PeerFailure: rank 0/2") and "another rank died" in message
    mdir = tmp_path / "r" / "tiny" / "members" / "squeezenet1_1"
    assert json.loads((mdir / "failed.json").read_text())["error"].startswith("PeerFailure")
    assert [h["epoch"] for h in read_history(mdir / "history.csv")] == ["1"]

    mp.spawn(_train_rank, args=(2, _free_port(), str(config), str(tmp_path / "r"), str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        assert len(json.loads((tmp_path / f"rank{r}.json").read_text())) == 1  # only epoch 2 was trained
    assert [h["epoch"] for h in read_history(mdir / "history.csv")] == ["1", "2"]
    assert (mdir / "done.json").exists() and not (mdir / "failed.json").exists()
