"""NIH ChestX-ray14: Data_Entry_2017[_v2020].csv and BBox_List_2017.csv."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ...config import DataConfig
from ...errors import DataError
from ..images import IMAGE_SUFFIXES
from ._common import (
    FINDING,
    NO_FINDING,
    Result,
    _age,
    _drop_unlabelled,
    _negative_kind,
    _read_csv,
    _require,
    _rows,
    _sex,
)


def read_nih(root: Path, cfg: DataConfig) -> Result:
    """NIH ChestX-ray14: ``Data_Entry_2017[_v2020].csv`` and optional ``BBox_List_2017.csv``.

    ``Finding Labels`` is split on ``|``; an Image Index ``x.png`` is also found as ``x.jpg``.
    """
    notes: list[str] = []
    if cfg.csv:
        csv = root / cfg.csv
    else:
        found = [root / n for n in ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise DataError(f"{root}: no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv")
        csv = found[0]
        if len(found) == 2:
            notes.append(f"both NIH tables present; using {csv.name} (the 2020 revision)")
    df = _read_csv(csv)
    _require(df, ["Image Index", "Finding Labels", "Patient ID"], csv)
    excluded: Counter = Counter()

    findings = df["Finding Labels"].str.split("|").map(lambda xs: {x.strip() for x in xs} - {""})
    label = pd.Series(np.nan, index=df.index)
    label[findings.map(lambda s: FINDING in s)] = 1
    rest = label.isna()
    if cfg.negatives == "no-finding":
        negative = rest & findings.map(lambda s: s == {NO_FINDING})
        excluded["other findings without Cardiomegaly (not No Finding)"] += int(
            (rest & ~negative).sum()
        )
    else:
        negative = rest
    label[negative] = 0

    image_root = root / cfg.image_root if cfg.image_root else root
    index = _image_index(image_root)
    # Where a missing file is reported: the images/ folder when the data has one.
    expected = image_root / "images" if (image_root / "images").is_dir() else image_root
    sex_column = "Patient Gender" if "Patient Gender" in df.columns else "Patient Sex"
    table = pd.DataFrame(
        {
            "path": df["Image Index"].map(lambda n: _find_image(index, expected, n)),
            "label": label,
            "patient": df["Patient ID"].str.strip(),
            "view": df.get("View Position", pd.Series("", index=df.index)).str.upper().str.strip(),
            "sex": _sex(df[sex_column]) if sex_column in df.columns else "",
            "age": _age(df["Patient Age"]) if "Patient Age" in df.columns else np.nan,
            "source_row": _rows(csv, df),
            "image_id": df["Image Index"].str.strip(),
            "negative_kind": _negative_kind(label, findings.map(lambda s: s == {NO_FINDING})),
        }
    )
    bbox_csv = root / (cfg.bbox_csv or "BBox_List_2017.csv")
    if bbox_csv.is_file():
        boxes = _nih_boxes(bbox_csv)
        matched = table["image_id"].map(boxes)
        for i, column in enumerate(("box_x", "box_y", "box_w", "box_h")):
            table[column] = matched.map(lambda b, i=i: b[i] if isinstance(b, tuple) else np.nan)
    elif cfg.bbox_csv:
        raise DataError(f"{bbox_csv}: bounding-box CSV not found")
    return _drop_unlabelled(table), excluded, notes


def _nih_boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """Cardiomegaly boxes by Image Index; the header 'Bbox [x,y,w,h]' spans four columns."""
    df = _read_csv(path)
    if df.shape[1] < 6:
        raise DataError(f"{path}: expected Image Index, Finding Label, x, y, w, h columns")
    rows = df[df.iloc[:, 1].str.strip() == FINDING]
    boxes = {}
    for values in rows.itertuples(index=False):
        try:
            box = tuple(float(v) for v in values[2:6])
        except ValueError:
            continue
        boxes.setdefault(str(values[0]).strip(), box)
    return boxes


def _image_index(root: Path) -> dict[str, str]:
    """Every image file under ``root`` (NIH ships them in images_001/images/...), by name."""
    index: dict[str, str] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                index.setdefault(name.lower(), os.path.join(folder, name))
    return index


def _find_image(index: dict[str, str], root: Path, name: str) -> str:
    name = name.strip()
    stem = Path(name).stem.lower()
    for candidate in (name.lower(), f"{stem}.png", f"{stem}.jpg", f"{stem}.jpeg"):
        if candidate in index:
            return index[candidate]
    return str(root / name)
