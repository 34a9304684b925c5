"""The combined score: the classifier's probability and the cardiothoracic ratio, each ranked
among the out-of-fold films of its view, averaged; calibrated by ``train --folds K --ctr-model``
and given by ``predict`` and ``serve`` only with the segment model it was calibrated with."""

from __future__ import annotations

import json
import shutil
import subprocess

import fastapi.testclient as fastapi_testclient
import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from cardiomegaly import Classifier, train
from cardiomegaly.artifacts import model_sha256
from cardiomegaly.cli import _print_combined, main
from cardiomegaly.combine import ALL_VIEWS, MIN_VIEW_FILMS, CombinedScore
from cardiomegaly.config import ConfigError
from cardiomegaly.evaluate.combined import assess_combined
from cardiomegaly.model import read_metadata
from cardiomegaly.pacs.results import COMBINED_CODE
from cardiomegaly.segment.measure import Measurer
from cardiomegaly.segment.model import load_segmenter, save_segmenter
from cardiomegaly.serve import create_app
from makers import (
    copy_run_to_resume,
    one_line_error,
    tiny_train_config,
    write_nih,
    write_study_film,
)


def _fit(probability, ctr, view, label, rule="youden") -> CombinedScore:
    return CombinedScore.fit(np.asarray(probability), np.asarray(ctr), np.asarray(view),
                             np.asarray(label), rule, "sha", "test data")  # fmt: skip


def _another_file_of(segment_model, folder):
    """The same weights saved again: another file, so another segment model to the score."""
    net, meta = load_segmenter(segment_model)
    other = folder / "other.safetensors"
    save_segmenter(other, net, {**meta, "created": "later"})
    return other


def test_the_score_is_the_mean_of_the_two_percentiles_within_the_view():
    rng = np.random.default_rng(0)
    n = MIN_VIEW_FILMS
    p, c = rng.random(2 * n), rng.random(2 * n)
    view = np.array(["PA"] * n + ["AP"] * n)
    combined = _fit(p, c, view, rng.integers(0, 2, 2 * n))
    pa_p, pa_c = np.sort(p[:n]), np.sort(c[:n])
    # a PA film above 15 of the 20 PA probabilities and 5 of the 20 PA ratios
    x_p, x_c = (pa_p[14] + pa_p[15]) / 2, (pa_c[4] + pa_c[5]) / 2
    assert combined.score(x_p, x_c, "PA") == pytest.approx((15 / 20 + 5 / 20) / 2, abs=1e-6)
    # the same numbers on an AP film are ranked among the AP films
    ap_p, ap_c = np.sort(p[n:]), np.sort(c[n:])
    expected_ap = (np.mean(ap_p < x_p) + np.mean(ap_c < x_c)) / 2
    assert combined.score(x_p, x_c, "AP") == pytest.approx(expected_ap, abs=1e-6)


def test_films_with_the_same_score_get_the_same_number_to_the_last_bit():
    # Two ways to the same score, 3/80: the probability at the lowest reference value and the
    # ratio just above it, or the probability below all and the ratio at the second value.
    # Averaged as floats the two differ in the last bit, and that difference broke ties: the
    # AUROC of the numbers differed from that of the same numbers written to six decimals.
    reference = np.round(np.linspace(0.1, 0.7, MIN_VIEW_FILMS), 6)
    combined = CombinedScore({ALL_VIEWS: (reference, reference)}, 0.5, "youden", "sha", "test")
    films = np.array([reference[0], 0.0]), np.array([0.125, reference[1]])
    for scores in (combined.scores(*films, [None, None]),
                   combined.scores_or_probability(*films, [None, None])):  # fmt: skip
        assert scores[0] == scores[1] == 3 / 80
    # a film without a ratio: its probability's percentile, exactly as a measured film's
    alone = combined.scores_or_probability(np.array([reference[2]]), np.array([np.nan]), [None])
    assert alone[0] == 5 / 40


def test_a_film_of_unknown_or_rare_view_is_ranked_among_all_films():
    n = MIN_VIEW_FILMS
    view = np.array(["PA"] * n + ["AP"] * (n - 1))
    p = np.linspace(0, 1, 2 * n - 1)
    combined = _fit(p, p, view, (p > 0.5).astype(int))
    assert set(combined.references) == {ALL_VIEWS, "PA"}  # too few AP films for their own
    for view_ in ("AP", "", None, "LATERAL"):
        assert combined.reference_view(view_) == ALL_VIEWS
        assert combined.score(0.5, 0.5, view_) == pytest.approx(0.5, abs=1e-6)


def test_a_film_without_a_ratio_has_no_score():
    combined = _fit([0.1, 0.9], [0.4, 0.6], ["", ""], [0, 1])
    assert combined.score(0.7, None, "PA") is None
    assert combined.answer(0.7, None, "PA")["label"] is None
    assert np.isnan(combined.scores(np.array([0.7]), np.array([np.nan]), [""])[0])


def test_a_film_without_a_ratio_is_ranked_by_its_probability_alone_on_all_films():
    n = MIN_VIEW_FILMS
    rng = np.random.default_rng(2)
    p, c, view = rng.random(2 * n), rng.random(2 * n), np.array(["PA", "AP"] * n)
    combined = _fit(p, c, view, rng.integers(0, 2, 2 * n))
    q, d = np.array([0.3, 0.3, 0.8]), np.array([0.5, np.nan, np.nan])
    views = np.array(["PA", "PA", "AP"])
    every = combined.scores_or_probability(q, d, views)
    assert every[0] == combined.scores(q, d, views)[0]  # measured: the combined score
    assert every[1] == pytest.approx(np.mean(p[view == "PA"] < 0.3), abs=1e-6)
    assert every[2] == pytest.approx(np.mean(p[view == "AP"] < 0.8), abs=1e-6)


def test_the_assessment_scores_all_films_beside_the_measured_ones(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 60
    label = np.arange(n) % 3 == 0
    frame = pd.DataFrame({
        "path": [f"f{i}.png" for i in range(n)], "patient": [f"p{i}" for i in range(n)],
        "label": label.astype(int), "view": ["PA", "AP"] * (n // 2),
        "probability": np.clip(0.3 * label + rng.random(n) * 0.7, 0, 1),
        "ctr": np.where(np.arange(n) % 5 == 0, np.nan, 0.45 + 0.1 * label + 0.05 * rng.random(n)),
        "ctr_quality": "",
    })  # fmt: skip
    measured = frame[frame["ctr"].notna()]
    combined = _fit(measured["probability"], measured["ctr"], measured["view"], measured["label"])
    metrics = assess_combined(frame, combined, "seg.safetensors", tmp_path, n_boot=50)
    assert metrics["images"] == len(measured) and metrics["not_measured"] == 12
    every = metrics["all_films"]
    assert every["images"] == n
    expected = combined.scores_or_probability(frame["probability"], frame["ctr"], frame["view"])
    assert every["auroc"]["value"] == pytest.approx(roc_auc_score(label, expected))
    assert every["auroc"]["value"] != metrics["auroc"]["value"]  # other films, another number
    table = pd.read_csv(tmp_path / "combined.csv")
    np.testing.assert_allclose(table["combined_or_probability"], expected, atol=1e-6)
    assert table.loc[table["ctr"].isna(), "combined"].isna().all()
    written = pd.read_csv(tmp_path / "combined.csv", dtype=str, keep_default_na=False)
    assert set(written.loc[table["ctr"].isna(), "prediction"]) == {""}  # no prediction unmeasured
    assert set(written.loc[table["ctr"].notna(), "prediction"]) == {"0", "1"}  # whole numbers
    _print_combined(metrics, tmp_path)
    assert "on all 60 films, the 12 not measured ranked by the probability alone" in (
        capsys.readouterr().out
    )


def test_the_threshold_is_chosen_by_the_rule_on_the_fitted_scores():
    # separable only when both numbers are used: one film is high on each alone
    p = np.array([0.1, 0.9, 0.2, 0.6, 0.7, 0.8])
    c = np.array([0.66, 0.40, 0.45, 0.62, 0.60, 0.55])
    y = np.array([0, 0, 0, 1, 1, 1])
    combined = _fit(p, c, [""] * 6, y)
    scores = combined.scores(p, c, [""] * 6)
    assert (scores[y == 1] >= combined.threshold).all()
    assert (scores[y == 0] < combined.threshold).all()


def test_the_table_holds_each_score_exactly_so_its_prediction_reads_off_it(tmp_path):
    # The threshold is one of the scores it was chosen on (here 7/12): rounded to six decimals
    # in the file, the films at the threshold would read as below it yet be predicted positive.
    p = np.array([0.1, 0.9, 0.2, 0.6, 0.7, 0.8])
    c = np.array([0.66, 0.40, 0.45, 0.62, 0.60, 0.55])
    y = np.array([0, 0, 0, 1, 1, 1])
    combined = _fit(p, c, [""] * 6, y)
    assert combined.threshold == 7 / 12
    frame = pd.DataFrame({"path": [f"f{i}.png" for i in range(6)], "patient": list("abcdef"),
                          "label": y, "view": "", "probability": p, "ctr": c,
                          "ctr_quality": ""})  # fmt: skip
    assess_combined(frame, combined, "seg.safetensors", tmp_path, n_boot=20)
    table = pd.read_csv(tmp_path / "combined.csv")
    assert (table["combined"] == combined.scores(p, c, [""] * 6)).all()
    assert (table["prediction"] == (table["combined"] >= combined.threshold)).all()
    assert table["prediction"].tolist() == [0, 0, 0, 1, 1, 1]


def test_the_metadata_round_trip_gives_the_same_scores():
    rng = np.random.default_rng(1)
    p, c = rng.random(50), rng.random(50)
    view = np.array(["PA", "AP"] * 25)
    combined = _fit(p, c, view, rng.integers(0, 2, 50))
    stored = json.loads(json.dumps({"combined": combined.to_metadata()}))  # as in a model file
    again = CombinedScore.from_metadata(stored)
    q, d = rng.random(10), rng.random(10)
    views = ["PA", "AP", ""] * 3 + ["PA"]
    assert np.array_equal(combined.scores(q, d, views), again.scores(q, d, views))
    assert again.threshold == combined.threshold and again.segment_model == "sha"
    assert CombinedScore.from_metadata({}) is None


def test_a_combined_score_needs_cross_validation(seg_phantoms, seg_run):
    with pytest.raises(ConfigError, match="--folds"):
        tiny_train_config(seg_phantoms, ctr_model=str(seg_run / "model.safetensors"))


def test_a_classifier_given_as_the_segment_model_fails_before_training(
    tiny_run, seg_phantoms, tmp_path, capsys
):
    code = main(["train", "--data", str(seg_phantoms), "--weights", "none", "--folds", "2",
                 "--ctr-model", str(tiny_run / "model.safetensors"),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    one_line_error(capsys.readouterr().err, "segment")
    assert not list((tmp_path / "run").glob("fold*"))  # nothing trained


@pytest.fixture(scope="module")
def combined_run(seg_phantoms, seg_run, tmp_path_factory):
    """A three-fold cross-validation of the segment phantoms (their ratios are measurable),
    combined with the phantoms' segment model."""
    run = tmp_path_factory.mktemp("combined-run") / "run"
    cache = tmp_path_factory.getbasetemp() / "cache"
    config = tiny_train_config(seg_phantoms, cache_dir=str(cache), epochs=1, folds=3,
                               arch="unet_encoder",
                               ctr_model=str(seg_run / "model.safetensors"))  # fmt: skip
    train(config, out=run)
    return run


def test_cross_validation_writes_the_combined_score_of_every_film(combined_run, seg_run):
    table = pd.read_csv(combined_run / "oof" / "combined.csv")
    oof = pd.read_csv(combined_run / "oof" / "predictions.csv")
    assert sorted(table["path"]) == sorted(oof["path"])  # every film, once
    measured = table[table["ctr"].notna()]
    assert len(measured) >= len(table) // 2
    assert measured["combined"].between(0, 1).all()
    assert table.loc[table["ctr"].isna(), "combined"].isna().all()
    meta = read_metadata(combined_run / "model.safetensors")
    assert meta["combined"]["segment_model_sha256"] == model_sha256(seg_run / "model.safetensors")
    combined = CombinedScore.from_metadata(meta)
    again = combined.scores(measured["probability"], measured["ctr"], measured["view"])
    np.testing.assert_allclose(again, measured["combined"], atol=2e-6)  # the file's reference
    assert (measured["prediction"] == (measured["combined"] >= combined.threshold)).all()
    metrics = json.loads((combined_run / "oof" / "metrics.json").read_text())["combined"]
    assert metrics["images"] == len(measured) and metrics["auroc"]["ci95"] is not None
    assert set(metrics["parts_on_the_same_films"]) == {"probability", "ratio"}
    every = metrics["all_films"]  # flagged films too, by the classifier alone
    assert every["images"] == len(table) and table["combined_or_probability"].notna().all()
    assert metrics["not_measured"] == table["ctr"].isna().sum()
    assert every["auroc"]["value"] == pytest.approx(
        roc_auc_score(table["label"], table["combined_or_probability"]), abs=1e-6
    )
    nested = metrics["operating_point_nested"]  # each fold decided without its own films
    assert sum(nested["confusion"].values()) == len(measured) and nested["threshold"] is None
    assert "Classifier and ratio combined" in (combined_run / "oof" / "report.html").read_text()


def test_predict_gives_the_combined_score_with_its_own_segment_model_only(
    combined_run, seg_run, seg_phantoms, tmp_path, capsys
):
    model, seg = combined_run / "model.safetensors", seg_run / "model.safetensors"
    films = sorted((seg_phantoms / "images").glob("*.png"))[:6]
    out = tmp_path / "p.csv"
    assert main(["predict", str(model), *map(str, films), "--ctr-model", str(seg),
                 "--out", str(out)]) == 0  # fmt: skip
    assert "combined    " in capsys.readouterr().out
    rows = pd.read_csv(out)
    combined = CombinedScore.from_metadata(read_metadata(model))
    clf, measurer = Classifier.load(model), Measurer.load(seg)  # what predict ran, in Python
    for film, row in zip(films, rows.itertuples(), strict=True):
        measured = measurer.measure(film)
        expected = combined.score(clf.predict(film).probability, measured.ctr, measured.view)
        if expected is None:
            assert pd.isna(row.combined) and pd.isna(row.combined_prediction)
            continue
        assert row.combined == pytest.approx(expected, abs=1e-6)
        assert row.combined_prediction == int(expected >= combined.threshold)
    assert rows["combined"].notna().any()
    other = _another_file_of(seg, tmp_path)
    out2 = tmp_path / "p2.csv"
    assert main(["predict", str(model), *map(str, films), "--ctr-model", str(other),
                 "--out", str(out2)]) == 0  # fmt: skip
    assert "calibrated with another segment model" in capsys.readouterr().out
    assert "combined" not in pd.read_csv(out2).columns
    assert main(["predict", str(model), str(films[0]), "--out", str(tmp_path / "p3.csv")]) == 0
    assert "give --ctr-model" in capsys.readouterr().out


def test_serve_answers_with_the_combined_score(combined_run, seg_run, seg_phantoms):
    film = sorted((seg_phantoms / "images").glob("*.png"))[0]
    app = create_app(combined_run / "model.safetensors", ctr_model=seg_run / "model.safetensors")
    with fastapi_testclient.TestClient(app) as client:
        body = client.post("/v1/predict", files={"file": ("f.png", film.read_bytes())}).json()
    combined = CombinedScore.from_metadata(read_metadata(combined_run / "model.safetensors"))
    measured = Measurer.load(seg_run / "model.safetensors").measure(film)
    assert measured.ctr is not None
    assert body["combined"]["threshold"] == pytest.approx(combined.threshold, abs=1e-6)
    expected = combined.score(body["probability"], measured.ctr, measured.view)
    assert body["combined"]["score"] == pytest.approx(expected, abs=1e-6)
    assert body["combined"]["label"] == int(expected >= combined.threshold)
    with fastapi_testclient.TestClient(app) as client:  # a PNG film told to be AP
        body = client.post("/v1/predict?view=AP", files={"file": ("f.png", film.read_bytes())})
    answer = body.json()["combined"]
    assert body.json()["ctr"]["view"] == "AP"
    assert answer["ranked_among"] == combined.reference_view("AP")
    assert answer["score"] == pytest.approx(
        combined.score(body.json()["probability"], measured.ctr, "AP"), abs=1e-6
    )


def test_a_finished_cross_validation_gains_the_score_without_training_again(
    cv_run, seg_run, tmp_path, capsys
):
    run = copy_run_to_resume(cv_run, tmp_path / "run")
    before = {k: (run / f"fold{k}" / "model.safetensors").stat().st_mtime_ns for k in range(3)}
    seg = seg_run / "model.safetensors"
    assert main(["train", "--resume", str(run), "--ctr-model", str(seg)]) == 0
    assert "combined    with the ratio: AUROC" in capsys.readouterr().out
    for k in range(3):
        assert (run / f"fold{k}" / "model.safetensors").stat().st_mtime_ns == before[k]
    assert read_metadata(run / "model.safetensors")["combined"]["segment_model_sha256"] == (
        model_sha256(seg)
    )
    assert f"ctr_model: {seg}" in (run / "config.yaml").read_text()  # a later resume keeps it


def test_evaluate_scores_the_combined_score_on_any_data(combined_run, seg_run, seg_phantoms,
                                                        tmp_path, capsys):  # fmt: skip
    model, seg = combined_run / "model.safetensors", seg_run / "model.safetensors"
    out = tmp_path / "eval"
    argv = ["evaluate", str(model), "--data", str(seg_phantoms), "--split", "all",
            "--ctr-model", str(seg), "--out", str(out), "--bootstrap", "200"]  # fmt: skip
    assert main(argv) == 0
    assert "combined    with the ratio: AUROC" in capsys.readouterr().out
    table = pd.read_csv(out / "combined.csv")
    combined = json.loads((out / "metrics.json").read_text())["combined"]
    assert combined["images"] == table["ctr"].notna().sum()
    assert combined["threshold"] == CombinedScore.from_metadata(read_metadata(model)).threshold
    assert "come from the model file" in (out / "report.html").read_text()


def test_evaluate_refuses_a_combined_score_it_cannot_give(
    combined_run, tiny_run, seg_run, seg_phantoms, tmp_path, capsys
):
    seg = str(seg_run / "model.safetensors")
    plain = ["evaluate", str(tiny_run / "model.safetensors"), "--data", str(seg_phantoms),
             "--split", "all", "--ctr-model", seg, "--out", str(tmp_path / "a")]  # fmt: skip
    assert main(plain) == 2
    one_line_error(capsys.readouterr().err, "no combined score", "--ctr-model")
    other = _another_file_of(seg, tmp_path)
    wrong = ["evaluate", str(combined_run / "model.safetensors"), "--data", str(seg_phantoms),
             "--split", "all", "--ctr-model", str(other), "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(wrong) == 2
    one_line_error(capsys.readouterr().err, "another segment model")


def test_the_dicom_sr_carries_the_combined_score(combined_run, seg_run, seg_phantoms, tmp_path):
    png = sorted((seg_phantoms / "images").glob("*.png"))[1]
    film = write_study_film(tmp_path / "films" / "a.dcm", modality="DX", bits=8,
                            pixels=np.asarray(Image.open(png).convert("L")))  # fmt: skip
    out = tmp_path / "p.csv"
    argv = ["predict", str(combined_run / "model.safetensors"), str(film), "--out", str(out),
            "--dicom-out", str(tmp_path / "dicom"), "--ctr-model",
            str(seg_run / "model.safetensors")]  # fmt: skip
    assert main(argv) == 0
    row = pd.read_csv(out).iloc[0]
    assert not pd.isna(row["combined"])
    (sr,) = [p for p in (tmp_path / "dicom").glob("*.dcm") if pydicom.dcmread(p).Modality == "SR"]
    group = hd.sr.srread(sr).content.get_image_measurement_groups()[0]
    (measurement,) = group.get_measurements(name=COMBINED_CODE)
    assert measurement.value == pytest.approx(row["combined"], abs=1e-6)
    if shutil.which("dciodvfy"):  # make test installs it when run as root
        run = subprocess.run(["dciodvfy", "-new", str(sr)], capture_output=True, text=True)
        assert not [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]


def test_evaluate_says_so_when_no_film_can_be_measured(combined_run, seg_run, tmp_path, capsys):
    rows = [(f"{p:08d}_000.png", "Cardiomegaly" if p % 2 else "No Finding", str(p), "PA")
            for p in range(1, 7)]  # fmt: skip
    data = write_nih(tmp_path / "nih", rows)  # flat grey gradients: no heart, no lungs
    out = tmp_path / "eval"
    seg = str(seg_run / "model.safetensors")
    argv = ["evaluate", str(combined_run / "model.safetensors"), "--data", str(data), "--split",
            "all", "--ctr-model", seg, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "none of the 6 films could be measured" in capsys.readouterr().out
    assert "none of the 6 films" in (out / "report.html").read_text()
