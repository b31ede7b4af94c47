"""`medzoo models`: list the registered models with their sizes and input requirements."""
from __future__ import annotations

import argparse


COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "models": "list the model zoo: names, families, parameter counts, input sizes, normalisation",
}


def register(sub) -> None:
    """Add the ``models`` subcommand to an argparse subparsers object."""
    parser = sub.add_parser(
        "models",
        help=COMMANDS["models"],
        description="List every registered model: family, parameters (millions, with a 2-class head), "
                    "default and minimum input size (pixels) and the normalisation mean/std its inputs get.",
    )
    parser.set_defaults(func=run)


def table() -> list[dict]:
    """One row per registered model: name, family, params_m, default_size, min_size, mean, std."""
    import torch

    from medzoo.zoo.models import create_model, list_models, model_info

    rows = []
    for name in list_models():
        info = model_info(name)
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            params = sum(p.numel() for p in create_model(name, num_classes=2).parameters())
        rows.append({"name": name, "family": info.family, "params_m": params / 1e6,
                     "default_size": info.default_size, "min_size": info.min_size,
                     "mean": info.mean, "std": info.std})
    return rows


def run(args: argparse.Namespace) -> int:
    """Print the model table; returns 0."""
    rows = table()
    print(f"{'model':<15} {'family':<11} {'params (M)':>10} {'default':>7} {'min':>4}  mean / std")
    for r in rows:
        stats = " ".join(f"{v:.3f}" for v in r["mean"]) + " / " + " ".join(f"{v:.3f}" for v in r["std"])
        print(f"{r['name']:<15} {r['family']:<11} {r['params_m']:>10.1f} {r['default_size']:>7} "
              f"{r['min_size']:>4}  {stats}")
    print("params counted with a 2-class head; sizes are square input sides in pixels")
    return 0
