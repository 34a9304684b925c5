"""Training: the run folder, resuming, and two-process DDP on the CPU."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch

from cardiomegaly import DataConfig, TrainConfig
from cardiomegaly.cli import main
from cardiomegaly.model import read_metadata
from makers import tiny_train_config

train_module = importlib.import_module("cardiomegaly.train")  # the package re-exports train()


@pytest.fixture
def phantoms(tiny_phantoms):
    return tiny_phantoms


def tiny(phantoms, **kw) -> TrainConfig:
    return tiny_train_config(phantoms, **kw)


def test_a_run_folder_holds_everything_listed(phantoms, tmp_path):
    result = train_module.train(tiny(phantoms), out=tmp_path / "run")
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "splits.csv",
        "history.csv",
        "curves.png",
        "model.safetensors",
        "last.pt",
        "test/metrics.json",
        "test/predictions.csv",
        "test/report.html",
        "test/roc.png",
    ):
        assert (run / name).is_file(), name
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == ["epoch", "stage", "lr", "train_loss", "val_loss",
                                     "train_auroc", "val_auroc", "train_accuracy",
                                     "val_accuracy", "seconds"]  # fmt: skip
    assert list(history["epoch"]) == [1, 2]
    meta = read_metadata(run / "model.safetensors")
    assert meta["threshold"]["chosen_on"] == "validation split"
    assert meta["preprocessing"]["image_size"] == 75
    assert meta["training"]["weights"] == {"source": "none"}
    split = meta["training"]["split"]
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert metrics["images"] == split["test"]["images"]
    assert len(pd.read_csv(run / "test/predictions.csv")) == metrics["images"]
    assert set(meta["threshold"]["operating_points"]) == {"youden", "sens90", "spec90"}
    assert meta["evaluation"]["auroc"] == metrics["auroc"]["value"]  # for the model card
    assert result.test["auroc"] == metrics["auroc"]
    saved = pd.read_csv(run / "splits.csv")
    assert (saved.groupby("patient")["split"].nunique() == 1).all()


def test_resume_after_a_kill_ends_with_the_same_weights(phantoms, tmp_path, monkeypatch):
    config = tiny(phantoms, epochs=3)
    train_module.train(config, out=tmp_path / "straight")

    real_save = train_module._save_last
    saves = []

    def killed_after_two_epochs(*args):
        real_save(*args)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # what a kill leaves: last.pt of epoch 2, nothing after

    monkeypatch.setattr(train_module, "_save_last", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config, out=tmp_path / "killed")
    monkeypatch.setattr(train_module, "_save_last", real_save)
    train_module.train(resume=tmp_path / "killed")

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 3
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert pd.read_csv(tmp_path / "straight" / "history.csv")[["train_loss", "val_auroc"]].equals(
        pd.read_csv(tmp_path / "killed" / "history.csv")[["train_loss", "val_auroc"]]
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(phantoms, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CARDIOMEGALY_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", "--master_addr=127.0.0.1",
        "-m", "cardiomegaly", "train", "--data", str(phantoms), "--weights", "none",
        "--image-size", "75", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
        "--out", str(tmp_path / "ddp"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    meta = read_metadata(run / "model.safetensors")
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    # Both ranks scored half of the test split; the gathered result covers every image once.
    assert metrics["images"] == meta["training"]["split"]["test"]["images"]
    predictions = pd.read_csv(run / "test" / "predictions.csv")
    assert predictions["path"].is_unique and len(predictions) == metrics["images"]
    assert result.stdout.count("test AUROC") == 1  # only rank 0 reports and writes


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--image-size", "64"], "under 75"),
        (["--epochs", "0"], "at least 1"),
        (["--preset", "nope"], "invalid choice"),
    ],
)
def test_bad_train_arguments_exit_2(phantoms, capsys, argv, words):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(phantoms), *argv])
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_output_folder_that_is_a_file_is_refused_before_training(phantoms, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    code = main(["train", "--data", str(phantoms), "--weights", "none", "--out",
                 str(tmp_path / "file")])  # fmt: skip
    assert code == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


def test_demo_preset_fills_in_only_what_was_not_said():
    config = TrainConfig.from_preset("demo", epochs=3)
    assert (config.data, config.image_size, config.epochs, config.weights) == (
        "synthetic",
        128,
        3,
        "none",
    )
    assert isinstance(config.data_config, DataConfig) and config.data_config.size == 192


def test_a_missing_weights_file_stops_before_any_folder_is_made(phantoms, tmp_path, capsys):
    code = main(["train", "--data", str(phantoms), "--weights", str(tmp_path / "absent.pth"),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    assert "absent.pth: no such file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
