"""MIMIC-CXR-JPG: study labels joined to image metadata."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from ...config import DataConfig
from ...errors import DataError
from ._common import (
    FINDING,
    NO_FINDING,
    Result,
    _chexpert_labels,
    _drop_unlabelled,
    _flag,
    _negative_kind,
    _read_csv,
    _require,
)


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
            "source_row": [f"{meta_csv.name}:dicom {d}" for d in joined["dicom_id"]],
            "study": joined["study_id"],
            "negative_kind": _negative_kind(label, nf == 1 if nf is not None else None),
        }
    )
    split_csv = table_file("split", required=False)
    if split_csv is not None:
        split = _read_csv(split_csv)
        _require(split, ["dicom_id", "split"], split_csv)
        table["source_split"] = joined["dicom_id"].map(split.set_index("dicom_id")["split"])
    return _drop_unlabelled(table), excluded, []
