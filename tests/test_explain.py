"""Grad-CAM: heatmaps, overlays, and localisation scored against heart boxes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cardiomegaly.cli import main
from cardiomegaly.errors import UserError
from cardiomegaly.explain import cam_layer, heatmaps, localisation, overlay
from cardiomegaly.predict import Classifier, Prediction
from makers import write_corrupt_images


@pytest.fixture(scope="module")
def clf(tiny_run):
    return Classifier.load(tiny_run / "model.safetensors", device="cpu", backend="torch")


def test_heatmaps_have_the_input_shape_a_unit_range_and_no_nan(clf, tiny_phantoms):
    paths = sorted((tiny_phantoms / "images").glob("*.png"))[:3]
    images = np.stack([clf.preprocess(p) for p in paths])
    heat = heatmaps(clf, images)
    assert heat.shape == (3, 75, 75) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    assert cam_layer(clf).startswith("Mixed_")


def test_the_default_layer_is_the_last_block_at_299_px():
    from cardiomegaly.model import build_model, preprocessing_for

    meta = {"preprocessing": preprocessing_for("inception_v3", 299, "pad"),
            "threshold": {"value": 0.5, "rule": "youden"}}  # fmt: skip
    big = Classifier(build_model("inception_v3"), meta, device="cpu")
    assert cam_layer(big) == "Mixed_7c"  # 8 x 8 cells at 299 px
    meta["preprocessing"] = preprocessing_for("inception_v3", 128, "pad")
    assert cam_layer(Classifier(build_model("inception_v3"), meta, device="cpu")) == "Mixed_5d"


def test_pointing_game_and_iou_on_hand_made_heatmaps():
    heat = np.zeros((20, 20), np.float32)
    heat[5:10, 5:10] = 0.6
    heat[7, 7] = 1.0
    assert localisation(heat, (5, 5, 5, 5)) == (True, 1.0)  # region == box
    hit, iou = localisation(heat, (0, 0, 5, 5))
    assert not hit and iou == 0.0
    hit, iou = localisation(heat, (5, 5, 10, 5))  # box twice the region
    assert hit and iou == pytest.approx(0.5)


def test_an_overlay_shows_the_probability_the_threshold_and_the_box():
    image = np.full((75, 75), 0.5, np.float32)
    heat = np.zeros((75, 75), np.float32)
    heat[30:40, 30:40] = 1.0
    picture = overlay(image, heat, Prediction("x.png", 0.83, 1, 0.41), box=(10, 50, 20, 20))
    assert picture.size == (512, 512) and picture.mode == "RGB"
    pixels = np.asarray(picture)
    assert (pixels[12, 12] < 60).all()  # the dark caption box in the corner
    hot = pixels[int(35 / 75 * 512), int(35 / 75 * 512)].astype(int)
    assert hot[0] > hot[2] + 50  # red over the grey where the heatmap is hot
    cold = pixels[int(60 / 75 * 512), int(60 / 75 * 512)].astype(int)
    assert abs(cold[0] - cold[2]) < 5  # plain grey where it is cold
    assert (pixels[..., 1] > 200).any() and ((pixels[..., 1] > 200) & (pixels[..., 0] < 100)).any()


def test_grad_cam_refuses_an_onnx_classifier(tiny_onnx):
    with pytest.raises(UserError, match="PyTorch model file"):
        heatmaps(Classifier.load(tiny_onnx), np.zeros((1, 75, 75), np.float32))


def test_explain_writes_overlays_and_scores_localisation_against_baselines(
    tiny_run, tiny_phantoms, tmp_path, capsys
):
    out = tmp_path / "explain"
    code = main(["explain", str(tiny_run / "model.safetensors"), "--data", str(tiny_phantoms),
                 "--split", "all", "--out", str(out), "--bootstrap", "100"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "explain.json").read_text())
    assert summary["images"] == summary["with_box"] == 30
    assert set(summary["pointing_game"]) == {"gradcam", "random_point", "centre_point"}
    assert set(summary["mean_iou"]) == {"gradcam", "centred_box"}
    for entry in (*summary["pointing_game"].values(), *summary["mean_iou"].values()):
        low, high = entry["ci95"]
        assert 0 <= low <= entry["value"] + 1e-9 and entry["value"] <= high + 1e-9 <= 1 + 1e-9
    assert len(list((out / "overlays").glob("*.png"))) == 30
    assert (out / "contact_sheet.png").is_file()
    rows = pd.read_csv(out / "explain.csv")
    assert rows["hit"].mean() == pytest.approx(summary["pointing_game"]["gradcam"]["value"])
    assert "pointing    gradcam" in capsys.readouterr().out


def test_predict_cam_writes_one_overlay_per_scored_image(tiny_run, tiny_phantoms, tmp_path):
    folder = tmp_path / "films"
    shutil.copytree(tiny_phantoms / "images", folder)
    write_corrupt_images(folder)
    cams = tmp_path / "cams"
    assert main(["predict", str(tiny_run / "model.safetensors"), str(folder),
                 "--out", str(tmp_path / "p.csv"), "--cam", str(cams)]) == 0  # fmt: skip
    assert len(list(cams.glob("*.png"))) == 30  # the three bad files have no overlay


def test_explain_makes_a_contact_sheet_for_data_without_heart_boxes(tiny_run, tiny_phantoms,
                                                                    tmp_path):  # fmt: skip
    """A folder of class sub-folders has no boxes: the sheet shows films all the same."""
    table = pd.read_csv(tiny_phantoms / "phantoms.csv")
    for row in table.head(8).itertuples():
        folder = tmp_path / "data" / ("cardiomegaly" if row.label == 1 else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_phantoms / row.image, folder)
    out = tmp_path / "explain"
    assert main(["explain", str(tiny_run / "model.safetensors"), "--data", str(tmp_path / "data"),
                 "--split", "all", "--out", str(out), "--bootstrap", "50"]) == 0  # fmt: skip
    summary = json.loads((out / "explain.json").read_text())
    assert summary["with_box"] == 0
    assert (out / "contact_sheet.png").is_file()
