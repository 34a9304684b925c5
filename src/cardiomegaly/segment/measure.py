"""Masks and ratios from a segment model: for a dataset (training, evaluation) and for files
(``cardiomegaly measure``, the :class:`Measurer`).

>>> m = Measurer.load("runs/train/exp/model.safetensors")           # doctest: +SKIP
>>> m.measure("film.dcm").ctr                                        # doctest: +SKIP
0.47
"""

from __future__ import annotations

# torch (and the networks, which need it) is imported where the PyTorch backend runs: on a CPU,
# measure runs the model.onnx beside the model file on ONNX Runtime and never loads torch.
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..artifacts import require_task
from ..data.preprocess import prepare_file_with_meta, to_float
from ..errors import ImageError, UserError
from ..fileio import atomic_open, atomic_write_text
from ..progress import progress_bar
from ..runtime import onnx_backend, select_device
from .ctr import AP_NOTE, MASK_CLASSES, Measurement, clean_masks, measure_ctr

if TYPE_CHECKING:
    from .model import SegNet


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty).

    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> dice(a, a), dice(a, ~a)
    (1.0, 0.0)
    """
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = (pred | truth).sum()
    return 1.0 if union == 0 else float((pred & truth).sum() / union)


def as_dict(masks: np.ndarray) -> dict[str, np.ndarray]:
    """One film's (3, S, S) masks by organ name."""
    return dict(zip(MASK_CLASSES, masks, strict=True))


@dataclass
class FilmMeasurement:
    """One film's answer: the ratio (or why none), its masks in model pixels, and the film as
    the model saw it (for overlays)."""

    path: str | None
    measurement: Measurement | None
    view: str = ""
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    masks: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def ctr(self) -> float | None:
        return None if self.measurement is None else self.measurement.ctr

    def summary(self) -> dict[str, Any]:
        """What an API answer says of the ratio (no masks, no pixels)."""
        row = self.row()
        return {"value": row["ctr"], "over_0_5": row["ctr_over_0_5"], "quality": row["quality"],
                "heart_width_px": row["heart_width_px"], "thorax_width_px": row["thorax_width_px"],
                "view": self.view, "note": row["note"]}  # fmt: skip

    def row(self) -> dict[str, Any]:
        """The CSV row: path, ctr, heart_width_px, thorax_width_px, ctr_over_0_5, view, quality,
        note, error (widths in model pixels)."""
        m = self.measurement.to_dict() if self.measurement is not None else {}
        note = AP_NOTE if self.view == "AP" and self.ctr is not None else ""
        return {
            "path": self.path,
            "ctr": m.get("ctr"),
            "heart_width_px": m.get("heart_width_px"),
            "thorax_width_px": m.get("thorax_width_px"),
            "ctr_over_0_5": m.get("ctr_over_0_5"),
            "view": self.view,
            "quality": m.get("quality", ""),
            "note": note,
            "error": self.error,
        }


class Measurer:
    """A segment model file, ready to measure films: preprocessing comes from the file. Runs on
    PyTorch, or on ONNX Runtime (``session``) as the classifier does on a CPU."""

    def __init__(
        self,
        model: SegNet | None,
        meta: dict[str, Any],
        device: str = "auto",
        session=None,
        path: str | Path | None = None,
    ) -> None:
        self.model, self.meta, self.session = model, meta, session
        self.path = path  # the file it was loaded from (a combined score names its model)
        self.device = None
        if model is not None:
            self.device = select_device(device)
            model.to(self.device).eval()
            if self.device.type == "cpu":
                import torch

                model.to(memory_format=torch.channels_last)
        self.image_size = int(meta["preprocessing"]["image_size"])
        self.resize = meta["preprocessing"]["resize"]

    @property
    def backend(self) -> str:
        return "torch" if self.session is None else "onnx"

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", backend: str = "auto") -> Measurer:
        """Load a segment ``model.safetensors`` (or its ``.onnx`` export). ``auto``: ONNX
        Runtime on a CPU when the ``model.onnx`` beside it is an export of this very file."""
        session, meta = onnx_backend(path, device, backend)
        if session is not None:
            require_task(meta, "segment", path)
            return cls(None, meta, device, session, path)
        from .model import load_segmenter

        model, meta = load_segmenter(path)
        return cls(model, meta, device, path=path)

    def masks(self, images: np.ndarray) -> np.ndarray:
        """Boolean masks (B, 3, S, S) for preprocessed films (B, S, S)."""
        x = np.ascontiguousarray(images, dtype=np.float32)[:, None]
        if self.session is not None:
            return self.session.run(None, {"image": x})[0] > 0
        import torch

        from .model import predict_masks

        return predict_masks(self.model, torch.from_numpy(x), self.device)

    def measure(self, film: str | Path | bytes, view: str = "") -> FilmMeasurement:
        """One film's masks and ratio: a path, or a file's bytes (an upload, decoded in memory).
        ``view`` (PA or AP) is the film's view when its file records none (PNG, JPEG); a DICOM
        film's own ViewPosition wins. An unreadable film raises ImageError."""
        view = _given_view(view)
        name = None if isinstance(film, bytes) else str(film)
        stored, image_meta = prepare_file_with_meta(
            film, self.image_size, self.resize, name=None if name else "upload"
        )
        return self._measure_batch([(name, to_float(stored), image_meta.view or view)])[0]

    def measure_many(
        self,
        paths: Iterable[str],
        batch_size: int = 8,
        progress: bool = False,
        total: int | None = None,
        view: str = "",
    ) -> Iterator[FilmMeasurement]:
        """Measurements in input order; unreadable films carry ``error``. ``view`` as for
        :meth:`measure`."""
        view = _given_view(view)
        it = iter(paths)
        bar = progress_bar(total=total, desc="measure", enabled=progress)
        while chunk := list(islice(it, batch_size)):
            good, results = [], {}
            for i, path in enumerate(chunk):
                try:
                    stored, image_meta = prepare_file_with_meta(path, self.image_size, self.resize)
                except ImageError as exc:
                    results[i] = FilmMeasurement(str(path), None, error=str(exc))
                    continue
                good.append((i, (str(path), to_float(stored), image_meta.view or view)))
            for (i, _), measured in zip(
                good, self._measure_batch([g for _, g in good]), strict=True
            ):
                results[i] = measured
            yield from (results[i] for i in range(len(chunk)))
            bar.update(len(chunk))
        bar.close()

    def _measure_batch(self, items: Sequence[tuple[str, np.ndarray, str]]) -> list[FilmMeasurement]:
        if not items:
            return []
        out = []
        predicted = self.masks(np.stack([image for _, image, _ in items]))
        for (path, image, view), masks in zip(items, predicted, strict=True):
            cleaned = clean_masks(as_dict(masks))
            m = measure_ctr(cleaned, clean=False)
            out.append(FilmMeasurement(path, m, view, None, image, cleaned))
        return out


def _given_view(view: str) -> str:
    """A view given for films that record none: PA, AP (any case), or "" for unknown."""
    if view.upper() not in ("", "PA", "AP"):
        raise UserError(f"view {view!r}: give PA or AP (or nothing when it is not known)")
    return view.upper()


def write_measurements(results: Sequence[FilmMeasurement], out: str | Path) -> None:
    """CSV (one row per film, the columns of :meth:`FilmMeasurement.row`) or JSON by suffix."""
    rows = [m.row() for m in results]
    out = Path(out)
    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
        return
    with atomic_open(out, "w", newline="", encoding="utf-8") as f:
        frame = pd.DataFrame(rows, columns=list(FilmMeasurement(None, None).row()))
        for column in ("heart_width_px", "thorax_width_px", "ctr_over_0_5"):
            frame[column] = frame[column].astype("Int64")  # whole numbers, blank where none
        frame.to_csv(f, index=False)
