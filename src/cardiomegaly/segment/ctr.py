"""The cardiothoracic ratio from heart and lung masks, the way a radiologist reads it.

CTR = the widest horizontal extent of the heart / the widest horizontal extent of the thorax,
measured on the film: the heart from its rightmost to its leftmost border (they may lie at
different heights, as the right and left heart borders do), the thorax from the outer edge of one
lung to the outer edge of the other. Both diameters keep their endpoints, so an overlay can draw
what was measured and a reader can check it with a ruler.

Masks are cleaned first (largest connected component per organ, holes filled); geometry no
chest film has is flagged with the reason instead of a number. A heart's widest row lies beside
the lungs: on JSRT's 240 reference masks the diameter's lower endpoint sits at 66-95 % of the
lungs' height, so one below the lungs' lowest row (a heart outline run into the belly, the usual
failure on films with fluid) is flagged too.

>>> import numpy as np
>>> heart = np.zeros((10, 20), bool); heart[4:8, 6:14] = True
>>> lung = np.zeros((10, 20), bool); lung[1:9, 2:9] = True
>>> other = np.zeros((10, 20), bool); other[1:9, 11:18] = True
>>> m = measure_ctr({"heart": heart, "left_lung": other, "right_lung": lung}, min_area=0.0)
>>> m.ctr, m.heart_width_px, m.thorax_width_px
(0.5, 8, 16)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

#: The organs of the segment task, in the model's channel order. Left and right are the
#: patient's: on a PA film the patient's left lung is on the right of the image.
MASK_CLASSES = ("heart", "left_lung", "right_lung")

#: A ratio outside this range is no chest film's: flagged, not reported.
PLAUSIBLE_CTR = (0.25, 0.85)
#: An organ smaller than this fraction of the film is taken as missing.
MIN_AREA = {"heart": 0.01, "left_lung": 0.02, "right_lung": 0.02}

#: Said with every ratio: the textbook threshold holds for PA films.
AP_NOTE = (
    "an AP film magnifies the heart: a ratio over 0.5 on an AP film is not cardiomegaly by itself"
)


@dataclass
class Diameter:
    """A horizontal diameter: its two endpoints as (x, y) pixels, and its width in pixels
    (both end columns included)."""

    left: tuple[int, int]
    right: tuple[int, int]

    @property
    def width(self) -> int:
        return self.right[0] - self.left[0] + 1


@dataclass
class Measurement:
    """One film's ratio, or the reason there is none (``quality`` is "ok" or "flagged: ...")."""

    ctr: float | None
    heart: Diameter | None
    thorax: Diameter | None
    quality: str

    @property
    def heart_width_px(self) -> int | None:
        return None if self.heart is None else self.heart.width

    @property
    def thorax_width_px(self) -> int | None:
        return None if self.thorax is None else self.thorax.width

    def to_dict(self) -> dict[str, Any]:
        return {
            "ctr": None if self.ctr is None else round(self.ctr, 4),
            "heart_width_px": self.heart_width_px,
            "thorax_width_px": self.thorax_width_px,
            "ctr_over_0_5": None if self.ctr is None else int(self.ctr > 0.5),
            "quality": self.quality,
            "heart_endpoints": None if self.heart is None else asdict(self.heart),
            "thorax_endpoints": None if self.thorax is None else asdict(self.thorax),
        }


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (8-connected) of a boolean mask, its holes filled.

    >>> m = np.zeros((7, 7), bool); m[1:6, 1:4] = True; m[3, 2] = False; m[0, 6] = True
    >>> int(clean_mask(m).sum())  # the speck is gone, the hole is filled
    15
    """
    mask = np.asarray(mask, bool)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(largest)


def clean_masks(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`clean_mask` for every organ."""
    return {name: clean_mask(mask) for name, mask in masks.items()}


def horizontal_extent(mask: np.ndarray) -> Diameter | None:
    """The widest horizontal extent of a mask: its leftmost and rightmost pixels (at the middle
    row of each edge's column), or None for an empty mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    x0, x1 = int(cols[0]), int(cols[-1])
    rows0, rows1 = np.flatnonzero(mask[:, x0]), np.flatnonzero(mask[:, x1])
    return Diameter((x0, int(np.median(rows0))), (x1, int(np.median(rows1))))


def measure_ctr(
    masks: dict[str, np.ndarray],
    *,
    clean: bool = True,
    min_area: float | None = None,
) -> Measurement:
    """The cardiothoracic ratio of one film from its ``heart``, ``left_lung`` and ``right_lung``
    masks (boolean arrays of the film's shape), flagged when the geometry is implausible.

    ``min_area`` (a fraction of the film) overrides :data:`MIN_AREA` for every organ.
    """
    missing = [k for k in MASK_CLASSES if k not in masks]
    if missing:
        raise ValueError(f"masks lack {', '.join(missing)}")
    if clean:
        masks = clean_masks(masks)
    total = masks["heart"].size
    reasons = []
    for organ in MASK_CLASSES:
        limit = MIN_AREA[organ] if min_area is None else min_area
        area = masks[organ].sum() / total
        if area == 0 or area < limit:
            reasons.append(
                f"{organ.replace('_', ' ')} missing or tiny ({100 * area:.1f} % of the film)"
            )
    heart = horizontal_extent(masks["heart"])
    lungs = masks["left_lung"] | masks["right_lung"]
    thorax = horizontal_extent(lungs)
    if heart is None or thorax is None:
        return Measurement(None, heart, thorax, "flagged: " + "; ".join(reasons))
    if heart.left[0] < thorax.left[0] or heart.right[0] > thorax.right[0]:
        reasons.append("heart reaches outside the lungs' span")
    rows = np.flatnonzero(lungs.any(axis=1))
    if not all(rows[0] <= y <= rows[-1] for y in (heart.left[1], heart.right[1])):
        reasons.append("heart's diameter lies outside the lungs' height")
    ctr = heart.width / thorax.width
    if not PLAUSIBLE_CTR[0] <= ctr <= PLAUSIBLE_CTR[1]:
        reasons.append(f"ratio {ctr:.2f} outside {PLAUSIBLE_CTR[0]}-{PLAUSIBLE_CTR[1]}")
    if reasons:
        return Measurement(None, heart, thorax, "flagged: " + "; ".join(reasons))
    return Measurement(ctr, heart, thorax, "ok")
