"""``train --folds K``: every patient in exactly one fold, every film scored exactly once by a
model that never saw its patient, one pooled evaluation, and an ensemble model file that every
consumer takes like any other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fastapi.testclient as fastapi_testclient
import numpy as np
import pandas as pd
import pytest

from cardiomegaly import Classifier, UserError, load_records, train
from cardiomegaly.cli import main
from cardiomegaly.config import SplitConfig
from cardiomegaly.data.split import fold_split, patient_folds
from cardiomegaly.export import export
from cardiomegaly.model import Ensemble, load_model, read_metadata
from cardiomegaly.serve import create_app
from makers import copy_run_to_resume, one_line_error, write_png, write_two_nih


@pytest.mark.parametrize("k", [2, 5])
def test_every_patient_is_in_exactly_one_fold_and_folds_take_every_source(tmp_path, k):
    records = load_records(list(write_two_nih(tmp_path, patients=30)))
    folds = patient_folds(records, k, seed=1)
    assert set(folds) == set(range(k))
    assert (folds.groupby(records.table["patient"]).nunique() == 1).all()  # shared ones too
    table = records.table.assign(fold=folds)
    for (source, label), group in table.groupby(["source", "label"]):
        counts = group["fold"].value_counts()
        assert counts.max() - counts.min() <= max(2, len(group) // k // 2), (source, label)


def test_a_fold_is_the_test_split_of_its_run_and_the_rest_train_and_validate(tmp_path):
    records = load_records(list(write_two_nih(tmp_path, patients=30)))
    folds = patient_folds(records, 3, seed=0)
    for k in range(3):
        split = fold_split(records, folds, k, SplitConfig())
        assert ((split == "test") == (folds == k)).all()
        assert set(split[folds != k]) == {"train", "val"}
        assert (split.groupby(records.table["patient"]).nunique() == 1).all()


def test_more_folds_than_patients_is_refused(tiny_phantoms):
    records = load_records(tiny_phantoms)
    with pytest.raises(UserError, match=f"only {records.patients} patients"):
        patient_folds(records, 50)


def test_every_film_is_scored_once_by_the_fold_that_never_saw_its_patient(cv_run, tiny_phantoms):
    records = load_records(tiny_phantoms)
    oof = pd.read_csv(cv_run / "oof" / "predictions.csv", dtype={"patient": str})
    assert sorted(oof["path"]) == sorted(records.table["path"])  # all, each once
    folds = pd.read_csv(cv_run / "folds.csv")  # one row per film, its path as splits.csv has it
    assert list(folds.columns) == ["fold", "patient", "label", "path"]
    fold_of = folds.set_index(folds["path"].map(lambda p: str(records.root / p)))["fold"]
    assert (oof["fold"].to_numpy() == fold_of.loc[oof["path"]].to_numpy()).all()
    for k in range(3):
        splits = pd.read_csv(cv_run / f"fold{k}" / "splits.csv", dtype={"patient": str})
        seen = set(splits.loc[splits["split"] != "test", "patient"])
        assert not seen & set(oof.loc[oof["fold"] == k, "patient"].astype(str))
        # The pooled probability is the fold model's own test prediction of that film.
        own = pd.read_csv(cv_run / f"fold{k}" / "test" / "predictions.csv")
        mine = oof[oof["fold"] == k].set_index("path").loc[own["path"], "probability"]
        assert np.allclose(mine.to_numpy(), own["probability"].to_numpy(), atol=1e-6)


def test_the_pooled_evaluation_has_an_interval_and_the_honest_operating_point(cv_run):
    import json

    metrics = json.loads((cv_run / "oof" / "metrics.json").read_text())
    assert metrics["split"] == "out-of-fold" and metrics["images"] == 30
    assert metrics["auroc"]["ci95"] is not None
    assert "fold" in metrics["operating_point_at_fold_thresholds"]["note"]
    assert "out-of-fold" in metrics["threshold_chosen_on"]
    assert (cv_run / "oof" / "report.html").is_file()


def test_the_ensemble_is_the_mean_of_its_members(cv_run, tiny_phantoms):
    model, meta = load_model(cv_run / "model.safetensors")
    assert isinstance(model, Ensemble) and meta["architecture"]["members"] == 3
    assert "out-of-fold" in meta["threshold"]["chosen_on"]
    films = sorted((tiny_phantoms / "images").glob("*.png"))[:4]
    ensemble = Classifier.load(cv_run / "model.safetensors", backend="torch")
    members = [Classifier.load(cv_run / f"fold{k}" / "model.safetensors", backend="torch")
               for k in range(3)]  # fmt: skip
    for film in films:
        expected = np.mean([m.predict(film).probability for m in members])
        assert ensemble.predict(film).probability == pytest.approx(expected, abs=1e-5)
    # ONNX (training exported it, parity checked) gives the same answer.
    onnx = Classifier.load(cv_run / "model.safetensors")
    assert onnx.backend == "onnx"
    assert onnx.predict(films[0]).probability == pytest.approx(
        ensemble.predict(films[0]).probability, abs=1e-4
    )


def test_the_ensemble_goes_through_predict_export_explain_and_serve(cv_run, tmp_path, capsys):
    film = write_png(tmp_path / "film.png", h=80, w=80)
    assert main(["predict", str(cv_run / "model.safetensors"), str(film), "--out",
                 str(tmp_path / "p.csv"), "--cam", str(tmp_path / "cam")]) == 0  # fmt: skip
    assert "chosen on pooled out-of-fold predictions of 3 folds" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "p.csv")["error"].isna().all()
    assert (tmp_path / "cam" / "film.png").is_file()
    scripted = export(cv_run / "model.safetensors", "torchscript", tmp_path / "m.pt")
    assert scripted.max_probability_difference < 1e-4
    with fastapi_testclient.TestClient(create_app(cv_run / "model.safetensors")) as client:
        response = client.post("/v1/predict", files={"file": ("f.png", film.read_bytes())})
        assert response.status_code == 200
        assert "out-of-fold" in response.json()["model"]["threshold_chosen_on"]


def test_an_ensemble_has_no_test_split_of_its_own_data(cv_run, tiny_phantoms, capsys):
    code = main(["evaluate", str(cv_run / "model.safetensors"), "--data", str(tiny_phantoms)])
    assert code == 2
    one_line_error(capsys.readouterr().err, "cross-validation folds", "oof", "--split all")


def test_an_ensembles_report_says_how_its_members_were_chosen(cv_run, tiny_phantoms, tmp_path):
    members = [read_metadata(cv_run / f"fold{k}" / "model.safetensors")["training"]["val_auroc"]
               for k in range(3)]  # fmt: skip
    between = f"their validation AUROC {min(members):.3f} to {max(members):.3f}"
    pooled = (cv_run / "oof" / "report.html").read_text()
    assert "ensemble of 3 fold models" in pooled and between in pooled
    assert "n/a" not in pooled.split("model selection")[1].split("</tr>")[0]
    out = tmp_path / "eval"
    assert main(["evaluate", str(cv_run / "model.safetensors"), "--data", str(tiny_phantoms),
                 "--split", "all", "--out", str(out)]) == 0  # fmt: skip
    oof = read_metadata(cv_run / "model.safetensors")["evaluation"]
    page = (out / "report.html").read_text()
    assert f"pooled out-of-fold AUROC {oof['auroc']:.3f}" in page


def test_a_resumed_cross_validation_skips_finished_folds(cv_run, tmp_path):
    import shutil

    run = copy_run_to_resume(cv_run, tmp_path / "run")
    assert not list(run.glob("fold*/last.pt"))  # finished folds keep no resume state
    before = {k: (run / f"fold{k}" / "model.safetensors").stat().st_mtime_ns for k in range(3)}
    shutil.rmtree(run / "fold2")  # killed during the last fold
    (run / "model.safetensors").unlink()
    result = train(resume=run)
    assert len(result.folds) == 3 and result.folds[0] is None and result.folds[1] is None
    for k in range(2):
        assert (run / f"fold{k}" / "model.safetensors").stat().st_mtime_ns == before[k]
    assert read_metadata(run / "fold2" / "model.safetensors")["evaluation"]["split"] == "test"
    assert read_metadata(run / "model.safetensors")["architecture"]["members"] == 3


def test_a_resume_on_changed_films_or_patients_is_refused(cv_run, tiny_phantoms, tmp_path):
    import shutil

    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_phantoms, data)
    shutil.copytree(cv_run, run, ignore=shutil.ignore_patterns("*.onnx"))
    shutil.rmtree(run / "fold2")  # killed during the last fold
    config = (run / "config.yaml").read_text().replace(str(tiny_phantoms), str(data))
    (run / "config.yaml").write_text(config)
    table = pd.read_csv(data / "phantoms.csv", dtype={"patient": str})
    gone = table["patient"] == table["patient"].iloc[0]
    table[~gone].to_csv(data / "phantoms.csv", index=False)
    folds = (run / "folds.csv").read_bytes()
    with pytest.raises(UserError, match=rf"data changed since this run began \(0 images added, "
                       rf"{gone.sum()} gone\).*start a new run"):  # fmt: skip
        train(resume=run)
    # The same films, one of them now another patient's, of another fold.
    saved = pd.read_csv(run / "folds.csv")
    film = saved.loc[saved["fold"] == 0, "path"].iloc[0]
    other = saved.loc[saved["fold"] == 1, "path"].iloc[0]
    moved = table["image"] == film
    table.loc[moved, "patient"] = table.loc[table["image"] == other, "patient"].iloc[0]
    table.to_csv(data / "phantoms.csv", index=False)  # every film again
    with pytest.raises(UserError, match=r"patients changed since this run began \(a patient's "
                       r"images are now in two folds\)"):  # fmt: skip
        train(resume=run)
    assert (run / "folds.csv").read_bytes() == folds and not (run / "fold2").exists()
    # A folds.csv of an earlier version: one row per patient id, no paths.
    earlier = b"patient,fold,images,positives\n00001,0,2,1\n"
    (run / "folds.csv").write_bytes(earlier)
    with pytest.raises(UserError, match="not a folds.csv of this version"):
        train(resume=run)
    assert (run / "folds.csv").read_bytes() == earlier


def _write_oof(run, patients, labels, scores, kinds):
    (run / "oof").mkdir(parents=True)
    pd.DataFrame(
        {
            "path": [f"film{i}.png" for i in range(len(labels))],
            "patient": patients,
            "view": ["PA", "AP"] * (len(labels) // 2),
            "negative_kind": kinds,
            "label": labels,
            "probability": scores,
        }
    ).to_csv(run / "oof" / "predictions.csv", index=False)


def test_compare_oof_pairs_two_runs_on_the_same_films(tmp_path):
    """benchmarks/compare_oof.py: the paired intervals of docs/experiments.md."""
    script = Path(__file__).parents[1] / "benchmarks" / "compare_oof.py"
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(40, int), np.zeros(120, int)]
    patients = [f"p{i // 2}" for i in range(160)]
    kinds = [""] * 40 + ["no finding"] * 60 + ["other findings"] * 60
    _write_oof(tmp_path / "a", patients, labels, rng.random(160), kinds)  # chance
    _write_oof(tmp_path / "b", patients, labels, labels + rng.random(160) * 0.5, kinds)  # perfect
    _write_oof(tmp_path / "c", patients[:-2], labels[:-2], rng.random(158), kinds[:-2])

    def run(*runs):
        out = tmp_path / "table.csv"
        done = subprocess.run(
            [sys.executable, str(script), *map(str, runs), "--out", str(out)],
            capture_output=True,
            text=True,
        )
        return done, (pd.read_csv(out).set_index("films") if done.returncode == 0 else None)

    done, table = run(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    assert {"all films", "against no finding", "against other findings, AP"} <= set(table.index)
    better = table.loc["all films"]
    assert better["auroc_b"] == 1.0 and better["low"] > 0
    assert better["low"] <= better["difference"] <= better["high"]
    same = run(tmp_path / "a", tmp_path / "a")[1]
    assert (same["difference"] == 0).all() and (same["low"] == 0).all()
    done, _ = run(tmp_path / "a", tmp_path / "c")
    assert done.returncode != 0 and "different films" in done.stderr
