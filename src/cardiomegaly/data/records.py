"""Every data source becomes one records table; this module defines it and finds the source.

Several sources make one table: each row keeps its ``source`` (the folder or file it came from),
a patient of one dataset found in two folders (the same NIH patient ID) stays one patient, and
patients of different datasets never merge (their ids are prefixed by dataset or source).

Patient ids go no further than this module: once the sources are read and merged, each id is
replaced by a pseudonym (``p001``, ``p002``, ... numbered in the order of the ids), so no split
file, prediction table, report, log line or model file downstream can hold one. The pseudonyms
group and order the films as the ids did, so splits and bootstrap intervals are the ones the
ids would give; the mapping back is kept nowhere. Files are told apart by their paths.

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
from collections.abc import Sequence
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
    "patient",  # the patient's pseudonym (p001, ...); splits never separate a patient's images
    "view",  # PA / AP / "" when unknown
    "sex",  # M / F / ""
    "age",  # years (float, NaN when unknown)
    "box_x",
    "box_y",
    "box_w",
    "box_h",  # heart box in the stored image's pixels, NaN if none
    "source",  # the data source (folder or file name) the row came from
    "source_row",  # file:line of the row it came from
    "negative_kind",  # negatives: "no finding" / "other findings" where the source says; else ""
]

TEXT_COLUMNS = ("view", "sex", "source_row", "negative_kind")

#: Formats whose patient ids name the same person in every folder of the dataset: two folders
#: of NIH films share patients; two hospital CSVs do not.
GLOBAL_PATIENT_IDS = ("nih", "chexpert", "mimic")

#: Formats whose file names are the dataset's image ids (NIH's Image Index, MIMIC's dicom_id):
#: one name in two folders of the dataset is one film, whatever its folder or extension.
GLOBAL_FILM_NAMES = ("nih", "mimic")

#: A data folder holding this file is read as this data YAML (format, columns, negatives).
FOLDER_YAML = "data.yaml"

DataArg = str | Path | Sequence[str | Path]


@dataclass
class Records:
    """The records table of one data source, with what was left out and why."""

    table: pd.DataFrame
    format: str
    root: Path
    excluded: Counter = field(default_factory=Counter)  # reason -> rows left out
    missing: list[str] = field(default_factory=list)  # files the source names but lacks
    notes: list[str] = field(default_factory=list)  # things a user should know
    sources: list[str] = field(default_factory=list)  # source names, in the order given

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

    def overlap(self) -> dict[str, list[str]]:
        """Patients with images in more than one source -> those sources (sorted)."""
        per = self.table.groupby("patient")["source"].unique()
        return {str(p): sorted(s) for p, s in per.items() if len(s) > 1}

    def subset(self, mask: pd.Series | np.ndarray) -> Records:
        """The same source restricted to some rows (a split, say)."""
        return replace(self, table=self.table[np.asarray(mask)].reset_index(drop=True))


def data_sources(data: DataArg | None) -> list[str]:
    """The data arguments as a list: one source, or several.

    >>> data_sources("a"), data_sources(["a", "b"])
    (['a'], ['a', 'b'])
    """
    if data is None or data == "" or (not isinstance(data, str | Path) and not len(data)):
        return []
    return [str(data)] if isinstance(data, str | Path) else [str(d) for d in data]


def data_label(data: DataArg) -> str | list[str]:
    """The data arguments as metadata and JSON hold them: one source a string, several a list."""
    items = data_sources(data)
    return items[0] if len(items) == 1 else items


def absolute_sources(data: DataArg) -> str | list[str]:
    """:func:`data_label` with existing paths made absolute (a run resumed elsewhere finds its
    data again)."""
    return data_label([os.path.abspath(d) if Path(d).exists() else d for d in data_sources(data)])


def load_records(data: DataArg, config: DataConfig | None = None) -> Records:
    """Read one data source, or several as one table, into a :class:`Records` table.

    ``data`` is a folder (format detected from its files, or read by the ``data.yaml`` in it),
    a CSV (NIH, CheXpert, or one with ``path``/``label`` columns), a data YAML naming format and
    columns, ``synthetic`` for phantoms generated on the fly, or a list of these. ``config``
    overrides what each YAML says. Its ``patient`` column holds pseudonyms (:func:`pseudonyms`
    of the ids of this whole table), never the ids.

    >>> load_records("data.yaml").positives                           # doctest: +SKIP
    93
    >>> both = load_records(["nih-cxr-cardiomegaly", "nih-cxr-other-findings"])  # doctest: +SKIP
    >>> len(both.overlap())                   # 9 films in both folders kept once  # doctest: +SKIP
    13
    """
    items = data_sources(data)
    if not items:
        raise DataError("no data: give a data folder, CSV, data YAML or 'synthetic'")
    parts = [_load_one(item, config) for item in items]
    records = parts[0] if len(parts) == 1 else combine(parts)
    records.table["patient"] = pseudonyms(records.table["patient"])
    return records


def pseudonyms(ids: pd.Series) -> pd.Series:
    """Each patient id replaced by ``p`` and its rank among these ids, zero-padded to one width.

    The same films share a pseudonym and the pseudonyms sort as the ids do (so a split or a
    bootstrap drawn from them is the one the ids would give); nothing of an id is in its
    pseudonym, and the mapping is not kept.

    >>> pseudonyms(pd.Series(["MRN 88", "MRN 12", "MRN 88"])).tolist()
    ['p2', 'p1', 'p2']
    """
    uniques, inverse = np.unique(ids.to_numpy(dtype=str), return_inverse=True)
    width = len(str(len(uniques)))
    names = np.array([f"p{k:0{width}d}" for k in range(1, len(uniques) + 1)], dtype=object)
    return pd.Series(names[inverse], index=ids.index, name=ids.name, dtype=object)


def combine(parts: Sequence[Records]) -> Records:
    """Several sources as one table. Patient ids are prefixed by the dataset for formats whose
    ids are global (:data:`GLOBAL_PATIENT_IDS`: the same NIH patient in two folders is one
    patient) and by the source otherwise (patient 7 of two hospitals is two patients)."""
    names = _unique([p.sources[0] for p in parts])
    tables, excluded, missing, notes = [], Counter(), [], []
    for part, name in zip(parts, names, strict=True):
        table = part.table.assign(source=name)
        space = part.format if part.format in GLOBAL_PATIENT_IDS else name
        table["patient"] = space + ":" + table["patient"]
        tables.append(table)
        excluded.update({f"{name}: {reason}": n for reason, n in part.excluded.items()})
        missing += part.missing
        notes += [f"{name}: {note}" for note in part.notes]
    table = pd.concat(tables, ignore_index=True)
    table[list(TEXT_COLUMNS)] = table[list(TEXT_COLUMNS)].fillna("")
    duplicated = table["path"].duplicated(keep="first")
    if duplicated.any():
        excluded["the same image file in two sources (kept in the first)"] += int(duplicated.sum())
        table = table[~duplicated].reset_index(drop=True)
    film = table["patient"] + "/" + table["path"].map(lambda p: Path(p).stem)
    copies = film.duplicated(keep="first") & table["patient"].str.startswith(
        tuple(f"{f}:" for f in GLOBAL_FILM_NAMES)
    )
    if copies.any():
        excluded["the same film (its image id) in two sources (kept in the first)"] += int(
            copies.sum()
        )
        table = table[~copies].reset_index(drop=True)
    formats = list(dict.fromkeys(p.format for p in parts))
    root = Path(os.path.commonpath([str(p.root) for p in parts]))
    return Records(table, "+".join(formats), root, +excluded, missing, notes, names)


def _unique(names: list[str]) -> list[str]:
    """Names made unique by a suffix: ``a``, ``a#2``."""
    out: list[str] = []
    for name in names:
        candidate, k = name, 1
        while candidate in out:
            k += 1
            candidate = f"{name}#{k}"
        out.append(candidate)
    return out


def _source_name(path: Path, data: str | Path) -> str:
    if not path.exists():
        return str(data)  # synthetic
    full = Path(os.path.abspath(path))
    return full.name if full.is_dir() else f"{full.parent.name}/{full.name}"


def _load_one(data: str | Path, config: DataConfig | None) -> Records:
    path = Path(data).expanduser()
    name = _source_name(path, data)
    if path.is_dir() and (path / FOLDER_YAML).is_file():
        path = path / FOLDER_YAML
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
    records = _finish(Records(table, cfg.format, root, excluded, [], notes), cfg)
    records.table["source"] = name
    return replace(records, sources=[name])


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
            table[column] = "" if column in TEXT_COLUMNS else np.nan
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
