"""The ``medzoo`` command: every subcommand lives in this package, one module per group.

Each module names its commands with their one-line help in ``COMMANDS`` and adds their full
parsers in ``register(sub)``. :func:`build_parser` registers in full only the module of the
command being run (all of them for ``--help`` of no command would import every layer), so
``medzoo --help`` and a config typo answer in about a second. For the same reason the modules
import torch, pandas and scikit-learn inside the functions that need them.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from medzoo.cli import bench, data, embed, ensemble, explain, leaderboard, models, report, submit, train

MODULES = (data, models, train, ensemble, leaderboard, submit, explain, embed, report, bench)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``medzoo`` parser, with ``command``'s module registered in full and the others as one-line entries."""
    parser = argparse.ArgumentParser(
        prog="medzoo",
        description="Train a zoo of medical image classifiers, combine them into ensembles, "
                    "rank them on ROC-AUC leaderboards and write challenge submissions.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in MODULES:
        if command in module.COMMANDS:
            module.register(sub)
        else:
            for name, text in module.COMMANDS.items():
                sub.add_parser(name, help=text, add_help=False)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"medzoo: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run one ``medzoo`` command; medzoo's errors become one line on stderr and exit status 1."""
    warnings.formatwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
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
