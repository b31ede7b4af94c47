"""``medzoo train``, ``medzoo predict`` and ``medzoo status``."""
from __future__ import annotations

import sys
from pathlib import Path

COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "train": "train the zoo (or some members) of a config into results/<run>/",
    "predict": "probability table for new images from one checkpoint or a fitted run's entry",
    "status": "state of each member of a run: pending, running, done, failed",
}


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help=COMMANDS["train"],
        description="Train every member of a zoo config (or those named with --member) and write, per member, "
                    "best.pt/last.pt/history.csv/curves.png and validation/test probability tables. Rerunning "
                    "resumes: finished members are skipped, an interrupted one continues from last.pt. Several "
                    "jobs may share one run folder (a claim file per member keeps them apart). For one member "
                    "on several GPUs or processes: torchrun --nproc-per-node N -m medzoo train CONFIG "
                    "--member ID.",
    )
    p.add_argument("config", help="zoo config TOML, e.g. benchmarks/quick_pneumoniamnist.toml")
    p.add_argument("--member", action="append", dest="members", metavar="ID",
                   help="train only this member id (repeatable)")
    p.add_argument("--results", default="results", help="folder that holds run folders (default: results)")
    p.add_argument("--epochs", type=int, help="override the number of epochs for every member")
    p.add_argument("--extend", action="store_true",
                   help="continue a run folder whose config.json differs from CONFIG (added members, changed "
                        "settings); finished members are kept as they are")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "predict",
        help=COMMANDS["predict"],
        description="Predict class probabilities for new images with a medzoo checkpoint (best.pt; it stores the "
                    "model, classes, input size and normalisation), or with an entry of a fitted run folder "
                    "(--entry): a member runs from its kept checkpoints (every fold model of a cross-validated "
                    "one, averaged) at its own input size and TTA, exactly as its tables were made; an ensemble "
                    "combines its members with the method fitted when the run's ensembles were built, without "
                    "refitting. Ids are the file names without extension (an .npz's: test_00000, ...). For one "
                    "image the class probabilities are printed; for several the table, unless --out.",
    )
    p.add_argument("source", metavar="CHECKPOINT|RUN_DIR",
                   help="a medzoo checkpoint (results/<run>/members/<id>/best.pt) or a run folder (results/<run>)")
    p.add_argument("images", nargs="+",
                   help="image files and/or folders (searched recursively); with a run folder also one CSV of image "
                        "paths, or one .npz (FILE.npz: its images, else its test split; FILE.npz:SPLIT)")
    p.add_argument("--entry", help="with a run folder: the member id or ensemble name to apply, e.g. resnet18, "
                                   "stacking, resnet18@s1, mean@s1, or a temperature-scaled copy (medzoo calibrate), "
                                   "e.g. mean+ts")
    p.add_argument("--out", help="write the table to this CSV (+ .json sidecar); default: print it")
    p.add_argument("--format", help="also write a challenge submission of the table (see medzoo submit --help for "
                                    "the formats) beside --out, as <out stem>.<format>.csv")
    p.add_argument("--tta", action="store_true",
                   help="with a checkpoint: average over flips (a run's members use the TTA they were trained with)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "status",
        help=COMMANDS["status"],
        description="Show each member of a run folder: pending, running (host, pid, since), done (val AUC, "
                    "minutes), failed (error from failed.json) or stale (its job stopped; rerun to resume).",
    )
    p.add_argument("run_dir", help="a run folder, e.g. results/pneumoniamnist")
    p.set_defaults(func=_status)


def _train(args) -> int:
    from medzoo.config import load_config

    overrides = {"train": {"epochs": args.epochs}} if args.epochs is not None else None
    cfg = load_config(args.config, overrides)
    from medzoo.zoo.distributed import env_info  # after the config check, so a typo fails before torch loads
    from medzoo.zoo.schedule import train_zoo

    results = train_zoo(cfg, members=args.members, results_dir=args.results, extend=args.extend)
    if env_info().rank != 0:
        return 0
    print(f"\n{'unit':<24} {'status':<17} {'val AUC':>8} {'test AUC':>8} {'minutes':>8}")
    for r in results:
        print(f"{r.get('unit', r['member']):<24} {r['status']:<17} {_num(r.get('val_auc')):>8} "
              f"{_num(r.get('test_auc')):>8} {_num(r.get('minutes'), 1):>8}"
              + ("  near chance: did not learn" if r.get("near_chance") else ""))
    failed = [r.get("unit", r["member"]) for r in results if r["status"] == "failed"]
    if failed:
        print(f"medzoo train: {len(failed)} unit(s) failed: {', '.join(failed)} (see members/<unit>/failed.json)",
              file=sys.stderr)
    return 1 if failed else 0


def _predict(args) -> int:
    source = Path(args.source)
    if args.format:
        from medzoo.benchmarks.submission import get_format  # a typo fails before any image is read

        get_format(args.format)
        if not args.out:
            raise ValueError(f"--format {args.format} writes the submission beside the table: give --out TABLE.csv")
    if source.is_dir():
        table = _predict_run(source, args)
    else:
        if args.entry:
            raise ValueError(f"--entry names an entry of a run folder; {source} is not a folder (a checkpoint is "
                             f"applied as it is)")
        from medzoo.zoo.predict import predict

        table = predict(source, args.images, out=args.out, tta=args.tta, device=args.device)
    if len(table.ids) == 1:
        width = max(map(len, table.classes))
        print(f"{table.ids[0]}:")
        for c, v in zip(table.classes, table.probs[0]):
            print(f"  {c:<{width}}  {v:.6f}")
    elif not args.out:
        print(",".join(["image_id", *table.classes]))
        for i, row in zip(table.ids, table.probs):
            print(",".join([i, *(f"{v:.6f}" for v in row)]))
    if args.out:
        print(f"wrote {len(table.ids)} rows to {args.out}")
    if args.format:
        from medzoo.benchmarks.submission import write_submission

        out = Path(args.out)
        path = write_submission(table, args.format, out.with_name(f"{out.stem}.{args.format}.csv"))
        print(f"wrote the {args.format} submission to {path}")
    return 0


def _predict_run(run_dir: Path, args):
    """``medzoo predict RUN_DIR IMAGES --entry ENTRY``: the entry's table for the images."""
    from medzoo.core.rundir import RunDir
    from medzoo.zoo.apply import predict_run, run_entries

    if args.tta:
        raise ValueError("--tta is for a checkpoint; a run's members use the TTA they were trained with")
    if not args.entry:
        entries = run_entries(RunDir(run_dir))
        raise ValueError(f"{run_dir} is a run folder: name the entry to apply with --entry ENTRY; entries: "
                         f"{', '.join(entries) or 'none (train the run first)'}")
    return predict_run(run_dir, args.images, entry=args.entry, out=args.out, device=args.device)


def _status(args) -> int:
    from medzoo.zoo.schedule import status

    rows = status(args.run_dir)
    if not rows:
        print(f"{args.run_dir}: no members yet")
        return 0
    for r in rows:
        print(f"{r['member']:<24} {r['model'] or '?':<14} {r['state']:<8} {_detail(r)}")
    return 0


def _detail(r: dict) -> str:
    state = r["state"]
    if state == "done":
        return (f"val AUC {_num(r['val_auc'])}, {_num(r['minutes'], 1)} min, {r['epoch']} epochs"
                + (", NEAR CHANCE: did not learn" if r.get("near_chance") else ""))
    if state == "running":
        return f"on {r['host']} pid {r['pid']} since {r['since']}, epoch {r['epoch']} done"
    if state == "failed":
        return f"{r['error']} (after {r['epoch']} epochs)"
    if state == "stale":
        return f"claim by {r['host']} pid {r['pid']} since {r['since']}: {r['reason']}; rerun to resume"
    return f"resumable after epoch {r['epoch']}" if r["epoch"] else ""


def _num(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
