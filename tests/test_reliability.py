"""Reliability: killed runs resume bit-identically, long work checks first, nothing hostile is
unpickled, and no patient identifier reaches any output."""

from __future__ import annotations

import importlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cardiomegaly import train
from cardiomegaly.cli import main
from cardiomegaly.errors import UserError
from cardiomegaly.model import load_model
from makers import IDENTIFIERS, tiny_train_config, write_dicom

train_module = sys.modules["cardiomegaly.train"]


# ------------------------------------------------------------------------------ killed runs


def _final_files_are_whole(run: Path) -> None:
    """Every file under its final name parses completely; anything else is a temporary file."""
    readers = {
        ".yaml": lambda p: yaml.safe_load(p.read_text()),
        ".csv": pd.read_csv,
        ".pt": lambda p: torch.load(p, weights_only=True),
        ".safetensors": load_model,
        ".png": lambda p: Image.open(p).verify(),
    }
    for path in run.rglob("*"):
        if path.is_dir():
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # an atomic write the kill interrupted: never under a final name
        readers.get(path.suffix, lambda p: p.read_bytes())(path)


def test_a_run_killed_three_times_resumes_to_the_same_weights(tiny_phantoms, tmp_path):
    """SIGKILL at three random moments of training, each followed by --resume (the small-data
    preset's network: five runs of InceptionV3 took a minute)."""
    config = tiny_train_config(tiny_phantoms, epochs=4, cache_dir=str(tmp_path / "cache"),
                               arch="unet_encoder")  # fmt: skip
    start = time.perf_counter()
    train(config, out=tmp_path / "straight")
    duration = time.perf_counter() - start

    config_file = tmp_path / "config.yaml"
    split = {"train": 0.5, "val": 0.25, "test": 0.25}
    config_file.write_text(yaml.safe_dump({"split": split, "augment": {"rotation": 5}}))
    run = tmp_path / "killed"
    first = ["train", "--data", str(tiny_phantoms), "--config", str(config_file), "--weights",
             "none", "--arch", "unet_encoder", "--image-size", "75", "--epochs", "4",
             "--batch-size", "8",
             "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]  # fmt: skip
    moments = random.Random(8).sample(range(1, 100), 3)  # percent of an in-process run's time
    for kill, percent in enumerate(moments):
        argv = first if kill == 0 else ["train", "--resume", str(run)]
        child = subprocess.Popen([sys.executable, "-m", "cardiomegaly", *argv],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.time() + 120
        while not (run / "config.yaml").exists() and child.poll() is None:
            assert time.time() < deadline, "the run never started"
            time.sleep(0.05)
        time.sleep(duration * percent / 100)
        child.send_signal(signal.SIGKILL)
        child.wait()
        _final_files_are_whole(run)
    done = subprocess.run([sys.executable, "-m", "cardiomegaly", "train", "--resume", str(run)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(run / "last.pt", weights_only=True)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    straight, _ = load_model(tmp_path / "straight" / "model.safetensors")
    resumed, _ = load_model(run / "model.safetensors")
    resumed_state = resumed.state_dict()
    for key, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed_state[key]), key


def test_a_pickled_object_posing_as_last_pt_is_refused_and_never_run(
    tiny_phantoms, tmp_path, capsys
):
    run = tmp_path / "run"
    train(tiny_train_config(tiny_phantoms, epochs=1), out=run)
    marker = tmp_path / "pwned"
    (run / "last.pt").unlink()
    torch.save({"model": _Exploit(str(marker))}, run / "last.pt")
    assert main(["train", "--resume", str(run)]) == 2
    assert "not a checkpoint this tool wrote" in capsys.readouterr().err
    assert not marker.exists()


class _Exploit:
    """Unpickling this would create a file: what a hostile last.pt would do instead."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# --------------------------------------------------------------------- checks before long work


def test_too_little_disk_space_stops_training_before_the_first_epoch(
    tiny_phantoms, tmp_path, monkeypatch
):
    runs_module = importlib.import_module("cardiomegaly.runs")  # the checks every run shares
    real = runs_module.shutil.disk_usage

    def nearly_full(path):
        total, used, _ = real(path)
        return type(real(path))(total, used, 5 * 2**20)  # 5 MiB free

    monkeypatch.setattr(runs_module.shutil, "disk_usage", nearly_full)
    config = tiny_train_config(tiny_phantoms)
    with pytest.raises(UserError, match="MiB free, but this run needs about"):
        train(config, out=tmp_path / "run")
    assert not (tmp_path / "run" / "history.csv").exists()


def test_the_cache_needs_space_for_what_it_does_not_hold_yet(tiny_phantoms, tmp_path):
    from cardiomegaly.data.cache import ImageCache

    paths = sorted((tiny_phantoms / "images").glob("*.png"))[:3]
    cache = ImageCache(75, root=tmp_path)
    assert cache.bytes_needed(paths) == 3 * (75 * 75 * 2 + 128)
    cache.get(paths[0])
    assert cache.bytes_needed(paths) == 2 * (75 * 75 * 2 + 128)


# ----------------------------------------------------------------------------------- privacy


def test_no_patient_identifier_reaches_any_output(tmp_path, capfd):
    """DICOM files with known identifying strings, through train (with its ONNX export),
    evaluate, predict (CSV and JSON) and explain, logging verbosely: no output holds them."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for i in range(16):
        label = "cardiomegaly" if i % 2 else "normal"
        pixels = rng.integers(0, 4096, (80, 80)) // (2 if i % 2 else 1)
        write_dicom(data / label / f"film{i:02d}.dcm", pixels, bits=12)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"split": {"train": 0.5, "val": 0.25, "test": 0.25}}))
    out = tmp_path / "out"
    model = str(out / "run" / "model.safetensors")
    commands = [
        ["train", "--data", str(data), "--config", str(config), "--weights", "none",
         "--arch", "unet_encoder", "--image-size", "75", "--epochs", "1", "--batch-size", "4",
         "--out", str(out / "run"), "--cache-dir", str(tmp_path / "cache")],
        ["evaluate", model, "--data", str(data), "--out", str(out / "evaluate"),
         "--bootstrap", "50", "--cache-dir", str(tmp_path / "cache")],
        ["predict", model, str(data), "--out", str(out / "predictions.csv")],
        ["predict", model, str(data), "--out", str(out / "predictions.json")],
        ["explain", model, "--data", str(data), "--out", str(out / "explain"),
         "--bootstrap", "50"],
    ]  # fmt: skip
    for argv in commands:
        assert main(["-v", *argv]) == 0, argv
    printed = "".join(capfd.readouterr())
    assert (out / "run" / "model.onnx").is_file() and (out / "evaluate" / "report.html").is_file()
    for value in IDENTIFIERS.values():
        assert value not in printed
        for path in out.rglob("*"):
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path


def test_no_patient_id_of_a_label_table_reaches_any_output(tmp_path, capfd, tiny_phantoms, seg_run):
    """A label table whose patient column holds identifying strings, through ``data --splits``,
    cross-validation with the ratio (folds.csv, each fold's split, predictions and report, the
    pooled predictions and combined.csv), evaluate and explain, logging verbosely: no output
    holds them. Films are named by path, patients by the pseudonyms the records table gives."""
    phantoms = pd.read_csv(tiny_phantoms / "phantoms.csv", dtype={"patient": str})
    data, out, cache = tmp_path / "data", tmp_path / "out", str(tmp_path / "cache")
    data.mkdir()
    files = [f"film{i:02d}.png" for i in range(len(phantoms))]
    for name, image in zip(files, phantoms["image"], strict=True):
        shutil.copy(tiny_phantoms / image, data / name)
    mrn = IDENTIFIERS["PatientID"] + "-" + phantoms["patient"]
    pd.DataFrame({"file": files, "finding": phantoms["label"], "mrn": mrn}).to_csv(
        data / "labels.csv", index=False
    )
    (data / "data.yaml").write_text(
        "format: csv\ncsv: labels.csv\ncolumns: {path: file, label: finding, patient: mrn}\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"split": {"train": 0.5, "val": 0.25, "test": 0.25},
                                      "export_onnx": False}))  # fmt: skip
    model = str(out / "cv" / "model.safetensors")
    commands = [
        ["data", str(data), "--splits", str(out / "splits.csv"), "--cache-dir", cache],
        ["train", "--data", str(data), "--config", str(config), "--weights", "none",
         "--arch", "unet_encoder", "--image-size", "75", "--epochs", "1", "--batch-size", "8",
         "--folds", "2", "--ctr-model", str(seg_run / "model.safetensors"),
         "--out", str(out / "cv"), "--cache-dir", cache],
        ["evaluate", model, "--data", str(data), "--split", "all", "--out", str(out / "evaluate"),
         "--bootstrap", "50", "--cache-dir", cache],
        ["explain", model, "--data", str(data), "--split", "all", "--out", str(out / "explain"),
         "--bootstrap", "50"],
    ]  # fmt: skip
    for argv in commands:
        assert main(["-v", *argv]) == 0, argv
    printed = "".join(capfd.readouterr())
    folds = pd.read_csv(out / "cv" / "folds.csv")
    assert folds["patient"].nunique() == phantoms["patient"].nunique()  # grouped, pseudonymous
    assert (out / "cv" / "oof" / "combined.csv").is_file()
    written = [path for path in out.rglob("*") if path.is_file()]
    assert len(written) > 40
    assert IDENTIFIERS["PatientID"] not in printed
    for path in written:
        assert IDENTIFIERS["PatientID"].encode() not in path.read_bytes(), path
