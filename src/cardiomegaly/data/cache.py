"""Preprocessing cache: each image is decoded and resized once per size and policy.

Entries are keyed by the file's absolute path, size and modification time, the target size, the
resize policy, the cut (for a model that sees films cut to the thorax) and the cache format
version, so a changed file is read again and nothing stale is served. Later epochs and later runs
load a small ``.npy`` instead of decoding the original.

    >>> cache = ImageCache(299)                                   # doctest: +SKIP
    >>> x = cache.get("images/00000013_005.jpg")  # decodes once       # doctest: +SKIP
    >>> x.shape                                                       # doctest: +SKIP
    (299, 299)
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from platformdirs import user_cache_dir

from ..errors import ImageError
from ..fileio import atomic_open
from ..progress import progress_bar
from .preprocess import FilmCrop, prepare_file, to_float

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$CARDIOMEGALY_CACHE`` if set, else the user cache folder (``~/.cache/cardiomegaly``)."""
    env = os.environ.get("CARDIOMEGALY_CACHE")
    return Path(env) if env else Path(user_cache_dir("cardiomegaly"))


#: How a model file fingerprints the films it learned from (see :func:`pixel_fingerprint`).
FINGERPRINT_METHOD = (
    "SHA-256 of the preprocessed pixels (float32, the model's input size), first 16 hex digits"
)


def pixel_fingerprint(image: np.ndarray) -> str:
    """A film's fingerprint: a hash of its decoded, preprocessed pixels (never its name or
    path, so a renamed copy has the same one; nothing about the patient can be read back).

    >>> pixel_fingerprint(np.zeros((4, 4), np.float32))
    'f5a5fd42d16a2030'
    """
    return hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()[:16]


def seen_metadata(fingerprints: Iterable[str]) -> dict[str, Any]:
    """What a model file records of the films it was trained or tuned on."""
    films = sorted(set(fingerprints))
    return {"method": FINGERPRINT_METHOD, "count": len(films), "films": films}


def count_seen(meta: dict[str, Any], fingerprints: Iterable[str]) -> int | None:
    """How many of these films (by fingerprint) the model file says it learnt from; None for
    a model file that does not say (written before fingerprints were recorded)."""
    seen = meta.get("seen")
    if not seen:
        return None
    known = set(seen.get("films", []))
    return sum(fp in known for fp in fingerprints)


# NumPy reads an .npy header with ast.literal_eval, and CPython 3.11's AST builder keeps its
# depth count per interpreter, not per thread: a garbage collection inside that C code can run
# Python code (finalizers) that reads another entry, or hand over to a thread that does, and the
# first read then fails with "SystemError: AST constructor recursion depth mismatch" (seen in
# the test suite's warm(); CPython gh-106905). So no collection runs during a read; the lock
# keeps threads from turning collection back on in the middle of another thread's read.
_NPY_READ = threading.RLock()


def _load_npy(entry: Path) -> np.ndarray:
    with _NPY_READ:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return np.load(entry, allow_pickle=False)
        finally:
            if collecting:
                gc.enable()


class ImageCache:
    """Decoded, resized images on disk, one ``.npy`` per (file version, size, policy, cut)."""

    def __init__(
        self,
        size: int,
        resize: str = "pad",
        root: str | Path | None = None,
        crop: FilmCrop | None = None,
    ) -> None:
        self.size = size
        self.resize = resize
        self.crop = crop
        self.root = Path(root) if root is not None else default_cache_dir()
        kind = f"{size}-{resize}" + (f"-{crop.key}" if crop is not None else "")
        self.folder = self.root / f"images-v{_FORMAT_VERSION}" / kind

    def _entry(self, path: Path) -> Path:
        st = os.stat(path)
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = hashlib.sha1(ident.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, path: str | Path) -> np.ndarray:
        """The preprocessed image (float32, size x size, [0, 1]); decodes only on a miss.

        Raises :class:`ImageError` for a file that is missing or cannot be decoded.
        """
        path = Path(path)
        try:
            entry = self._entry(path)
        except FileNotFoundError:
            raise ImageError(f"{path}: file not found") from None
        try:
            stored = _load_npy(entry)
        except (FileNotFoundError, ValueError, OSError):
            stored = None
        if stored is not None and stored.shape == (self.size, self.size):
            return to_float(stored)
        stored = prepare_file(path, self.size, self.resize, crop=self.crop)
        try:
            with atomic_open(entry, "wb") as f:
                np.save(f, stored, allow_pickle=False)
        except OSError as exc:  # a full or read-only cache slows us down but breaks nothing
            log.warning("cannot write cache entry %s (%s)", entry, exc)
        return to_float(stored)  # the stored values, so a hit and a miss return the same

    def fingerprints(self, paths: Iterable[str | Path]) -> list[str]:
        """:func:`pixel_fingerprint` of each image (decoded once, through the cache)."""
        return [pixel_fingerprint(self.get(p)) for p in paths]

    def bytes_needed(self, paths: Sequence[str | Path]) -> int:
        """Disk space the entries missing for ``paths`` will take (16-bit, the larger kind).

        >>> ImageCache(299, root="/tmp/c").bytes_needed([])
        0
        """
        missing = 0
        for p in paths:
            with contextlib.suppress(OSError):  # a missing image: warm() reports it
                missing += not self._entry(Path(p)).exists()
        return missing * (self.size * self.size * 2 + 128)

    def warm(
        self, paths: Sequence[str | Path], workers: int | None = None, progress: bool = True
    ) -> list[tuple[str, str]]:
        """Fill the cache for ``paths``; return ``(path, reason)`` for every file that failed.

        A bad file is reported and skipped; the rest go on.
        """
        workers = workers or min(8, os.cpu_count() or 1)
        failures: list[tuple[str, str]] = []

        def one(p: str | Path) -> tuple[str, str] | None:
            try:
                self.get(p)
            except ImageError as exc:
                return str(p), str(exc)
            return None

        with ThreadPoolExecutor(workers) as pool:
            results: Iterable = pool.map(one, paths)
            bar = progress_bar(
                results, total=len(paths), desc=f"cache {self.size}px", enabled=progress
            )
            failures = [r for r in bar if r is not None]
        return failures
