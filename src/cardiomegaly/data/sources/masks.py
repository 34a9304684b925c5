"""Mask data for the segment task: ``images/NAME`` with ``masks/<class>/NAME`` (the JSRT/SCR
layout, and what ``cardiomegaly synth`` writes), optionally with a ``labels.csv``
(``path, label, patient, ctr``).

Each record carries one mask path per class (``mask_heart``, ``mask_left_lung``,
``mask_right_lung``) and the reference ratio measured on its masks (``ctr``); the label is
``ctr > 0.5`` unless the CSV says otherwise. A film whose mask is missing or of another size is
counted and left out, with the reason.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ...config import DataConfig
from ...errors import DataError
from ...segment.ctr import MASK_CLASSES, measure_ctr
from ..images import IMAGE_SUFFIXES
from ._common import Result, _patient_column, _read_csv, _require, _resolve

#: At most this fraction of a mask's inside may lie between its two levels (soft edges).
MAX_SOFT_EDGE = 0.10


def mask_columns(classes: tuple[str, ...] = MASK_CLASSES) -> list[str]:
    """The records columns that hold mask paths.

    >>> mask_columns()
    ['mask_heart', 'mask_left_lung', 'mask_right_lung']
    """
    return [f"mask_{c}" for c in classes]


def read_masks(root: Path, cfg: DataConfig) -> Result:
    """A folder of ``images/`` and ``masks/<class>/`` with the same file names."""
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise DataError(
            f"{root}: mask data is a folder with images/ and masks/<class>/ "
            "holding files of the same names"
        )
    classes = sorted(p.name for p in masks.iterdir() if p.is_dir())
    lacking = [c for c in MASK_CLASSES if c not in classes]
    if lacking:
        found = ", ".join(classes) or "none"
        raise DataError(
            f"{masks}: no masks/{lacking[0]}/ folder (found: {found}); the segment "
            f"task needs {', '.join(MASK_CLASSES)}"
        )
    notes: list[str] = []
    paths = sorted(
        str(Path(folder) / name)
        for folder, _dirs, files in os.walk(images)
        for name in files
        if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
    )
    table = pd.DataFrame({"path": paths, "source": "masks"})
    table["source_row"] = table["path"].map(lambda p: os.path.relpath(p, root))
    for organ, column in zip(MASK_CLASSES, mask_columns(), strict=True):
        table[column] = table["path"].map(
            lambda p, o=organ: str(masks / o / Path(p).relative_to(images))
        )
    labels_csv = root / (cfg.csv or "labels.csv")
    if cfg.csv or labels_csv.is_file():
        table = _join_labels(table, labels_csv, root)
    table["patient"] = _patient_column(table, "", table["path"], cfg, notes, root)
    table, excluded = with_reference_ratio(table)
    if "label" not in table:
        table["label"] = (table["ctr"] > 0.5).astype(int)
    return table, excluded, notes


def with_reference_ratio(table: pd.DataFrame) -> tuple[pd.DataFrame, Counter]:
    """Films with usable masks (:func:`check_masks`) and their reference ratio (``ctr``):
    measured on the masks where the source gives none; films whose masks give none are left
    out. Reasons counted."""
    table, excluded = check_masks(table)
    if "ctr" not in table or table["ctr"].isna().any():
        measured = table.apply(reference_ctr, axis=1) if len(table) else pd.Series(dtype=float)
        table["ctr"] = table["ctr"].fillna(measured) if "ctr" in table else measured
    unmeasured = table["ctr"].isna()
    if unmeasured.any():
        excluded["masks give no ratio (a flagged geometry)"] += int(unmeasured.sum())
        table = table[~unmeasured]
    return table.reset_index(drop=True), excluded


def _join_labels(table: pd.DataFrame, csv: Path, root: Path) -> pd.DataFrame:
    df = _read_csv(csv)
    _require(df, ["path"], csv)
    df["path"] = df["path"].map(lambda p: _resolve(root, p)[0])
    keep = [c for c in ("path", "label", "patient", "ctr", "view", "sex", "age") if c in df]
    joined = table.merge(df[keep], on="path", how="left")
    for column in ("label", "ctr", "age"):
        if column in joined:
            joined[column] = pd.to_numeric(joined[column], errors="coerce")
    if "label" in joined and joined["label"].isna().any():
        joined = joined.drop(columns="label")  # films the CSV does not name: label by ratio
    return joined


def check_masks(table: pd.DataFrame) -> tuple[pd.DataFrame, Counter]:
    """Leave out films whose masks are missing or of another size than the film (read from the
    file headers); count them by reason."""
    excluded: Counter = Counter()
    keep = np.ones(len(table), bool)
    for i, row in enumerate(table.itertuples(index=False)):
        size = _size(row.path)
        for column in mask_columns():
            mask = getattr(row, column)
            if not os.path.isfile(mask):
                excluded[f"mask file missing ({column.removeprefix('mask_')})"] += 1
                keep[i] = False
                break
            if size is not None and _size(mask) != size:
                excluded[f"mask size differs from the film's ({column.removeprefix('mask_')})"] += 1
                keep[i] = False
                break
    return table[keep].reset_index(drop=True), excluded


def reference_ctr(row: pd.Series) -> float:
    """The ratio measured on a record's own masks (NaN where they give none)."""
    try:
        masks = {c: read_mask(row[f"mask_{c}"]) for c in MASK_CLASSES}
    except ValueError:
        return float("nan")
    ctr = measure_ctr(masks).ctr
    return float("nan") if ctr is None else ctr


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as a boolean array: inside is at least half the file's top value (255, or 1).

    Resampled masks have soft edges (JSRT's: about 2 % of the inside pixels); a file with more
    than :data:`MAX_SOFT_EDGE` of its inside between the two levels is no mask and fails with
    its name.
    """
    with Image.open(path) as image:
        values = np.asarray(image.convert("L"))
    top = 1 if values.max() <= 1 else 255
    inside = values > 0
    soft = inside & (values < top)
    if inside.any() and soft.sum() > MAX_SOFT_EDGE * inside.sum():
        levels = np.unique(values)
        raise ValueError(f"{path}: not a binary mask ({len(levels)} grey levels, "
                         f"{100 * soft.sum() / inside.sum():.0f} % of it between 0 and {top}); "
                         "save masks with 0 outside and 255 (or 1) inside")  # fmt: skip
    return values >= (top + 1) // 2


def _size(path: str) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # DICOM films and the like: the loader checks them when it decodes
        return None
