"""Grad-CAM heatmaps (pytorch-grad-cam) on the last convolutional block, overlays, and how well
the heatmaps point at the heart where the data has heart boxes.

>>> result = explain("runs/train/exp/model.safetensors", "synthetic")  # doctest: +SKIP
>>> result.summary["pointing_game"]["gradcam"]                          # doctest: +SKIP
{'value': 0.82, 'ci95': [0.73, 0.88], 'hits': 74, 'n': 90}
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from .data.preprocess import film_box_to_square, prepare_file_with_meta, to_float
from .data.records import DataArg, data_label
from .data.split import select_records
from .errors import ImageError, UserError
from .evaluate.metrics import bootstrap_mean, percentile_interval, wilson
from .fileio import atomic_open, atomic_write_text, fresh_folder, next_run_folder
from .model import ARCHS, read_metadata
from .predict import Classifier, Prediction
from .progress import progress_bar
from .runtime import to_device

log = logging.getLogger(__name__)

HEAT_THRESHOLD = 0.5  # IoU: the heatmap region at or above half its maximum
OVERLAY_SIZE = 512
MIN_CAM_CELLS = 8  # a heatmap coarser than 8 x 8 cannot say where in the chest it looks


def cam_layer(clf: Classifier) -> str:
    """The last block whose feature map has at least 8 x 8 cells at the model's input size.

    InceptionV3 at 299 px: ``Mixed_7c`` (8 x 8), the usual choice; at 128 px that block is 2 x 2,
    so ``Mixed_5d`` (13 x 13) is taken instead.
    """
    if clf.model is None:
        raise UserError("Grad-CAM needs the PyTorch model file (model.safetensors), not ONNX")
    candidates = ARCHS[clf.model.arch].cam_layers
    sizes: dict[str, int] = {}
    hooks = [
        clf.model.cam_targets(name)[0].register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, min(out.shape[-2:]))
        )
        for name in candidates
    ]
    try:
        with torch.no_grad():
            clf.model(torch.zeros(1, 1, clf.image_size, clf.image_size, device=clf.device))
    finally:
        for hook in hooks:
            hook.remove()
    return next((n for n in candidates if sizes[n] >= MIN_CAM_CELLS), candidates[-1])


def heatmaps(clf: Classifier, images: np.ndarray, layer: str | None = None) -> np.ndarray:
    """Grad-CAM of the cardiomegaly logit for preprocessed images (B, S, S): (B, S, S) in [0, 1].

    ``layer`` is a module name inside the backbone; by default :func:`cam_layer` chooses.
    """
    name = layer or cam_layer(clf)
    try:
        targets = clf.model.cam_targets(name)  # an ensemble's: one per member, averaged
    except AttributeError:
        raise UserError(f"no layer '{name}' in {clf.model.arch}") from None
    x = to_device(torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None], clf.device)
    with GradCAM(model=clf.model, target_layers=targets) as cam:
        heat = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * len(x))
    return np.nan_to_num(heat.astype(np.float32))


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    prediction: Prediction,
    box: tuple[float, float, float, float] | None = None,
    size: int = OVERLAY_SIZE,
) -> Image.Image:
    """The radiograph with the heatmap over it, the box (if any) in green, and the probability
    against the threshold in the top-left corner."""
    grey = Image.fromarray(np.round(image * 255).astype(np.uint8)).resize((size, size))
    heat_big = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize((size, size)))
    heat_big = np.clip(heat_big, 0, 1)
    colour = matplotlib.colormaps["jet"](heat_big)[..., :3]
    base = np.asarray(grey.convert("RGB"), dtype=np.float32) / 255
    alpha = (0.5 * heat_big)[..., None]  # cool regions stay see-through
    blended = Image.fromarray(
        np.round((base * (1 - alpha) + colour * alpha) * 255).astype(np.uint8)
    )
    draw = ImageDraw.Draw(blended)
    if box is not None:
        scale = size / image.shape[0]
        x, y, w, h = (v * scale for v in box)
        draw.rectangle([x, y, x + w, y + h], outline=(60, 255, 60), width=3)
    verdict = "cardiomegaly" if prediction.label == 1 else "no cardiomegaly"
    text = f"p = {prediction.probability:.3f}  (threshold {prediction.threshold:.3f})\n{verdict}"
    font = ImageFont.load_default(size=max(12, size // 28))
    left, top, right, bottom = draw.multiline_textbbox((8, 8), text, font=font)
    draw.rectangle([left - 5, top - 5, right + 5, bottom + 5], fill=(0, 0, 0))
    draw.multiline_text((8, 8), text, fill=(255, 255, 255), font=font)
    return blended


def write_overlays(
    clf: Classifier,
    predictions: list[Prediction],
    folder: str | Path,
    batch_size: int = 16,
    progress: bool = True,
) -> list[Path]:
    """Grad-CAM overlays for the scored predictions (those with a path), one PNG each."""
    folder = Path(folder)
    scored = [p for p in predictions if p.error is None and p.path]
    written: list[Path] = []
    names: set[str] = set()
    layer = cam_layer(clf)
    bar = progress_bar(total=len(scored), desc="grad-cam", enabled=progress)
    it = iter(scored)
    while chunk := list(islice(it, batch_size)):
        images = np.stack([clf.preprocess(p.path) for p in chunk])
        for p, image, heat in zip(chunk, images, heatmaps(clf, images, layer), strict=True):
            path = folder / _unique_name(Path(p.path).stem, names)
            _save_png(overlay(image, heat, p), path)
            written.append(path)
        bar.update(len(chunk))
    bar.close()
    return written


def _unique_name(stem: str, taken: set[str]) -> str:
    name, k = f"{stem}.png", 2
    while name in taken:
        name, k = f"{stem}_{k}.png", k + 1
    taken.add(name)
    return name


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


# ------------------------------------------------------------------------------ localisation


def localisation(heat: np.ndarray, box: tuple[float, float, float, float]) -> tuple[bool, float]:
    """Pointing game (is the heatmap's maximum inside the box?) and IoU of the region at or
    above half the maximum with the box. ``box`` is (x, y, w, h) in heatmap pixels.

    >>> heat = np.zeros((10, 10)); heat[2:4, 2:4] = 1.0
    >>> localisation(heat, (2, 2, 2, 2))
    (True, 1.0)
    """
    mask = _box_mask(heat.shape, box)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    region = heat >= HEAT_THRESHOLD * heat.max() if heat.max() > 0 else np.zeros_like(mask)
    return bool(mask[y, x]), _iou(region, mask)


def _box_mask(shape: tuple[int, ...], box: tuple[float, float, float, float]) -> np.ndarray:
    x, y, w, h = box
    rows, cols = np.arange(shape[0]) + 0.5, np.arange(shape[1]) + 0.5  # pixel centres
    return ((rows >= y) & (rows <= y + h))[:, None] & ((cols >= x) & (cols <= x + w))[None, :]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@dataclass
class ExplainResult:
    """Where the overlays went and the localisation summary (what explain.json holds)."""

    folder: Path
    summary: dict[str, Any]


def explain(
    model: str | Path,
    data: DataArg,
    split: str = "test",
    out: str | Path | None = None,
    *,
    batch_size: int = 16,
    device: str = "auto",
    layer: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> ExplainResult:
    """Overlays for the records of ``split`` and, where they have heart boxes, localisation:
    pointing-game hit rate and mean IoU, against a uniformly random point and a centred box.
    """
    meta = read_metadata(model)
    _, table, description = select_records(model, meta, data, split)
    clf = Classifier.load(model, device=device, backend="torch")  # Grad-CAM needs gradients
    folder = fresh_folder(out if out else next_run_folder(Path("runs") / "explain", "exp"))
    size = clf.image_size
    layer = layer or cam_layer(clf)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    names: set[str] = set()
    sheet: list[Image.Image] = []
    # The contact sheet shows boxed films where the data has boxes, any films where it has none.
    has_boxes = bool(table["box_x"].notna().any())
    bar = progress_bar(total=len(table), desc="explain")
    for start in range(0, len(table), batch_size):
        chunk = table.iloc[start : start + batch_size]
        images, metas, kept = [], [], []
        for row in chunk.itertuples(index=False):
            try:
                stored, image_meta = prepare_file_with_meta(
                    row.path, size, clf.resize, crop=clf.crop
                )
            except ImageError as exc:
                skipped.append({"path": row.path, "reason": str(exc)})
                continue
            images.append(to_float(stored))
            metas.append(image_meta)
            kept.append(row)
        bar.update(len(chunk))
        if not images:
            continue
        batch = np.stack(images)
        probs = clf.probabilities(batch)
        for row, image, heat, p, image_meta in zip(
            kept, batch, heatmaps(clf, batch, layer), probs, metas, strict=True
        ):
            prediction = Prediction(row.path, float(p), int(p >= clf.threshold), clf.threshold)
            box = None
            raw = (row.box_x, row.box_y, row.box_w, row.box_h)
            if not any(math.isnan(v) for v in raw):
                box = film_box_to_square(raw, image_meta, size, clf.resize)
            picture = overlay(image, heat, prediction, box)
            _save_png(picture, folder / "overlays" / _unique_name(Path(row.path).stem, names))
            if len(sheet) < 24 and (box is not None or not has_boxes):
                sheet.append(picture.resize((256, 256)))
            entry = {
                "path": row.path,
                "patient": row.patient,
                "label": int(row.label),
                "probability": round(float(p), 6),
                "box": box is not None,
            }
            if box is not None:
                hit, iou = localisation(heat, box)
                point = rng.uniform(0, size, 2)
                entry.update(
                    hit=hit,
                    iou=iou,
                    random_hit=bool(_box_mask((size, size), box)[int(point[1]), int(point[0])]),
                    centre_hit=bool(_box_mask((size, size), box)[size // 2, size // 2]),
                    box_model_px=[round(v, 2) for v in box],
                )
            rows.append(entry)
    bar.close()
    summary = _summarise(rows, size, n_boot, seed)
    summary.update(
        model=str(model),
        data=data_label(data),
        split=split,
        split_description=description,
        layer=layer,
        skipped=skipped,
        heat_threshold=HEAT_THRESHOLD,
    )
    atomic_write_text(folder / "explain.json", json.dumps(summary, indent=2) + "\n")
    _write_rows(folder / "explain.csv", rows)
    if sheet:
        _save_png(_contact_sheet(sheet), folder / "contact_sheet.png")
    return ExplainResult(folder, summary)


def _summarise(rows: list[dict[str, Any]], size: int, n_boot: int, seed: int) -> dict[str, Any]:
    boxed = [r for r in rows if r["box"]]
    summary: dict[str, Any] = {"images": len(rows), "with_box": len(boxed)}
    if not boxed:
        summary["note"] = "no heart boxes in this data: overlays only, no localisation score"
        return summary

    def rate(key: str) -> dict[str, Any]:
        hits = sum(r[key] for r in boxed)
        return {
            "value": hits / len(boxed),
            "ci95": list(wilson(hits, len(boxed))),
            "hits": hits,
            "n": len(boxed),
        }

    # Centred box: the mean box size, centred: what "the heart is in the middle" scores.
    w = float(np.mean([r["box_model_px"][2] for r in boxed]))
    h = float(np.mean([r["box_model_px"][3] for r in boxed]))
    centred = _box_mask((size, size), ((size - w) / 2, (size - h) / 2, w, h))
    centred_iou = np.array(
        [_iou(centred, _box_mask((size, size), r["box_model_px"])) for r in boxed]
    )
    iou = np.array([r["iou"] for r in boxed])
    patients = [str(r["patient"]) for r in boxed]
    labels = [r["label"] for r in boxed]

    def mean_with_ci(values: np.ndarray) -> dict[str, Any]:
        boot = bootstrap_mean(values, patients, labels, n=n_boot, seed=seed)
        return {"value": float(values.mean()), "ci95": percentile_interval(boot)}

    return {
        **summary,
        "pointing_game": {
            "gradcam": rate("hit"),
            "random_point": rate("random_hit"),
            "centre_point": rate("centre_hit"),
        },
        "mean_iou": {"gradcam": mean_with_ci(iou), "centred_box": mean_with_ci(centred_iou)},
        "methods": (
            "pointing game: the heatmap's maximum inside the heart box (Wilson interval); "
            f"IoU: heatmap >= {HEAT_THRESHOLD} x its maximum against the box (patient "
            "bootstrap interval); baselines: one uniformly random point per image, the "
            "image centre, and a box of the mean box size centred in the image"
        ),
    }


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = [
        "path",
        "patient",
        "label",
        "probability",
        "box",
        "hit",
        "iou",
        "random_hit",
        "centre_hit",
    ]
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _contact_sheet(thumbs: list[Image.Image], columns: int = 6) -> Image.Image:
    rows = math.ceil(len(thumbs) / columns)
    side = thumbs[0].width
    sheet = Image.new("RGB", (columns * side, rows * side), "black")
    for i, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((i % columns) * side, (i // columns) * side))
    return sheet
