"""Readers that turn each dataset's own files into the records table.

Each reader takes the data root and a :class:`DataConfig` and returns ``(table, excluded,
notes)``: the rows (columns of :data:`RECORD_COLUMNS`, paths absolute), the rows left out
counted by reason, and remarks for the user. Shared finishing (views, missing files) is done by
:func:`cardiomegaly.data.records.load_records`.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import DataError
from .records import IMAGE_SUFFIXES, _first_line

log = logging.getLogger(__name__)

Result = tuple[pd.DataFrame, Counter, list[str]]
FINDING = "Cardiomegaly"
NO_FINDING = "No Finding"

_POSITIVE_FOLDERS = {"cardiomegaly", "positive", "1"}
_NEGATIVE_FOLDERS = {"no_finding", "nofinding", "normal", "negative", "0"}


# ---------------------------------------------------------------------------------------- helpers


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV as strings (blank cells are ''), with the file named in any error."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: CSV file is empty") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    except (OSError, EOFError, pd.errors.ParserError) as exc:  # .csv.gz is read too
        raise DataError(f"{path}: not a readable CSV ({_first_line(exc)})") from None


def _require(df: pd.DataFrame, columns: list[str], path: Path, hint: str = "") -> None:
    for column in columns:
        if column not in df.columns:
            close = difflib.get_close_matches(column, list(df.columns), n=1)
            guess = f"; did you mean '{close[0]}'?" if close else ""
            found = ", ".join(map(str, df.columns[:12]))
            raise DataError(f"{path}: no column '{column}'{guess} (columns: {found}){hint}")


def _resolve(base: Path, relative: str) -> tuple[str, bool]:
    """Absolute path of ``relative`` under ``base``, and whether it stays inside ``base``."""
    candidate = Path(relative)
    if candidate.is_absolute():
        return str(candidate), True
    full = os.path.normpath(base / candidate)
    inside = full == str(base) or full.startswith(str(base) + os.sep)
    return full, inside


def _patients_from_names(names: pd.Series, regex: str | None, where: str) -> pd.Series:
    """Patient id from a regular expression over file names (first group, or the whole match)."""
    try:
        pattern = re.compile(regex or "")
    except re.error as exc:
        raise DataError(f"{where}: patient_regex '{regex}' is not a valid regex ({exc})") from None

    def one(name: str) -> str:
        m = pattern.search(name)
        if not m:
            return ""
        return m.group(1) if pattern.groups else m.group(0)

    return names.map(one)


def _age(values: pd.Series) -> pd.Series:
    """Years as floats; '058Y' and '58' both read; impossible ages (NIH has 400s) become NaN."""
    numbers = pd.to_numeric(values.astype(str).str.extract(r"(\d+(?:\.\d+)?)")[0], errors="coerce")
    return numbers.where((numbers >= 0) & (numbers <= 120))


def _sex(values: pd.Series) -> pd.Series:
    first = values.astype(str).str.strip().str.upper().str[:1]
    return first.where(first.isin(["M", "F"]), "")


def _flag(values: pd.Series) -> pd.Series:
    """CheXpert-style label cells: '1.0' / '0.0' / '-1.0' / '' -> 1, 0, -1, NaN."""
    return pd.to_numeric(values.replace("", np.nan), errors="coerce")


def _chexpert_labels(
    cardio: pd.Series, no_finding: pd.Series | None, cfg: DataConfig, excluded: Counter
) -> pd.Series:
    """Label per row from Cardiomegaly and No Finding flags; NaN where the row is left out."""
    label = pd.Series(np.nan, index=cardio.index)
    label[cardio == 1] = 1
    uncertain = cardio == -1
    if cfg.uncertain == "ones":
        label[uncertain] = 1
    elif cfg.uncertain == "zeros":
        label[uncertain] = 0
    else:
        excluded["Cardiomegaly uncertain (-1; policy 'ignore')"] += int(uncertain.sum())
    rest = label.isna() & ~uncertain
    if cfg.negatives == "no-finding":
        is_negative = rest & (no_finding == 1) if no_finding is not None else rest & False
        excluded["neither Cardiomegaly nor No Finding"] += int((rest & ~is_negative).sum())
    else:
        is_negative = rest
    label[is_negative] = 0
    return label


def _rows(path: Path, df: pd.DataFrame) -> pd.Series:
    """'file:line' for each row (line 1 is the header)."""
    return pd.Series([f"{path.name}:{i + 2}" for i in range(len(df))], index=df.index)


def _drop_unlabelled(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["label"].notna()].copy()


# ------------------------------------------------------------------------------------------- NIH


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
            "source": "nih",
            "source_row": _rows(csv, df),
            "image_id": df["Image Index"].str.strip(),
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


# -------------------------------------------------------------------------------------- CheXpert


def read_chexpert(root: Path, cfg: DataConfig) -> Result:
    """CheXpert ``train.csv`` / ``valid.csv``: 1.0, 0.0, -1.0 (uncertain) or blank per finding."""
    csvs = [root / cfg.csv] if cfg.csv else [root / n for n in ("train.csv", "valid.csv")]
    csvs = [p for p in csvs if p.is_file()] or csvs[:1]
    excluded: Counter = Counter()
    tables = []
    for csv in csvs:
        df = _read_csv(csv)
        needed = ["Path", FINDING] + ([NO_FINDING] if cfg.negatives == "no-finding" else [])
        _require(df, needed, csv)
        if cfg.frontal_only and "Frontal/Lateral" in df.columns:
            lateral = df["Frontal/Lateral"].str.strip().str.lower() == "lateral"
            excluded["lateral view (frontal only)"] += int(lateral.sum())
            df = df[~lateral]
        nf = _flag(df[NO_FINDING]) if NO_FINDING in df.columns else None
        label = _chexpert_labels(_flag(df[FINDING]), nf, cfg, excluded)
        base = _chexpert_base(root, df["Path"].iloc[0] if len(df) else "")
        table = pd.DataFrame(
            {
                "path": df["Path"].map(lambda p, b=base: os.path.normpath(b / p)),
                "label": label,
                "patient": df["Path"].str.extract(r"(patient\d+)", expand=False).fillna(""),
                "view": df.get("AP/PA", pd.Series("", index=df.index)).str.upper().str.strip(),
                "sex": _sex(df["Sex"]) if "Sex" in df.columns else "",
                "age": _age(df["Age"]) if "Age" in df.columns else np.nan,
                "source": "chexpert",
                "source_row": _rows(csv, df),
            }
        )
        no_patient = table["patient"] == ""
        table.loc[no_patient, "patient"] = table.loc[no_patient, "path"].map(
            lambda p: Path(p).parent.parent.name
        )
        tables.append(_drop_unlabelled(table))
    return pd.concat(tables, ignore_index=True), excluded, []


def _chexpert_base(root: Path, first: str) -> Path:
    """CheXpert paths start with the dataset folder's own name ('CheXpert-v1.0-small/train/...')."""
    first_part = Path(first).parts[0] if first else ""
    for base in (root, root.parent):
        if first and (base / first).exists():
            return base
    return root.parent if first_part == root.name else root


# ----------------------------------------------------------------------------------------- MIMIC


def read_mimic(root: Path, cfg: DataConfig) -> Result:
    """MIMIC-CXR-JPG: labels per study (chexpert CSV) joined to images (metadata CSV)."""

    def table_file(suffix: str, required: bool = True) -> Path | None:
        for name in (f"mimic-cxr-2.0.0-{suffix}.csv", f"mimic-cxr-2.0.0-{suffix}.csv.gz"):
            if (root / name).is_file():
                return root / name
        if required:
            raise DataError(f"{root}: no mimic-cxr-2.0.0-{suffix}.csv(.gz)")
        return None

    labels_csv, meta_csv = table_file("chexpert"), table_file("metadata")
    assert labels_csv is not None and meta_csv is not None
    labels, meta = _read_csv(labels_csv), _read_csv(meta_csv)
    _require(labels, ["subject_id", "study_id", FINDING], labels_csv)
    _require(meta, ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta_csv)
    excluded: Counter = Counter()
    meta["ViewPosition"] = meta["ViewPosition"].str.upper().str.strip()
    if cfg.frontal_only:
        frontal = meta["ViewPosition"].isin(["PA", "AP"])
        for view, count in (
            meta.loc[~frontal, "ViewPosition"].replace("", "unknown").value_counts().items()
        ):
            excluded[f"view {view} (frontal only)"] += int(count)
        meta = meta[frontal]
    keep = ["subject_id", "study_id", FINDING] + ([NO_FINDING] if NO_FINDING in labels else [])
    joined = meta.merge(labels[keep], on=["subject_id", "study_id"], how="left", indicator=True)
    unlabelled = joined["_merge"] == "left_only"
    excluded["study has no row in the chexpert CSV"] += int(unlabelled.sum())
    joined = joined[~unlabelled]
    nf = _flag(joined[NO_FINDING]) if NO_FINDING in joined.columns else None
    label = _chexpert_labels(_flag(joined[FINDING]), nf, cfg, excluded)

    image_root = root / cfg.image_root if cfg.image_root else root

    def image_path(subject: str, study: str, dicom: str) -> str:
        return str(
            image_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        )

    table = pd.DataFrame(
        {
            "path": [
                image_path(a, b, c)
                for a, b, c in zip(
                    joined["subject_id"], joined["study_id"], joined["dicom_id"], strict=True
                )
            ],
            "label": label,
            "patient": joined["subject_id"].str.strip(),
            "view": joined["ViewPosition"],
            "source": "mimic",
            "source_row": [f"{meta_csv.name}:dicom {d}" for d in joined["dicom_id"]],
            "study": joined["study_id"],
        }
    )
    split_csv = table_file("split", required=False)
    if split_csv is not None:
        split = _read_csv(split_csv)
        _require(split, ["dicom_id", "split"], split_csv)
        table["source_split"] = joined["dicom_id"].map(split.set_index("dicom_id")["split"])
    return _drop_unlabelled(table), excluded, []


# ---------------------------------------------------------------------------------- generic CSV


def read_csv(root: Path, cfg: DataConfig) -> Result:
    """Any CSV: path and label columns (names from the data YAML), optional patient/view/box."""
    if not cfg.csv:
        raise DataError(f"{root}: format csv needs 'csv:' (the table's file name) in the data YAML")
    csv = root / cfg.csv
    df = _read_csv(csv)
    cols = cfg.columns
    hint = "; name the columns under 'columns:' in the data YAML"
    _require(df, [cols.path, cols.label], csv, hint)
    for extra in [cols.patient, cols.view, cols.sex, cols.age, *cols.box]:
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
    table = table[inside]
    return _drop_unlabelled(table), excluded, notes


def _patient_column(
    df: pd.DataFrame, column: str, paths: pd.Series, cfg: DataConfig, notes: list[str], where: Path
) -> pd.Series:
    if column:
        return df[column].astype(str).str.strip()
    names = paths.map(lambda p: Path(p).name)
    if cfg.patient_regex:
        patients = _patients_from_names(names, cfg.patient_regex, str(where))
        unmatched = patients == ""
        if unmatched.any():
            notes.append(
                f"patient_regex matched no patient in {int(unmatched.sum())} file names; "
                "each of those counts as its own patient"
            )
            patients[unmatched] = names[unmatched]
        return patients
    notes.append(
        "no patient ids: each image counts as its own patient, so one patient's images may "
        "land in two splits; give a patient column or patient_regex"
    )
    return names


# --------------------------------------------------------------------------------------- folders


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


# ------------------------------------------------------------------------------------- synthetic


def synthetic_root(cfg: DataConfig) -> Path:
    """Phantoms made on the fly (n, size, seed from ``cfg``), generated once into the cache."""
    from .cache import default_cache_dir
    from .phantom import synthesize

    root = default_cache_dir() / "synthetic" / f"n{cfg.n}-size{cfg.size}-seed{cfg.seed}"
    if not (root / "phantoms.csv").is_file():
        synthesize(root, n=cfg.n, size=cfg.size, seed=cfg.seed, progress=False)
    return root


def read_synthetic(root: Path, cfg: DataConfig) -> Result:
    """Phantoms: a folder written by ``cardiomegaly synth`` (or :func:`synthetic_root`)."""
    if not cfg.csv and not (root / "phantoms.csv").is_file():
        root = synthetic_root(cfg)  # a data YAML that only says format: synthetic
    csv = root / (cfg.csv or "phantoms.csv")
    df = _read_csv(csv)
    _require(df, ["image", "patient", "label", "ctr"], csv)
    table = pd.DataFrame(
        {
            "path": df["image"].map(lambda p: str(root / p)),
            "label": pd.to_numeric(df["label"], errors="coerce"),
            "patient": df["patient"],
            "view": df.get("view", ""),
            "sex": df.get("sex", ""),
            "age": pd.to_numeric(df.get("age", np.nan), errors="coerce"),
            "source": "synthetic",
            "source_row": _rows(csv, df),
            "ctr": pd.to_numeric(df["ctr"], errors="coerce"),
        }
    )
    for column in ("box_x", "box_y", "box_w", "box_h"):
        if column in df.columns:
            table[column] = pd.to_numeric(df[column], errors="coerce")
    excluded: Counter = Counter()
    bad = table["label"].isna() | ~table["label"].isin([0, 1])
    excluded["label is not 0 or 1"] += int(bad.sum())
    return table[~bad].copy(), excluded, ["synthetic phantoms: for demos and tests only"]


READERS: dict[str, Callable[[Path, DataConfig], Result]] = {
    "nih": read_nih,
    "chexpert": read_chexpert,
    "mimic": read_mimic,
    "csv": read_csv,
    "folder": read_folder,
    "synthetic": read_synthetic,
}
