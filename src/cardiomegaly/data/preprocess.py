"""Geometry shared by every consumer: a decoded image to the model's square input.

>>> import numpy as np
>>> to_square(np.ones((100, 50), np.float32), 75).shape
(75, 75)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..config import RESIZE_POLICIES
from .images import ImageMeta, load_image


class FilmCrop(Protocol):
    """What cuts a decoded film to the part the model sees (``segment.crop.ThoraxCrop``)."""

    #: Names the cut (its model and settings) in the preprocessing cache.
    key: str

    def box(self, film: np.ndarray) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom) in the film's pixels, or None to keep the whole film."""
        ...


def cut(film: np.ndarray, crop: FilmCrop | None) -> tuple[np.ndarray, tuple | None]:
    """The film cut by ``crop`` (a view of it) and the box cut, or the film and None."""
    box = None if crop is None else crop.box(film)
    if box is None:
        return film, None
    left, top, right, bottom = box
    return film[top:bottom, left:right], box


def to_square(arr: np.ndarray, size: int, resize: str = "pad") -> np.ndarray:
    """Resize a 2-D float image to ``size`` x ``size``.

    ``pad`` keeps the aspect ratio and centres the image on black (the cardiothoracic geometry is
    unchanged); ``squash`` stretches it. Pillow's resampling is antialiased when shrinking.
    """
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, not {resize!r}")
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    if resize == "squash":
        out = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        return np.clip(out, 0.0, 1.0)
    h, w = arr.shape
    _, _, left, top, nw, nh = _placement(w, h, size, resize)
    small = np.asarray(im.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top : top + nh, left : left + nw] = small
    return np.clip(canvas, 0.0, 1.0)


def _placement(
    width: int, height: int, size: int, resize: str
) -> tuple[float, float, int, int, int, int]:
    """Where :func:`to_square` puts a ``width`` x ``height`` film: x and y scale, left and top,
    and the width and height it is resized to."""
    if resize == "squash":
        return size / width, size / height, 0, 0, size, size
    scale = size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, scale, (size - nw) // 2, (size - nh) // 2, nw, nh


def box_to_square(
    box: tuple[float, float, float, float], width: int, height: int, size: int, resize: str = "pad"
) -> tuple[float, float, float, float]:
    """Map a box (x, y, w, h) in original pixels to the ``to_square`` output's pixels.

    >>> box_to_square((100, 0, 50, 50), 200, 100, 100)
    (50.0, 25.0, 25.0, 25.0)
    """
    x, y, bw, bh = box
    sx, sy, left, top, _, _ = _placement(width, height, size, resize)
    return left + x * sx, top + y * sy, bw * sx, bh * sy


def square_to_box(
    box: tuple[float, float, float, float], width: int, height: int, size: int, resize: str = "pad"
) -> tuple[float, float, float, float]:
    """The inverse of :func:`box_to_square`: a box (x, y, w, h) on the model input, in the
    original film's pixels.

    >>> square_to_box((50.0, 25.0, 25.0, 25.0), 200, 100, 100)
    (100.0, 0.0, 50.0, 50.0)
    """
    x, y, bw, bh = box
    sx, sy, left, top, _, _ = _placement(width, height, size, resize)
    return (x - left) / sx, (y - top) / sy, bw / sx, bh / sy


def quantize(square: np.ndarray, bits: int) -> np.ndarray:
    """The model input as stored: uint8 for 8-bit sources (nothing lost), else uint16."""
    if bits <= 8:
        return np.round(square * 255).astype(np.uint8)
    return np.round(square * 65535).astype(np.uint16)


def to_float(stored: np.ndarray) -> np.ndarray:
    """A stored (quantized) model input back to float32 in [0, 1]."""
    scale = 255.0 if stored.dtype == np.uint8 else 65535.0
    return stored.astype(np.float32) / scale


def prepare_file(
    path: str | Path | bytes,
    size: int,
    resize: str = "pad",
    name: str | None = None,
    crop: FilmCrop | None = None,
) -> np.ndarray:
    """Decode, cut (when the model cuts films, ``crop``), square and quantize one file (or its
    bytes, called ``name`` in messages): the exact model input of training and inference.

    Raises :class:`~cardiomegaly.errors.ImageError` for a file that cannot be decoded.
    """
    return prepare_file_with_meta(path, size, resize, name, crop)[0]


def prepare_file_with_meta(
    path: str | Path | bytes,
    size: int,
    resize: str = "pad",
    name: str | None = None,
    crop: FilmCrop | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """:func:`prepare_file`, and the file's :class:`ImageMeta` (its original width and height,
    and the box cut, place a box given in the file's pixels on the model input: see
    :func:`film_box_to_square`)."""
    # A film to be cut is decoded whole: JPEG's reduced decoding would leave the cut too few pixels.
    arr, meta = load_image(path, target_size=None if crop else size, resize=resize, name=name)
    arr, box = cut(arr, crop)
    if box is not None:
        meta = dataclasses.replace(meta, crop=box)
    return quantize(to_square(arr, size, resize), meta.bits), meta


def film_box_to_square(
    box: tuple[float, float, float, float], meta: ImageMeta, size: int, resize: str = "pad"
) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) in a file's pixels on the model input of :func:`prepare_file_with_meta`
    (which gave ``meta``): through the cut, when the film was cut, clipped to it.

    >>> meta = ImageMeta("png", 200, 200, 8, crop=(50, 50, 150, 150))
    >>> film_box_to_square((40, 60, 40, 40), meta, 100)
    (0.0, 10.0, 30.0, 40.0)
    """
    if meta.crop is None:
        return box_to_square(box, meta.width, meta.height, size, resize)
    left, top, right, bottom = meta.crop
    x0, y0 = max(box[0], left), max(box[1], top)
    x1, y1 = min(box[0] + box[2], right), min(box[1] + box[3], bottom)
    inside = (x0 - left, y0 - top, max(x1 - x0, 0), max(y1 - y0, 0))
    return box_to_square(inside, right - left, bottom - top, size, resize)
