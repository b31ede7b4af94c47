"""``medzoo ensemble RUN_DIR``: combine the members' probability tables of a run; ``medzoo calibrate RUN_DIR``:
temperature-scale its tables on validation."""
from __future__ import annotations

from medzoo.core.rundir import RunDir
from medzoo.ensemble.aggregators import AGGREGATORS
from medzoo.ensemble.combiners import COMBINERS, method_params


COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "ensemble": "combine member probability tables into ensembles",
    "calibrate": "temperature-scale a run's members and ensembles on validation -> ensembles/<entry>+ts/",
}


def register(sub) -> None:
    """Add the ``ensemble`` command to the ``medzoo`` subparsers."""
    p = sub.add_parser(
        "ensemble",
        help=COMMANDS["ensemble"],
        description="Fit ensemble methods on RUN_DIR/predictions/<member>/val.csv and write "
                    "RUN_DIR/ensembles/<method>/{val,test}.csv. Options default to the [ensemble] "
                    "section of RUN_DIR/config.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory, e.g. results/pneumoniamnist")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"methods to build (default: all that apply); aggregators: {', '.join(AGGREGATORS.names())}; "
                        f"learned: {', '.join(COMBINERS.names())}")
    p.add_argument("--temperature", type=float, metavar="T", help=_temperature_help())
    p.set_defaults(func=run)
    c = sub.add_parser(
        "calibrate",
        help=COMMANDS["calibrate"],
        description="Fit one temperature T per entry on its validation table (minimum NLL; probabilities become "
                    "softmax(log p / T)) and write the scaled val and test tables to RUN_DIR/ensembles/<entry>+ts/ "
                    "(mean@s1 -> mean+ts@s1), T in their sidecars; the source tables are left as they are. Test "
                    "labels are never read. Two-class AUCs are unchanged (the order of the images is); ECE, Brier "
                    "and NLL move. The val table is in-sample: the leaderboard stars it and ranks it below honest "
                    "entries. Run `medzoo leaderboard RUN_DIR` afterwards.")
    c.add_argument("run_dir", metavar="RUN_DIR", help="run directory, e.g. results/pneumoniamnist")
    c.add_argument("--entries", nargs="+", metavar="ENTRY",
                   help="members or ensembles to scale; a name without a repeat tag stands for all its repeats "
                        "(default: every entry whose val table is labelled probabilities)")
    c.set_defaults(func=calibrate)


def _temperature_help() -> str:
    """``--temperature`` help: the aggregators that take a temperature, and its default from their signatures."""
    takes = {name: method_params(name)["temperature"] for name in AGGREGATORS.names()
             if "temperature" in method_params(name)}
    defaults = ", ".join(dict.fromkeys(f"{t:g}" for t in takes.values()))
    return f"{', '.join(takes)} temperature: weights = softmax(T * val AUC) (default {defaults})"


def run(args) -> int:
    from medzoo.ensemble.run import build_ensembles

    run_dir = RunDir(args.run_dir)
    if not run_dir.path.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    config = dict(run_dir.read_config().get("ensemble") or {})
    if args.temperature is not None:
        config["temperature"] = args.temperature
    build_ensembles(run_dir.path, methods=args.methods, config=config)
    return 0


def calibrate(args) -> int:
    from medzoo.ensemble.calibration import calibrate_run

    run_dir = RunDir(args.run_dir)
    if not run_dir.path.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    if not calibrate_run(run_dir.path, entries=args.entries):
        print(f"nothing to calibrate in {run_dir}")
    return 0
