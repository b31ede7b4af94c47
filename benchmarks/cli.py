"""The ``medzoo`` command. Each command module adds its own subcommands via ``register``."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

COMMAND_MODULES = (
    "medzoo.zoo.cli_data",
    "medzoo.zoo.cli_models",
    "medzoo.zoo.cli_train",
    "medzoo.ensemble.cli",
    "medzoo.benchmarks.cli_leaderboard",
    "medzoo.benchmarks.cli_submit",
    "medzoo.benchmarks.cli_bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medzoo",
        description="Train a zoo of medical image classifiers, combine them into ensembles, "
                    "rank them on ROC-AUC leaderboards and write challenge submissions.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"medzoo: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, OSError) as e:
        print(f"medzoo {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 1


def error_line(e: Exception) -> str:
    """One line for the user: the message of a medzoo error; for an OS error, what failed and on which path."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        target = f" -> {e.filename2}" if e.filename2 else ""
        return f"{e.strerror.lower()}: {e.filename}{target}"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
