"""Helpers shared by the dataset readers: CSV reading, columns, labels, paths."""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ...config import DataConfig
from ...errors import DataError, first_line

Result = tuple[pd.DataFrame, Counter, list[str]]
FINDING = "Cardiomegaly"
NO_FINDING = "No Finding"


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV as strings (blank cells are ''), with the file named in any error."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: CSV file is empty") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    except (OSError, EOFError, pd.errors.ParserError) as exc:  # .csv.gz is read too
        raise DataError(f"{path}: not a readable CSV ({first_line(exc)})") from None
    if df.empty:
        raise DataError(f"{path}: has a header but no rows")
    return df


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


def _negative_kind(label: pd.Series, no_finding: pd.Series | None) -> pd.Series:
    """For each negative, "no finding" (the film is labelled healthy) or "other findings" (it
    is sick for another reason); "" for positives and where the source cannot say."""
    kind = pd.Series("", index=label.index)
    if no_finding is None:
        return kind
    negative = label == 0
    kind[negative & no_finding] = "no finding"
    kind[negative & ~no_finding] = "other findings"
    return kind


def _rows(path: Path, df: pd.DataFrame) -> pd.Series:
    """'file:line' for each row (line 1 is the header)."""
    return pd.Series([f"{path.name}:{i + 2}" for i in range(len(df))], index=df.index)


def _drop_unlabelled(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["label"].notna()].copy()


def _patient_column(
    df: pd.DataFrame, column: str, paths: pd.Series, cfg: DataConfig, notes: list[str], where: Path
) -> pd.Series:
    """Each row's patient: the column named, else a column called ``patient``, else
    ``patient_regex`` on the file name, else the file name (each image its own patient)."""
    column = column or ("patient" if "patient" in df.columns else "")
    if column:
        if cfg.patient_regex:
            notes.append(f"patient_regex not used: the patients are in column '{column}'")
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
