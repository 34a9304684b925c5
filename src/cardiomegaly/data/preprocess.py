"""Geometry shared by every consumer: a decoded image to the model's square input.

>>> import numpy as np
>>> to_square(np.ones((100, 50), np.float32), 75).shape
(75, 75)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..config import RESIZE_POLICIES
from .images import ImageMeta, load_image


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
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(im.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = small
    return np.clip(canvas, 0.0, 1.0)


def _placement(width: int, height: int, size: int, resize: str) -> tuple[float, float, int, int]:
    """Where :func:`to_square` puts a ``width`` x ``height`` film: x and y scale, left and top."""
    if resize == "squash":
        return size / width, size / height, 0, 0
    scale = size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, scale, (size - nw) // 2, (size - nh) // 2


def box_to_square(
    box: tuple[float, float, float, float], width: int, height: int, size: int, resize: str = "pad"
) -> tuple[float, float, float, float]:
    """Map a box (x, y, w, h) in original pixels to the ``to_square`` output's pixels.

    >>> box_to_square((100, 0, 50, 50), 200, 100, 100)
    (50.0, 25.0, 25.0, 25.0)
    """
    x, y, bw, bh = box
    sx, sy, left, top = _placement(width, height, size, resize)
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
    sx, sy, left, top = _placement(width, height, size, resize)
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
    path: str | Path | bytes, size: int, resize: str = "pad", name: str | None = None
) -> np.ndarray:
    """Decode, square and quantize one file (or its bytes, called ``name`` in messages): the
    exact model input of training and inference.

    Raises :class:`~cardiomegaly.errors.ImageError` for a file that cannot be decoded.
    """
    return prepare_file_with_meta(path, size, resize, name)[0]


def prepare_file_with_meta(
    path: str | Path | bytes, size: int, resize: str = "pad", name: str | None = None
) -> tuple[np.ndarray, ImageMeta]:
    """:func:`prepare_file`, and the file's :class:`ImageMeta` (its original width and height
    place a box given in the file's pixels on the model input, with :func:`box_to_square`)."""
    arr, meta = load_image(path, target_size=size, resize=resize, name=name)
    return quantize(to_square(arr, size, resize), meta.bits), meta
