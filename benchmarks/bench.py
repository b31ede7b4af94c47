"""``medzoo bench``: dataset -> zoo training -> predictions -> ensembles -> leaderboard -> submission.

Every stage writes into ``results/<run>/`` and resumes: members with ``done.json`` are
skipped, and a second call redoes only the cheap stages that read their outputs.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import sys
import time
from pathlib import Path

import numpy
import sklearn
import torch
import torchvision

from medzoo.benchmarks.leaderboard import config_options, to_terminal, write_leaderboard
from medzoo.benchmarks.report import write_report
from medzoo.benchmarks.submission import get_format, submit_run
from medzoo.core.fileio import clean_stale_temps, file_lock, write_json, write_text
from medzoo.core.rundir import RunDir
from medzoo.ensemble.run import build_ensembles
from medzoo.zoo.check import check
from medzoo.zoo.config import ZooConfig
from medzoo.zoo.datasets import load_card
from medzoo.zoo.device import resolve_device
from medzoo.zoo.embedding import default_member, embed_run
from medzoo.zoo.explain import explain_run
from medzoo.zoo.schedule import resolve_run, train_zoo


def environment(device: str) -> dict:
    """What ran the benchmark: versions, device, CPU and GPU names."""
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


def run_bench(cfg: ZooConfig, results_dir: str | Path = "results", members=None, log=print, *,
              format: str | None = None, extend: bool = False, estimate: bool = True) -> dict:
    """Run every stage of one config; return ``{"run_dir", "stages", "check", "train", "leaderboard", "submission",
    "report"}`` (the path of ``report.html``).

    Nothing is written before the whole config is valid, the run folder fits it (a different
    ``config.json`` there is refused unless ``extend``) and :func:`medzoo.zoo.check.check` has
    decoded every image and found no error (missing classes, leaks across splits). ``stages``
    maps each stage to its wall seconds; ``stages.json`` keeps those of every call (a resumed
    call adds its own entry, so the first call's training time stays on record). Members that
    failed or are being trained elsewhere are named; the later stages use the members that are
    done, and say which are missing. ``cfg`` comes from :func:`medzoo.config.load_config`;
    ``format`` overrides the submission format (it, or else the card's, is checked first too).
    The config file itself (``cfg.source``) is kept as ``config.toml``, which the report quotes.
    """
    run = RunDir.of(results_dir, cfg.run)
    run_dir = run.path
    resolve_run(cfg, run_dir, extend=extend)
    submission_format = format or cfg.submission.get("format") or load_card(cfg.dataset).submission
    if submission_format:
        get_format(submission_format)
    stages = {}
    t0 = time.perf_counter()
    log("== check")
    report = check(cfg, results_dir=results_dir, log=log, estimate=estimate)
    stages["check"] = round(time.perf_counter() - t0, 2)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(run_dir, older_than=cfg.claim_timeout, recursive=True)
    write_json(run.environment_json, environment(str(resolve_device(cfg.device))))
    if cfg.source and Path(cfg.source).is_file():
        write_text(run.config_toml, Path(cfg.source).read_text())
    record = {"call": secrets.token_hex(8), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": stages}
    read_stage_history(run.stages_json)  # a damaged record fails the call here, before any training

    def stage(name, fn):
        log(f"== {name}")
        t0 = time.perf_counter()
        out = fn()
        stages[name] = round(time.perf_counter() - t0, 2)
        record_stages(run.stages_json, record)
        return out

    trained = stage("train", lambda: train_zoo(cfg, members=members, results_dir=results_dir, extend=extend, log=log))
    missing = [r["member"] for r in trained if r.get("status") in ("failed", "running elsewhere")]
    if missing:
        log(f"members not available: {', '.join(missing)} (see medzoo status {run_dir}); continuing without them")
    stage("ensemble", lambda: build_ensembles(run_dir, config=cfg.ensemble, log=log))
    board = stage("leaderboard", lambda: write_leaderboard(run_dir, **config_options(run_dir)))
    log(to_terminal(board))
    submission = stage("submission", lambda: submit_run(run_dir, format))

    def report_stage() -> Path:
        inspect_run(run_dir, cfg.device, log)
        return write_report(run_dir)

    page = stage("report", report_stage)
    return {"run_dir": run_dir, "stages": stages, "check": report, "train": trained, "leaderboard": board,
            "submission": submission, "report": page}


def inspect_run(run_dir: str | Path, device: str = "auto", log=print) -> None:
    """What the report shows beyond the board: Grad-CAM heatmaps (``explain/<entry>/``) of the board's rank-1
    entry and of every member row (a repeated run's first repeat, :meth:`RunDir.ranked`), and the embedding
    view of the best member, on ``device``.

    Each is skipped with a line when it cannot be made (the explain extra is not installed, a table or
    checkpoint is missing, nothing to pick, the device fails): training is done, and a view is no reason to
    fail the bench.
    """
    rd = RunDir(run_dir)
    for entry in dict.fromkeys(rd.ranked()[:1] + rd.ranked("member")):
        try:
            result = explain_run(rd.path, entry, per_group=4, device=device)
        except (ImportError, ValueError, OSError, RuntimeError) as e:
            log(f"heatmaps of {entry} skipped: {e}")
            if isinstance(e, ImportError):
                break
            continue
        log(f"heatmaps of {entry}: {len(result.picks)} images -> {result.grid}")
    try:
        view = embed_run(rd.path, default_member(rd.path), device=device)
    except (ValueError, OSError, RuntimeError) as e:
        log(f"embedding view skipped: {e}")
    else:
        log(f"embedding view: {view.png}")


def record_stages(path: Path, record: dict) -> None:
    """Write one bench call's ``record`` (``{"call", "started", "seconds"}``) into ``stages.json``.

    The file is re-read under :func:`file_lock` and only this call's record is replaced (or appended), so
    calls sharing a run folder each keep theirs.
    """
    with file_lock(path):
        history = read_stage_history(path)
        calls = [h.get("call") for h in history]
        if record["call"] in calls:
            history[calls.index(record["call"])] = record
        else:
            history.append(record)
        write_json(path, history)


def read_stage_history(path: Path) -> list[dict]:
    """The calls recorded in ``stages.json``: ``[{"call", "started", "seconds": {stage: s}}]``, in the order of
    their first recorded stage (``call`` is a random id; older records have none).

    A file from medzoo 0.1 held one call's ``{stage: seconds}``; it is read as that one call.
    """
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it to start a new stage record") from None
    if isinstance(history, dict) and all(isinstance(v, (int, float)) for v in history.values()):
        return [{"started": None, "seconds": history}]
    if not isinstance(history, list) or not all(isinstance(h, dict) and "seconds" in h for h in history):
        raise ValueError(f"{path}: expected a list of {{started, seconds}} records; delete it to start a new one")
    return history
