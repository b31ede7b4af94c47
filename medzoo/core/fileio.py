"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one.

:func:`atomic_path` writes to ``.<name>.<8 hex digits>.medzoo-tmp`` beside the target and renames
it over the target when done. A process killed mid-write (SIGKILL, power loss) leaves that
temporary file behind; :func:`clean_stale_temps` removes such files, and only such files.
:func:`file_lock` keeps a short read-modify-write of a file shared by several processes whole.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from filelock import FileLock

TEMP_SUFFIX = ".medzoo-tmp"
TEMP_PATTERN = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))


def _temp_file(path: Path) -> Path:
    """Create an empty, new temporary file beside ``path`` (mode 0666 less the umask) and return its path."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def clean_stale_temps(folder: str | os.PathLike, older_than: float = 0.0, recursive: bool = False) -> list[Path]:
    """Remove the temporary files that killed :func:`atomic_path` writes left in ``folder``; return them, sorted.

    Only regular files named exactly like atomic_path's temporaries
    (``.<name>.<8 hex digits>.medzoo-tmp``) are touched. ``older_than`` (seconds): keep files
    modified less than that long ago; pass more than the longest write when another process
    may be writing in ``folder`` now (0 removes every match). ``recursive`` searches subfolders too.
    A missing folder has nothing to clean.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for p in folder.rglob(f"*{TEMP_SUFFIX}") if recursive else folder.glob(f"*{TEMP_SUFFIX}"):
        if not TEMP_PATTERN.fullmatch(p.name) or p.is_symlink() or not p.is_file():
            continue
        try:
            if older_than > 0 and now - p.stat().st_mtime < older_than:
                continue
        except FileNotFoundError:  # its writer renamed it, or another cleaner got there first
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return sorted(removed)


def file_lock(path: str | os.PathLike, timeout: float = 30.0) -> FileLock:
    """A lock on ``<path>.lock`` for a short read-modify-write of ``path`` by several processes: ``with
    file_lock(path): ...``.

    It is an OS lock (py-filelock: ``fcntl.flock``, ``msvcrt.locking`` on Windows), so the OS releases it when
    its holder dies and a killed process never leaves a lock to clean up; the empty lock file may stay.
    Waiting longer than ``timeout`` seconds raises ``TimeoutError`` naming the lock file.
    """
    return FileLock(f"{os.fspath(path)}.lock", timeout=timeout)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def strict_json(obj):
    """``obj`` with NaN and infinities as ``None`` and numpy scalars and arrays as Python values, recursively.

    Dicts, lists and tuples are walked (tuples become lists); anything else is returned as it is.
    """
    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return strict_json(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically (NaN and infinities become ``null``).

    Objects JSON has no type for are written as their ``str``.
    """
    text = json.dumps(strict_json(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    return write_text(path, text + "\n")


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes with ``hashlib`` algorithm ``algo``, read in 1 MiB blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
