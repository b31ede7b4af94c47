"""``medzoo data inspect``: what a dataset card finds, split by split and class by class."""
from __future__ import annotations

import argparse
import sys
import tomllib
import warnings
from pathlib import Path


def register(sub) -> None:
    data = sub.add_parser("data", help="inspect datasets described by cards in data/",
                          description="Work with datasets: a card in data/<name>.toml, a .toml path, "
                                      "or an image folder, label .csv or MedMNIST .npz given directly.")
    cmds = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: _usage(data))
    p = cmds.add_parser("inspect", help="count images per split and class, and plot the distribution",
                        description="Open a dataset (reading every label file and listing every image, "
                                    "so bad input fails here, naming the file and row), print the number "
                                    "of images per class and unlabeled images for each split, and draw "
                                    "the class distribution as a bar chart PNG.",
                        epilog="example: MEDZOO_DATA=../shared/data medzoo data inspect isic2017")
    p.add_argument("card", metavar="CARD",
                   help="card name (isic2017, pneumoniamnist, ...), path to a card .toml, or a data path")
    p.add_argument("--data-root", metavar="DIR",
                   help="folder the card's paths are relative to (default: $MEDZOO_DATA, else data/cache)")
    p.add_argument("--out", metavar="PNG", help="where to write the chart (default: ./<name>-classes.png)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a card field, TOML value, dotted for tables; repeatable "
                        "(e.g. --set negative_class=nevus --set split.fold=2)")
    p.set_defaults(func=inspect_command)


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


def format_counts(dataset) -> str:
    """A text table: one row per split, columns images, each class, unlabeled."""
    head = ["split", "images", *dataset.classes, "unlabeled"]
    rows = [[s, str(len(dataset.records(s))), *map(str, dataset.class_counts(s))] for s in dataset.splits]
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width)))
             for r in [head, *rows]]
    return "\n".join(lines)


def plot_counts(dataset, path: str | Path) -> Path:
    """Grouped bar chart: classes (and unlabeled, when any) on x, one bar per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from medzoo.ensemble.fileio import atomic_path

    counts = np.stack([dataset.class_counts(s) for s in dataset.splits])
    names = [*dataset.classes, "unlabeled"]
    if not counts[:, -1].any():
        counts, names = counts[:, :-1], names[:-1]
    x = np.arange(len(names))
    width = 0.8 / len(dataset.splits)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 4))
    for k, split in enumerate(dataset.splits):
        bars = ax.bar(x + (k - (len(dataset.splits) - 1) / 2) * width, counts[k], width,
                      label=f"{split} ({counts[k].sum()})")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0)
    ax.set_ylabel("images")
    ax.set_title(f"{dataset.name}: images per class and split")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def inspect_command(args: argparse.Namespace) -> int:
    from medzoo.zoo.datasets import open_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(args.card, args.data_root, parse_overrides(args.overrides))
    for w in caught:
        print(f"medzoo data: warning: {w.message}", file=sys.stderr)
    how = "given by the data" if ds.made is None else f"made: {ds.made}"
    print(f"{ds.name}: {len(ds.classes)} classes, format {ds.card.format}, data root {ds.root}, splits {how}")
    if ds.card.views:
        print("views: " + "; ".join(f"{v['name']} = {' + '.join(v['positive'])} vs rest" for v in ds.card.views))
    print(format_counts(ds))
    out = plot_counts(ds, args.out or f"{ds.name}-classes.png")
    print(f"wrote {out}")
    return 0
