"""The small-data preset: a classifier made of a segment model's U-Net encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from cardiomegaly import Classifier, TrainConfig, UserError, train
from cardiomegaly.cli import main
from cardiomegaly.explain import heatmaps
from cardiomegaly.fileio import sha256_of
from cardiomegaly.model import build_model, load_model, load_weights, read_metadata
from cardiomegaly.segment.model import build_segmenter, load_segmenter, save_segmenter
from cardiomegaly.tta import TTA_VIEWS
from cardiomegaly.unet import encoder_blocks
from makers import one_line_error

SPLIT = {"train": 0.5, "val": 0.25, "test": 0.25}


def _encoder_state(segment_model) -> dict[str, torch.Tensor]:
    net, _ = load_segmenter(segment_model)
    encoder = torch.nn.Sequential(*encoder_blocks(net.net))
    return {f"encoder.{k}": v for k, v in encoder.state_dict().items()}


def test_the_unet_encoder_starts_from_the_segment_models_down_path_with_a_new_head(seg_run):
    segment_model = seg_run / "model.safetensors"
    fresh = build_model("unet_encoder")
    head = fresh.net.fc[1].weight.detach().clone()
    info = load_weights(fresh, str(segment_model))
    assert info == {"source": "segment model", "file": "model.safetensors",
                    "sha256": sha256_of(segment_model)}  # fmt: skip
    own = fresh.net.state_dict()
    expected = _encoder_state(segment_model)
    assert expected and all(torch.equal(own[k], v) for k, v in expected.items())
    assert torch.equal(fresh.net.fc[1].weight, head)  # one logit of ours, not the decoder's


def test_the_small_data_preset_trains_the_head_first_then_exports_and_explains(
    seg_run, tiny_phantoms, tmp_path
):
    segment_model = seg_run / "model.safetensors"
    config = TrainConfig.from_preset("small-data", data=str(tiny_phantoms),
                                     weights=str(segment_model), image_size=80, epochs=1,
                                     batch_size=8, split=SPLIT, export_onnx=True)  # fmt: skip
    assert (config.arch, config.head_epochs, config.unfreeze) == ("unet_encoder", 3, ["all"])
    assert config.ema == 0.995  # the preset's weight average (docs/experiments.md)
    run = train(config, out=tmp_path / "run").run_dir
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["preset"] == "small-data" and saved["backbone_lr"] == 1e-3
    meta = read_metadata(run / "model.safetensors")
    assert meta["architecture"]["name"] == "unet_encoder"
    # the films are cut to the thorax by the segment model it starts from
    assert meta["preprocessing"]["thorax_crop"]["sha256"] == sha256_of(segment_model)
    assert meta["training"]["weights"]["source"] == "segment model"
    assert meta["preprocessing"]["tta"] == TTA_VIEWS  # so the ONNX parity below covers the views
    # One epoch, all of it head only: the encoder, batch-norm statistics included, is untouched.
    model, _ = load_model(run / "model.safetensors")
    own = model.net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in _encoder_state(segment_model).items())
    films = sorted(str(p) for p in (tiny_phantoms / "images").glob("*.png"))[:6]
    on_torch = Classifier.load(run / "model.safetensors", backend="torch")
    on_onnx = Classifier.load(run / "model.onnx")
    a = [p.probability for p in on_torch.predict(films)]
    b = [p.probability for p in on_onnx.predict(films)]
    assert np.abs(np.array(a) - np.array(b)).max() <= 1e-4
    maps = heatmaps(on_torch, np.stack([on_torch.preprocess(f) for f in films]))
    assert maps.shape == (6, 80, 80) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0


@pytest.mark.parametrize(
    ("arch", "width", "source", "words"),
    [
        ("unet_encoder", 16, "imagenet", ["unet_encoder has no ImageNet weights", "--weights"]),
        ("resnet18", 16, "segment", ["a segment model", "only --arch unet_encoder"]),
        ("unet_encoder", 8, "segment", ["a unet of width 8", "width 16"]),
    ],
)
def test_the_unet_encoder_refuses_weights_it_cannot_start_from(tmp_path, arch, width, source,
                                                               words):  # fmt: skip
    if source == "segment":
        source = str(tmp_path / "seg.safetensors")
        save_segmenter(source, build_segmenter("unet", width),
                       {"preprocessing": {"image_size": 64, "resize": "pad"}})  # fmt: skip
    with pytest.raises(UserError) as info:
        load_weights(build_model(arch), source)
    assert all(word in str(info.value) for word in words)


def test_the_preset_without_a_segment_model_is_one_line_and_status_2(tiny_phantoms, tmp_path,
                                                                     capsys):  # fmt: skip
    code = main(["train", "--preset", "small-data", "--data", str(tiny_phantoms),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    one_line_error(capsys.readouterr().err, "--weights is imagenet", "--weights SEGMODEL")
