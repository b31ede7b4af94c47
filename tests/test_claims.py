"""Claim files keep jobs that share a run folder from training the same member; stale claims are taken over."""
from __future__ import annotations

import json
import multiprocessing
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_train import read_history, tiny_config
from medzoo.config import load_config
from medzoo.zoo.distributed import ClaimLost, read_claim, try_claim
from medzoo.zoo.schedule import status, train_zoo


def _claim_file(path: Path, **fields) -> None:
    content = {"host": socket.gethostname(), "pid": 1, "token": "other", "heartbeat": time.time(),
               "started_iso": "2026-01-01T00:00:00", **fields}
    path.write_text(json.dumps(content))


def test_a_claim_is_exclusive_until_released(tmp_path):
    path = tmp_path / "m" / "claim.json"
    a = try_claim(path, timeout_s=60, interval_s=3600)
    assert a is not None and a.took_over is None
    assert try_claim(path, timeout_s=60, interval_s=3600) is None
    held = read_claim(path)
    assert (held["host"], held["pid"]) == (socket.gethostname(), a.content["pid"])
    a.beat(epoch=2)
    assert read_claim(path)["epoch"] == 2 and read_claim(path)["heartbeat"] >= held["heartbeat"]
    a.release()
    assert not path.exists()
    b = try_claim(path, timeout_s=60, interval_s=3600)
    assert b is not None
    b.release()


def test_stale_claims_are_taken_over_and_live_ones_kept(tmp_path):
    path = tmp_path / "claim.json"
    _claim_file(path, host="elsewhere", heartbeat=time.time() - 1000)
    c = try_claim(path, timeout_s=600, interval_s=3600)
    assert c is not None and c.took_over.startswith("no heartbeat for 1000 s")
    c.release()

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _claim_file(path, pid=gone.pid)
    c = try_claim(path, timeout_s=600, interval_s=3600)
    assert c is not None and c.took_over == f"process {gone.pid} on {socket.gethostname()} is gone"
    c.release()

    _claim_file(path, host="elsewhere")  # fresh heartbeat from another machine
    assert try_claim(path, timeout_s=600, interval_s=3600) is None


def test_a_holder_whose_claim_was_taken_over_notices(tmp_path):
    path = tmp_path / "claim.json"
    a = try_claim(path, timeout_s=60, interval_s=3600)
    _claim_file(path, host="elsewhere")
    with pytest.raises(ClaimLost, match="taken over by elsewhere:1"):
        a.beat()
    a.release()
    assert path.exists()  # release leaves the new owner's claim alone


def _train(config: str, results: str, out: str, barrier, delay: float) -> None:
    import torch

    torch.set_num_threads(1)
    barrier.wait()
    slow = (lambda i, idx: time.sleep(delay)) if delay else None
    res = train_zoo(load_config(config), results_dir=results, progress=False, on_batch=slow)
    Path(out).write_text(json.dumps([r["status"] for r in res]))


def test_two_jobs_on_one_member_train_it_once(tmp_path):
    config = tiny_config(tmp_path, epochs=2)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_train, args=(str(config), str(tmp_path / "r"), str(tmp_path / f"job{k}.json"),
                                              barrier, 0.0)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    statuses = sorted(json.loads((tmp_path / f"job{k}.json").read_text())[0] for k in range(2))
    assert statuses == ["running elsewhere", "trained"]
    mdir = tmp_path / "r" / "tiny" / "members" / "squeezenet1_1"
    assert [h["epoch"] for h in read_history(mdir / "history.csv")] == ["1", "2"]
    assert (mdir / "done.json").exists() and not (mdir / "claim.json").exists()
    assert (tmp_path / "r" / "tiny" / "predictions" / "squeezenet1_1" / "test.csv").exists()


def test_a_killed_job_is_taken_over_and_finished(tmp_path):
    config = tiny_config(tmp_path, epochs=2)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(1)
    job = ctx.Process(target=_train, args=(str(config), str(tmp_path / "r"), str(tmp_path / "job.json"), barrier, 0.3))
    job.start()
    mdir = tmp_path / "r" / "tiny" / "members" / "squeezenet1_1"
    deadline = time.monotonic() + 90
    while not (mdir / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    job.kill()
    job.join()
    assert (mdir / "last.pt").exists() and not (mdir / "done.json").exists()
    (row,) = status(tmp_path / "r" / "tiny")
    assert row["state"] == "stale" and row["pid"] == job.pid and "is gone" in row["reason"]

    (result,) = train_zoo(load_config(config), results_dir=tmp_path / "r", progress=False)
    assert result["status"] == "trained" and result["epochs"] == 2
    assert [h["epoch"] for h in read_history(mdir / "history.csv")] == ["1", "2"]
    assert status(tmp_path / "r" / "tiny")[0]["state"] == "done"
