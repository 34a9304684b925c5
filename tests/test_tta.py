"""Test-time views: a model file that asks for them answers with the mean probability over the
film and eight small changes of it, in training's scoring and in every later use alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cardiomegaly import Classifier, TrainConfig, UserError, choose_threshold, evaluate, train
from cardiomegaly.cli import build_parser
from cardiomegaly.model import load_model, read_metadata, save_model
from cardiomegaly.tta import TTA_VIEWS, TTAViews
from makers import tiny_train_config


class _Linear(torch.nn.Module):
    """A logit that is a weighted sum of the pixels: every view of a film gives another one."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(
            torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(0)) * 0.05
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).sum((1, 2, 3))


def test_the_answer_is_the_mean_probability_over_the_film_and_its_eight_views():
    size = 64
    net = _Linear(size)
    x = torch.zeros(3, 1, size, size)  # a dark margin: the views' border handling plays no part
    x[:, :, 12:-12, 12:-12] = torch.rand(3, 1, size - 24, size - 24)
    views = [x] + [torch.roll(x, s, d) for s in (4, -4) for d in (2, 3)]
    for angle, scale in ((0, 0.92), (0, 1.08), (5, 1.0), (-5, 1.0)):  # torchvision's own affine
        views.append(TF.affine(x, angle=angle, translate=[0, 0], scale=scale, shear=[0.0, 0.0],
                               interpolation=InterpolationMode.BILINEAR))  # fmt: skip
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(net(v)) for v in views]).mean(0)
        got = torch.sigmoid(TTAViews(net, size)(x))
        plain = torch.sigmoid(net(x))
    assert TTAViews(net, size).views == 9
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the views change the answer: they are used


def test_the_small_data_preset_asks_for_the_views_and_no_tta_turns_them_off():
    assert TrainConfig.from_preset("small-data", weights="seg.safetensors").tta is True
    assert TrainConfig.from_preset("small-data", weights="seg.safetensors", tta=False).tta is False
    assert TrainConfig().tta is False  # the ImageNet default answers on the film alone
    train_args = ["train", "--preset", "small-data", "--data", "d"]
    assert build_parser().parse_args([*train_args, "--no-tta"]).tta is False
    assert build_parser().parse_args(train_args).tta is None  # unsaid: the preset decides


def test_a_run_with_views_scores_chooses_its_threshold_and_answers_through_them(
    tiny_phantoms, tmp_path
):
    run = train(tiny_train_config(tiny_phantoms, tta=True), out=tmp_path / "run").run_dir
    model = run / "model.safetensors"
    meta = read_metadata(model)
    assert meta["preprocessing"]["tta"] == TTA_VIEWS
    net, _ = load_model(model)  # the bare network, for comparison
    clf = Classifier.load(model, backend="torch")

    def answers(paths):
        x = np.stack([clf.preprocess(p) for p in paths])
        with torch.no_grad():
            bare = torch.sigmoid(net(torch.from_numpy(x)[:, None])).numpy()
        return clf.probabilities(x), bare

    test = pd.read_csv(run / "test" / "predictions.csv")
    through_views, bare = answers(list(test["path"]))
    assert np.allclose(test["probability"], through_views, atol=1e-5)  # training's test scoring
    assert np.abs(through_views - bare).max() > 1e-4  # ... which the views changed
    splits = pd.read_csv(run / "splits.csv")
    val = splits[splits["split"] == "val"]
    val_probs, _ = answers([str(tiny_phantoms / p) for p in val["path"]])
    rule = meta["threshold"]["rule"]
    assert meta["threshold"]["value"] == pytest.approx(
        choose_threshold(val["label"].to_numpy(), val_probs, rule), abs=1e-6
    )  # chosen on validation through the views, as the model will answer
    scored = evaluate(model, str(tiny_phantoms), split="test", out=tmp_path / "eval")
    again = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert scored.metrics["auroc"]["value"] is not None and np.allclose(
        again.set_index("path").loc[test["path"], "probability"], test["probability"], atol=1e-5
    )  # evaluate too; ONNX Runtime: test_small_data (the preset asks for the views)
    assert "test-time views" in (tmp_path / "eval" / "report.html").read_text()


@pytest.mark.parametrize(
    "tta", [{"scales": [0.9]}, {"scales": [0.0, 1.1], "shift_px": 4, "degrees": 5}, "yes"]
)
def test_a_model_file_with_malformed_views_is_refused_clearly(tiny_run, tmp_path, tta):
    net, meta = load_model(tiny_run / "model.safetensors")
    model = tmp_path / "model.safetensors"
    save_model(model, net, {**meta, "preprocessing": {**meta["preprocessing"], "tta": tta}})
    with pytest.raises(UserError, match="model metadata is not valid .*tta"):
        read_metadata(model)
