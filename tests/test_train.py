"""Training: the run folder, resuming, and two-process DDP on the CPU."""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from cardiomegaly import DataConfig, TrainConfig
from cardiomegaly.cli import main
from cardiomegaly.model import read_metadata
from conftest import torchrun
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


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_after_a_kill_ends_with_the_same_weights(phantoms, tmp_path, monkeypatch, ema):
    # InceptionV3 without the weight average, the U-Net encoder with it (a third of the time)
    config = tiny(phantoms, epochs=3, ema=ema, arch="unet_encoder" if ema else "inception_v3")
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
    assert ("ema" in a) == bool(ema)
    for key, tensor in a.get("ema", {}).items():  # the weight average resumes too
        assert torch.equal(tensor, b["ema"][key]), key
    assert pd.read_csv(tmp_path / "straight" / "history.csv")[["train_loss", "val_auroc"]].equals(
        pd.read_csv(tmp_path / "killed" / "history.csv")[["train_loss", "val_auroc"]]
    )


def test_with_ema_the_model_file_holds_the_average_of_the_weights(phantoms, tmp_path):
    from safetensors.torch import load_file

    train_module.train(tiny(phantoms, epochs=1, batch_size=4, ema=0.5), out=tmp_path / "run")
    saved = load_file(tmp_path / "run" / "model.safetensors")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    average = {k.removeprefix("module.net."): v for k, v in last["ema"].items()
               if k.startswith("module.net.")}  # fmt: skip
    assert set(saved) == set(average)
    assert all(torch.equal(saved[k], average[k]) for k in saved)
    assert any(not torch.equal(saved[k], last["model"][k]) for k in saved)  # not the raw ones
    report = (tmp_path / "run" / "test" / "report.html").read_text()
    assert "averaged over the training steps, decay 0.5 per step (about the last 2 steps)" in report


def _torchrun_train(phantoms, tmp_path, *argv) -> subprocess.CompletedProcess:
    """A tiny ``train`` under two CPU processes (gloo), which must succeed."""
    return torchrun(tmp_path, "train", "--data", str(phantoms), "--weights", "none",
                    "--image-size", "75", "--epochs", "1", "--batch-size", "4", "--device",
                    "cpu", *argv)  # fmt: skip


def test_two_process_ddp_trains_each_fold_and_pools_them_on_cpu(phantoms, tmp_path):
    """InceptionV3 under two processes: each fold is a plain run whose test split both ranks
    score in halves, and rank 0 alone gathers, writes and pools (one launch: 15 s of start-up)."""
    result = _torchrun_train(phantoms, tmp_path, "--folds", "2", "--no-export-onnx",
                             "--out", str(tmp_path / "cv"))  # fmt: skip
    for k in (0, 1):
        run = tmp_path / "cv" / f"fold{k}"
        meta = read_metadata(run / "model.safetensors")
        metrics = json.loads((run / "test" / "metrics.json").read_text())
        assert metrics["images"] == meta["training"]["split"]["test"]["images"]
        predictions = pd.read_csv(run / "test" / "predictions.csv")
        assert predictions["path"].is_unique and len(predictions) == metrics["images"]
    assert result.stdout.count("test AUROC") == 2  # only rank 0 reports, once per fold
    oof = pd.read_csv(tmp_path / "cv" / "oof" / "predictions.csv")
    assert oof["path"].is_unique and len(oof) == 30 and set(oof["fold"]) == {0, 1}
    assert result.stdout.count("out-of-fold AUROC") == 1  # rank 0 pools and reports
    assert read_metadata(tmp_path / "cv" / "model.safetensors")["architecture"]["members"] == 2


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--image-size", "64"], "under 75"),
        (["--epochs", "0"], "at least 1"),
        (["--preset", "nope"], "invalid choice"),
    ],
)
def test_bad_train_arguments_exit_2(phantoms, capsys, argv, words):
    try:  # argparse exits; a value the config refuses returns
        code = main(["train", "--data", str(phantoms), *argv])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
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


# ------------------------------------------------------------- transfer learning and options


def _backbone_changes(before: dict, after: dict) -> set[str]:
    """Names of the tensors (parameters and batch-norm statistics) that moved."""
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}


def test_two_stage_transfer_learning_from_a_local_pretrained_file(phantoms, tmp_path):
    """Stage 1 trains the head alone: backbone and its batch-norm statistics stay bit-identical
    to the pretrained file. Stage 2 moves exactly the unfrozen blocks (and the head)."""
    import torchvision

    pretrained = torchvision.models.inception_v3(weights=None, aux_logits=False,
                                                 init_weights=True).state_dict()  # fmt: skip
    weights = tmp_path / "my_inception_v3.pth"
    torch.save(pretrained, weights)
    common = {"weights": str(weights), "head_epochs": 1, "unfreeze": ["Mixed_7"],
              "backbone_lr": 1e-2, "patience": 5}  # fmt: skip

    train_module.train(tiny(phantoms, epochs=1, **common), out=tmp_path / "stage1")
    after1 = torch.load(tmp_path / "stage1" / "last.pt", weights_only=True)["model"]
    moved1 = _backbone_changes(pretrained, after1)
    assert moved1 and all(k.startswith("fc.") for k in moved1), sorted(moved1)[:5]

    train_module.train(tiny(phantoms, epochs=2, **common), out=tmp_path / "stage2")
    after2 = torch.load(tmp_path / "stage2" / "last.pt", weights_only=True)["model"]
    moved2 = _backbone_changes(pretrained, after2)
    assert all(k.startswith(("fc.", "Mixed_7")) for k in moved2), sorted(moved2)[:5]
    assert any(k.startswith("Mixed_7") and "running_mean" in k for k in moved2)
    assert any(k.startswith("Mixed_7") and k.endswith("conv.weight") for k in moved2)

    meta = read_metadata(tmp_path / "stage2" / "model.safetensors")
    weights_info = meta["training"]["weights"]
    assert weights_info["source"] == "file" and weights_info["file"] == weights.name
    assert weights_info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_balanced_sampler_draws_balanced_batches_instead_of_weighting_the_loss(
    phantoms, tmp_path, monkeypatch
):
    seen = {}
    real_optimisation, real_loader = train_module._optimisation, train_module._train_loader

    def optimisation(*args):
        seen["optim"] = real_optimisation(*args)
        return seen["optim"]

    def loader(cfg, ds, ddp, epoch):
        seen["loader"], seen["labels"] = real_loader(cfg, ds, ddp, epoch), ds.labels
        return seen["loader"]

    monkeypatch.setattr(train_module, "_optimisation", optimisation)
    monkeypatch.setattr(train_module, "_train_loader", loader)
    train_module.train(tiny(phantoms, balanced_sampler=True), out=tmp_path / "run")
    assert seen["optim"].criterion.pos_weight is None
    labels = torch.tensor(seen["labels"])
    assert labels.float().mean() > 0.7  # the tiny training split is mostly positive ...
    drawn = labels[torch.tensor(list(seen["loader"].sampler) * 100)]
    assert abs(drawn.float().mean().item() - 0.5) < 0.05  # ... its batches are not


def test_the_plateau_schedule_cuts_the_rate_tenfold_and_only_after_a_plateau(phantoms, tmp_path):
    config = tiny(phantoms, epochs=6, schedule="plateau", patience=6, arch="unet_encoder")
    result = train_module.train(config, out=tmp_path / "run")
    history = pd.read_csv(result.run_dir / "history.csv")
    rates = history["lr"].to_numpy()
    ratios = rates[1:] / rates[:-1]
    assert all(r == pytest.approx(1.0) or r == pytest.approx(0.1) for r in ratios), rates
    assert (ratios < 1).any(), history  # it did cut
    for epoch, ratio in enumerate(ratios, start=2):  # a cut needs 3 epochs without a new best
        if ratio < 1:
            best = history["val_auroc"][: epoch - 1].cummax()
            assert (best.diff().fillna(1)[-3:] <= 0).all(), history


def test_the_auxiliary_classifier_learns_inside_a_real_run(phantoms, tmp_path):
    """The auxiliary logits add a loss term: their layer moves (it gets no gradient otherwise)."""
    from cardiomegaly.model import build_model

    config = tiny(phantoms, epochs=1, image_size=299, aux_logits=True)
    torch.manual_seed(config.seed)
    initial = build_model("inception_v3", dropout=config.dropout, aux_logits=True).net.state_dict()
    train_module.train(config, out=tmp_path / "run")
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(initial["AuxLogits.fc.weight"], after["AuxLogits.fc.weight"])
    assert not torch.equal(initial["fc.weight"], after["fc.weight"])
    meta = read_metadata(tmp_path / "run" / "model.safetensors")
    assert meta["architecture"]["aux_logits"] is True


# --------------------------------------------------------------------------------- logging


def test_a_train_log_written_to_a_file_has_one_line_per_epoch_and_no_bar_frames(phantoms, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        result = subprocess.run(
            [sys.executable, "-m", "cardiomegaly", "train", "--data", str(phantoms),
             "--weights", "none", "--arch", "unet_encoder", "--image-size", "75", "--epochs",
             "3", "--batch-size", "8", "--no-export-onnx", "--out", str(tmp_path / "run")],
            stdout=f, stderr=subprocess.STDOUT, timeout=600, check=False,
        )  # fmt: skip
    text = log.read_text()
    assert result.returncode == 0, text[-2000:]
    assert "\r" not in text
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"], text
    assert "test AUROC" in text and "run folder" in text


def test_quiet_training_prints_only_where_results_went(phantoms, tmp_path, capsys):
    assert main(["-q", "train", "--data", str(phantoms), "--weights", "none", "--image-size",
                 "75", "--epochs", "1", "--batch-size", "8", "--no-export-onnx",
                 "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if line.startswith(("epoch", "test AUROC"))]
    assert f"model       {tmp_path / 'run' / 'model.safetensors'}" in out


def test_training_metrics_go_to_tensorboard_when_it_is_installed(phantoms, tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard not installed (pip install 'cardiomegaly[tensorboard]')",
    )
    train_module.train(tiny(phantoms), out=tmp_path / "run")
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/loss", "val/auroc", "lr"} <= set(events.Tags()["scalars"])
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    logged = [e.value for e in events.Scalars("val/auroc")]
    assert logged == pytest.approx(list(history["val_auroc"]), abs=1e-6)
