"""``medzoo bench``: dataset -> zoo training -> predictions -> ensembles -> leaderboard -> submission.

Every stage writes into ``results/<run>/`` and resumes: members with ``done.json`` are
skipped, and a second call redoes only the cheap stages that read their outputs.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from medzoo.ensemble.fileio import write_json


def environment(device: str) -> dict:
    """What ran the benchmark: versions, device, CPU and GPU names."""
    import numpy
    import sklearn
    import torch
    import torchvision

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def run_bench(config_path: str | Path, results_dir: str | Path = "results", members=None, log=print) -> dict:
    """Run every stage of one config; return ``{"run_dir", "stages", "train", "leaderboard", "submission"}``.

    ``stages`` maps each stage to its wall seconds; ``stages.json`` keeps those of every call
    (a resumed call adds its own entry, so the first call's training time stays on record). Members
    that failed or are being trained elsewhere are named; the later stages use the members
    that are done, and say which are missing.
    """
    from medzoo.benchmarks.leaderboard import config_options, to_terminal, write_leaderboard
    from medzoo.benchmarks.submission import submit_run
    from medzoo.ensemble.run import build_ensembles
    from medzoo.zoo.config import load_config
    from medzoo.zoo.train import resolve_device, train_zoo

    cfg = load_config(config_path)
    run_dir = Path(results_dir) / cfg.run
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "environment.json", environment(str(resolve_device(cfg.device))))
    stages = {}
    history_path = run_dir / "stages.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    history.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": stages})

    def stage(name, fn):
        log(f"== {name}")
        t0 = time.perf_counter()
        out = fn()
        stages[name] = round(time.perf_counter() - t0, 2)
        write_json(history_path, history)
        return out

    trained = stage("train", lambda: train_zoo(cfg, members=members, results_dir=results_dir))
    missing = [r["member"] for r in trained if r.get("status") in ("failed", "running elsewhere")]
    if missing:
        log(f"members not available: {', '.join(missing)} (see medzoo status {run_dir}); continuing without them")
    stage("ensemble", lambda: build_ensembles(run_dir, config=cfg.ensemble, log=log))
    board = stage("leaderboard", lambda: write_leaderboard(run_dir, **config_options(run_dir)))
    log(to_terminal(board))
    submission = stage("submission", lambda: submit_run(run_dir))
    return {"run_dir": run_dir, "stages": stages, "train": trained, "leaderboard": board, "submission": submission}
