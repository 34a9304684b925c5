"""Class sub-folders: cardiomegaly|positive|1 against no_finding|normal|negative|0."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd

from ...config import DataConfig
from ..images import IMAGE_SUFFIXES
from ._common import (
    Result,
    _patient_column,
)

_POSITIVE_FOLDERS = {"cardiomegaly", "positive", "1"}
_NEGATIVE_FOLDERS = {"no_finding", "nofinding", "normal", "negative", "0"}


def class_of_folder(name: str) -> int | None:
    """1 for a positive class folder, 0 for a negative one, None for anything else."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in _POSITIVE_FOLDERS:
        return 1
    if key in _NEGATIVE_FOLDERS:
        return 0
    return None


def read_folder(root: Path, cfg: DataConfig) -> Result:
    """Class sub-folders: ``cardiomegaly|positive|1`` against ``no_finding|normal|negative|0``."""
    notes: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = class_of_folder(sub.name)
        if label is None:
            notes.append(f"folder '{sub.name}' is not a class folder; ignored")
            continue
        for folder, _dirs, files in sorted(os.walk(sub)):
            for name in sorted(files):
                suffix = Path(name).suffix.lower()
                if name.startswith(".") or (suffix and suffix not in IMAGE_SUFFIXES):
                    continue  # DICOM files often have no extension; other files are not images
                paths.append(os.path.join(folder, name))
                labels.append(label)
    table = pd.DataFrame({"path": paths, "label": labels, "source": "folder"})
    table["source_row"] = table["path"].map(lambda p: os.path.relpath(p, root))
    table["patient"] = _patient_column(table, "", table["path"], cfg, notes, root)
    return table, Counter(), notes
