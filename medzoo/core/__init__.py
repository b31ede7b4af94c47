"""The small core every room may use: atomic file writes, the unknown-name message, the registry, the run folder.

Nothing here imports torch or another medzoo package.
"""
