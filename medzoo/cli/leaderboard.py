"""``medzoo leaderboard RUN_DIR``: rank every member and ensemble of a run and draw the plots."""
from __future__ import annotations

from pathlib import Path

from medzoo.core.rundir import RunDir


COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "leaderboard": "rank a run's members and ensembles by validation AUC; write leaderboard.csv/.md and plots",
}


def register(sub) -> None:
    p = sub.add_parser(
        "leaderboard",
        help=COMMANDS["leaderboard"],
        description="Rank every member (RUN_DIR/predictions/<id>/) and ensemble (RUN_DIR/ensembles/<name>/) by "
                    "validation ROC-AUC, with test AUC, its stratified-bootstrap 95% CI, the paired DeLong test "
                    "against the best single member and sensitivity/specificity at a threshold chosen on "
                    "validation. Writes RUN_DIR/leaderboard.csv, leaderboard.md and plots/*.png. Defaults come "
                    "from the run's config.json [leaderboard] section, else youden and 1000 replicates.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory, e.g. results/pneumoniamnist")
    p.add_argument("--threshold", default=None, metavar="RULE",
                   help="operating threshold rule chosen on validation: youden or sens:<target> such as "
                        "sens:0.95 (default: config, else youden)")
    p.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help="bootstrap replicates for the AUC CIs, 0 for none (default: config, else 1000)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: config, else 0)")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.set_defaults(func=run)


def run(args) -> int:
    from medzoo.benchmarks.leaderboard import config_options, to_terminal, write_leaderboard
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    options = config_options(run_dir, threshold=args.threshold, bootstrap=args.bootstrap, seed=args.seed)
    frame = write_leaderboard(run_dir, **options, plots=not args.no_plots)
    info = frame.attrs["info"]
    print(f"leaderboard of {run_dir} ({info['dataset'] or 'unknown dataset'}; threshold {info['threshold']} on val; "
          f"{info['bootstrap']} bootstrap replicates)")
    print(to_terminal(frame))
    for note in info["notes"]:
        print(f"note: {note}")
    run = RunDir(run_dir)
    print(f"wrote {run.leaderboard_csv}, {run.leaderboard_md}"
          + "".join(f", {p}" for p in info.get("plots", [])))
    return 0
