"""``medzoo ensemble RUN_DIR``: combine the members' probability tables of a run."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    """Add the ``ensemble`` command to the ``medzoo`` subparsers."""
    p = sub.add_parser(
        "ensemble",
        help="combine member probability tables into ensembles",
        description="Fit ensemble methods on RUN_DIR/predictions/<member>/val.csv and write "
                    "RUN_DIR/ensembles/<method>/{val,test}.csv. Options default to the [ensemble] "
                    "section of RUN_DIR/config.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory, e.g. results/pneumoniamnist")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="methods to build (default: all that apply); aggregators: mean, weighted_mean, median, "
                        "geometric_mean, rank_mean, majority_vote, majority_vote_mean, softmax_auc; "
                        "learned: greedy, stacking, subset_search")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="softmax_auc temperature: weights = softmax(T * val AUC) (default 125)")
    p.set_defaults(func=run)


def run(args) -> int:
    from medzoo.ensemble.run import build_ensembles

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    saved = run_dir / "config.json"
    config = dict(json.loads(saved.read_text()).get("ensemble") or {}) if saved.exists() else {}
    if args.temperature is not None:
        config["temperature"] = args.temperature
    build_ensembles(run_dir, methods=args.methods, config=config)
    return 0
