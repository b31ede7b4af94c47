"""``python -m medzoo``: the same as the ``medzoo`` command (and what ``torchrun -m medzoo`` runs)."""
import sys

from medzoo.cli import main

sys.exit(main())
