"""The real NIH ChestX-ray14 sample beside the repository (skipped where it is absent)."""

from __future__ import annotations

import time

import pytest
import yaml

import cardiomegaly.data.preprocess as decoder_module
from cardiomegaly import DataConfig, ImageCache, load_records, patient_split


def test_nih_sample_counts(nih_sample):
    records = load_records(nih_sample)
    assert records.format == "nih"
    assert (len(records), records.patients, records.positives, records.negatives) == (
        780,
        340,
        93,
        687,
    )
    assert records.table["view"].value_counts().to_dict() == {"PA": 534, "AP": 246}
    assert records.boxes == 93
    assert not records.missing and not records.excluded


def test_nih_sample_read_through_its_other_csv_gives_the_same_records(nih_sample, tmp_path):
    data = {
        "format": "csv", "root": str(nih_sample), "csv": "labels.csv", "image_root": "images",
        "columns": {"path": "filename", "label": "label", "view": "view",
                    "box": ["xmin", "ymin", "xmax", "ymax"]},
        "patient_regex": "^([^_]+)_", "positive": ["Cardiomegaly"], "negative": ["No Finding"],
    }  # fmt: skip
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    other = load_records(tmp_path / "data.yaml")
    nih = load_records(nih_sample)
    assert (other.positives, other.negatives, other.patients, other.boxes) == (93, 687, 340, 93)
    a = nih.table.set_index("path")[["label", "view", "box_x", "box_y", "box_w", "box_h"]]
    b = other.table.set_index("path")[a.columns].loc[a.index]
    assert a.equals(b)


def test_nih_sample_split_seed_0(nih_sample, tmp_path):
    records = load_records(nih_sample)
    split = patient_split(records)
    assert (split.groupby(records.table["patient"]).nunique() == 1).all()
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        positives = records.table.loc[split == name, "label"].sum()
        assert abs(positives - share * records.positives) <= 2
    assert patient_split(records).equals(split)


def test_nih_sample_pa_only(nih_sample):
    records = load_records(nih_sample, DataConfig(views=["PA"]))
    assert len(records) == 534 and records.excluded == {"view AP (not in PA)": 246}


def test_second_pass_over_the_sample_decodes_nothing(nih_sample, tmp_path, monkeypatch, capsys):
    paths = list(load_records(nih_sample).table["path"])
    cache = ImageCache(299, root=tmp_path / "cache")
    start = time.perf_counter()
    assert cache.warm(paths, progress=False) == []
    first = time.perf_counter() - start

    decoded = []
    monkeypatch.setattr(decoder_module, "load_image", lambda *a, **k: decoded.append(a) or 1 / 0)
    start = time.perf_counter()
    assert ImageCache(299, root=tmp_path / "cache").warm(paths, progress=False) == []
    second = time.perf_counter() - start
    assert decoded == []
    with capsys.disabled():  # reported, not asserted: timings are not tests
        print(
            f"\n[cache] 780 NIH images at 299 px: first pass {first:.2f} s, second {second:.2f} s"
        )


@pytest.mark.parametrize("views", [["PA"], ["AP"]])
def test_view_filter_on_the_sample_splits_cleanly(nih_sample, views):
    records = load_records(nih_sample, DataConfig(views=views))
    split = patient_split(records)
    assert split.notna().all()
