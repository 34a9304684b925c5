"""Films cut to the thorax: the square around the heart and lungs that a segment model finds.

A classifier shown the whole film can learn what lies around the chest (film edges, burned-in
text, side markers, the era of the equipment) instead of the heart; cut to the thorax, it sees the
heart against the chest that holds it, at the same scale on every film.

>>> crop = ThoraxCrop.load("runs/train/segment/model.safetensors")   # doctest: +SKIP
>>> chest = crop(film)             # a 2-D float film in [0, 1], any size  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.preprocess import square_to_box, to_square
from .ctr import clean_masks
from .measure import Measurer, as_dict

#: Below this share of the squared film, the masks are no thorax to cut to: the film stays whole.
MIN_COVER = 0.05


def thorax_box(
    masks: dict[str, np.ndarray],
    width: int,
    height: int,
    resize: str = "pad",
    margin: float = 0.1,
) -> tuple[int, int, int, int] | None:
    """The square (left, top, right, bottom) in a film's pixels around the union of its masks.

    ``masks`` are those of the film squared by ``to_square(film, size, resize)``; the square
    around them is widened by ``margin`` of its side on each side, moved inside the film where
    it would leave it, and cut by the film's edges where it is larger than the film. None when
    the masks cover under ``MIN_COVER`` of the square.

    >>> m = np.zeros((10, 10), bool); m[2:6, 4:8] = True
    >>> thorax_box({"heart": m}, 100, 100, margin=0.0)
    (40, 20, 80, 60)
    """
    union = np.logical_or.reduce(list(masks.values()))
    size = union.shape[0]
    if union.sum() < MIN_COVER * size * size:
        return None
    ys, xs = np.nonzero(union)
    x0, y0, w, h = square_to_box(
        (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()),
        width, height, size, resize,
    )  # fmt: skip
    side = max(w, h) * (1 + 2 * margin)
    x = min(max(x0 + (w - side) / 2, 0), max(width - side, 0))
    y = min(max(y0 + (h - side) / 2, 0), max(height - side, 0))
    return round(x), round(y), round(min(x + side, width)), round(min(y + side, height))


class ThoraxCrop:
    """A segment model that cuts films to their thorax (:func:`thorax_box`); a film whose masks
    are empty or tiny is returned whole."""

    def __init__(self, measurer: Measurer, margin: float = 0.1) -> None:
        self.measurer, self.margin = measurer, margin

    @classmethod
    def load(cls, path: str | Path, margin: float = 0.1, device: str = "auto") -> ThoraxCrop:
        """From a segment ``model.safetensors`` (a classifier's file is refused in one line)."""
        return cls(Measurer.load(path, device=device, backend="torch"), margin)

    def boxes(self, films: list[np.ndarray]) -> list[tuple[int, int, int, int] | None]:
        """Each film's :func:`thorax_box` (2-D float films in [0, 1], any sizes)."""
        size, resize = self.measurer.image_size, self.measurer.resize
        squared = np.stack([to_square(f, size, resize) for f in films])
        return [
            thorax_box(clean_masks(as_dict(m)), f.shape[1], f.shape[0], resize, self.margin)
            for f, m in zip(films, self.measurer.masks(squared), strict=True)
        ]

    def __call__(self, film: np.ndarray) -> np.ndarray:
        """The film cut to its thorax (a view of it), or the whole film."""
        box = self.boxes([film])[0]
        if box is None:
            return film
        left, top, right, bottom = box
        return film[top:bottom, left:right]
