"""Several data sources are one dataset: rows keep their source, a patient of one dataset in two
folders is one patient in one split, patients of different datasets never merge, splits take
their share of every source, and evaluation shows AUROC by source and by kind of negative."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardiomegaly import TrainConfig, load_records
from cardiomegaly.cli import main
from cardiomegaly.config import SplitConfig, from_dict
from cardiomegaly.data.split import patient_split, save_splits, select_records
from cardiomegaly.evaluate.report import assess
from makers import films_by_patient, scored_table, write_jpeg, write_nih, write_two_nih


def test_a_folder_with_a_data_yaml_is_read_by_it(tmp_path):
    _, others = write_two_nih(tmp_path)
    records = load_records(others)
    assert records.negatives > 0  # negatives: all-others, from the folder's data.yaml
    assert set(records.table["negative_kind"][records.table["label"] == 0]) == {"other findings"}
    assert set(records.table["negative_kind"][records.table["label"] == 1]) == {""}


def test_two_folders_of_one_dataset_share_patients_and_keep_their_source(tmp_path):
    cardio, others = write_two_nih(tmp_path)
    alone = load_records(cardio), load_records(others)
    both = load_records([cardio, others])
    t = both.table
    assert len(both) == len(alone[0]) + len(alone[1])
    assert both.sources == ["cardio", "others"]
    assert t.groupby("source").size().to_dict() == {
        "cardio": len(alone[0]),
        "others": len(alone[1]),
    }
    # NIH patient ids are the dataset's: patient 1 of both folders is one patient.
    assert both.patients == alone[0].patients + alone[1].patients - 2
    assert list(both.overlap().values()) == [["cardio", "others"]] * 2
    shared = t.loc[t["patient"].isin(both.overlap()), "path"]
    assert set(shared.map(lambda p: Path(p).name[:8])) == {"00000001", "00000002"}
    assert set(t["negative_kind"][t["label"] == 0]) == {"no finding", "other findings"}


def test_patients_of_different_datasets_never_merge(tmp_path):
    for name in ("hospital_a", "hospital_b"):
        folder = tmp_path / name
        paths = [write_jpeg(folder / f"{k}.jpg").name for k in range(4)]
        table = {"path": paths, "label": [1, 0, 1, 0], "patient": ["7", "7", "8", "8"]}
        pd.DataFrame(table).to_csv(folder / "labels.csv", index=False)
        (folder / "data.yaml").write_text(
            "format: csv\ncsv: labels.csv\ncolumns: {path: path, label: label, patient: patient}\n"
        )
    both = load_records([tmp_path / "hospital_a", tmp_path / "hospital_b"])
    assert both.patients == 4 and both.overlap() == {}
    assert films_by_patient(both) == [
        ["hospital_a/0.jpg", "hospital_a/1.jpg"], ["hospital_a/2.jpg", "hospital_a/3.jpg"],
        ["hospital_b/0.jpg", "hospital_b/1.jpg"], ["hospital_b/2.jpg", "hospital_b/3.jpg"],
    ]  # fmt: skip


def test_the_same_folder_twice_is_not_two_copies_of_its_films(tmp_path):
    cardio, _ = write_two_nih(tmp_path)
    twice = load_records([cardio, cardio])
    assert len(twice) == len(load_records(cardio))
    assert twice.sources == ["cardio", "cardio#2"]
    assert sum(twice.excluded.values()) == len(twice)


def test_one_film_in_two_folders_of_its_dataset_is_one_film(tmp_path):
    both_have = ("00000001_000.png", "Cardiomegaly|Effusion", "1", "PA")  # one Image Index
    write_nih(tmp_path / "a", [both_have, ("00000002_000.png", "No Finding", "2", "PA")])
    write_nih(tmp_path / "b", [both_have, ("00000003_000.png", "Effusion", "3", "AP")],
              stored_as=".png")  # fmt: skip
    (tmp_path / "b" / "data.yaml").write_text("format: nih\nnegatives: all-others\n")
    records = load_records([tmp_path / "a", tmp_path / "b"])
    assert len(records) == 3 and records.positives == 1
    assert records.excluded == {
        "the same film (its image id) in two sources (kept in the first)": 1
    }
    kept = records.table[records.table["path"].str.contains("00000001_000")]
    assert kept["source"].tolist() == ["a"]
    # another dataset's file names are no ids: two hospitals' 1.jpg are two films
    for name in ("hospital_a", "hospital_b"):
        write_jpeg(tmp_path / name / "1.jpg")
        pd.DataFrame({"path": ["1.jpg"], "label": [1], "patient": ["7"]}).to_csv(
            tmp_path / name / "labels.csv", index=False
        )
    assert len(load_records([tmp_path / "hospital_a" / "labels.csv",
                             tmp_path / "hospital_b" / "labels.csv"])) == 2  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_keep_shared_patients_together_and_take_every_source(tmp_path, seed):
    both = load_records(list(write_two_nih(tmp_path, patients=30)))
    split = patient_split(both, SplitConfig(seed=seed))
    per_patient = split.groupby(both.table["patient"]).nunique()
    assert (per_patient == 1).all()  # shared patients included
    t = both.table.assign(split=split)
    for (source, label), group in t.groupby(["source", "label"]):
        share = group["split"].value_counts(normalize=True)
        assert set(share.index) == {"train", "val", "test"}, (source, label)
        assert share["train"] == pytest.approx(0.7, abs=0.15), (source, label)


def test_one_source_splits_as_before(tmp_path):
    cardio, _ = write_two_nih(tmp_path, patients=30)
    records = load_records(cardio)
    split = patient_split(records, SplitConfig(seed=0))
    # The same patients the same way when the table has no source column (the old records).
    legacy = records.subset(np.ones(len(records), bool))
    legacy.table = legacy.table.drop(columns="source")
    assert split.equals(patient_split(legacy, SplitConfig(seed=0)))


def test_several_sources_in_yaml_python_and_cli(tmp_path, monkeypatch):
    cardio, others = write_two_nih(tmp_path)
    assert from_dict(TrainConfig, {"data": [str(cardio), str(others)]}).data == [
        str(cardio),
        str(others),
    ]
    assert from_dict(TrainConfig, {"data": str(cardio)}).data == str(cardio)
    seen = {}

    def fake_train(cfg, out=None):
        seen["cfg"] = cfg
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(importlib.import_module("cardiomegaly.train"), "train", fake_train)
    main(["train", "--data", str(cardio), "--data", str(others), "--weights", "none"])
    assert seen["cfg"].data == [str(cardio), str(others)]


def test_data_command_prints_each_source_and_the_overlap(tmp_path, capsys):
    cardio, others = write_two_nih(tmp_path)
    assert main(["data", str(cardio), str(others), "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "negatives   by kind: no finding 16, other findings 11" in out
    assert [line.split() for line in out.splitlines() if line.startswith("  cardio ")] == [
        ["cardio", "24", "12", "8", "16"]
    ]
    assert "overlap     2 patients have images in more than one source" in out
    assert "2  cardio + others" in out


def test_evaluation_of_a_model_on_some_of_its_sources_uses_its_split(tmp_path):
    cardio, others = write_two_nih(tmp_path, patients=30)
    both = load_records([cardio, others])
    split = patient_split(both, SplitConfig(seed=3))
    run = tmp_path / "run"
    run.mkdir()
    save_splits(both, split, run / "splits.csv")
    meta = {"training": {"data": [str(cardio), str(others)], "config": {"split": {"seed": 3}}}}
    _, test, description = select_records(run / "model.safetensors", meta, cardio, "test")
    expected = both.table[(split == "test") & (both.table["source"] == "cardio")]
    assert sorted(test["path"]) == sorted(expected["path"])
    assert "held out" in description and "afresh" not in description
    _, test_all, _ = select_records(run / "model.safetensors", meta, [others, cardio], "test")
    assert sorted(test_all["path"]) == sorted(both.table[split == "test"]["path"])


def test_the_report_names_each_source_it_was_trained_and_evaluated_on():
    html = importlib.import_module("cardiomegaly.evaluate.html")
    meta = {"training": {"data": ["nih/a", "nih/b"], "val_auroc": 0.9},
            "preprocessing": {"image_size": 75, "resize": "pad"},
            "architecture": {"name": "inception_v3"},
            "threshold": {"value": 0.5, "rule": "youden", "chosen_on": "validation"}}  # fmt: skip
    metrics = {"data": ["nih/a", "nih/b"], "format": "nih", "split": "test", "images": 4,
               "patients": 2, "positives": 2, "negatives": 2, "prevalence": 0.5}  # fmt: skip
    rows = html._what_was_evaluated(metrics, meta)
    assert "nih/a + nih/b (nih), split: test" in rows and "nih/a + nih/b " in rows
    assert "[" not in rows.split("trained on")[1].split("</tr>")[0]


def test_auroc_by_kind_of_negative_shows_the_shortcut():
    # The score knows the healthy films (all low), not the heart: against other-finding
    # negatives it is at chance.
    rng = np.random.default_rng(0)
    n = 60
    labels = np.r_[np.ones(n), np.zeros(n), np.zeros(n)].astype(int)
    kind = [""] * n + ["no finding"] * n + ["other findings"] * n
    probs = np.r_[rng.uniform(0.5, 1, n), rng.uniform(0, 0.4, n), rng.uniform(0.5, 1, n)]
    source = ["a"] * (2 * n) + ["b"] * n
    scored = scored_table(labels, probs, negative_kind=kind, source=source)
    groups = assess(scored, {"t": 0.5}, n_boot=200).metrics["subgroups"]
    by_kind = groups["positives vs"]
    assert by_kind["no finding negatives"]["auroc"] == 1.0
    assert by_kind["no finding negatives"]["images"] == 2 * n
    assert by_kind["other findings negatives"]["auroc"] == pytest.approx(0.5, abs=0.12)
    assert (
        by_kind["other findings negatives"]["ci95"][0]
        < 0.5
        < by_kind["other findings negatives"]["ci95"][1] + 0.1
    )
    assert set(groups["source"]) == {"a", "b"}


def test_no_kind_subgroup_when_the_source_cannot_say():
    scored = scored_table([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2], negative_kind=[""] * 4)
    assert "positives vs" not in assess(scored, {"t": 0.5}, n_boot=50).metrics["subgroups"]
