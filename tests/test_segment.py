"""The segment task: mask data, training, the model file, and measuring the ratio on films."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cardiomegaly.cli import main
from cardiomegaly.data.records import load_records
from cardiomegaly.data.sources.masks import read_mask, reference_ctr
from cardiomegaly.errors import UserError
from cardiomegaly.model import load_model, read_metadata
from cardiomegaly.segment.ctr import AP_NOTE, MASK_CLASSES
from cardiomegaly.segment.measure import Measurer
from cardiomegaly.segment.model import load_segmenter
from makers import gradient, one_line_error, write_dicom

JSRT = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsrt-ctr"


def _mask_folder(phantoms: Path, root: Path, n: int = 6) -> Path:
    """A JSRT-style folder (images/ + masks/<class>/) from the first ``n`` phantoms."""
    table = pd.read_csv(phantoms / "phantoms.csv").head(n)
    for row in table.itertuples():
        name = Path(row.image).name
        (root / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(phantoms / row.image, root / "images" / name)
        for organ in MASK_CLASSES:
            (root / "masks" / organ).mkdir(parents=True, exist_ok=True)
            shutil.copy(phantoms / "masks" / organ / name, root / "masks" / organ / name)
    return root


# ---------------------------------------------------------------------------------- mask data


def test_a_mask_folder_gives_films_with_their_masks_and_the_masks_ratio(seg_phantoms, tmp_path):
    root = _mask_folder(seg_phantoms, tmp_path / "data")
    records = load_records(root)
    assert records.format == "masks" and len(records) == 6
    row = records.table.iloc[0]
    assert Path(row["mask_heart"]).parent.name == "heart"
    truth = pd.read_csv(seg_phantoms / "phantoms.csv").head(6)["ctr"].to_numpy()
    assert np.abs(records.table["ctr"].to_numpy() - truth).max() < 0.02  # the phantoms' own ratio
    assert (records.table["label"] == (records.table["ctr"] > 0.5)).all()


def test_films_whose_masks_are_missing_or_of_another_size_are_counted_and_left_out(
    seg_phantoms, tmp_path
):
    root = _mask_folder(seg_phantoms, tmp_path / "data")
    names = sorted(p.name for p in (root / "images").iterdir())
    (root / "masks" / "heart" / names[0]).unlink()
    Image.new("L", (40, 40)).save(root / "masks" / "left_lung" / names[1])
    records = load_records(root)
    assert len(records) == 4
    assert records.excluded == {
        "mask file missing (heart)": 1,
        "mask size differs from the film's (left_lung)": 1,
    }


def test_a_csv_names_the_mask_columns_in_its_data_yaml(seg_phantoms, tmp_path):
    table = pd.read_csv(seg_phantoms / "phantoms.csv").head(5)
    names = table["image"].map(lambda p: Path(p).name)
    films = {
        "film": table["image"].map(lambda p: str(seg_phantoms / p)),
        "finding": table["label"],
        "pid": table["patient"],
    }
    masks = {
        f"{o}_mask": names.map(lambda n, o=o: str(seg_phantoms / "masks" / o / n))
        for o in MASK_CLASSES
    }
    pd.DataFrame({**films, **masks}).to_csv(tmp_path / "with-masks.csv", index=False)
    yaml = tmp_path / "data.yaml"  # paths are absolute here; relative ones hang from image_root
    yaml.write_text(
        "format: csv\ncsv: with-masks.csv\ncolumns: {path: film, label: finding, patient: pid, "
        "masks: {heart: heart_mask, left_lung: left_lung_mask, right_lung: right_lung_mask}}\n"
    )
    records = load_records(yaml)
    assert len(records) == 5 and records.table["mask_left_lung"].map(Path).map(Path.is_file).all()
    assert np.abs(records.table["ctr"] - table["ctr"].to_numpy()).max() < 0.02
    yaml.write_text(yaml.read_text().replace(", right_lung: right_lung_mask", ""))
    with pytest.raises(UserError, match="give a column for each of heart, left_lung, right_lung"):
        load_records(yaml)


def test_a_grey_picture_is_no_mask_and_is_named(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray((gradient(40, 48) * 255).astype(np.uint8)).save(path)
    with pytest.raises(ValueError, match="mask.png: not a binary mask"):
        read_mask(path)
    soft = np.zeros((40, 48), np.uint8)
    soft[10:30, 10:30] = 255
    soft[10, 10:30] = 128  # a resampled edge, as JSRT's masks have
    Image.fromarray(soft).save(path)
    assert read_mask(path).sum() == 20 * 20


def test_the_phantoms_carry_masks_and_the_ratio_measured_on_them(seg_phantoms):
    records = load_records(seg_phantoms)
    assert {"mask_heart", "mask_left_lung", "mask_right_lung"} <= set(records.table.columns)
    measured = records.table.head(10).apply(reference_ctr, axis=1)
    assert np.abs(measured - records.table["ctr"].head(10)).max() < 0.02


@pytest.mark.realdata
def test_the_jsrt_ratios_are_reproduced_from_its_masks():
    if not (JSRT / "labels.csv").is_file():
        pytest.skip(f"JSRT not found at {JSRT}")
    records = load_records(JSRT)
    labels = pd.read_csv(JSRT / "labels.csv")
    assert records.format == "masks" and len(records) == len(labels) == 240
    sample = records.table.sample(40, random_state=0)
    measured = sample.apply(reference_ctr, axis=1)
    assert np.abs(measured - sample["ctr"]).max() < 1e-4  # the README's own definition


# ----------------------------------------------------------------------- training, model file


def test_a_segment_run_folder_holds_the_model_its_curves_and_its_test(seg_run):
    for name in (
        "config.yaml",
        "splits.csv",
        "history.csv",
        "curves.png",
        "model.safetensors",
        "last.pt",
        "test/metrics.json",
        "test/predictions.csv",
    ):
        assert (seg_run / name).is_file(), name
    meta = read_metadata(seg_run / "model.safetensors")
    assert meta["task"] == "segment" and meta["classes"] == list(MASK_CLASSES)
    assert meta["preprocessing"]["image_size"] == 96 and meta["architecture"]["name"] == "unet"
    history = pd.read_csv(seg_run / "history.csv")
    assert {"val_dice_heart", "val_dice_left_lung", "val_dice_right_lung"} <= set(history)
    test = json.loads((seg_run / "test" / "metrics.json").read_text())
    assert min(d["value"] for d in test["dice"].values()) > 0.9  # phantoms are easy: it learns
    assert (seg_run / "test" / "report.html").is_file()


def test_the_segment_model_file_round_trips_and_the_tasks_do_not_mix(seg_run, tiny_run):
    model, _ = load_segmenter(seg_run / "model.safetensors")
    again, _ = load_segmenter(seg_run / "model.safetensors")
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), again(x)) and model(x).shape == (2, 3, 96, 96)
    with pytest.raises(UserError, match="a segmentation model"):
        load_model(seg_run / "model.safetensors")
    with pytest.raises(UserError, match="a classification model"):
        load_segmenter(tiny_run / "model.safetensors")


# --------------------------------------------------------------------------------- measuring


def test_measure_recovers_the_known_ratio_of_unseen_phantoms(seg_run, seg_phantoms, tmp_path):
    splits = pd.read_csv(seg_run / "splits.csv")
    truth = pd.read_csv(seg_phantoms / "phantoms.csv").merge(
        splits[["path", "split"]], left_on="image", right_on="path"
    )
    unseen = truth[truth["split"] == "test"]
    out = tmp_path / "ctr.csv"
    assert (
        main(
            [
                "measure",
                str(seg_run / "model.safetensors"),
                *[str(seg_phantoms / p) for p in unseen["image"]],
                "--out",
                str(out),
                "--overlays",
                str(tmp_path / "overlays"),
            ]
        )
        == 0
    )
    rows = pd.read_csv(out)
    assert list(rows.columns) == [
        "path",
        "ctr",
        "heart_width_px",
        "thorax_width_px",
        "ctr_over_0_5",
        "view",
        "quality",
        "note",
        "error",
    ]
    assert (rows["quality"] == "ok").all()
    error = np.abs(rows["ctr"].to_numpy() - unseen["ctr"].to_numpy())
    assert error.mean() <= 0.03, error
    assert (rows["ctr_over_0_5"] == (rows["ctr"] > 0.5).astype(int)).all()
    overlays = sorted((tmp_path / "overlays").iterdir())
    assert len(overlays) == len(unseen)
    with Image.open(overlays[0]) as picture:
        assert picture.size == (512, 512) and picture.mode == "RGB"


def test_measure_in_python_answers_as_the_command_does(seg_run, seg_phantoms):
    measurer = Measurer.load(seg_run / "model.safetensors")
    film = sorted((seg_phantoms / "images").glob("*.png"))[0]
    one = measurer.measure(film)
    many = list(measurer.measure_many([str(film), str(seg_phantoms / "absent.png")]))
    assert one.ctr == many[0].ctr and one.measurement.quality == "ok"
    assert many[1].ctr is None and "not found" in many[1].error


def test_a_view_given_for_films_that_record_none_is_read_as_theirs(
    seg_run, seg_phantoms, tmp_path, capsys
):
    measurer = Measurer.load(seg_run / "model.safetensors")
    film = sorted((seg_phantoms / "images").glob("*.png"))[0]
    pa_dicom = write_dicom(tmp_path / "pa.dcm", view="PA")
    assert measurer.measure(film).view == ""
    assert measurer.measure(film, view="AP").view == "AP"
    assert measurer.measure(pa_dicom, view="AP").view == "PA"  # the file's own view wins
    assert measurer.measure(film, view="ap").view == "AP"
    with pytest.raises(UserError, match="give PA or AP"):
        measurer.measure(film, view="LATERAL")
    out = tmp_path / "ctr.csv"
    argv = ["measure", str(seg_run / "model.safetensors"), str(film), str(pa_dicom)]
    assert main([*argv, "--view", "AP", "--out", str(out)]) == 0
    rows = pd.read_csv(out, keep_default_na=False)
    assert list(rows["view"]) == ["AP", "PA"]
    assert rows.loc[0, "note"] == AP_NOTE and rows.loc[0, "quality"] == "ok"
    assert "AP films magnify the heart" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["measure", "CLASSIFIER", "FILM", "--out", "OUT.csv"], "a classification model"),
        (
            ["predict", "CLASSIFIER", "FILM", "--view", "AP", "--out", "OUT.csv"],
            "--view needs --ctr-model",
        ),
        (["measure", "SEGMENTER", "FILM", "--out", "OUT.txt"], "give a .csv or .json"),
        (["measure", "SEGMENTER", "NOWHERE/*.png", "--out", "OUT.csv"], "no image files"),
        (["predict", "SEGMENTER", "FILM", "--out", "OUT.csv"], "a segmentation model"),
        (
            ["train", "--task", "segment", "--data", "PHANTOMS", "--image-size", "100"],
            "multiple of 16",
        ),
        (["train", "--task", "segment", "--data", "NOMASKS", "--image-size", "64"], "no masks"),
    ],
)
def test_the_segment_commands_refuse_bad_input_in_one_line(
    argv, words, seg_run, tiny_run, seg_phantoms, tmp_path, capsys
):
    nomasks = tmp_path / "nomasks"
    for label in ("cardiomegaly", "normal"):
        (nomasks / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((gradient() * 255).astype(np.uint8)).save(nomasks / label / f"{i}.png")
    film = sorted((seg_phantoms / "images").glob("*.png"))[0]
    values = {
        "CLASSIFIER": tiny_run / "model.safetensors",
        "SEGMENTER": seg_run / "model.safetensors",
        "FILM": film,
        "OUT.csv": tmp_path / "o.csv",
        "OUT.txt": tmp_path / "o.txt",
        "NOWHERE/*.png": tmp_path / "nowhere" / "*.png",
        "PHANTOMS": seg_phantoms,
        "NOMASKS": nomasks,
    }
    argv = [str(values.get(a, a)) for a in argv]
    assert main([*argv, *(["--out", str(tmp_path / "run")] if argv[0] == "train" else [])]) == 2
    one_line_error(capsys.readouterr().err, words)


def test_the_onnx_export_measures_as_pytorch_does_and_is_measures_default_on_a_cpu(
    seg_run, seg_phantoms, tmp_path
):
    from cardiomegaly.artifacts import read_onnx_metadata
    from cardiomegaly.export import export

    model = tmp_path / "model.safetensors"
    shutil.copy(seg_run / "model.safetensors", model)
    result = export(model, "onnx")
    assert result.path == tmp_path / "model.onnx" and result.max_probability_difference < 1e-4
    assert read_onnx_metadata(result.path)["task"] == "segment"
    films = [str(p) for p in sorted((seg_phantoms / "images").glob("*.png"))[:6]]
    on_onnx, on_torch = Measurer.load(model, device="cpu"), Measurer.load(model, backend="torch")
    assert on_onnx.backend == "onnx" and on_torch.backend == "torch"
    a, b = list(on_onnx.measure_many(films)), list(on_torch.measure_many(films))
    for x, y in zip(a, b, strict=True):
        agree = np.mean([(x.masks[k] == y.masks[k]).mean() for k in MASK_CLASSES])
        assert agree > 0.999 and x.ctr == pytest.approx(y.ctr, abs=0.02)


# -------------------------------------------------------------------------------- evaluation


def test_evaluate_on_mask_data_gives_dice_iou_and_the_ratio_error_with_intervals(
    seg_run, seg_phantoms, tmp_path, capsys
):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(seg_run / "model.safetensors"),
                "--data",
                str(seg_phantoms),
                "--out",
                str(out),
                "--bootstrap",
                "200",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for organ in MASK_CLASSES:
        low, high = metrics["dice"][organ]["ci95"]
        assert low <= metrics["dice"][organ]["value"] <= high and metrics["iou"][organ]["value"] > 0
    assert metrics["ctr_error"]["mae"]["value"] < 0.03
    assert metrics["auroc_ratio_over_0_5"]["value"] is not None
    assert (out / "bland_altman.png").is_file() and (out / "report.html").is_file()
    assert "Dice        heart" in capsys.readouterr().out
    films = pd.read_csv(out / "predictions.csv")
    assert "patient" not in films.columns and len(films) == metrics["films"]


def _labels_only(seg_phantoms: Path, folder: Path) -> Path:
    """The phantoms as classification data: a generic CSV (path, label, patient, view) and its
    data YAML; no masks."""
    table = pd.read_csv(seg_phantoms / "phantoms.csv")
    pd.DataFrame(
        {
            "path": [str(seg_phantoms / p) for p in table["image"]],
            "label": table["label"],
            "patient": table["patient"],
            "view": table["view"],
        }
    ).to_csv(folder / "labels.csv", index=False)
    yaml = folder / "data.yaml"
    yaml.write_text(
        "format: csv\ncsv: labels.csv\ncolumns: {path: path, label: label, "
        "patient: patient, view: view}\n"
    )
    return yaml


def test_evaluate_on_classification_data_scores_the_ratio_overall_and_per_view(
    seg_run, seg_phantoms, tmp_path
):
    yaml = _labels_only(seg_phantoms, tmp_path)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(seg_run / "model.safetensors"),
                "--data",
                str(yaml),
                "--split",
                "all",
                "--out",
                str(out),
                "--bootstrap",
                "200",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auroc"]["value"] > 0.8  # phantoms: the label is the ratio over 0.5
    assert set(metrics["auroc_by_view"]) <= {"PA", "AP"} and metrics["auroc_by_view"]
    assert "AP film magnifies" in (out / "report.html").read_text()
    assert "view_aware" not in metrics  # --split all leaves no validation films to choose on
    test = tmp_path / "eval-test"
    assert (
        main(
            [
                "evaluate",
                str(seg_run / "model.safetensors"),
                "--data",
                str(yaml),
                "--split",
                "test",
                "--out",
                str(test),
                "--bootstrap",
                "200",
            ]
        )
        == 0
    )
    aware = json.loads((test / "metrics.json").read_text())["view_aware"]
    assert set(aware["thresholds"]) <= {"PA", "AP"} and "validation split" in aware["chosen_on"]
    assert 0 <= aware["auroc"]["value"] <= 1 and "View-aware" in (test / "report.html").read_text()


def test_evaluate_reports_a_model_that_measures_no_film_instead_of_failing(
    seg_run, seg_phantoms, tmp_path, monkeypatch, capsys
):
    # A model that finds no organ (e.g. stopped before it learnt anything): every film flagged.
    monkeypatch.setattr(Measurer, "masks", lambda self, images: np.zeros(
        (len(images), len(MASK_CLASSES), *images.shape[1:]), bool))  # fmt: skip
    out = tmp_path / "eval"
    model = str(seg_run / "model.safetensors")
    assert main(["evaluate", model, "--data", str(seg_phantoms), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flagged"] == metrics["films"] and metrics["ctr_error"]["mae"]["value"] is None
    assert metrics["dice"]["heart"]["value"] == 0
    printed = capsys.readouterr().out
    assert "no film measured" in printed
    assert "no film measured" in (out / "report.html").read_text()
    labels = _labels_only(seg_phantoms, tmp_path)  # no ratio to score, no view to threshold
    out = tmp_path / "eval-labels"
    assert main(["evaluate", model, "--data", str(labels), "--split", "test", "--out",
                 str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auroc"]["value"] is None and "view_aware" not in metrics


# ------------------------------------------------------------------ beside the classifier


def test_predict_with_a_ctr_model_reports_the_ratio_beside_the_probability(
    seg_run, tiny_run, seg_phantoms, tmp_path
):
    films = [str(p) for p in sorted((seg_phantoms / "images").glob("*.png"))[:4]]
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                str(tiny_run / "model.safetensors"),
                *films,
                "--out",
                str(out),
                "--ctr-model",
                str(seg_run / "model.safetensors"),
            ]
        )
        == 0
    )
    rows = pd.read_csv(out)
    assert list(rows.columns) == [
        "path",
        "probability",
        "prediction",
        "threshold",
        "ctr",
        "ctr_over_0_5",
        "ctr_quality",
        "ctr_note",
        "error",
    ]
    expected = [m.ctr for m in Measurer.load(seg_run / "model.safetensors").measure_many(films)]
    assert rows["ctr"].to_numpy() == pytest.approx(expected, abs=1e-4)
    assert rows["probability"].notna().all()


def test_serve_with_a_ctr_model_answers_the_ratio_and_its_drawing(seg_run, tiny_run, seg_phantoms):
    from fastapi.testclient import TestClient

    from cardiomegaly.serve import create_app

    film = sorted((seg_phantoms / "images").glob("*.png"))[0]
    app = create_app(tiny_run / "model.safetensors", ctr_model=seg_run / "model.safetensors")
    with TestClient(app) as client:
        files = {"file": ("film.png", film.read_bytes(), "application/octet-stream")}
        body = client.post("/v1/predict", files=files).json()
        expected = Measurer.load(seg_run / "model.safetensors").measure(film)
        assert body["ctr"]["value"] == pytest.approx(expected.ctr, abs=1e-4)
        assert body["ctr"]["quality"] == "ok" and "ctr_png_base64" not in body
        drawn = client.post("/v1/predict?cam=1", files=files).json()
        assert drawn["ctr_png_base64"] and drawn["cam_png_base64"]
        assert body["ctr"]["view"] == "" and body["ctr"]["note"] == ""
        as_ap = client.post("/v1/predict?view=AP", files=files).json()["ctr"]
        assert as_ap["view"] == "AP" and as_ap["note"] == AP_NOTE
        refused = client.post("/v1/predict?view=LATERAL", files=files)
        assert refused.status_code == 422 and "PA or AP" in refused.json()["detail"]
        assert client.get("/v1/model").json()["ctr_model"]["name"] == "model.safetensors"
        assert "Cardiothoracic ratio" in client.get("/").text


def test_a_killed_segment_run_resumes_to_the_same_weights(seg_phantoms, tmp_path, monkeypatch):
    import importlib

    from cardiomegaly import TrainConfig, train

    segment_train = importlib.import_module("cardiomegaly.segment.train")
    config = TrainConfig.from_preset(
        None,
        task="segment",
        data=str(seg_phantoms),
        image_size=64,
        epochs=3,
        batch_size=8,
        export_onnx=False,
    )
    train(config, out=tmp_path / "straight")
    real, saves = segment_train.save_checkpoint, []

    def killed_after_two_epochs(*args):
        real(*args)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(segment_train, "save_checkpoint", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train(config, out=tmp_path / "killed")
    monkeypatch.setattr(segment_train, "save_checkpoint", real)
    train(resume=tmp_path / "killed")
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 3
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key


def test_a_model_trained_on_a_split_file_draws_a_fresh_split_on_other_data(seg_run, tmp_path):
    """The split file of the training data names none of another dataset's patients."""
    import yaml

    from cardiomegaly import synthesize
    from cardiomegaly.data.split import select_records
    from cardiomegaly.model import save_model

    model, meta = load_segmenter(seg_run / "model.safetensors")
    meta["training"]["config"]["split"]["split_file"] = str(seg_run / "splits.csv")
    save_model(tmp_path / "model.safetensors", model, meta)
    other = tmp_path / "other"
    synthesize(other, n=20, size=64, seed=9, progress=False)
    _, table, description = select_records(tmp_path / "model.safetensors", meta, other, "test")
    assert len(table) > 0 and "drawn afresh" in description
    assert yaml.safe_load((seg_run / "config.yaml").read_text())["task"] == "segment"


def test_two_process_ddp_trains_a_segment_model_on_the_cpu(seg_phantoms, tmp_path):
    from conftest import torchrun

    result = torchrun(tmp_path, "train", "--task", "segment", "--data", str(seg_phantoms),
                      "--image-size", "64", "--epochs", "2", "--batch-size", "4", "--device",
                      "cpu", "--no-export-onnx", "--out", str(tmp_path / "ddp"))  # fmt: skip
    run = tmp_path / "ddp"
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2]
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert metrics["films"] == read_metadata(run / "model.safetensors")["training"]["split"][
        "test"]["images"]  # fmt: skip
    assert result.stdout.count("test Dice") == 1  # only rank 0 evaluates and reports
