"""Patient-wise splits: no patient in two splits, stratified, seeded, reusable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardiomegaly import DataError, Records, SplitConfig, patient_split, read_splits, save_splits


def _records(n_patients: int = 300, seed: int = 0) -> Records:
    """Patients with 1-8 images each, about 15 % of patients with some positive images."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        count = int(rng.integers(1, 9))
        sick = rng.random() < 0.15
        for i in range(count):
            rows.append(
                {
                    "path": f"/data/{p}_{i}.png",
                    "patient": f"P{p:04d}",
                    "label": int(sick and rng.random() < 0.7),
                }
            )
    return Records(pd.DataFrame(rows), "csv", root=Path("/data"))


def test_no_patient_is_in_two_splits():
    records = _records()
    split = patient_split(records)
    per_patient = split.groupby(records.table["patient"]).nunique()
    assert (per_patient == 1).all()
    assert set(split) == {"train", "val", "test"}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_each_split_holds_its_share_of_positives_and_images(seed):
    records = _records(seed=seed)
    split = patient_split(records, SplitConfig(seed=seed))
    labels = records.table["label"]
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        assert abs(labels[split == name].sum() - share * labels.sum()) <= 2
        assert abs((split == name).sum() - share * len(labels)) <= 8


def test_same_seed_same_split_whatever_the_row_order_and_other_seed_differs():
    records = _records()
    shuffled = Records(records.table.sample(frac=1, random_state=1), "csv", records.root)
    a = patient_split(records, SplitConfig(seed=7))
    b = patient_split(shuffled, SplitConfig(seed=7)).reindex(a.index)
    c = patient_split(records, SplitConfig(seed=8))
    assert a.equals(b)
    assert not a.equals(c)


def test_saved_splits_are_read_back_identically(tmp_path):
    records = _records()
    split = patient_split(records)
    save_splits(records, split, tmp_path / "splits.csv")
    saved = pd.read_csv(tmp_path / "splits.csv")
    assert list(saved.columns) == ["patient", "split", "label", "path"]
    assert saved["path"].iloc[0] == "0_0.png"  # relative to the data root
    again = patient_split(records, SplitConfig(split_file=str(tmp_path / "splits.csv")))
    assert again.equals(split)


def test_a_split_file_must_cover_every_image(tmp_path):
    records = _records()
    save_splits(records, patient_split(records), tmp_path / "splits.csv")
    saved = pd.read_csv(tmp_path / "splits.csv", dtype=str)
    saved.iloc[1:].to_csv(tmp_path / "fewer.csv", index=False)
    with pytest.raises(DataError, match="1 images of the data .* \\(e.g. 0_0.png\\)"):
        read_splits(tmp_path / "fewer.csv", records)


def test_a_split_file_is_matched_by_image_not_by_patient_column(tmp_path):
    """The file's patient column is a pseudonym of the run that wrote it: the same data with a
    patient more or fewer numbers its patients otherwise, so a film keeps its split by path."""
    records = _records()
    split = patient_split(records)
    save_splits(records, split, tmp_path / "splits.csv")
    saved = pd.read_csv(tmp_path / "splits.csv", dtype=str)
    saved.assign(patient=saved["patient"].sample(frac=1, random_state=0).to_numpy()).to_csv(
        tmp_path / "shuffled.csv", index=False
    )
    assert read_splits(tmp_path / "shuffled.csv", records).equals(split)


def test_a_split_file_that_splits_a_patient_is_refused(tmp_path):
    records = _records()
    save_splits(records, patient_split(records), tmp_path / "splits.csv")
    saved = pd.read_csv(tmp_path / "splits.csv", dtype=str)
    first = saved["path"] == "0_0.png"  # patient P0000 has more than one image with seed 0
    assert (saved["patient"] == saved["patient"][first].iloc[0]).sum() > 1
    saved.loc[first, "split"] = "test" if saved["split"][first].iloc[0] != "test" else "train"
    saved.to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(DataError, match=r"images of one patient \(0_0.png, 0_1.png\) in .* and"):
        read_splits(tmp_path / "mixed.csv", records)
    (tmp_path / "twice.csv").write_text("path,split\n0_0.png,train\n0_0.png,test\n")
    with pytest.raises(DataError, match="0_0.png is in train and test"):
        read_splits(tmp_path / "twice.csv", records)


def test_fractions_must_add_up_to_one():
    with pytest.raises(Exception, match="add up to 1"):
        SplitConfig(train=0.8, val=0.15, test=0.15)
