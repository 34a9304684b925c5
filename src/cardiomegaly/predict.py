"""Scoring: a model and images in, probabilities out, with the model file's own preprocessing.

The :class:`Classifier` is what ``predict``, ``explain`` and ``serve`` use.

>>> clf = Classifier.load("runs/train/exp/model.safetensors")     # doctest: +SKIP
>>> clf.predict("film.dcm")                                         # doctest: +SKIP
Prediction(path='film.dcm', probability=0.83, label=1, threshold=0.41, error=None)
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .artifacts import probabilities, require_task
from .config import CLASS_NAMES
from .data.images import IMAGE_SUFFIXES, pil_to_float
from .data.preprocess import FilmCrop, cut, prepare_file, quantize, to_float, to_square
from .errors import ImageError
from .fileio import atomic_open, atomic_write_text
from .progress import progress_bar
from .runtime import autocast, onnx_backend, select_device, to_device

# torch (and the model module, which needs it) is imported where it is used: on a CPU, predict
# runs model.onnx on ONNX Runtime and then never loads torch (half a gigabyte, seconds of start-up).
if TYPE_CHECKING:
    from .model import CardioNet


# ------------------------------------------------------------------------------- the Classifier

ImageInput = str | Path | bytes | Image.Image | np.ndarray


@dataclass
class Prediction:
    """One image's answer. ``label`` 1 means cardiomegaly (probability >= threshold)."""

    path: str | None
    probability: float | None
    label: int | None
    threshold: float
    error: str | None = None

    @property
    def class_name(self) -> str | None:
        return None if self.label is None else CLASS_NAMES[self.label]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier:
    """A model file, ready to answer: preprocessing and threshold come from the file itself.

    >>> clf = Classifier.load("runs/train/exp/model.safetensors")         # doctest: +SKIP
    >>> [p.probability for p in clf.predict(["a.png", "b.dcm"])]           # doctest: +SKIP
    [0.12, 0.91]
    """

    def __init__(
        self,
        model: CardioNet | None,
        meta: dict[str, Any],
        device: str = "auto",
        session=None,
        crop: FilmCrop | None = None,
    ) -> None:
        self.meta = meta
        self.model = model
        self.session = session  # an onnxruntime.InferenceSession instead of the torch model
        self.crop = crop  # what cuts films to the thorax, for a model trained on cut films
        if crop is None and meta["preprocessing"].get("thorax_crop"):
            raise ValueError("this model sees films cut to the thorax: use Classifier.load")
        self.device = None if model is None else select_device(device)
        self._answers = None  # the model through its test-time views, if it has any
        if model is not None:
            import torch

            from .tta import with_tta

            model.to(self.device).eval()
            if self.device.type == "cpu":
                model.to(memory_format=torch.channels_last)
            self._answers = with_tta(model, meta)
        pre = meta["preprocessing"]
        self.image_size: int = int(pre["image_size"])
        self.resize: str = pre["resize"]
        self.threshold: float = float(meta["threshold"]["value"])

    @property
    def backend(self) -> str:
        return "torch" if self.session is None else "onnx"

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", backend: str = "auto") -> Classifier:
        """Load a ``model.safetensors``, or a ``.onnx`` export, ready to predict.

        ``backend="auto"`` runs on ONNX Runtime when the model runs on the CPU and the
        ``model.onnx`` beside it is an export of this very file (training writes one): about 1.4x
        PyTorch's speed on a CPU (``make bench``). Otherwise PyTorch. ``"torch"`` and ``"onnx"``
        choose explicitly.

        >>> Classifier.load("runs/train/exp/model.safetensors").backend     # doctest: +SKIP
        'onnx'
        """
        session, meta = onnx_backend(path, device, backend)
        if session is not None:
            require_task(meta, "classify", path)
            return cls(None, meta, device, session, _crop(path, meta, device, onnx=True))
        from .model import load_model

        model, meta = load_model(path)
        return cls(model, meta, device, crop=_crop(path, meta, device))

    def preprocess(self, x: ImageInput) -> np.ndarray:
        """One input as the model sees it: float32 (size, size) in [0, 1], quantized as in training
        (and cut to the thorax first when the model was trained on cut films).

        Paths (and file bytes) go through the same decoder as training. Arrays: 2-D uint8,
        uint16 or float in [0, 1] (grey, 0 = black), or (H, W, 3|4) uint8 colour. PIL images of
        any mode.
        """
        size, resize, crop = self.image_size, self.resize, self.crop
        if isinstance(x, str | Path):
            return to_float(prepare_file(x, size, resize, crop=crop))
        if isinstance(x, bytes | bytearray):  # an upload, decoded in memory
            return to_float(prepare_file(bytes(x), size, resize, name="upload", crop=crop))
        if isinstance(x, np.ndarray):
            x = _array_to_image(x)
        if isinstance(x, Image.Image):
            bits = 16 if x.mode.startswith("I") else 8
            square = to_square(cut(pil_to_float(x), crop)[0], size, resize)
            return to_float(quantize(square, bits))
        raise TypeError(f"cannot predict on {type(x).__name__}; give a path, PIL image or array")

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for preprocessed images, shape (B, size, size)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)[:, None]
        if self.session is not None:
            return probabilities(self.session.run(None, {"image": x})[0], self.meta)
        import torch

        with torch.no_grad(), autocast(self.device):
            logits = self._answers(to_device(torch.from_numpy(x), self.device)).float().cpu()
        return probabilities(logits, self.meta)

    def predict(
        self, x: ImageInput | Sequence[ImageInput], batch_size: int = 16
    ) -> Prediction | list[Prediction]:
        """One input: a :class:`Prediction` (an unreadable file raises ImageError). A list: one
        Prediction per item in order, unreadable ones carrying ``error`` instead of a probability.
        """
        if isinstance(x, list | tuple):
            return list(self.predict_many(x, batch_size=batch_size))
        name = str(x) if isinstance(x, str | Path) else None
        p = float(self.probabilities(self.preprocess(x)[None])[0])
        return Prediction(name, p, int(p >= self.threshold), self.threshold)

    def predict_many(
        self,
        items: Iterable[ImageInput],
        batch_size: int = 16,
        workers: int | None = None,
        progress: bool = False,
        total: int | None = None,
    ) -> Iterator[Prediction]:
        """Predictions in input order; decoding runs in threads, ahead of the model."""
        decoded = _decode_ahead(items, self._safe_preprocess, workers, window=2 * batch_size)
        bar = progress_bar(total=total, desc="predict", enabled=progress)
        while chunk := list(islice(decoded, batch_size)):
            good = [arr for _, arr, _ in chunk if arr is not None]
            probs = iter(self.probabilities(np.stack(good)) if good else [])
            for item, arr, error in chunk:
                name = str(item) if isinstance(item, str | Path) else None
                if arr is None:
                    yield Prediction(name, None, None, self.threshold, error)
                else:
                    p = float(next(probs))
                    yield Prediction(name, p, int(p >= self.threshold), self.threshold)
            bar.update(len(chunk))
        bar.close()

    def _safe_preprocess(self, x: ImageInput) -> tuple[np.ndarray | None, str | None]:
        try:
            return self.preprocess(x), None
        except ImageError as exc:
            return None, str(exc)


def _crop(path: str | Path, meta: dict[str, Any], device: str, onnx: bool = False):
    """The thorax cut a model file carries, or None (most models see whole films)."""
    if not meta["preprocessing"].get("thorax_crop"):
        return None  # without loading the segment task's modules
    from .segment.crop import ThoraxCrop

    return ThoraxCrop.of_classifier(path, meta, device, onnx=onnx)


def _array_to_image(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8:
        return Image.fromarray(arr[..., :3], "RGB")
    if arr.ndim != 2:
        raise ImageError(f"array of shape {arr.shape}: give (H, W) grey or (H, W, 3) uint8 colour")
    if arr.dtype == np.uint8:
        return Image.fromarray(arr, "L")
    if arr.dtype == np.uint16:
        return Image.fromarray(arr.astype(np.int32), "I")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ImageError("a float array must hold values in [0, 1] (0 = black)")
        return Image.fromarray(np.round(arr * 65535).astype(np.int32), "I")
    raise ImageError(f"array of dtype {arr.dtype}: give uint8, uint16 or float in [0, 1]")


def _decode_ahead(
    items: Iterable[Any], fn: Callable[[Any], tuple], workers: int | None, window: int
) -> Iterator[tuple[Any, Any, Any]]:
    """(item, *fn(item)) in order, with at most ``window`` decodes running ahead."""
    workers = workers or min(4, os.cpu_count() or 1)
    it = iter(items)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque((item, pool.submit(fn, item)) for item in islice(it, window))
        while pending:
            item, future = pending.popleft()
            for nxt in islice(it, 1):
                pending.append((nxt, pool.submit(fn, nxt)))
            yield (item, *future.result())


def find_images(inputs: Sequence[str | Path]) -> list[str]:
    """Files to predict on, in a stable order: files as given, folders searched recursively
    (image suffixes, or none as DICOM often has), globs expanded. Missing paths are kept so
    that they get an error row.

    >>> find_images(["/nonexistent/film.png"])
    ['/nonexistent/film.png']
    """
    out: list[str] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if path.is_dir():
            found = []
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in files:
                    suffix = Path(name).suffix.lower()
                    if name.startswith(".") or (suffix and suffix not in IMAGE_SUFFIXES):
                        continue
                    found.append(os.path.join(folder, name))
            out.extend(sorted(found))
        elif not path.exists() and glob.has_magic(text):
            out.extend(sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file()))
        else:
            out.append(text)
    return out


def predict_files(
    clf: Classifier,
    paths: Sequence[str],
    batch_size: int = 16,
    workers: int | None = None,
    progress: bool = True,
) -> list[Prediction]:
    """Predictions for ``paths`` in input order. Under ``torchrun`` every rank scores an
    interleaved shard and every rank gets the merged list back.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return list(clf.predict_many(paths, batch_size, workers, progress, total=len(paths)))
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo")  # only Python objects travel: gloo on CPU and GPU alike
    try:
        rank = dist.get_rank()
        shard = paths[rank::world]
        mine = list(clf.predict_many(shard, batch_size, workers, progress and rank == 0,
                                     len(shard)))  # fmt: skip
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, mine)
    finally:
        # Not left for the interpreter's exit to tear down: there it aborted a rank once
        # ("terminate called without an active exception") while the other wrote the results.
        if owned:
            dist.destroy_process_group()
    return [parts[i % world][i // world] for i in range(len(paths))]


def write_predictions(
    predictions: Sequence[Prediction],
    out: str | Path,
    ratios: Sequence[dict[str, Any]] | None = None,
    combined: Sequence[dict[str, Any] | None] | None = None,
) -> None:
    """CSV (path, probability, prediction, threshold, error) or JSON by the file's suffix.

    ``ratios`` (one per prediction, from a segment model: ``FilmMeasurement.summary()``) adds
    the cardiothoracic ratio beside the probability: ctr, ctr_over_0_5, ctr_quality, ctr_note.
    ``combined`` (one per prediction: ``CombinedScore.answer()``) adds the combined score:
    combined, combined_prediction, combined_threshold.
    """
    out = Path(out)
    rows = [p.to_dict() for p in predictions]
    for i, row in enumerate(rows):
        row["prediction"] = row.pop("label")
        row["threshold"] = round(row["threshold"], 6)
        if ratios is not None:
            ratio = ratios[i] or {}
            row.update(ctr=ratio.get("value"), ctr_over_0_5=ratio.get("over_0_5"),
                       ctr_quality=ratio.get("quality"), ctr_note=ratio.get("note"))  # fmt: skip
        if combined is not None:
            answer = combined[i] or {}
            row.update(combined=answer.get("score"), combined_prediction=answer.get("label"),
                       combined_threshold=answer.get("threshold"))  # fmt: skip
    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
        return
    columns = ["path", "probability", "prediction", "threshold"]
    columns += ["ctr", "ctr_over_0_5", "ctr_quality", "ctr_note"] if ratios is not None else []
    columns += ["combined", "combined_prediction", "combined_threshold"] if combined else []
    columns += ["error"]
    with atomic_open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            if row["probability"] is not None:
                row["probability"] = f"{row['probability']:.6f}"
            writer.writerow({k: "" if row[k] is None else row[k] for k in columns})
