"""Atomic file writes: a killed process never leaves a partial file under a final name."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import UserError

# Read once, at import (single-threaded): os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would have given; mkstemp's 0600 is for the temp file


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; it replaces ``path`` only when the block succeeds.

    >>> with atomic_open("/tmp/example.txt") as f:
    ...     _ = f.write("done")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def next_run_folder(base: str | Path, name: str) -> Path:
    """runs/<command>/<name>, <name>2, <name>3 ... : the first that does not exist.

    >>> next_run_folder("/nonexistent/runs/evaluate", "exp")
    PosixPath('/nonexistent/runs/evaluate/exp')
    """
    base = Path(base)
    for i in range(1, 10_000):
        candidate = base / (name if i == 1 else f"{name}{i}")
        if not candidate.exists():
            return candidate
    raise UserError(f"{base}: too many runs named {name}; clean up or give --out")


def fresh_folder(path: str | Path) -> Path:
    """Create ``path`` (or accept it empty): a folder we may write into without touching
    anything the user has. Anything else is a :class:`UserError`."""
    path = Path(path)
    if path.is_file():
        raise UserError(f"{path}: is a file; give a folder to write into")
    if path.exists() and any(path.iterdir()):
        raise UserError(f"{path}: exists and is not empty; give a new folder (nothing was changed)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{path}: folder is not writable")
    return path


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
