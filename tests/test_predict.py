"""Prediction: the Classifier API, the predict command, batch jobs that survive bad files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cardiomegaly import runtime
from cardiomegaly.cli import main
from cardiomegaly.errors import ImageError, UserError
from cardiomegaly.predict import Classifier, Prediction, find_images
from cardiomegaly.runtime import autocast, cpu_threads, select_device
from conftest import torchrun
from makers import write_corrupt_images, write_png


@pytest.fixture(scope="module")
def clf(tiny_run):
    return Classifier.load(tiny_run / "model.safetensors", device="cpu")


def test_the_classifier_reproduces_the_training_runs_test_predictions(clf, tiny_run):
    expected = pd.read_csv(tiny_run / "test" / "predictions.csv")
    got = clf.predict(list(expected["path"]))
    assert [p.path for p in got] == list(expected["path"])
    assert np.allclose([p.probability for p in got], expected["probability"], atol=1e-5)
    assert [p.label for p in got] == list(expected["prediction"])
    assert all(p.threshold == clf.threshold for p in got)


def test_paths_pil_images_and_arrays_give_the_same_answer(clf, tiny_phantoms):
    path = sorted((tiny_phantoms / "images").glob("*.png"))[0]
    by_path = clf.predict(path)
    assert isinstance(by_path, Prediction) and by_path.path == str(path)
    with Image.open(path) as im:
        assert clf.predict(im).probability == pytest.approx(by_path.probability, abs=1e-6)
        arr = np.asarray(im.convert("L"))
    assert clf.predict(arr).probability == pytest.approx(by_path.probability, abs=1e-6)
    assert clf.predict(arr / 255.0).probability == pytest.approx(by_path.probability, abs=1e-3)
    assert by_path.label == int(by_path.probability >= clf.threshold)


def test_bad_arrays_and_files_are_refused_with_a_reason(clf, tmp_path):
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        clf.predict(np.full((80, 80), 3.0))
    with pytest.raises(ImageError, match="shape"):
        clf.predict(np.zeros((2, 80, 80)))
    garbage, *_ = write_corrupt_images(tmp_path)
    with pytest.raises(ImageError, match=str(garbage)):
        clf.predict(garbage)


def test_a_list_with_bad_files_reports_them_and_scores_the_rest(clf, tiny_phantoms, tmp_path):
    good = sorted(str(p) for p in (tiny_phantoms / "images").glob("*.png"))[:5]
    bad = [str(p) for p in write_corrupt_images(tmp_path)]
    mixed = [good[0], bad[0], good[1], bad[1], bad[2], *good[2:]]
    out = clf.predict(mixed, batch_size=2)
    assert [p.path for p in out] == mixed
    assert [p.error is not None for p in out] == [m in bad for m in mixed]
    assert all(p.probability is None and p.label is None for p in out if p.error)
    singles = [clf.predict(g).probability for g in good]
    assert [p.probability for p in out if not p.error] == pytest.approx(singles, abs=1e-6)


def test_find_images_walks_folders_and_expands_globs(tmp_path):
    write_png(tmp_path / "a" / "one.png")
    write_png(tmp_path / "a" / "deep" / "two.PNG")
    (tmp_path / "a" / "dicom_without_suffix").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"x")
    found = find_images([tmp_path / "a"])
    assert [os.path.relpath(p, tmp_path / "a") for p in found] == [
        "deep/two.PNG", "dicom_without_suffix", "one.png"]  # fmt: skip
    assert find_images([str(tmp_path / "a" / "*.png")]) == [str(tmp_path / "a" / "one.png")]
    assert find_images([str(tmp_path / "absent.png")]) == [str(tmp_path / "absent.png")]


def test_predict_command_writes_a_row_per_file_and_an_error_row_per_bad_one(
    tiny_run, tiny_phantoms, tmp_path, capsys
):
    folder = tmp_path / "films"
    shutil.copytree(tiny_phantoms / "images", folder)
    write_corrupt_images(folder)
    out = tmp_path / "out.csv"
    code = main(["predict", str(tiny_run / "model.safetensors"), str(folder), "--out", str(out),
                 "--batch-size", "4"])  # fmt: skip
    assert code == 0
    rows = pd.read_csv(out, keep_default_na=False)
    assert list(rows.columns) == ["path", "probability", "prediction", "threshold", "error"]
    assert len(rows) == 33 and (rows["error"] != "").sum() == 3
    errors = rows[rows["error"] != ""]
    assert sorted(os.path.basename(p) for p in errors["path"]) == [
        "empty.jpg", "garbage.png", "truncated.jpg"]  # fmt: skip
    assert all(e.startswith(p) for p, e in zip(errors["path"], errors["error"], strict=True))
    assert "scored      30 of 33" in capsys.readouterr().out

    as_json = tmp_path / "out.json"
    assert main(["predict", str(tiny_run / "model.safetensors"), str(folder), "--out",
                 str(as_json)]) == 0  # fmt: skip
    records = json.loads(as_json.read_text())
    assert len(records) == 33 and sum(r["error"] is not None for r in records) == 3


def test_predict_exits_2_when_nothing_could_be_scored_or_the_output_exists(
    tiny_run, tmp_path, capsys
):
    bad = write_corrupt_images(tmp_path / "bad")
    model = str(tiny_run / "model.safetensors")
    assert main(["predict", model, str(tmp_path / "bad"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "no image could be read" in capsys.readouterr().err
    taken = tmp_path / "taken.csv"
    taken.write_text("mine")
    assert main(["predict", model, str(bad[0]), "--out", str(taken)]) == 2
    assert taken.read_text() == "mine"
    assert main(["predict", model, str(tmp_path / "nothing-here" / "*.png")]) == 2


def test_torchrun_shards_the_inputs_and_merges_them_in_input_order(tiny_run, tiny_phantoms,
                                                                    tmp_path):  # fmt: skip
    model = str(tiny_run / "model.safetensors")
    images = str(tiny_phantoms / "images")
    assert main(["predict", model, images, "--out", str(tmp_path / "one.csv")]) == 0
    result = torchrun(tmp_path, "predict", model, images, "--out", str(tmp_path / "two.csv"),
                      "--device", "cpu")  # fmt: skip
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert list(one["path"]) == list(two["path"])
    assert np.allclose(one["probability"], two["probability"], atol=1e-5)
    assert result.stdout.count("scored ") == 1


# ------------------------------------------------------------------- devices and threads


def test_the_cpu_runs_in_full_precision():
    import torch

    device = select_device("cpu")
    assert device.type == "cpu"
    with autocast(device):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


def test_auto_takes_the_gpu_in_mixed_precision_where_there_is_one_and_cuda_is_refused_elsewhere():
    """Both branches assert: on a GPU machine the GPU half runs, on a CPU machine the other."""
    import torch

    if torch.cuda.is_available():
        device = select_device("auto")
        assert device.type == "cuda" and select_device("cuda") == device
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        a = torch.ones(8, 8, device=device)
        with autocast(device):
            assert (a @ a).dtype == expected
    else:
        assert select_device("auto").type == "cpu"
        with pytest.raises(UserError, match="no CUDA device"):
            select_device("cuda")


def test_threads_follow_the_container_cpu_quota(tmp_path, monkeypatch):
    import torch

    (tmp_path / "cpu.max").write_text("50000 100000\n")  # docker run --cpus 0.5
    assert cpu_threads(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_threads(tmp_path) == len(os.sched_getaffinity(0))
    assert cpu_threads(tmp_path / "no-cgroup") == len(os.sched_getaffinity(0))

    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "cpu_threads", lambda: 1)
    try:
        select_device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_pydicoms_own_test_files_give_error_rows_and_no_tracebacks(tiny_run, tmp_path):
    """pydicom's decoder plugins log what they cannot decode with full tracebacks; the tool
    reports those films as error rows, so the terminal gets no traceback."""
    pydicom_data = pytest.importorskip("pydicom.data")
    folder = Path(pydicom_data.get_testdata_file("CT_small.dcm")).parent
    out = tmp_path / "p.csv"
    result = subprocess.run([sys.executable, "-m", "cardiomegaly", "predict",
                             str(tiny_run / "model.safetensors"), str(folder), "--out", str(out)],
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    rows = pd.read_csv(out)
    assert rows["error"].notna().sum() >= 4 and rows["probability"].notna().sum() >= 4
