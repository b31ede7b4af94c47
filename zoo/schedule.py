"""Training a whole zoo into one run folder, shared by several jobs: who trains which unit, and where each stands.

:func:`train_zoo` records the run (:func:`record_run`: the dataset checked, the resolved config
and the folds saved) and then, unit by unit (a member at one seed and fold,
:meth:`~medzoo.zoo.config.ZooConfig.units`), decides through the unit's claim file whether this
job trains it, skips it (finished, or held by another job) or takes over a stale claim. Under
``[cv]`` a member's tables are assembled once all its folds are done (:mod:`medzoo.zoo.crossval`).
:func:`status` reads the same files back.
"""
from __future__ import annotations

import json
import socket
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

from medzoo.core.fileio import clean_stale_temps, write_json
from medzoo.core.rundir import MemberDir, RunDir
from medzoo.zoo import crossval, distributed
from medzoo.zoo.cards import known_cards, resolve_data_root
from medzoo.zoo.config import Unit, ZooConfig, config_differences, unit_names
from medzoo.zoo.datasets import open_dataset
from medzoo.zoo.device import resolve_device
from medzoo.zoo.loader import keep_freed_memory
from medzoo.zoo.member import check_trainable, logger_for, train_member
from medzoo.zoo.splits import read_split_csv


def train_zoo(cfg: ZooConfig, members: list[str] | None = None, results_dir: str | Path = "results", *,
              progress: bool = True, on_batch: Callable | None = None,
              log: Callable[[str], None] | None = None, extend: bool = False) -> list[dict]:
    """Train the zoo's members (or those named) into ``results_dir/<run>/``; returns one dict per unit.

    Before anything is written the dataset is opened and checked (train and val must hold every
    class), and a run folder that already has a config must match ``cfg``: otherwise
    ValueError names the differing keys, unless ``extend`` (then the new config replaces the
    recorded one; finished members are kept as they are). Finished members (with a done record)
    are skipped; a member another job holds a live claim on is skipped (``status`` "running
    elsewhere"); a member whose training raises gets a failed record with the error and the zoo
    moves on (``status`` "failed") — except under torchrun, where the error ends the job. Other
    statuses: "done" (already finished), "trained".
    """
    chosen = cfg.units(members)
    run = RunDir.of(results_dir, cfg.run)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()
    results = []
    with distributed.session(device, cfg.dist_timeout) as dist:
        say = logger_for(log, dist.is_main)
        if dist.is_main:
            record_run(cfg, run.path, extend=extend, log=say)
        for u in chosen:
            decision, holder, claim = _decide(cfg, u, run, dist, say)
            if decision == "done":
                results.append({**_read_json(run.member(u.name).done), "status": "done"})
                say(f"{u.name}: already done, skipped")
            elif decision == "busy":
                say(f"{u.name}: being trained by {holder.get('host')} pid {holder.get('pid')} "
                    f"since {holder.get('started_iso')}; skipped")
                results.append({"member": u.member.id, "unit": u.name, "model": u.member.model,
                                "status": "running elsewhere", "host": holder.get("host"), "pid": holder.get("pid")})
            else:
                results.append(_train_claimed(cfg, u, run, dist, claim, say, progress=progress, on_batch=on_batch,
                                              log=log))
            if u.fold is not None and dist.is_main:
                _assemble(cfg, run, u, trained=decision == "train", say=say)
    return results


def _assemble(cfg: ZooConfig, run: RunDir, u: Unit, *, trained: bool, say: Callable[[str], None]) -> None:
    """Assemble the member tables of ``u``'s member and seed once all its folds are done: after training one
    of them, or when its tables are missing (the job that finished the last fold stopped before)."""
    if trained or not all(run.table("member", e, "val").exists() for e in u.entries):
        group = [v for v in cfg.units([u.member.id]) if v.seed == u.seed]
        crossval.assemble(cfg, run, group, log=say)


def _decide(cfg: ZooConfig, u: Unit, run: RunDir, dist: distributed.DistInfo,
            say: Callable[[str], None]) -> tuple[str, dict | None, distributed.Claim | None]:
    """``(decision, holder, claim)``: "done", "busy" (``holder``: the live claim's content) or "train".

    Rank 0 takes the member's claim (or takes over a stale one) unless it is finished, removes
    what killed writes left in its folders, and broadcasts the decision; ``claim`` is the held
    claim on rank 0, None elsewhere.
    """
    files = run.member(u.name)
    claim, holder = None, None
    if dist.is_main and not files.done.exists():
        claim = distributed.try_claim(files.claim, cfg.claim_timeout)
        if claim is not None and files.done.exists():
            claim.release()
            claim = None
        elif claim is None:
            holder = distributed.read_claim(files.claim) or {}
        elif claim.took_over:
            say(f"{u.name}: took over a stale claim ({claim.took_over})")
        if claim is not None:  # a taken-over holder may still be writing: only its old temp files go
            for folder in (files.folder, *(run.table_dir("member", e) for e in u.entries)):
                clean_stale_temps(folder, older_than=cfg.claim_timeout if claim.took_over else 0.0)
    decision = "busy" if holder is not None else "train" if claim is not None else "done"
    decision, holder = distributed.broadcast((decision, holder))
    return decision, holder, claim


def _train_claimed(cfg: ZooConfig, u: Unit, run: RunDir, dist: distributed.DistInfo,
                   claim: distributed.Claim | None, say: Callable[[str], None], **train_kw) -> dict:
    """Train a unit this job holds; a failure is recorded (and raised under torchrun). The claim is released."""
    files = run.member(u.name)
    try:
        if dist.is_main:
            files.failed.unlink(missing_ok=True)
        beat = (lambda epoch: claim.beat(epoch=epoch)) if claim else None
        return train_member(cfg, u, run.path, on_epoch=beat, **train_kw)
    except Exception as e:
        if dist.is_main and not isinstance(e, distributed.ClaimLost):
            write_json(files.failed, {"member": u.member.id, "unit": u.name, "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc(), "host": socket.gethostname(),
                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if dist.enabled:
            raise
        say(f"{u.name}: FAILED - {type(e).__name__}: {e}")
        return {"member": u.member.id, "unit": u.name, "model": u.member.model, "status": "failed",
                "error": f"{type(e).__name__}: {e}"}
    finally:
        if claim is not None:
            claim.release()


def resolve_run(cfg: ZooConfig, run_dir: Path, *, extend: bool = False) -> ZooConfig:
    """``cfg`` as a run folder records it (absolute data root and dataset path), once it fits ``run_dir``.

    A config already recorded in ``run_dir`` must match (see :func:`config_differences`) unless
    ``extend``; otherwise ValueError names the differing keys. Writes nothing.
    """
    root = str(resolve_data_root(cfg.data_root).resolve())
    resolved = replace(cfg, data_root=root, dataset=_dataset_reference(cfg.dataset))
    run = RunDir(run_dir)
    recorded = run.read_config()
    if recorded and not extend:
        diffs = config_differences(recorded, resolved.to_dict())
        if diffs:
            raise ValueError(f"{run.config_json} was written by a different config: "
                             + "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
                             + ". Use another run name, or pass --extend to continue this run with the new "
                               "config (finished members are kept as they are)")
    return resolved


def record_run(cfg: ZooConfig, run_dir: Path, *, extend: bool = False, log: Callable[[str], None] = print) -> ZooConfig:
    """Check the dataset and the run folder, then save the resolved config; returns what was saved.

    The dataset is opened first (a wrong path fails here and writes nothing) and must be
    trainable (:func:`~medzoo.zoo.member.check_trainable`); the run folder must fit
    (:func:`resolve_run`). When the dataset's splits were made rather than given, the split of
    every image is saved (``RunDir.splits_csv``) and announced in one line; under ``[cv]`` the
    fold of every train+val image (``RunDir.folds_csv``), which must not change as the run goes on.
    """
    resolved = resolve_run(cfg, run_dir, extend=extend)
    ds = open_dataset(resolved.dataset, data_root=resolved.data_root)
    check_trainable(ds)
    run = RunDir(run_dir)
    if ds.made is not None and run.splits_csv(ds.name).exists() and not extend:
        _check_same_splits(ds, run.splits_csv(ds.name))
    if resolved.cv.folds:
        ids, folds = crossval.fold_assignment(ds, resolved.cv.folds, resolved.cv.seed)
        if run.folds_csv(ds.name).exists() and not extend:
            crossval.check_same_folds(run.folds_csv(ds.name), ids, folds)
    run.write_config(resolved.to_dict())
    if resolved.cv.folds:
        crossval.write_folds(run.folds_csv(ds.name), ids, folds)
        log(f"[cv] {resolved.cv.folds} folds of {len(ids)} train+val images (seed {resolved.cv.seed}); saved to "
            f"{run.folds_csv(ds.name)}")
    if ds.made is not None:
        path = ds.write_splits(run.splits_csv(ds.name))
        announce = ds.describe_made()
        if announce:
            log(f"{announce}; saved to {path}")
    return resolved


def _check_same_splits(ds, path: Path) -> None:
    """Raise unless the splits made now are the ones saved at ``path`` when the run started."""
    saved = read_split_csv(path)
    now = dict(zip(*ds.assignment()))
    moved = sum(saved[k] != s for k, s in now.items() if k in saved)
    new, gone = len(now.keys() - saved.keys()), len(saved.keys() - now.keys())
    if moved or new or gone:
        raise ValueError(f"{path}: the splits made now differ from those this run started with ({moved} image(s) "
                         f"in another split, {new} new, {gone} gone): the data changed since. Restore it, use "
                         f"another run name, or pass --extend to continue with the new splits")


def _dataset_reference(dataset: str) -> str:
    """A card name as it is; a path (card .toml, folder, CSV, npz) made absolute."""
    p = Path(dataset).expanduser()
    if p.suffix == ".toml" or (p.exists() and dataset not in known_cards()):
        return str(p.resolve())
    return dataset


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def status(run_dir: str | Path) -> list[dict]:
    """Each member's state in a run folder, from its recorded config and the member folders.

    ``state`` is "done" (with ``val_auc``, ``minutes``, ``near_chance``: the validation AUC is within
    noise of chance, the member did not learn), "running" (``host``, ``pid``, ``since``,
    ``epoch``), "failed" (``error``), "stale" (a claim whose owner stopped; the next job takes
    it over) or "pending" (``epoch``: epochs already in the resume checkpoint's history, if any).
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise FileNotFoundError(f"no run folder at {run.path}")
    cfg = run.read_config()
    members = cfg.get("members", [])
    specs = [(m["id"], tuple(m.get("seeds") or [cfg.get("seed", 0)])) for m in members]
    expected = unit_names(specs, int(cfg.get("cv", {}).get("folds", 0))) if specs else []
    models = {name: members[i]["model"] for name, i, *_ in expected}
    timeout = float(cfg.get("claim_timeout", 600.0))
    found = run.member_ids()
    return [_member_state(run.member(name), models.get(name), timeout)
            for name in [*models, *(m for m in found if m not in models)]]


def _member_state(files: MemberDir, model: str | None, timeout: float) -> dict:
    """One row of :func:`status`."""
    row = {"member": files.id, "model": model}
    claim = distributed.read_claim(files.claim)
    epochs = max(0, len(files.history.read_text().splitlines()) - 1) if files.history.exists() else 0
    if files.done.exists():
        done = _read_json(files.done)
        row.update(state="done", val_auc=done.get("val_auc"), minutes=done.get("minutes"),
                   epoch=done.get("epochs"), model=done.get("model", row["model"]),
                   near_chance=bool(done.get("near_chance")))
    elif claim is not None and distributed.stale_reason(claim, timeout) is None:
        row.update(state="running", host=claim.get("host"), pid=claim.get("pid"),
                   since=claim.get("started_iso"), epoch=claim.get("epoch", epochs))
    elif files.failed.exists():
        row.update(state="failed", error=_read_json(files.failed).get("error"), epoch=epochs)
    elif claim is not None:
        row.update(state="stale", host=claim.get("host"), pid=claim.get("pid"), since=claim.get("started_iso"),
                   reason=distributed.stale_reason(claim, timeout), epoch=epochs)
    else:
        row.update(state="pending", epoch=epochs)
    return row
