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
from .records import DataArg, Records, data_sources, load_records

SPLITS = ("train", "val", "test")
SPLIT_CHOICES = ("test", "val", "all")
#: What the test split is, in the words every report uses.
TEST_SPLIT = (
    "test split: patients held out from training, model selection and threshold choice "
    "(patient-wise stratified split, seed {seed})"
)


def patient_split(records: Records, config: SplitConfig | None = None) -> pd.Series:
    """The split ("train", "val" or "test") of every row; no patient is in two splits.

    Each source is split on its own (a patient in two sources goes with the one holding most
    of their images), so every split has its share of every source. Within a source, patients
    with a positive image are dealt out first, largest first, each to the split filled least
    relative to its share of positive images; then the others by share of negative images.
    The order among equal patients is drawn from ``seed``, so the same seed and data give the
    same split, whatever the row order. With ``split_file`` set, the saved split is read instead.
    """
    cfg = config or SplitConfig()
    table = records.table
    if cfg.split_file:
        return read_splits(cfg.split_file, records)
    fractions = np.array([cfg.train, cfg.val, cfg.test])
    assignment: dict[str, str] = {}
    for _, group in _per_patient(table, cfg.seed).groupby("source", sort=True):
        assignment.update(_deal(group, fractions, SPLITS))
    return table["patient"].map(assignment).rename("split")


def patient_folds(records: Records, k: int, seed: int = 0) -> pd.Series:
    """The cross-validation fold (0 to k-1) of every row: patients dealt out as
    :func:`patient_split` deals them, per source, in k equal shares of positives and negatives.
    """
    if k < 2:
        raise UserError(f"--folds {k}: cross-validation needs at least 2 folds")
    patients = records.table["patient"].nunique()
    if patients < k:
        raise UserError(f"--folds {k}: the data has only {patients} patients")
    assignment: dict[str, int] = {}
    for _, group in _per_patient(records.table, seed).groupby("source", sort=True):
        assignment.update(_deal(group, np.full(k, 1 / k), list(range(k))))
    return records.table["patient"].map(assignment).astype(int).rename("fold")


def fold_split(records: Records, folds: pd.Series, fold: int, config: SplitConfig) -> pd.Series:
    """The split of one fold's run: its fold is the test split; the other patients are dealt to
    train and validation in the proportions of ``config`` (validation stops early and chooses
    the threshold, as in a plain run)."""
    if config.val <= 0 or config.train <= 0:
        raise UserError("cross-validation needs split fractions train > 0 and val > 0")
    table = records.table
    held_out = (folds == fold).to_numpy()
    assignment = dict.fromkeys(table.loc[held_out, "patient"], "test")
    fractions = np.array([config.train, config.val]) / (config.train + config.val)
    for _, group in _per_patient(table[~held_out], config.seed + fold).groupby("source"):
        assignment.update(_deal(group, fractions, ("train", "val")))
    return table["patient"].map(assignment).rename("split")


def _per_patient(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Per patient: images, positives, negatives and main source, in an order drawn from seed."""
    per_patient = table.groupby("patient", sort=True)["label"].agg(images="size", positives="sum")
    per_patient["negatives"] = per_patient["images"] - per_patient["positives"]
    per_patient["source"] = _main_source(table)
    rng = np.random.default_rng(seed)
    return per_patient.iloc[rng.permutation(len(per_patient))]


def _main_source(table: pd.DataFrame) -> pd.Series:
    """Per patient, the source holding most of their images (the first by name on a tie)."""
    if "source" not in table:
        return pd.Series("", index=sorted(table["patient"].unique()))
    counts = table.groupby(["patient", "source"], sort=True).size()
    return counts.groupby(level=0).idxmax().map(lambda key: key[1])


def _deal(per_patient: pd.DataFrame, fractions: np.ndarray, names) -> dict[str, Any]:
    """Patients (images, positives, negatives; in drawn order) dealt to the parts ``names``
    in the proportions ``fractions``: each to the part filled least relative to its share."""
    positives, negatives = np.zeros(len(names)), np.zeros(len(names))
    n_positive = per_patient["positives"].sum()
    targets = fractions * n_positive, fractions * (per_patient["images"].sum() - n_positive)
    assignment: dict[str, Any] = {}
    with_positive = per_patient[per_patient["positives"] > 0]
    without = per_patient[per_patient["positives"] == 0]
    for group, by, target, current in (
        (with_positive, "positives", targets[0], positives),
        (without, "negatives", targets[1], negatives),
    ):
        for patient, row in group.sort_values(by, ascending=False, kind="stable").iterrows():
            # The part filled least relative to its share: big patients spread over all.
            with np.errstate(divide="ignore", invalid="ignore"):
                fill = np.where(target > 0, current / target, np.inf)
            k = int(np.argmin(fill))
            assignment[str(patient)] = names[k]
            positives[k] += row["positives"]
            negatives[k] += row["negatives"]
    return assignment


def film_keys(records: Records) -> pd.Series:
    """Every row's image path relative to the data root (absolute outside it): how the files a
    run writes (``splits.csv``, ``folds.csv``) name a film, and how they are read back."""
    root = str(records.root)
    return records.table["path"].map(
        lambda p: p[len(root) + 1 :] if p.startswith(root + "/") else p
    )


def patient_in_two_parts(parts: pd.Series, records: Records) -> tuple[pd.Series, list[str]] | None:
    """The first patient whose images ``parts`` (a split or fold per row) puts in more than one
    part: that patient's image paths and the parts; None when every patient is in one."""
    per_patient = parts.groupby(records.table["patient"]).unique()
    mixed = per_patient[per_patient.map(len) > 1]
    if not len(mixed):
        return None
    films = film_keys(records)[records.table["patient"] == mixed.index[0]]
    return films, sorted(str(part) for part in mixed.iloc[0])


def save_splits(records: Records, split: pd.Series, path: str | Path) -> None:
    """Write ``splits.csv``: patient (the pseudonym), split, label, and the image path relative
    to the data root, which is how :func:`read_splits` matches it back."""
    out = pd.DataFrame(
        {
            "patient": records.table["patient"],
            "split": split,
            "label": records.table["label"],
            "path": film_keys(records),
        }
    )
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        out.to_csv(f, index=False)


def read_splits(path: str | Path, records: Records) -> pd.Series:
    """Split per row of ``records`` from a saved ``splits.csv``, matched by image path.

    Every image must be in the file, and the file must keep each patient's images in one split
    (a patient as ``records`` groups them)."""
    path = Path(path)
    try:
        saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable splits CSV ({exc})") from None
    for column in ("path", "split"):
        if column not in saved.columns:
            raise DataError(f"{path}: no column '{column}'; give a splits.csv written by a run")
    bad = sorted(set(saved["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{path}: unknown split names {bad}; use train, val and test")
    per_film = saved.groupby("path")["split"].unique()
    mixed = per_film[per_film.map(len) > 1]
    if len(mixed):
        raise DataError(f"{path}: {mixed.index[0]} is in {' and '.join(mixed.iloc[0])}; "
                        "an image can be in one split only")  # fmt: skip
    keys = film_keys(records)
    split = keys.map(per_film.map(lambda s: s[0]))
    unknown = keys[split.isna()]
    if len(unknown):
        raise DataError(
            f"{path}: {len(unknown)} images of the data are not in this split file "
            f"(e.g. {unknown.iloc[0]}); draw a new split instead of --split-file"
        )
    mixed = patient_in_two_parts(split, records)
    if mixed:
        films, parts = mixed
        raise DataError(
            f"{path}: it puts the images of one patient ({', '.join(films.iloc[:2])}) in "
            f"{' and '.join(parts)}; a patient's images must stay in one split"
        )
    return split.rename("split")


def _same_data(a: str | Path, b: str | None) -> bool:
    if b is None:
        return False
    if str(a) == str(b):
        return True
    return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)


def _own_sources(data: DataArg, trained_on: DataArg | None) -> list[int] | None:
    """Which of the model's training sources ``data`` names (indices), or None when it names
    anything else."""
    known = data_sources(trained_on)
    found = [next((i for i, t in enumerate(known) if _same_data(d, t)), None)
             for d in data_sources(data)]  # fmt: skip
    return None if not found or None in found else sorted(set(found))


def select_records(
    model: str | Path, meta: dict[str, Any], data: DataArg, split: str
) -> tuple[Records, pd.DataFrame, str]:
    """The records of ``split`` for ``model`` (whose metadata is ``meta``) and one sentence
    saying what they are: its own test or validation patients, or all records.

    ``data`` that is the model's training data, or some of its sources, is split as the model
    was trained (its ``splits.csv``, or its seed); other data is split afresh with the seed.
    """
    if split not in (*SPLIT_CHOICES, "train"):
        raise UserError(f"unknown split '{split}'; choose {', '.join(SPLIT_CHOICES)}")
    training = meta.get("training", {})
    config = training.get("config", {})
    own = _own_sources(data, training.get("data"))
    same = own is not None
    data_config = from_dict(DataConfig, config.get("data_config")) if same else None
    records = load_records(training["data"] if same else data, data_config)
    keep = np.ones(len(records), bool)
    if same and len(own) < len(records.sources):  # some of the sources it was trained on
        keep = records.table["source"].isin([records.sources[i] for i in own]).to_numpy()
    if split == "all":
        if same:
            return (
                records.subset(keep),
                records.table[keep],
                (
                    "all records of the model's training data, training and validation images "
                    "included: optimistic, not an estimate of performance on new patients"
                ),
            )
        return records, records.table, "all records (data the model was not trained on)"
    if same and training.get("folds"):
        raise UserError(
            f"{model}: an ensemble of {training['folds']} cross-validation folds has seen every "
            f"patient of its training data, so it has no {split} split; its out-of-fold "
            f"evaluation is {Path(model).parent / 'oof' / 'report.html'}. Evaluate it on other "
            "data, or with --split all (optimistic)"
        )
    split_config = from_dict(SplitConfig, config.get("split"))
    saved = Path(model).parent / "splits.csv"
    if not same:  # a split file of the training data names none of these patients: draw afresh
        split_config.split_file = None
    elif saved.is_file():
        split_config.split_file = str(saved)
    assignment = patient_split(records, split_config)
    chosen = (assignment == split).to_numpy() & keep
    table = records.table[chosen]
    records = records.subset(keep)
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
