"""``medzoo bench CONFIG``: the whole pipeline in one command."""
from __future__ import annotations

from medzoo.core.rundir import RunDir


COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "bench": "train the zoo, build ensembles, write the leaderboard and the submission",
}


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help=COMMANDS["bench"],
        description="Run every stage for one config into results/<run>/: dataset -> zoo training -> "
                    "per-member probability tables -> ensembles -> leaderboard (+ plots) -> challenge "
                    "submission -> report.html. A second call resumes: finished members are skipped.",
    )
    p.add_argument("config", help="zoo config TOML, e.g. benchmarks/pneumoniamnist.toml, or the name of a "
                                  "shipped one (pneumoniamnist, isic2017, ...)")
    p.add_argument("--results", default="results", help="folder that holds run folders (default: results)")
    p.add_argument("--member", action="append", dest="members", metavar="ID",
                   help="train only this member (repeatable); the other stages use every finished member")
    p.add_argument("--format", help="submission format (default: the config's [submission] format, then the "
                                    "dataset card's, then generic)")
    p.add_argument("--extend", action="store_true",
                   help="continue a run folder whose config.json differs from CONFIG; finished members are kept")
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="skip timing a few training steps per member for the plan's time estimate")
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from medzoo.config import load_config

    cfg = load_config(args.config)
    from medzoo.benchmarks.bench import run_bench  # after the config check, so a typo fails before torch loads

    out = run_bench(cfg, results_dir=args.results, members=args.members, format=args.format,
                    extend=args.extend, estimate=args.estimate)
    run_dir = out["run_dir"]
    print(f"\nrun folder: {run_dir}")
    for name, seconds in out["stages"].items():
        print(f"  {name:<12} {seconds:>9.1f} s")
    print(f"leaderboard: {RunDir(run_dir).leaderboard_md}")
    sub = out["submission"]
    print(f"submission: {sub.path} ({sub.rows} rows, {sub.format}, entry {sub.entry}; {sub.checked})")
    print(f"report: {out['report']}")
    print(f"next: medzoo status {run_dir} | medzoo submit {run_dir} --entry ENTRY | "
          f"medzoo leaderboard {run_dir} --threshold sens:0.95")
    return 0
