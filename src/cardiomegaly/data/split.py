"""Patient-wise, stratified, seeded train/val/test splits, saved as ``splits.csv`` and reusable.

>>> split = patient_split(records, SplitConfig(seed=0))          # doctest: +SKIP
>>> split.value_counts()                                          # doctest: +SKIP
train    546
val      117
test     117
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import DataConfig, SplitConfig, from_dict
from ..errors import DataError, UserError
from ..fileio import atomic_open
from .records import Records, load_records

SPLITS = ("train", "val", "test")
SPLIT_CHOICES = ("test", "val", "all")
#: What the test split is, in the words every report uses.
TEST_SPLIT = (
    "test split: patients held out from training, model selection and threshold choice "
    "(patient-wise stratified split, seed {seed})"
)


def patient_split(records: Records, config: SplitConfig | None = None) -> pd.Series:
    """The split ("train", "val" or "test") of every row; no patient is in two splits.

    Patients with a positive image are dealt out first, largest first, each to the split filled
    least relative to its share of positive images; then the others by share of negative images.
    The order among equal patients is drawn from ``seed``, so the same seed and data give the
    same split, whatever the row order. With ``split_file`` set, the saved split is read instead.
    """
    cfg = config or SplitConfig()
    table = records.table
    if cfg.split_file:
        return read_splits(cfg.split_file, table)
    fractions = np.array([cfg.train, cfg.val, cfg.test])
    per_patient = table.groupby("patient", sort=True)["label"].agg(images="size", positives="sum")
    rng = np.random.default_rng(cfg.seed)
    per_patient = per_patient.iloc[rng.permutation(len(per_patient))]

    positives, negatives = np.zeros(3), np.zeros(3)
    n_positive = table["label"].sum()
    targets = fractions * n_positive, fractions * (len(table) - n_positive)
    per_patient["negatives"] = per_patient["images"] - per_patient["positives"]
    assignment: dict[str, str] = {}
    with_positive = per_patient[per_patient["positives"] > 0]
    without = per_patient[per_patient["positives"] == 0]
    for group, by, target, current in (
        (with_positive, "positives", targets[0], positives),
        (without, "negatives", targets[1], negatives),
    ):
        for patient, row in group.sort_values(by, ascending=False, kind="stable").iterrows():
            # The split filled least relative to its share: big patients spread over all three.
            with np.errstate(divide="ignore", invalid="ignore"):
                fill = np.where(target > 0, current / target, np.inf)
            k = int(np.argmin(fill))
            assignment[str(patient)] = SPLITS[k]
            positives[k] += row["positives"]
            negatives[k] += row["negatives"]
    return table["patient"].map(assignment).rename("split")


def save_splits(records: Records, split: pd.Series, path: str | Path) -> None:
    """Write ``splits.csv`` (patient, split, label, image path relative to the data root)."""
    root = str(records.root)
    paths = records.table["path"].map(
        lambda p: p[len(root) + 1 :] if p.startswith(root + "/") else p
    )
    out = pd.DataFrame(
        {
            "patient": records.table["patient"],
            "split": split,
            "label": records.table["label"],
            "path": paths,
        }
    )
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        out.to_csv(f, index=False)


def read_splits(path: str | Path, table: pd.DataFrame) -> pd.Series:
    """Split per row of ``table`` from a saved ``splits.csv``, matched by patient."""
    path = Path(path)
    try:
        saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable splits CSV ({exc})") from None
    for column in ("patient", "split"):
        if column not in saved.columns:
            raise DataError(f"{path}: no column '{column}'; give a splits.csv written by a run")
    bad = sorted(set(saved["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{path}: unknown split names {bad}; use train, val and test")
    per_patient = saved.groupby("patient")["split"].unique()
    mixed = per_patient[per_patient.map(len) > 1]
    if len(mixed):
        raise DataError(
            f"{path}: patient {mixed.index[0]} is in {' and '.join(mixed.iloc[0])}; "
            "a patient's images must stay in one split"
        )
    mapping = per_patient.map(lambda s: s[0])
    split = table["patient"].map(mapping)
    unknown = table.loc[split.isna(), "patient"].unique()
    if len(unknown):
        raise DataError(
            f"{path}: {len(unknown)} patients of the data are not in this split file "
            f"(e.g. {unknown[0]}); draw a new split instead of --split-file"
        )
    return split.rename("split")


def _same_data(a: str | Path, b: str | None) -> bool:
    if b is None:
        return False
    if str(a) == str(b):
        return True
    return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)


def select_records(
    model: str | Path, meta: dict[str, Any], data: str | Path, split: str
) -> tuple[Records, pd.DataFrame, str]:
    """The records of ``split`` for ``model`` (whose metadata is ``meta``) and one sentence
    saying what they are: its own test or validation patients, or all records."""
    if split not in (*SPLIT_CHOICES, "train"):
        raise UserError(f"unknown split '{split}'; choose {', '.join(SPLIT_CHOICES)}")
    training = meta.get("training", {})
    config = training.get("config", {})
    same = _same_data(data, training.get("data"))
    data_config = from_dict(DataConfig, config.get("data_config")) if same else None
    records = load_records(data, data_config)
    if split == "all":
        if same:
            return (
                records,
                records.table,
                (
                    "all records of the model's training data, training and validation images "
                    "included: optimistic, not an estimate of performance on new patients"
                ),
            )
        return records, records.table, "all records (data the model was not trained on)"
    split_config = from_dict(SplitConfig, config.get("split"))
    saved = Path(model).parent / "splits.csv"
    if not same:  # a split file of the training data names none of these patients: draw afresh
        split_config.split_file = None
    elif saved.is_file():
        split_config.split_file = str(saved)
    assignment = patient_split(records, split_config)
    table = records.table[assignment == split]
    if split == "train":
        description = "training split: the images the model learned from"
    elif split == "val":
        description = (
            "validation split: used for early stopping and to choose the threshold, "
            "so these numbers are optimistic"
        )
    else:
        description = TEST_SPLIT.format(seed=split_config.seed)
    if not same:
        description += (
            "; this data is not the model's training data, so its split was drawn "
            "afresh with the model's seed (--split all scores all of it)"
        )
    return records, table, description
