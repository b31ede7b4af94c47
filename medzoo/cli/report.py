"""``medzoo report RUN_DIR``: the whole run on one self-contained HTML page."""
from __future__ import annotations

COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "report": "write RUN_DIR/report.html: dataset, leaderboard, plots, members, heatmaps, environment, commands",
}


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help=COMMANDS["report"],
        description="Write one self-contained HTML page of a run (figures embedded, nothing fetched): the "
                    "dataset's counts, the sortable leaderboard with its notes, ROC, confusion, calibration and "
                    "spread plots, each member's training, the heatmaps of `medzoo explain`, the embedding views "
                    "of `medzoo embed`, the environment and stage times, and the commands that reproduce the run.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with a leaderboard, e.g. results/pneumoniamnist")
    p.add_argument("--out", help="where to write the page (default: RUN_DIR/report.html)")
    p.set_defaults(func=_report)


def _report(args) -> int:
    from medzoo.benchmarks.report import write_report

    print(f"wrote {write_report(args.run_dir, out=args.out)}")
    return 0
