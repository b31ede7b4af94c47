"""The dataset cards shipped with medzoo (``<name>.toml``; ``README.md`` is the card reference)."""
from pathlib import Path

CARD_DIR = Path(__file__).resolve().parent
