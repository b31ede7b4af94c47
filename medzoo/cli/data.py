"""``medzoo data inspect`` (what a dataset card finds, split by split and class by class) and
``medzoo check`` (a config's data and plan, checked before training)."""
from __future__ import annotations

import argparse
import sys
import tomllib
import warnings

COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "data": "inspect datasets described by cards in data/",
    "check": "check a config's dataset and plan before training",
}


def register(sub) -> None:
    data = sub.add_parser("data", help=COMMANDS["data"],
                          description="Work with datasets: a card in data/<name>.toml, a .toml path, "
                                      "or an image folder, label .csv or MedMNIST .npz given directly.")
    cmds = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: _usage(data))
    p = cmds.add_parser("inspect", help="count images per split and class, find unreadable and duplicate "
                                         "images, and plot the distribution",
                        description="Open a dataset (reading every label file and listing every image, "
                                    "so bad input fails here, naming the file and row), print the number "
                                    "of images per class and unlabeled images for each split, decode every "
                                    "image once (naming unreadable files) to find identical images within "
                                    "and across splits, and draw the class distribution as a bar chart PNG. "
                                    "Exits 1 when it finds an error (an unreadable image, the same image in "
                                    "two splits unless the card allows it).",
                        epilog="example: MEDZOO_DATA=../shared/data medzoo data inspect isic2017")
    p.add_argument("card", metavar="CARD",
                   help="card name (isic2017, pneumoniamnist, ...), path to a card .toml, or a data path")
    p.add_argument("--data-root", metavar="DIR",
                   help="folder the card's paths are relative to (default: $MEDZOO_DATA, else ~/.cache/medzoo/data)")
    p.add_argument("--out", metavar="PNG", help="where to write the chart (default: ./<name>-classes.png)")
    p.add_argument("--size", type=int, default=64, metavar="PX",
                   help="decode images at this size, and compare them there (default: 64)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a card field, TOML value, dotted for tables; repeatable "
                        "(e.g. --set negative_class=nevus --set split.fold=2)")
    p.set_defaults(func=inspect_command)

    p = sub.add_parser("check", help=COMMANDS["check"],
                       description="Open the config's dataset, decode every image once at each member size "
                                   "(filling the image cache, so training decodes nothing), count images per "
                                   "split and class, find unreadable images, classes missing from a split and "
                                   "identical images within and across splits, and print the members with an "
                                   "estimated training time (timed steps of each model on random data). Exits 1 "
                                   "when it finds an error, listing them all.",
                       epilog="example: MEDZOO_DATA=../shared/data medzoo check benchmarks/quick_pneumoniamnist.toml")
    p.add_argument("config", metavar="CONFIG", help="zoo config TOML, e.g. benchmarks/quick_pneumoniamnist.toml")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="folder that holds run folders, to show members already trained (default: results)")
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="skip timing the models for the training time estimate")
    p.set_defaults(func=check_command)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def parse_overrides(items: list[str]) -> dict:
    """``["split.fold=2", "negative_class=nevus"]`` -> ``{"split": {"fold": 2}, "negative_class": "nevus"}``."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. split.fold=2")
        try:
            value = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            pass
        *tables, last = key.strip().split(".")
        node = out
        for t in tables:
            node = node.setdefault(t, {})
        node[last] = value
    return out


def inspect_command(args: argparse.Namespace) -> int:
    from medzoo.benchmarks.plots import plot_dataset_counts
    from medzoo.zoo.check import check_dataset, format_counts
    from medzoo.zoo.datasets import open_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(args.card, args.data_root, parse_overrides(args.overrides))
    for w in caught:
        print(f"medzoo data: warning: {w.message}", file=sys.stderr)
    how = ds.describe_made() or "splits given by the data"
    print(f"{ds.name}: {len(ds.classes)} classes, format {ds.card.format}, data root {ds.root}; {how}")
    if ds.card.views:
        print("views: " + "; ".join(f"{v['name']} = {' + '.join(v['positive'])} vs rest" for v in ds.card.views))
    print(format_counts(ds))
    report = check_dataset(ds, [args.size])
    for line in report.notes:
        print(line)
    for w in report.warnings:
        print(f"medzoo data: warning: {w}", file=sys.stderr)
    out = plot_dataset_counts(ds, args.out or f"{ds.name}-classes.png")
    print(f"wrote {out}")
    report.raise_for_errors()
    return 0


def check_command(args: argparse.Namespace) -> int:
    from medzoo.config import load_config
    from medzoo.zoo.check import check

    check(load_config(args.config), results_dir=args.results, estimate=args.estimate)
    return 0
