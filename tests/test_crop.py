"""Films cut to the thorax: the square around the heart and lungs a segment model finds, and a
classifier that learns from cut films and carries its cut into every use."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cardiomegaly import Classifier, TrainConfig, evaluate
from cardiomegaly.cli import main
from cardiomegaly.data.cache import ImageCache
from cardiomegaly.data.images import load_image
from cardiomegaly.data.preprocess import prepare_file, to_float
from cardiomegaly.errors import ConfigError, UserError
from cardiomegaly.fileio import sha256_of
from cardiomegaly.model import EMBEDDED_PREFIX, load_state, read_metadata, split_embedded
from cardiomegaly.segment.crop import ThoraxCrop, thorax_box
from cardiomegaly.segment.ctr import MASK_CLASSES
from cardiomegaly.serve import create_app
from makers import one_line_error


def _square_masks(size: int, rows: tuple[int, int], cols: tuple[int, int]) -> dict[str, np.ndarray]:
    """A heart and two lungs whose union fills rows and cols (first, last inclusive)."""
    masks = {name: np.zeros((size, size), bool) for name in MASK_CLASSES}
    middle = (cols[0] + cols[1]) // 2
    masks["right_lung"][rows[0] : rows[1] + 1, cols[0] : middle] = True
    masks["left_lung"][rows[0] : rows[1] + 1, middle + 1 : cols[1] + 1] = True
    masks["heart"][(rows[0] + rows[1]) // 2 : rows[1] + 1, middle - 2 : middle + 3] = True
    return masks


def test_the_box_is_the_square_around_the_organs_in_the_films_own_pixels():
    # a 100 px square film seen at 50 px: every mask pixel is 2 film pixels
    masks = _square_masks(50, rows=(10, 29), cols=(15, 34))
    assert thorax_box(masks, 100, 100, margin=0.0) == (30, 20, 70, 60)
    assert thorax_box(masks, 100, 100, margin=0.1) == (26, 16, 74, 64)


def test_the_box_follows_the_pad_and_squash_policies_of_a_film_that_is_not_square():
    # 200 x 100 padded into 100 px: scale 0.5, the film's rows start at 25
    masks = _square_masks(100, rows=(30, 69), cols=(20, 79))
    # organs at x 40-160, y 10-90: a 120 px square is taller than the film and is cut by it
    assert thorax_box(masks, 200, 100, "pad", margin=0.0) == (40, 0, 160, 100)
    # 100 x 200 squashed into 100 px: rows scale by 2, columns by 1: x 20-80, y 60-140
    assert thorax_box(masks, 100, 200, "squash", margin=0.0) == (10, 60, 90, 140)


def test_a_square_past_the_films_edge_moves_inside_it():
    masks = _square_masks(100, rows=(0, 39), cols=(0, 39))
    assert thorax_box(masks, 100, 100, margin=0.25) == (0, 0, 60, 60)
    masks = _square_masks(100, rows=(60, 99), cols=(60, 99))
    assert thorax_box(masks, 100, 100, margin=0.25) == (40, 40, 100, 100)


def test_masks_too_small_to_be_a_thorax_give_no_box():
    assert thorax_box(_square_masks(100, rows=(40, 44), cols=(40, 44)), 100, 100) is None
    empty = {name: np.zeros((100, 100), bool) for name in MASK_CLASSES}
    assert thorax_box(empty, 100, 100) is None


def test_a_segment_model_cuts_unseen_phantoms_where_their_true_masks_say(seg_run, seg_phantoms):
    crop = ThoraxCrop.load(seg_run / "model.safetensors")
    splits = pd.read_csv(seg_run / "splits.csv")
    unseen = splits.loc[splits["split"] == "test", "path"].head(4)
    films = [load_image(seg_phantoms / p)[0] for p in unseen]
    for path, film, box in zip(unseen, films, crop.boxes(films), strict=True):
        name = Path(path).name
        truth = {o: load_image(seg_phantoms / "masks" / o / name)[0] > 0.5 for o in MASK_CLASSES}
        expected = thorax_box(truth, film.shape[1], film.shape[0])
        assert box is not None and expected is not None
        assert np.abs(np.subtract(box, expected)).max() <= 4, (box, expected)
        left, top, right, bottom = box
        np.testing.assert_array_equal(crop(film), film[top:bottom, left:right])
    assert (right - left) < film.shape[1]  # the phantom's air around the chest is cut away


def test_a_film_where_the_model_finds_no_thorax_is_returned_whole(seg_run, monkeypatch):
    crop = ThoraxCrop.load(seg_run / "model.safetensors")
    monkeypatch.setattr(crop.measurer, "masks", lambda x: np.zeros((len(x), 3, *x.shape[1:]), bool))
    film = np.random.default_rng(0).random((80, 96), np.float32)
    assert crop.boxes([film]) == [None]
    assert crop(film) is film


def test_only_a_segment_model_can_cut_films(tiny_run):
    with pytest.raises(UserError, match="segment"):
        ThoraxCrop.load(tiny_run / "model.safetensors")


# ---------------------------------------------------------- a classifier trained on cut films


def _films(phantoms: Path, n: int = 6) -> list[Path]:
    return sorted((phantoms / "images").glob("*.png"))[:n]


def test_the_classifier_file_carries_the_segment_model_that_cuts_its_films(crop_run, seg_run):
    seg_file = seg_run / "model.safetensors"
    seg_state = load_state(seg_file)[0]
    for model in (crop_run / "model.safetensors", crop_run / "fold1" / "model.safetensors"):
        spec = read_metadata(model)["preprocessing"]["thorax_crop"]
        assert spec["sha256"] == sha256_of(seg_file) and spec["margin"] == 0.1
        assert spec["segment_model"]["task"] == "segment" and "seen" not in spec["segment_model"]
        own, embedded = split_embedded(load_state(model)[0])
        assert embedded.keys() == seg_state.keys()
        assert all(torch.equal(embedded[k], seg_state[k]) for k in seg_state)
        assert not any(k.startswith(EMBEDDED_PREFIX) for k in own)


def test_every_use_cuts_films_as_training_did_without_the_segment_model_file(
    crop_run, seg_run, tiny_phantoms, tmp_path
):
    alone = tmp_path / "model.safetensors"  # no segment model, no ONNX export beside it
    shutil.copy(crop_run / "model.safetensors", alone)
    clf = Classifier.load(alone, device="cpu")
    assert clf.backend == "torch"
    crop = ThoraxCrop.load(seg_run / "model.safetensors")
    films = _films(tiny_phantoms)
    narrower = 0
    for film in films:
        expected = to_float(prepare_file(film, clf.image_size, clf.resize, crop=crop))
        np.testing.assert_array_equal(clf.preprocess(film), expected)
        np.testing.assert_array_equal(clf.preprocess(film.read_bytes()), expected)
        np.testing.assert_array_equal(clf.preprocess(Image.open(film)), expected)
        whole = to_float(prepare_file(film, clf.image_size, clf.resize))
        narrower += not np.array_equal(whole, expected)
    assert narrower >= len(films) // 2  # the phantoms' air around the chest is cut away
    # the cache keeps cut and whole films apart
    assert ImageCache(75, crop=crop).folder != ImageCache(75).folder


def test_its_onnx_export_comes_in_two_files_and_answers_as_pytorch(
    crop_run, tiny_phantoms, tmp_path
):
    fast = Classifier.load(crop_run / "model.safetensors", device="cpu")
    slow = Classifier.load(crop_run / "model.safetensors", device="cpu", backend="torch")
    assert (fast.backend, fast.crop.measurer.backend) == ("onnx", "onnx")
    films = _films(tiny_phantoms)
    got = [p.probability for p in fast.predict(films)]
    want = [p.probability for p in slow.predict(films)]
    np.testing.assert_allclose(got, want, atol=1e-4)
    # both networks on ONNX Runtime, without loading torch (as for a model of whole films)
    code = ("import sys\nfrom cardiomegaly.predict import Classifier\n"
            f"c = Classifier.load({str(crop_run / 'model.safetensors')!r}, device='cpu')\n"
            f"c.predict({str(films[0])!r})\nprint('torch' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]
    shutil.copy(crop_run / "model.onnx", tmp_path / "model.onnx")  # without model.thorax.onnx
    with pytest.raises(UserError, match=r"model\.thorax\.onnx: missing.*export it again"):
        Classifier.load(tmp_path / "model.onnx")


def test_export_checks_both_files_again_or_refuses_in_one_line(crop_run, tmp_path, capsys):
    model = str(crop_run / "model.safetensors")
    assert main(["export", model, "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    one_line_error(capsys.readouterr().err, "thorax", "onnx")
    assert not (tmp_path / "m.pt").exists()
    # the pair training exported (the int8 test below writes a pair with the command)
    shutil.copy(crop_run / "model.onnx", tmp_path / "m.onnx")
    shutil.copy(crop_run / "model.thorax.onnx", tmp_path / "m.thorax.onnx")
    written = {p: p.stat().st_mtime_ns for p in tmp_path.glob("m*.onnx")}
    assert main(["export", model, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("m*.onnx")} == written  # checked only
    (tmp_path / "m.thorax.onnx").write_bytes(b"stale")  # beside a good m.onnx, not replaced
    assert main(["export", model, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert (tmp_path / "m.thorax.onnx").read_bytes() == b"stale"
    (tmp_path / "n.thorax.onnx").write_bytes(b"mine")  # a file of the user's is never replaced
    assert main(["export", model, "--format", "onnx", "--out", str(tmp_path / "n.onnx")]) == 2
    assert (tmp_path / "n.thorax.onnx").read_bytes() == b"mine"


def test_its_int8_export_cuts_films_with_the_segment_model_exported_beside_it(
    crop_run, tiny_phantoms, tmp_path, monkeypatch
):
    export_module = importlib.import_module("cardiomegaly.export")  # not the export() function
    monkeypatch.setattr(export_module, "INT8_MAX_AUROC_CHANGE", 1.0)  # keep whatever it scores
    out = tmp_path / "m.onnx"
    member = crop_run / "fold0" / "model.safetensors"  # an ensemble has no train split
    assert main(["export", str(member), "--format", "onnx", "--out",
                 str(out), "--int8", "--data", str(tiny_phantoms)]) == 0  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == [
        "m.int8.onnx", "m.onnx", "m.thorax.onnx"]  # fmt: skip
    int8, fp32 = Classifier.load(tmp_path / "m.int8.onnx"), Classifier.load(out)
    assert (int8.backend, int8.crop.measurer.backend) == ("onnx", "onnx")
    for film in _films(tiny_phantoms)[:4]:  # the int8 network sees the film cut as fp32's does
        assert np.array_equal(int8.preprocess(film), fp32.preprocess(film))
        assert 0 <= int8.predict(film).probability <= 1
    (tmp_path / "m.thorax.onnx").unlink()
    with pytest.raises(UserError, match=r"m\.thorax\.onnx: missing"):
        Classifier.load(tmp_path / "m.int8.onnx")


def test_evaluation_sees_the_films_cut_as_the_model_did(crop_run, tiny_phantoms, tmp_path):
    # each film was trained or tuned on by one fold, by the fingerprint of its cut pixels
    result = evaluate(crop_run / "model.safetensors", tiny_phantoms, split="all", out=tmp_path)
    assert result.metrics["seen_by_model"] == result.metrics["images"] == 30
    assert "films cut to the thorax" in (tmp_path / "report.html").read_text()


def test_only_a_segment_model_cuts_a_classifiers_films(tiny_run, tiny_phantoms, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_phantoms), "--weights", "none", "--image-size", "75",
            "--epochs", "1", "--thorax-crop", str(tiny_run / "model.safetensors"),
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, "segment")
    with pytest.raises(ConfigError, match="thorax_crop"):
        TrainConfig(task="segment", thorax_crop="seg.safetensors")


def test_the_server_answers_for_cut_films_as_the_classifier_does(crop_run, tiny_phantoms):
    testclient = pytest.importorskip("fastapi.testclient")
    film = _films(tiny_phantoms, 1)[0]
    upload = {"file": ("film.png", film.read_bytes(), "application/octet-stream")}
    with testclient.TestClient(create_app(crop_run / "model.safetensors")) as client:
        body = client.post("/v1/predict?cam=true", files=upload).json()
        card = client.get("/v1/model").json()
    expected = Classifier.load(crop_run / "model.safetensors", backend="torch").predict(film)
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-4)
    assert body["cam_png_base64"]  # Grad-CAM on the cut film
    assert card["preprocessing"]["thorax_crop"]["margin"] == 0.1


def test_thorax_crop_weights_means_the_segment_model_the_classifier_starts_from():
    cfg = TrainConfig(weights="seg.safetensors", thorax_crop="weights")
    assert cfg.thorax_crop == "seg.safetensors"
    assert TrainConfig(weights="seg.safetensors", thorax_crop="none").thorax_crop is None
    with pytest.raises(ConfigError, match="--weights SEGMODEL"):
        TrainConfig(weights="none", thorax_crop="weights")
    assert TrainConfig.from_preset("small-data", weights="seg.safetensors").thorax_crop == (
        "seg.safetensors"
    )
