"""Any CSV whose columns and label values a data YAML names."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ...config import DataConfig
from ...errors import DataError
from ...segment.ctr import MASK_CLASSES
from ._common import (
    Result,
    _age,
    _drop_unlabelled,
    _patient_column,
    _read_csv,
    _require,
    _resolve,
    _rows,
    _sex,
)
from .masks import with_reference_ratio


def read_csv(root: Path, cfg: DataConfig) -> Result:
    """Any CSV: path and label columns (names from the data YAML), optional patient/view/box."""
    if not cfg.csv:
        raise DataError(f"{root}: format csv needs 'csv:' (the table's file name) in the data YAML")
    csv = root / cfg.csv
    df = _read_csv(csv)
    cols = cfg.columns
    hint = "; name the columns under 'columns:' in the data YAML"
    _require(df, [cols.path, cols.label], csv, hint)
    unknown_organs = sorted(set(cols.masks) - set(MASK_CLASSES))
    if unknown_organs or (cols.masks and set(cols.masks) != set(MASK_CLASSES)):
        raise DataError(f"{csv}: columns.masks names {', '.join(sorted(cols.masks)) or 'nothing'}; "
                        f"give a column for each of {', '.join(MASK_CLASSES)}")  # fmt: skip
    for extra in [cols.patient, cols.view, cols.sex, cols.age, *cols.box, *cols.masks.values()]:
        if extra:
            _require(df, [extra], csv, hint)
    excluded: Counter = Counter()
    notes: list[str] = []

    positive = {v.strip().lower() for v in cfg.positive}
    negative = {v.strip().lower() for v in cfg.negative}

    def label_of(value: str) -> float:
        tokens = {t.strip().lower() for t in str(value).split("|")} - {""}
        if tokens & positive:
            return 1.0
        if tokens and tokens <= negative:
            return 0.0
        return np.nan

    label = df[cols.label].map(label_of)
    unknown = df.loc[label.isna(), cols.label]
    if len(unknown) == len(df) and len(df):
        seen = ", ".join(sorted(set(unknown.astype(str)))[:8])
        raise DataError(
            f"{csv}: column '{cols.label}' has no positive ({', '.join(cfg.positive)}) or "
            f"negative ({', '.join(cfg.negative)}) value; found: {seen}. Set 'positive:' and "
            "'negative:' in the data YAML"
        )
    for value, count in unknown.value_counts().items():
        excluded[f"{cols.label} '{value}' is neither positive nor negative"] += int(count)

    image_root = (root / cfg.image_root) if cfg.image_root else root
    base = Path(os.path.abspath(image_root))
    resolved = df[cols.path].map(lambda p: _resolve(base, str(p).strip()))
    inside = resolved.map(lambda r: r[1])
    excluded["path outside the data root ('..')"] += int((~inside).sum())
    table = pd.DataFrame(
        {
            "path": resolved.map(lambda r: r[0]),
            "label": label,
            "view": df[cols.view].str.upper().str.strip() if cols.view else "",
            "sex": _sex(df[cols.sex]) if cols.sex else "",
            "age": _age(df[cols.age]) if cols.age else np.nan,
            "source": "csv",
            "source_row": _rows(csv, df),
        }
    )
    table["patient"] = _patient_column(df, cols.patient, table["path"], cfg, notes, csv)
    if cols.box:
        x0, y0, x1, y1 = (pd.to_numeric(df[c], errors="coerce") for c in cols.box)
        table["box_x"], table["box_y"], table["box_w"], table["box_h"] = x0, y0, x1 - x0, y1 - y0
    for organ, column in cols.masks.items():  # the segment task's masks, beside their films
        table[f"mask_{organ}"] = df[column].map(lambda p: _resolve(base, str(p).strip())[0])
    table = _drop_unlabelled(table[inside])
    if cols.masks:
        table, missing = with_reference_ratio(table)
        excluded += missing
    return table, excluded, notes
