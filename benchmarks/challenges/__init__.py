"""The challenges: one module each, holding its submission format and its scorer side by side.

Each module registers its challenge in :data:`CHALLENGES` (the metadata an entry carries is listed
in :func:`~medzoo.benchmarks.challenges.base.challenge`); importing this package imports them all,
so the registry is full wherever it is used. A new challenge is a new module imported here.
"""
# Imported for their registration, in the order the registry lists them.
from medzoo.benchmarks.challenges import isic2017, isic2019, isic2020, object_cxr, medmnist, generic  # noqa: F401
from medzoo.benchmarks.challenges.base import CHALLENGES

__all__ = ["CHALLENGES"]
