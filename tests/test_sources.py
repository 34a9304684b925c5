"""Every data source becomes the same records table; excluded rows are counted by reason."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import yaml

from cardiomegaly import (
    RECORD_COLUMNS,
    ConfigError,
    DataConfig,
    DataError,
    Records,
    SplitConfig,
    detect_format,
    load_records,
    patient_split,
)
from cardiomegaly.data.split import patient_folds
from makers import write_chexpert, write_jpeg, write_mimic, write_nih

NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly", "1", "PA"),
    ("00000001_001.png", "Cardiomegaly|Effusion", "1", "AP"),
    ("00000002_000.png", "No Finding", "2", "PA"),
    ("00000003_000.png", "Effusion", "3", "PA"),
    ("00000004_000.png", "Atelectasis|No Finding", "4", "AP"),
    ("00000005_000.png", "No Finding", "5", "AP"),
]


def test_nih_labels_boxes_and_png_found_as_jpg(tmp_path):
    root = write_nih(tmp_path / "nih", NIH_ROWS, boxes={"00000001_000.png": (10, 20, 30, 40)})
    records = load_records(root)
    t = records.table
    assert records.format == "nih"
    assert list(t.columns[: len(RECORD_COLUMNS)]) == RECORD_COLUMNS
    assert (records.positives, records.negatives) == (2, 2)
    assert records.excluded == {"other findings without Cardiomegaly (not No Finding)": 2}
    assert all(p.endswith(".jpg") for p in t["path"])
    first = t[t["image_id"] == "00000001_000.png"].iloc[0]
    assert (first.box_x, first.box_y, first.box_w, first.box_h) == (10, 20, 30, 40)
    assert records.boxes == 1
    assert set(t["view"]) == {"PA", "AP"} and set(t["sex"]) <= {"M", "F"}
    assert t["source_row"].iloc[0] == "Data_Entry_2017_v2020.csv:2"


def test_nih_images_in_the_official_nested_folders_are_found(tmp_path):
    root = write_nih(tmp_path / "nih", NIH_ROWS, stored_as=".png", nested=True)
    assert len(load_records(root)) == 4 and not load_records(root).missing


def test_nih_all_others_as_negatives(tmp_path):
    root = write_nih(tmp_path / "nih", NIH_ROWS)
    records = load_records(root, DataConfig(negatives="all-others"))
    assert (records.positives, records.negatives) == (2, 4)


def test_view_filter_counts_what_it_leaves_out(tmp_path):
    root = write_nih(tmp_path / "nih", NIH_ROWS)
    records = load_records(root, DataConfig(views=["PA"]))
    assert set(records.table["view"]) == {"PA"}
    assert records.excluded["view AP (not in PA)"] == 2


def test_missing_image_files_are_reported_and_left_out(tmp_path):
    root = write_nih(tmp_path / "nih", NIH_ROWS)
    (root / "images" / "00000002_000.jpg").unlink()
    records = load_records(root)
    assert len(records) == 3
    assert records.missing == [str(root / "images" / "00000002_000.png")]
    assert records.excluded["image file missing"] == 1


# ---------------------------------------------------------------------------------- CheXpert

CHEXPERT_ROWS = [
    {"patient": "patient00001", "cardio": "1.0", "view": "PA"},
    {"patient": "patient00001", "study": 2, "cardio": "-1.0", "view": "AP"},
    {"patient": "patient00002", "cardio": "", "nf": "1.0", "view": "AP"},
    {"patient": "patient00003", "cardio": "0.0", "nf": "", "view": "PA"},
    {"patient": "patient00004", "cardio": "", "nf": "", "view": "PA"},
    {"patient": "patient00005", "cardio": "1.0", "fl": "Lateral", "view": ""},
]


@pytest.mark.parametrize(
    ("policy", "positives", "negatives", "uncertain_excluded"),
    [("ignore", 1, 1, 1), ("ones", 2, 1, 0), ("zeros", 1, 2, 0)],
)
def test_chexpert_uncertain_policies(tmp_path, policy, positives, negatives, uncertain_excluded):
    root = write_chexpert(tmp_path / "CheXpert-v1.0-small", CHEXPERT_ROWS)
    records = load_records(root, DataConfig(uncertain=policy))
    assert records.format == "chexpert"
    assert (records.positives, records.negatives) == (positives, negatives)
    assert records.excluded.get("Cardiomegaly uncertain (-1; policy 'ignore')", 0) == (
        uncertain_excluded
    )
    assert records.excluded["lateral view (frontal only)"] == 1
    assert records.excluded["neither Cardiomegaly nor No Finding"] == 2  # 0.0 and blank, no NF
    folder = records.table["path"].str.extract(r"(patient\d+)", expand=False)  # CheXpert's ids
    assert (folder.groupby(records.table["patient"]).nunique() == 1).all()
    assert records.patients == folder.nunique()
    assert not records.missing  # 'CheXpert-v1.0-small/...' paths resolve from the parent


def test_chexpert_all_others_counts_blank_and_zero_as_negative(tmp_path):
    root = write_chexpert(tmp_path / "CheXpert-v1.0-small", CHEXPERT_ROWS)
    records = load_records(root, DataConfig(negatives="all-others"))
    assert (records.positives, records.negatives) == (1, 3)
    assert set(records.table["sex"]) == {"F"}


# ------------------------------------------------------------------------------------- MIMIC


def test_mimic_joins_study_labels_to_images_and_filters_views(tmp_path):
    images = [
        {"dicom": "d1", "subject": "10000032", "study": "50000001", "view": "PA"},
        {"dicom": "d2", "subject": "10000032", "study": "50000001", "view": "LATERAL"},
        {"dicom": "d3", "subject": "10000033", "study": "50000002", "view": "AP"},
        {"dicom": "d4", "subject": "11000034", "study": "50000003", "view": "AP"},
        {"dicom": "d5", "subject": "11000035", "study": "50000009", "view": "PA"},
    ]
    studies = [
        {"subject": "10000032", "study": "50000001", "cardio": "1.0"},
        {"subject": "10000033", "study": "50000002", "cardio": "", "nf": "1.0"},
        {"subject": "11000034", "study": "50000003", "cardio": "-1.0"},
    ]
    root = write_mimic(tmp_path / "mimic", images, studies)
    records = load_records(root)
    t = records.table
    assert records.format == "mimic"
    assert (records.positives, records.negatives) == (1, 1)
    assert t.loc[t["label"] == 1, "path"].iloc[0] == str(
        root / "files" / "p10" / "p10000032" / "s50000001" / "d1.jpg"
    )
    assert records.excluded == {
        "view LATERAL (frontal only)": 1,
        "study has no row in the chexpert CSV": 1,
        "Cardiomegaly uncertain (-1; policy 'ignore')": 1,
    }
    assert set(t["source_split"]) == {"train"} and not records.missing

    for name in ("chexpert", "metadata"):  # PhysioNet ships the tables gzipped
        plain = root / f"mimic-cxr-2.0.0-{name}.csv"
        with gzip.open(f"{plain}.gz", "wb") as f:
            f.write(plain.read_bytes())
        plain.unlink()
    assert load_records(root).table.drop(columns="source_row").equals(t.drop(columns="source_row"))


# -------------------------------------------------------------------------------- generic CSV


def test_patient_ids_become_pseudonyms_that_split_as_the_ids_do(tmp_path):
    """The records table holds p01, p02, ... numbered in the order of the ids, never an id, and
    the splits and folds drawn from it are the ones the ids would give."""
    rng = np.random.default_rng(0)
    ids = [f"MRN-{n}" for n in rng.choice(10**6, size=24, replace=False) for _ in range(2)]
    for i in range(len(ids)):
        write_jpeg(tmp_path / f"film{i}.jpg")
    labels = [int(k % 3 == 0) for k in range(len(ids) // 2) for _ in range(2)]
    pd.DataFrame({"path": [f"film{i}.jpg" for i in range(len(ids))], "label": labels,
                  "patient": ids}).to_csv(tmp_path / "labels.csv", index=False)  # fmt: skip
    columns = {"path": "path", "label": "label", "patient": "patient"}
    records = load_records(_yaml(tmp_path, format="csv", csv="labels.csv", columns=columns))
    assert "MRN" not in records.table.to_csv()
    assert sorted(set(records.table["patient"])) == [f"p{k:02d}" for k in range(1, 25)]
    order = np.argsort(ids, kind="stable")
    assert sorted(records.table["patient"]) == list(records.table["patient"].iloc[order])
    with_ids = Records(records.table.assign(patient=ids), records.format, records.root)
    for seed in (0, 1):
        assert patient_split(records, SplitConfig(seed=seed)).equals(
            patient_split(with_ids, SplitConfig(seed=seed)))  # fmt: skip
        assert patient_folds(records, 4, seed).equals(patient_folds(with_ids, 4, seed))


def test_a_csv_with_a_patient_column_needs_no_data_yaml_to_group_a_patients_films(tmp_path):
    for i in range(4):
        write_jpeg(tmp_path / f"f{i}.jpg")
    table = {"path": [f"f{i}.jpg" for i in range(4)], "label": [1, 1, 0, 0],
             "patient": ["A", "A", "B", "B"]}  # fmt: skip
    pd.DataFrame(table).to_csv(tmp_path / "labels.csv", index=False)
    records = load_records(tmp_path / "labels.csv")
    assert list(records.table["patient"]) == ["p1", "p1", "p2", "p2"] and not records.notes
    # A patient column wins over a patient_regex (README: the regex is for tables without one),
    # and the note says the regex was not used.
    records = load_records(_yaml(tmp_path, format="csv", csv="labels.csv",
                                 patient_regex=r"^(f\d)"))  # fmt: skip
    assert list(records.table["patient"]) == ["p1", "p1", "p2", "p2"]
    assert records.notes == ["patient_regex not used: the patients are in column 'patient'"]


def _csv_dataset(tmp_path, labels=("Cardiomegaly", "No Finding", "No Finding", "Cardiomegaly")):
    for i in range(len(labels)):
        write_jpeg(tmp_path / "images" / f"{i // 2:08d}_{i:03d}.jpg")
    pd.DataFrame(
        {
            "filename": [f"{i // 2:08d}_{i:03d}.jpg" for i in range(len(labels))],
            "label": list(labels),
            "xmin": [10, "", "", 12],
            "ymin": [20, "", "", 22],
            "xmax": [30, "", "", 40],
            "ymax": [60, "", "", 50],
            "view": ["PA", "AP", "PA", "PA"][: len(labels)],
        }
    ).to_csv(tmp_path / "labels.csv", index=False)


def _yaml(tmp_path, **data):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


CSV_YAML = {
    "format": "csv",
    "csv": "labels.csv",
    "image_root": "images",
    "columns": {"path": "filename", "label": "label", "view": "view",
                "box": ["xmin", "ymin", "xmax", "ymax"]},
    "patient_regex": r"^(\d+)_",
}  # fmt: skip


def test_csv_with_yaml_columns_regex_patients_and_boxes(tmp_path):
    _csv_dataset(tmp_path)
    records = load_records(_yaml(tmp_path, **CSV_YAML))
    t = records.table
    assert records.format == "csv"
    assert (records.positives, records.negatives, records.patients) == (2, 2, 2)
    assert list(t["patient"]) == ["p1", "p1", "p2", "p2"]  # pseudonyms of 00000000, 00000001
    assert (t.box_x[0], t.box_y[0], t.box_w[0], t.box_h[0]) == (10, 20, 20, 40)
    assert np.isnan(t.box_w[1])


def test_csv_without_patients_counts_each_file_as_a_patient_and_says_so(tmp_path):
    _csv_dataset(tmp_path)
    data = {k: v for k, v in CSV_YAML.items() if k != "patient_regex"}
    records = load_records(_yaml(tmp_path, **data))
    assert records.patients == 4
    assert any("each image counts as its own patient" in n for n in records.notes)


def test_csv_without_the_label_column_names_the_file_and_column(tmp_path):
    _csv_dataset(tmp_path)
    data = dict(CSV_YAML, columns={"path": "filename", "label": "diagnosis"})
    with pytest.raises(DataError, match=r"labels.csv: no column 'diagnosis'"):
        load_records(_yaml(tmp_path, **data))


def test_csv_with_unknown_label_values(tmp_path):
    _csv_dataset(tmp_path, labels=("Cardiomegaly", "No Finding", "maybe", "Cardiomegaly"))
    records = load_records(_yaml(tmp_path, **CSV_YAML))
    assert records.excluded == {"label 'maybe' is neither positive nor negative": 1}
    _csv_dataset(tmp_path, labels=("yes", "no", "no", "yes"))
    with pytest.raises(DataError, match=r"column 'label' has no positive .* found: no, yes"):
        load_records(_yaml(tmp_path, **CSV_YAML))


def test_csv_path_escaping_the_data_root_is_left_out(tmp_path):
    _csv_dataset(tmp_path)
    df = pd.read_csv(tmp_path / "labels.csv")
    df.loc[0, "filename"] = "../../etc/passwd"
    df.to_csv(tmp_path / "labels.csv", index=False)
    records = load_records(_yaml(tmp_path, **CSV_YAML))
    assert records.excluded["path outside the data root ('..')"] == 1
    assert len(records) == 3


def test_plain_csv_with_path_and_label_columns_needs_no_yaml(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    write_jpeg(tmp_path / "b.jpg")
    pd.DataFrame({"path": ["a.jpg", "b.jpg"], "label": [1, 0], "patient": ["p1", "p2"]}).to_csv(
        tmp_path / "list.csv", index=False
    )
    records = load_records(tmp_path / "list.csv")
    assert records.format == "csv" and (records.positives, records.negatives) == (1, 1)


# ----------------------------------------------------------------------------------- folders


def test_class_folders_case_insensitive_with_patient_regex(tmp_path):
    for name in (
        "Cardiomegaly/p1_a.jpg",
        "cardiomegaly/deeper/p2_a.jpg",
        "NORMAL/p1_b.jpg",
        "no-finding/p3_a.jpg",
        "other/p4_a.jpg",
    ):
        write_jpeg(tmp_path / name)
    assert detect_format(tmp_path) == "folder"
    records = load_records(tmp_path, DataConfig(patient_regex=r"^(p\d+)_"))
    assert (records.positives, records.negatives) == (2, 2)
    assert records.patients == 3
    assert any("'other' is not a class folder" in n for n in records.notes)


# --------------------------------------------------------------------------------- detection


def test_unknown_folder_and_missing_folder_fail_with_what_to_do(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="cannot tell the data format.*data YAML"):
        load_records(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_records(tmp_path / "absent")


def test_yaml_unknown_key_fails_with_a_suggestion(tmp_path):
    with pytest.raises(
        ConfigError, match="patient_regexp: unknown key; did you mean 'patient_regex'"
    ):
        load_records(_yaml(tmp_path, format="csv", csv="x.csv", patient_regexp="x"))


def test_synthetic_source_is_generated_once_and_reused(tmp_path):
    config = DataConfig(n=6, size=96, seed=3)
    first = load_records("synthetic", config)
    second = load_records("synthetic", config)
    assert len(first) == 6 and first.format == "synthetic"
    assert first.table.equals(second.table)
    assert (first.table["label"] == (first.table["ctr"] > 0.5)).all()


def test_paths_are_absolute_and_keep_the_folder_the_user_named(tmp_path, monkeypatch):
    write_nih(tmp_path / "real", NIH_ROWS)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    pd.DataFrame({"path": ["images/00000001_000.jpg"], "label": [1], "patient": ["1"]}).to_csv(
        tmp_path / "real" / "list.csv", index=False
    )
    monkeypatch.chdir(tmp_path)
    nih = load_records("link")
    listed = load_records("link/list.csv")
    assert nih.root == tmp_path / "link"
    assert all(p.startswith(str(tmp_path / "link") + "/") for p in nih.table["path"])
    assert listed.table["path"][0] in set(nih.table["path"])
