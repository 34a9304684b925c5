"""Evaluation: each metric on hand-computed cases, the intervals, and the evaluation folder."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cardiomegaly import train
from cardiomegaly.cli import main
from cardiomegaly.evaluate import assess, choose_threshold
from cardiomegaly.evaluate.metrics import (
    bootstrap_mean,
    calibration,
    delong,
    delong_test,
    fit_temperature,
    operating_point,
    patient_bootstrap,
    patient_resamples,
    percentile_interval,
    wilson,
)
from cardiomegaly.model import read_metadata
from makers import scored_table, tiny_train_config

# ------------------------------------------------------------------------ point metrics by hand

LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PROBS = [0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.2, 0.1, 0.1, 0.05]


def test_operating_point_counts_at_or_above_the_threshold_as_positive():
    op = operating_point(LABELS, PROBS, 0.5)
    assert op["confusion"] == {"tp": 3, "fp": 1, "tn": 5, "fn": 1}
    assert op["sensitivity"]["value"] == 3 / 4
    assert op["specificity"]["value"] == 5 / 6
    assert op["ppv"]["value"] == 3 / 4
    assert op["npv"]["value"] == 5 / 6
    assert op["accuracy"]["value"] == 8 / 10
    assert op["f1"]["value"] == 2 * 3 / (2 * 3 + 1 + 1)
    assert operating_point(LABELS, PROBS, 0.6)["confusion"]["fp"] == 1  # 0.6 >= 0.6


def test_wilson_intervals_match_published_values():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(3, 4) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    op = operating_point(LABELS, PROBS, 0.5)
    assert op["sensitivity"]["ci95"] == pytest.approx(list(wilson(3, 4)))
    assert math.isnan(wilson(0, 0)[0])


def test_threshold_rules_on_a_small_case():
    y, p = [0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.75, 0.6, 0.7, 0.9]
    assert choose_threshold(y, p, "youden") == 0.6  # sensitivity 1, specificity 2/3: J = 2/3
    assert choose_threshold(y, p, "sens90") == 0.6  # the highest threshold with sensitivity 1
    assert choose_threshold(y, p, "spec90") == 0.9  # the lowest with specificity 1 (>= 0.9)
    assert choose_threshold(y, p, "fixed:0.3") == 0.3


def test_brier_ece_and_calibration_line():
    cal = calibration([0, 1], [0.2, 0.6])
    assert cal["brier"] == pytest.approx((0.2**2 + 0.4**2) / 2)
    assert cal["ece"] == pytest.approx(0.5 * 0.2 + 0.5 * 0.4)  # two one-image bins

    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 20_000)
    y = (rng.random(p.size) < p).astype(int)
    calibrated = calibration(y, p)
    assert calibrated["slope"] == pytest.approx(1.0, abs=0.1)
    assert calibrated["intercept"] == pytest.approx(0.0, abs=0.1)
    assert calibrated["ece"] < 0.03
    logit = np.log(p / (1 - p))
    overconfident = calibration(y, 1 / (1 + np.exp(-2 * logit)))
    assert overconfident["slope"] == pytest.approx(0.5, abs=0.06)
    shifted = calibration(y, 1 / (1 + np.exp(-(logit + 1))))  # everything too high
    assert shifted["intercept"] == pytest.approx(-1.0, abs=0.1)


def test_temperature_scaling_undoes_overconfidence():
    rng = np.random.default_rng(1)
    logit = rng.normal(0, 1.5, 5000)
    y = (rng.random(logit.size) < 1 / (1 + np.exp(-logit))).astype(int)
    assert fit_temperature(3 * logit, y) == pytest.approx(3.0, rel=0.1)


# ----------------------------------------------------------------------------------- DeLong


def _structural_components(y, s):
    """DeLong et al. (1988): V10 per positive, V01 per negative, from the pairwise kernel."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)


def test_delong_variance_equals_the_structural_components_formula():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(23), np.zeros(41)].astype(int)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: ties between classes
    auc, v10, v01 = _structural_components(y, s)
    expected = v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01)
    got_auc, got_var = delong(y, s)
    assert got_auc == pytest.approx(auc) == pytest.approx(roc_auc_score(y, s))
    assert got_var == pytest.approx(expected, rel=1e-12)


def test_paired_delong_test_uses_the_covariance_of_the_two_models():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30), np.zeros(50)].astype(int)
    a = rng.normal(y * 1.0, 1.0)
    b = a + rng.normal(0, 0.7, y.size)  # correlated with a, a little worse
    auc_a, va10, va01 = _structural_components(y, a)
    auc_b, vb10, vb01 = _structural_components(y, b)
    var = (np.var(va10 - vb10, ddof=1) / len(va10)) + (np.var(va01 - vb01, ddof=1) / len(va01))
    z = (auc_a - auc_b) / math.sqrt(var)
    result = delong_test(y, a, b)
    assert result["difference"] == pytest.approx(auc_a - auc_b)
    assert result["z"] == pytest.approx(z)
    assert result["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert delong_test(y, a, a)["p"] == 1.0


# --------------------------------------------------------------------------- patient bootstrap


def test_a_patient_with_many_images_is_resampled_as_one_unit():
    patients = ["big"] * 30 + [f"p{i}" for i in range(20)]
    labels = [1] * 30 + [0] * 10 + [1] * 10
    for weights in patient_resamples(patients, labels, n=200, seed=0):
        assert len(set(weights[:30])) == 1  # all of the big patient's images move together
    drawn = [w[0] for w in patient_resamples(patients, labels, n=400, seed=0)]
    assert 0 in drawn and max(drawn) >= 2  # left out sometimes, drawn twice sometimes


def test_every_resample_keeps_both_classes():
    patients = [f"p{i}" for i in range(40)]
    labels = [1] * 2 + [0] * 38
    for weights in patient_resamples(patients, labels, n=300, seed=5):
        assert weights[:2].sum() == 2 and weights[2:].sum() == 38  # stratified by patient class


def test_the_resamples_are_the_draws_the_intervals_were_always_computed_from():
    """The same seed gives the resamples of ``Generator.choice`` per class and resample, as the
    tool drew them before it drew faster: the intervals measured earlier are reproduced."""
    patients = [f"p{i // 2}" for i in range(61)]
    labels = [int(i % 7 == 0) for i in range(61)]
    uniques, codes = np.unique(patients, return_inverse=True)
    positive = np.zeros(len(uniques), dtype=bool)
    np.logical_or.at(positive, codes, np.asarray(labels) > 0)
    rng = np.random.default_rng(3)
    for weights in patient_resamples(patients, labels, n=50, seed=3):
        counts = np.zeros(len(uniques))
        for group in (np.flatnonzero(positive), np.flatnonzero(~positive)):
            counts += np.bincount(rng.choice(group, size=len(group)), minlength=len(uniques))
        assert np.array_equal(weights, counts[codes])


def test_the_bootstrap_mean_is_each_resamples_weighted_average():
    rng = np.random.default_rng(2)
    values, patients = rng.random(90), [f"p{i // 4}" for i in range(90)]
    labels = (np.arange(90) % 9 == 0).astype(int)
    means = bootstrap_mean(values, patients, labels, n=300, seed=7)
    expected = [np.average(values, weights=w)
                for w in patient_resamples(patients, labels, n=300, seed=7)]  # fmt: skip
    np.testing.assert_allclose(means, expected, rtol=1e-12)


def test_bootstrap_statistics_equal_scikit_learn_with_the_resample_weights():
    rng = np.random.default_rng(4)
    y = (rng.random(150) < 0.3).astype(int)
    s = np.round(rng.random(150) + 0.3 * y, 1)  # ties
    patients = [f"p{i // 3}" for i in range(150)]
    curves = patient_bootstrap(y, s, patients, n=20, seed=9, thresholds=[0.5])
    for k, w in enumerate(patient_resamples(patients, y, n=20, seed=9)):
        assert curves.auroc[k] == pytest.approx(roc_auc_score(y, s, sample_weight=w))
        assert curves.auprc[k] == pytest.approx(average_precision_score(y, s, sample_weight=w))
        pred = s >= 0.5
        tp, fp, fn = (w * (y & pred)).sum(), (w * (~y & pred)).sum(), (w * (y & ~pred)).sum()
        assert curves.f1[0.5][k] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def _auroc_ci(n_patients: int) -> tuple[float, list[float]]:
    rng = np.random.default_rng(n_patients)
    y = (np.arange(n_patients) % 4 == 0).astype(int)
    s = rng.normal(y * 1.2, 1.0)
    point = roc_auc_score(y, s)
    patients = [f"p{i}" for i in range(n_patients)]
    return point, percentile_interval(patient_bootstrap(y, s, patients).auroc)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data():
    small_point, small = _auroc_ci(60)
    large_point, large = _auroc_ci(600)
    assert small[0] < small_point < small[1]
    assert large[0] < large_point < large[1]
    assert large[1] - large[0] < 0.6 * (small[1] - small[0])


# ------------------------------------------------------------------------------------ assess


def test_assess_reports_everything_with_intervals():
    rng = np.random.default_rng(6)
    y = (rng.random(120) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-rng.normal(2 * y - 1, 1.0)))
    table = scored_table(y, p, patients=[f"p{i // 2}" for i in range(120)],
                         view=np.where(np.arange(120) % 3, "PA", "AP"),
                         sex=np.where(np.arange(120) % 2, "F", "M"),
                         age=np.arange(120) % 90)  # fmt: skip
    result = assess(table, {"youden (model threshold)": 0.5, "sens90": 0.3}, n_boot=300)
    m = result.metrics
    assert m["images"] == 120 and m["patients"] == 60
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert m["auroc"]["ci95"][0] < m["auroc"]["value"] < m["auroc"]["ci95"][1]
    assert m["auroc"]["delong"]["ci95"][0] < m["auroc"]["value"]
    assert m["auprc"]["prevalence"] == pytest.approx(y.mean())
    assert list(m["operating_points"]) == ["youden (model threshold)", "sens90"]
    assert m["operating_points"]["sens90"]["f1"]["ci95"] is not None
    assert set(m["subgroups"]) == {"view", "sex", "age"}
    age = m["subgroups"]["age"]
    assert age["<40"]["images"] == int(((np.arange(120) % 90) < 40).sum())
    assert age["40-65"]["images"] == int(((np.arange(120) % 90) >= 40).sum() -
                                         ((np.arange(120) % 90) > 65).sum())  # fmt: skip
    low = [g for groups in m["subgroups"].values() for g in groups.values() if g["positives"] < 10]
    assert all("warning" in g for g in low)
    assert result.roc_band is not None and result.roc_band[1].shape == (101,)
    json.dumps(m, allow_nan=False)  # no NaN reaches metrics.json


def test_one_class_says_auroc_is_undefined_and_keeps_what_is_defined():
    m = assess(scored_table([0] * 8, np.linspace(0.1, 0.8, 8)), {"youden": 0.5}).metrics
    assert m["auroc"]["value"] is None and "only negative" in m["auroc"]["undefined"]
    op = m["operating_points"]["youden"]
    assert op["specificity"]["value"] == 4 / 8 and op["sensitivity"]["value"] is None
    assert m["calibration"]["brier"] is not None
    assert any("undefined" in w for w in m["warnings"])


# ----------------------------------------------------------------------- the evaluation folder

FILES = ("metrics.json", "predictions.csv", "report.html", "roc.png", "pr.png",
         "calibration.png", "confusion.png", "histogram.png", "training_curves.png")  # fmt: skip


def test_evaluate_reads_back_the_runs_test_split_and_writes_every_file(
    tiny_run, tiny_phantoms, tmp_path, capsys
):
    out = tmp_path / "eval"
    code = main(["evaluate", str(tiny_run / "model.safetensors"), "--data", str(tiny_phantoms),
                 "--out", str(out), "--bootstrap", "200"])  # fmt: skip
    assert code == 0
    for name in FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    at_training = json.loads((tiny_run / "test" / "metrics.json").read_text())
    assert metrics["images"] == at_training["images"]
    assert metrics["auroc"]["value"] == pytest.approx(at_training["auroc"]["value"], abs=1e-6)
    assert set(pd.read_csv(out / "predictions.csv")["path"]) == set(
        pd.read_csv(tiny_run / "test" / "predictions.csv")["path"]
    )
    printed = capsys.readouterr().out
    assert "AUROC" in printed and str(out / "report.html") in printed


def test_the_report_is_one_self_contained_page(tiny_run):
    folder = tiny_run / "test"
    html = (folder / "report.html").read_text()
    assert "Research use only" in html
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", html)  # nothing fetched
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert html.count("src='data:image/png;base64,") == len(pngs) >= 6


def test_the_report_renders_every_figure_in_chromium(tiny_run, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto((tiny_run / "test" / "report.html").as_uri())
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(images) >= 6 and all(done and width > 100 for done, width in images)
    assert page.locator("text=Research use only").is_visible()
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 50_000
    page.close()


@pytest.mark.parametrize("split", ["all", "val"])
def test_other_splits_say_what_they_are(tiny_run, tiny_phantoms, tmp_path, split):
    out = tmp_path / split
    assert main(["evaluate", str(tiny_run / "model.safetensors"), "--data", str(tiny_phantoms),
                 "--split", split, "--out", str(out), "--bootstrap", "100"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    meta = read_metadata(tiny_run / "model.safetensors")
    if split == "all":
        assert metrics["images"] == 30
    else:
        assert metrics["images"] == meta["training"]["split"]["val"]["images"]
    assert "optimistic" in metrics["split_description"]


def test_one_class_data_is_evaluated_with_auroc_undefined(tiny_run, tiny_phantoms, tmp_path,
                                                          capsys):  # fmt: skip
    negatives = tmp_path / "negatives"
    shutil.copytree(tiny_phantoms, negatives)
    table = pd.read_csv(negatives / "phantoms.csv")
    table[table["label"] == 0].to_csv(negatives / "phantoms.csv", index=False)
    out = tmp_path / "eval"
    code = main(["evaluate", str(tiny_run / "model.safetensors"), "--data", str(negatives),
                 "--split", "all", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert "AUROC       undefined" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auroc"]["value"] is None
    op = next(iter(metrics["operating_points"].values()))
    assert op["specificity"]["value"] is not None
    assert (out / "histogram.png").is_file() and not (out / "roc.png").exists()


def test_a_model_compared_with_itself_differs_by_nothing(tiny_run, tiny_phantoms, tmp_path):
    model = str(tiny_run / "model.safetensors")
    out = tmp_path / "cmp"
    assert main(["evaluate", model, model, "--data", str(tiny_phantoms), "--split", "all",
                 "--out", str(out), "--bootstrap", "100"]) == 0  # fmt: skip
    result = json.loads((out / "comparison.json").read_text())
    assert result["difference"]["value"] == 0.0
    assert result["difference"]["ci95"] == [0.0, 0.0]
    assert result["difference"]["delong_p"] == 1.0
    for name in ("predictions.csv", "roc.png", "report.html"):
        assert (out / name).is_file()


def test_two_different_models_get_a_paired_comparison(tiny_run, tiny_phantoms, tmp_path):
    other = tmp_path / "other"
    train(tiny_train_config(tiny_phantoms, epochs=1, seed=1), out=other)
    out = tmp_path / "cmp"
    models = [str(tiny_run / "model.safetensors"), str(other / "model.safetensors")]
    assert main(["evaluate", *models, "--data", str(tiny_phantoms), "--out", str(out),
                 "--bootstrap", "200"]) == 0  # fmt: skip
    result = json.loads((out / "comparison.json").read_text())
    diff = result["difference"]
    assert diff["value"] == pytest.approx(result["auroc_a"]["value"] - result["auroc_b"]["value"])
    assert diff["ci95"][0] <= diff["value"] <= diff["ci95"][1]
    assert 0.0 <= diff["delong_p"] <= 1.0


def test_temperature_scaling_is_fitted_on_validation_and_used_everywhere(tiny_phantoms, tmp_path):
    run = tmp_path / "calibrated"
    result = train(tiny_train_config(tiny_phantoms, calibrate=True), out=run)
    meta = read_metadata(run / "model.safetensors")
    temperature = meta["calibration"]["temperature"]
    assert temperature > 0 and meta["calibration"]["fitted_on"] == "validation split"
    # The test predictions are sigmoid(logit / T); the threshold lives on that same scale.
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "model.safetensors"), "--data", str(tiny_phantoms),
                 "--out", str(out), "--bootstrap", "100"]) == 0  # fmt: skip
    again = pd.read_csv(out / "predictions.csv").set_index("path")["probability"]
    first = pd.read_csv(run / "test" / "predictions.csv").set_index("path")["probability"]
    assert np.allclose(again.loc[first.index], first, atol=1e-6)
    assert result.test["auroc"]["value"] is not None


def test_evaluate_refuses_a_file_that_is_not_a_model(tiny_phantoms, tmp_path, capsys):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not a model")
    assert main(["evaluate", str(fake), "--data", str(tiny_phantoms)]) == 2
    err = capsys.readouterr().err
    assert "not a safetensors model file" in err and "Traceback" not in err
