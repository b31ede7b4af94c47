"""Score a submission file against a challenge's ground truth, as the challenge did.

Each challenge's scorer lives in its module under :mod:`medzoo.benchmarks.challenges`, beside its
submission format; that module's docstring says which truth file it reads and what it reports.
Rows are joined on ids (spelled the same way on both sides: bare ISIC ids, object-cxr file names
without folder or extension, MedMNIST integer indices), never on row order; an id on one side only
is an error that lists it.
"""
from __future__ import annotations

from pathlib import Path

from medzoo.benchmarks.challenges.base import SubmissionError
from medzoo.benchmarks.submission import get_format, read_submission
from medzoo.core.names import unknown_name


def score_submission(path: str | Path, truth: str | Path, format: str, **options) -> dict:
    """Read, validate and score submission ``path`` against ``truth``; returns metric -> value.

    ``options``: the format's scoring options (``split`` for a MedMNIST ``.npz`` truth). Keys per
    format are listed in its challenge module.
    """
    fmt = get_format(format)
    allowed = fmt.get("score_options")
    if options and not allowed:
        raise SubmissionError(f"format {fmt.name!r} takes no scoring options, got {sorted(options)}")
    for key in options:
        if key not in allowed:
            raise SubmissionError(unknown_name("scoring option", key, allowed, label="allowed"))
    return fmt.get("score")(read_submission(path, fmt.name), Path(truth), **options)
