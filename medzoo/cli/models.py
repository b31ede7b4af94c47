"""`medzoo models`: list the registered models with their sizes and input requirements."""
from __future__ import annotations

import argparse


COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "models": "list the model zoo: names, families, parameter counts, input sizes, normalisation, heads",
}


def register(sub) -> None:
    """Add the ``models`` subcommand to an argparse subparsers object."""
    parser = sub.add_parser(
        "models",
        help=COMMANDS["models"],
        description="List every registered model: family, parameters (millions, with a 2-class head, from "
                    "scratch and with ImageNet weights), default and minimum input size (pixels), the "
                    "normalisation mean/std its inputs get, and each family's classification heads.",
    )
    parser.set_defaults(func=run)


def table() -> list[dict]:
    """One row per registered model: name, family, params_m (from scratch), params_pretrained_m, default_size,
    min_size, mean, std, and the head each mode builds (head_scratch, head_pretrained: names of ``info.heads``)."""
    import torch

    from medzoo.zoo.models import create_model, list_models, model_info, resolve_head

    rows = []
    for name in list_models():
        info = model_info(name)
        heads = {mode: resolve_head(name, mode) for mode in (False, True)}
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            params = {mode: sum(p.numel() for p in create_model(name, num_classes=2, head=head).parameters())
                      for mode, head in heads.items()}
        rows.append({"name": name, "family": info.family, "params_m": params[False] / 1e6,
                     "params_pretrained_m": params[True] / 1e6, "default_size": info.default_size,
                     "min_size": info.min_size, "mean": info.mean, "std": info.std,
                     "head_scratch": heads[False], "head_pretrained": heads[True]})
    return rows


def run(args: argparse.Namespace) -> int:
    """Print the model table; returns 0."""
    from medzoo.zoo.models import FAMILIES

    rows = table()
    print(f"{'model':<15} {'family':<11} {'params (M)':>10} {'pretrained':>10} {'default':>7} {'min':>4}  mean / std")
    for r in rows:
        stats = " ".join(f"{v:.3f}" for v in r["mean"]) + " / " + " ".join(f"{v:.3f}" for v in r["std"])
        print(f"{r['name']:<15} {r['family']:<11} {r['params_m']:>10.1f} {r['params_pretrained_m']:>10.1f} "
              f"{r['default_size']:>7} {r['min_size']:>4}  {stats}")
    print("params counted with a 2-class head (from scratch, and with ImageNet weights); sizes are square input "
          "sides in pixels\n\nheads (C = classes; from scratch a family uses its 'small' head where it has one, "
          "with weights loaded torchvision's, so pretrained checkpoints fit):")
    for family, layout in FAMILIES.items():
        for head, spec in layout.heads.items():
            print(f"  {family:<11} {head:<12} {spec.description}")
    return 0
