"""CheXpert: train.csv / valid.csv with 1.0, 0.0, -1.0 or blank per finding."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ...config import DataConfig
from ._common import (
    FINDING,
    NO_FINDING,
    Result,
    _age,
    _chexpert_labels,
    _drop_unlabelled,
    _flag,
    _negative_kind,
    _read_csv,
    _require,
    _rows,
    _sex,
)


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
                "source_row": _rows(csv, df),
                "negative_kind": _negative_kind(label, nf == 1 if nf is not None else None),
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
