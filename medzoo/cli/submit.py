"""``medzoo submit`` (write a challenge submission from a run) and ``medzoo score`` (score one)."""
from __future__ import annotations

import argparse

from medzoo.core.fileio import write_json


COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "submit": "write a challenge submission CSV from a run's best entry",
    "score": "score a submission CSV against ground truth",
}


def _formats_help() -> str:
    """The formats and their one-line descriptions, from the challenge registry."""
    from medzoo.benchmarks.challenges import CHALLENGES  # its scorers load scikit-learn: only for submit/score

    return "formats:\n" + "\n".join(f"  {e.name:<11} {e.description}" for e in sorted(CHALLENGES, key=lambda e: e.name))


def _class_map(pairs: list[str] | None) -> dict | None:
    if not pairs:
        return None
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ValueError(f"--map takes CLASS=COLUMN, got {bad}")
    return dict(p.split("=", 1) for p in pairs)


def _submit(args) -> int:
    from medzoo.benchmarks.submission import submit_run
    result = submit_run(
        args.run_dir, args.format, entry=args.entry, out=args.out,
        header=False if args.no_header else None, unk=args.unk, positive=args.positive,
        image_paths=args.image_list, class_map=_class_map(args.map))
    print(f"wrote {result.path}: {result.rows} rows, format {result.format}, "
          f"{result.kind} {result.entry!r} ({result.source}); {result.checked}")
    return 0


def _score(args) -> int:
    from medzoo.benchmarks.scoring import score_submission
    options = {"split": args.split} if args.split else {}
    scores = score_submission(args.submission, args.truth, args.format, **options)
    width = max(map(len, scores))
    for key, value in scores.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        write_json(args.json, scores)
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    """Add ``submit`` and ``score`` to the ``medzoo`` subcommands."""
    p = sub.add_parser(
        "submit", help=COMMANDS["submit"],
        description="Write RUN_DIR/submissions/<format>-<entry>.csv (medmnist: <flag>[_<size>]_test_<entry>@<run>.csv, the "
                    "name MedMNIST's evaluator reads) from the test table of the leaderboard's best validation entry "
                    "(or --entry). Checked before writing: every test image once, probabilities finite and in "
                    "[0, 1], the format's columns in order; a failed check writes nothing.",
        epilog=_formats_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (results/<run>)")
    p.add_argument("--format", help="submission format (default: config [submission] format, then the dataset "
                                    "card's, else generic)")
    p.add_argument("--entry", help="member id or ensemble name (default: config [submission] entry, then the "
                                   "leaderboard's top val_auc entry)")
    p.add_argument("--out", help="output CSV (default: RUN_DIR/submissions/<format>-<entry>.csv; medmnist: "
                                 "<flag>[_<size>]_test_<entry>@<run>.csv)")
    p.add_argument("--no-header", action="store_true", help="isic2017: header-less variant the 2017 scorer read")
    p.add_argument("--unk", choices=("zero", "uncertainty"), help="isic2019: UNK column = 0 or 1 - max probability")
    p.add_argument("--positive", action="append", metavar="CLASS",
                   help="binary formats: class(es) whose probability is the score (repeat to sum several)")
    p.add_argument("--image-list", metavar="PATH", help="object-cxr: the challenge's image path list")
    p.add_argument("--map", action="append", metavar="CLASS=COLUMN",
                   help="name the table class that feeds a challenge column, e.g. --map mel=MEL")
    p.set_defaults(func=_submit)

    p = sub.add_parser(
        "score", help=COMMANDS["score"],
        description="Score SUBMISSION as the challenge did, joining rows on image ids (not row order).",
        epilog=_formats_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("submission", metavar="SUBMISSION", help="submission CSV")
    p.add_argument("--truth", required=True, metavar="GROUND_TRUTH",
                   help="ground truth: ISIC GroundTruth CSV, id+label CSV, or a MedMNIST .npz")
    p.add_argument("--format", required=True, help="submission format")
    p.add_argument("--split", help="medmnist .npz truth: split whose labels to use (default test)")
    p.add_argument("--json", metavar="PATH", help="also write the scores as JSON")
    p.set_defaults(func=_score)
