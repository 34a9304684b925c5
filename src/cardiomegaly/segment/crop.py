"""Films cut to the thorax: the square around the heart and lungs that a segment model finds.

A classifier shown the whole film can learn what lies around the chest (film edges, burned-in
text, side markers, the era of the equipment) instead of the heart; cut to the thorax, it sees the
heart against the chest that holds it, at the same scale on every film.

A classifier trained with ``--thorax-crop SEGMODEL`` carries that segment model in its own file
(its tensors under ``thorax_crop.``, its metadata in ``preprocessing.thorax_crop``), and every
consumer cuts films the same way through :meth:`ThoraxCrop.of_classifier`.

>>> crop = ThoraxCrop.load("runs/train/segment/model.safetensors")   # doctest: +SKIP
>>> chest = crop(film)             # a 2-D float film in [0, 1], any size  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import beside, model_sha256, read_onnx_metadata
from ..data.preprocess import cut, square_to_box, to_square
from ..errors import UserError
from ..runtime import onnx_session
from .ctr import clean_masks
from .measure import Measurer, as_dict

# torch (the model modules) is imported where it is used: a classifier that cuts films runs both
# networks on ONNX Runtime on a CPU, without loading torch, as one that sees whole films does.

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


def thorax_onnx_path(path: str | Path) -> Path:
    """Where the ONNX export of a classifier's embedded segment model lies: beside the
    classifier's own export (``model.onnx``, ``model.int8.onnx``: ``model.thorax.onnx``)."""
    return beside(path, ".thorax.onnx")


class ThoraxCrop:
    """A segment model that cuts films to their thorax (:func:`thorax_box`); a film whose masks
    are empty or tiny is returned whole. ``sha256`` names the segment model file."""

    def __init__(self, measurer: Measurer, sha256: str, margin: float = 0.1) -> None:
        self.measurer, self.sha256, self.margin = measurer, sha256, margin
        #: names this cut in the preprocessing cache (data.preprocess.FilmCrop)
        self.key = f"thorax-{sha256[:16]}-{margin:g}"

    @classmethod
    def load(cls, path: str | Path, margin: float = 0.1, device: str = "auto") -> ThoraxCrop:
        """From a segment ``model.safetensors`` (a classifier's file is refused in one line)."""
        return cls(Measurer.load(path, device=device, backend="torch"), model_sha256(path), margin)

    @classmethod
    def of_classifier(
        cls, path: str | Path, meta: dict[str, Any], device: str = "auto", onnx: bool = False
    ) -> ThoraxCrop | None:
        """The cut a classifier's file carries (None when it sees whole films): its embedded
        segment model on PyTorch, or with ``onnx`` the export of it beside the classifier's
        (:func:`thorax_onnx_path`)."""
        spec = meta["preprocessing"].get("thorax_crop")
        if not spec:
            return None
        seg_meta, sha, margin = spec["segment_model"], spec["sha256"], float(spec["margin"])
        if onnx:
            seg_path = thorax_onnx_path(path)
            if not seg_path.is_file():
                raise UserError(
                    f"{seg_path}: missing; this model cuts films to the thorax and its ONNX "
                    "export comes in two files: export it again"
                )
            exported = meta.get("exported_from", {}).get("sha256")
            if read_onnx_metadata(seg_path).get("exported_from", {}).get("sha256") != exported:
                raise UserError(f"{seg_path}: not exported with {path}; export it again")
            return cls(Measurer(None, seg_meta, device, onnx_session(seg_path)), sha, margin)
        from ..model import load_embedded
        from .model import segmenter_from_state

        model = segmenter_from_state(load_embedded(path), seg_meta, path)
        return cls(Measurer(model, seg_meta, device), sha, margin)

    def to_metadata(self) -> dict[str, Any]:
        """What a classifier's file says of its cut (``preprocessing.thorax_crop``)."""
        seg = {k: v for k, v in self.measurer.meta.items() if k != "seen"}
        return {
            "margin": self.margin,
            "min_cover": MIN_COVER,
            "sha256": self.sha256,
            "how": "the square around the heart and lungs this segment model finds, widened by "
            "the margin (a share of its side) on each side, kept inside the film; the whole "
            "film when the masks cover under min_cover of it",
            "segment_model": seg,
        }

    def tensors(self) -> dict[str, Any]:
        """The segment model's weights, for the classifier's file to carry."""
        if self.measurer.model is None:
            raise UserError(
                "a thorax cut running on ONNX Runtime cannot be saved; load it with torch"
            )
        return dict(self.measurer.model.net.state_dict())

    def boxes(self, films: list[np.ndarray]) -> list[tuple[int, int, int, int] | None]:
        """Each film's :func:`thorax_box` (2-D float films in [0, 1], any sizes)."""
        size, resize = self.measurer.image_size, self.measurer.resize
        squared = np.stack([to_square(f, size, resize) for f in films])
        return [
            thorax_box(clean_masks(as_dict(m)), f.shape[1], f.shape[0], resize, self.margin)
            for f, m in zip(films, self.measurer.masks(squared), strict=True)
        ]

    def box(self, film: np.ndarray) -> tuple[int, int, int, int] | None:
        """One film's :func:`thorax_box` (data.preprocess.FilmCrop)."""
        return self.boxes([film])[0]

    def __call__(self, film: np.ndarray) -> np.ndarray:
        """The film cut to its thorax (a view of it), or the whole film."""
        return cut(film, self)[0]
