"""Readers that turn each dataset's own files into the records table.

Each reader takes the data root and a :class:`DataConfig` and returns ``(table, excluded,
notes)``: the rows (columns of :data:`RECORD_COLUMNS`), the rows left out counted by reason, and
remarks for the user. Shared finishing (views, duplicates, missing files) is done by
:func:`cardiomegaly.data.records.load_records`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...config import DataConfig
from ._common import Result
from .chexpert import read_chexpert
from .folder import class_of_folder, read_folder
from .generic import read_csv
from .masks import mask_columns, read_masks
from .mimic import read_mimic
from .nih import read_nih
from .synthetic import read_synthetic, synthetic_root

READERS: dict[str, Callable[[Path, DataConfig], Result]] = {
    "nih": read_nih,
    "chexpert": read_chexpert,
    "mimic": read_mimic,
    "csv": read_csv,
    "folder": read_folder,
    "synthetic": read_synthetic,
    "masks": read_masks,
}

__all__ = ["READERS", "class_of_folder", "mask_columns", "synthetic_root"]
