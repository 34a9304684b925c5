"""Every data source becomes one records table; this module defines it and finds the source.

One row per image, with the columns in :data:`RECORD_COLUMNS` (sources may add more, such as
``ctr`` for phantoms or ``source_split`` for MIMIC). Rows that are neither positive nor negative,
whose view is filtered out, or whose file is missing are counted by reason and left out, never
silently relabelled.

    >>> records = load_records("../shared/data/nih-cxr-cardiomegaly")   # doctest: +SKIP
    >>> len(records), records.positives, records.negatives            # doctest: +SKIP
    (780, 93, 687)
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig, from_dict, load_yaml
from ..errors import DataError, first_line
from . import sources

log = logging.getLogger(__name__)

RECORD_COLUMNS = [
    "path",  # absolute path of the image file
    "label",  # 1 = cardiomegaly, 0 = negative
    "patient",  # patient id (string); splits never separate a patient's images
    "view",  # PA / AP / "" when unknown
    "sex",  # M / F / ""
    "age",  # years (float, NaN when unknown)
    "box_x",
    "box_y",
    "box_w",
    "box_h",  # heart box in the stored image's pixels, NaN if none
    "source",  # the format that produced the row
    "source_row",  # file:line of the row it came from
]


@dataclass
class Records:
    """The records table of one data source, with what was left out and why."""

    table: pd.DataFrame
    format: str
    root: Path
    excluded: Counter = field(default_factory=Counter)  # reason -> rows left out
    missing: list[str] = field(default_factory=list)  # files the source names but lacks
    notes: list[str] = field(default_factory=list)  # things a user should know

    def __len__(self) -> int:
        return len(self.table)

    @property
    def positives(self) -> int:
        return int((self.table["label"] == 1).sum())

    @property
    def negatives(self) -> int:
        return int((self.table["label"] == 0).sum())

    @property
    def patients(self) -> int:
        return int(self.table["patient"].nunique())

    @property
    def boxes(self) -> int:
        return int(self.table["box_w"].notna().sum())

    def subset(self, mask: pd.Series | np.ndarray) -> Records:
        """The same source restricted to some rows (a split, say)."""
        return replace(self, table=self.table[np.asarray(mask)].reset_index(drop=True))


def load_records(data: str | Path, config: DataConfig | None = None) -> Records:
    """Read a data source into a :class:`Records` table.

    ``data`` is a folder (format detected from its files), a CSV (NIH, CheXpert, or one with
    ``path``/``label`` columns), a data YAML naming format and columns, or ``synthetic`` for
    phantoms generated on the fly. ``config`` overrides what the YAML says.

    >>> load_records("data.yaml").positives                           # doctest: +SKIP
    93
    """
    path = Path(data).expanduser()
    cfg = config or DataConfig()
    root = path if path.is_dir() else path.parent
    if not path.exists():
        if str(data) != "synthetic":
            raise DataError(f"{data}: no such file or folder; give a data folder, CSV or data YAML")
        cfg = replace(cfg, format="synthetic")
        root = sources.synthetic_root(cfg)
    elif path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        cfg = _merge(from_dict(DataConfig, load_yaml(path), where=f"{path}: "), config)
        if cfg.root:
            root = Path(os.path.abspath(path.parent / cfg.root))
        if cfg.format is None:
            if cfg.csv is None:
                raise DataError(f"{path}: say 'format:' ({', '.join(sources.READERS)})")
            cfg = replace(cfg, format=detect_format(root / cfg.csv))
    elif path.is_file():
        cfg = replace(cfg, csv=path.name, format=cfg.format or detect_format(path))
    elif cfg.format is None:
        cfg = replace(cfg, format=detect_format(path))
    if not os.access(root, os.R_OK):
        raise DataError(f"{root}: folder is not readable")
    table, excluded, notes = sources.READERS[cfg.format](root, cfg)
    return _finish(Records(table, cfg.format, root, excluded, [], notes), cfg)


def _merge(base: DataConfig, override: DataConfig | None) -> DataConfig:
    """Fields set in ``override`` (different from the defaults) win over the YAML's."""
    if override is None:
        return base
    defaults = DataConfig()
    changed = {
        k: v for k, v in vars(override).items() if v != getattr(defaults, k) and k != "columns"
    }
    return replace(base, **changed)


def detect_format(path: Path) -> str:
    """The source format of a folder or CSV, from the files and columns it has."""
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if names & {"Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"}:
            return "nih"
        if any(n.startswith("mimic-cxr-2.0.0-chexpert.csv") for n in names):
            return "mimic"
        if "phantoms.csv" in names:
            return "synthetic"
        for name in ("train.csv", "valid.csv"):
            if name in names and _has_columns(path / name, {"Path", "Cardiomegaly"}):
                return "chexpert"
        if {"images", "masks"} <= names and (path / "masks").is_dir():
            return "masks"
        if any(sources.class_of_folder(p.name) is not None for p in path.iterdir() if p.is_dir()):
            return "folder"
        raise DataError(
            f"{path}: cannot tell the data format (no Data_Entry_2017*.csv, CheXpert train.csv, "
            "MIMIC-CXR CSVs, phantoms.csv, images/ with masks/, or class sub-folders); write a "
            "data YAML naming "
            "'format' and 'columns'"
        )
    columns = _read_header(path)
    if {"Image Index", "Finding Labels"} <= columns:
        return "nih"
    if {"Path", "Cardiomegaly"} <= columns:
        return "chexpert"
    if {"image", "ctr", "label"} <= columns:
        return "synthetic"
    if {"path", "label"} <= columns:
        return "csv"
    raise DataError(
        f"{path}: cannot tell the data format from its columns ({', '.join(sorted(columns))}); "
        "write a data YAML with format: csv and columns: {path: ..., label: ..., patient: ...}"
    )


def _read_header(path: Path) -> set[str]:
    try:
        return set(pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: CSV file is empty") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    except (OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable CSV ({first_line(exc)})") from None


def _has_columns(path: Path, wanted: set[str]) -> bool:
    try:
        return wanted <= _read_header(path)
    except DataError:
        return False


def _finish(records: Records, cfg: DataConfig) -> Records:
    """Apply what every source shares: view filter, duplicate rows, missing files, column order."""
    table = records.table
    # Absolute but not symlink-resolved: the same file gets the same path from every source.
    table["path"] = table["path"].map(os.path.abspath)
    for column in RECORD_COLUMNS:
        if column not in table.columns:
            table[column] = "" if column in ("view", "sex", "source_row") else np.nan
    table["label"] = table["label"].astype(int)
    table["patient"] = table["patient"].astype(str)
    excluded = Counter(records.excluded)

    keep_views = set(cfg.views)
    if keep_views != {"PA", "AP"}:
        bad_view = ~table["view"].isin(keep_views)
        for view, count in (
            table.loc[bad_view, "view"].replace("", "unknown").value_counts().items()
        ):
            excluded[f"view {view} (not in {'/'.join(cfg.views)})"] += int(count)
        table = table[~bad_view]

    duplicated = table["path"].duplicated(keep="first")
    if duplicated.any():
        excluded["duplicate row for the same image"] += int(duplicated.sum())
        table = table[~duplicated]

    exists = np.array([os.path.isfile(p) for p in table["path"]], dtype=bool)
    missing = list(table.loc[~exists, "path"])
    if missing:
        excluded["image file missing"] += len(missing)
        table = table[exists]

    extra = [c for c in table.columns if c not in RECORD_COLUMNS]
    table = table[RECORD_COLUMNS + extra].reset_index(drop=True)
    excluded = +excluded  # drop reasons that counted nothing
    root = Path(os.path.abspath(records.root))
    return replace(records, table=table, root=root, excluded=excluded, missing=missing)
