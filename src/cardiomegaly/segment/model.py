"""Segmentation networks (MONAI's U-Nets), their registry, and the segment model file.

A :class:`SegNet` takes grey films in [0, 1], shape (B, 1, S, S), standardises each film by its
own mean and spread (films of other hospitals are exposed and windowed differently), and returns
one logit map per organ of :data:`MASK_CLASSES`, shape (B, 3, S, S); sigmoid > 0.5 is the mask.

>>> net = build_segmenter("unet")
>>> net(torch.rand(2, 1, 64, 64)).shape
torch.Size([2, 3, 64, 64])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from ..artifacts import require_task
from ..errors import UserError
from ..model import load_state, save_model
from ..runtime import autocast, to_device
from ..unet import monai_unet
from .ctr import MASK_CLASSES

#: Inputs must divide by this (four halvings).
SIZE_MULTIPLE = 16


def _unet(width: int) -> nn.Module:
    """MONAI's UNet: residual units (two per level), strided convolutions, five levels."""
    return monai_unet(width, len(MASK_CLASSES))


def _basicunet(width: int) -> nn.Module:
    """MONAI's BasicUNet: the original U-Net's two convolutions per level, max pooling."""
    features = (*(width * 2**i for i in range(5)), width)
    return BasicUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=len(MASK_CLASSES),
        features=features,
        norm="batch",
    )


#: name -> builder(width). Measured on JSRT and judged on NIH (benchmarks/segment_jsrt.py):
#: "basicunet" fits JSRT a little closer and reads NIH worse, at 4.5 times the work;
#: "unet" is the preset.
SEG_ARCHS: dict[str, Callable[[int], nn.Module]] = {"unet": _unet, "basicunet": _basicunet}


class SegNet(nn.Module):
    """A U-Net behind per-film intensity standardisation; logits per organ."""

    task = "segment"

    def __init__(self, arch: str = "unet", width: int = 16) -> None:
        super().__init__()
        if arch not in SEG_ARCHS:
            raise UserError(
                f"unknown segmentation architecture '{arch}'; choose from {', '.join(SEG_ARCHS)}"
            )
        self.arch, self.width = arch, width
        self.net = SEG_ARCHS[arch](width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        return self.net((x - mean) / std)

    def describe(self) -> dict[str, Any]:
        """What the model file records to rebuild this network."""
        return {"name": self.arch, "width": self.width}


def build_segmenter(arch: str = "unet", width: int = 16) -> SegNet:
    """A randomly initialised :class:`SegNet`."""
    return SegNet(arch, width)


def segment_preprocessing(image_size: int, resize: str) -> dict[str, Any]:
    """What the model file says about its input (read back by every consumer)."""
    if image_size % SIZE_MULTIPLE:
        near = max(SIZE_MULTIPLE, round(image_size / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        raise UserError(
            f"--image-size {image_size}: a U-Net needs a multiple of "
            f"{SIZE_MULTIPLE}, such as {near}"
        )
    return {
        "image_size": image_size,
        "resize": resize,
        "channels": 1,
        "input": "grey in [0, 1]; each film standardised by its own mean and spread",
        "output": "one logit map per class; mask = sigmoid > 0.5",
    }


def save_segmenter(path: str | Path, model: SegNet, metadata: dict[str, Any]) -> None:
    """One ``model.safetensors`` with ``task: segment``."""
    save_model(path, model, {"task": "segment", "classes": list(MASK_CLASSES), **metadata})


def load_segmenter(path: str | Path) -> tuple[SegNet, dict[str, Any]]:
    """A segment model file back as an eval-mode :class:`SegNet` and its metadata."""
    state, meta = load_state(path)
    require_task(meta, "segment", path)
    return segmenter_from_state(state, meta, path), meta


def segmenter_from_state(
    state: dict[str, torch.Tensor], meta: dict[str, Any], where: str | Path
) -> SegNet:
    """An eval-mode :class:`SegNet` from its tensors and its model file's metadata (a segment
    model file's, or the one a classifier embeds to cut its films)."""
    arch = meta["architecture"]
    model = SegNet(arch["name"], int(arch.get("width", 16)))
    own = model.net.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise UserError(
            f"{where}: weights do not fit a {arch['name']} of width {arch.get('width')}"
        )
    model.net.load_state_dict(state)
    return model.eval()


def predict_masks(model: SegNet, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Boolean masks (B, 3, S, S) for films (B, 1, S, S) in [0, 1]: sigmoid > 0.5."""
    model.eval()
    with torch.no_grad(), autocast(device):
        logits = model(to_device(images, device)).float().cpu()
    return (logits > 0).numpy()


def score_masks(
    model: SegNet, ds: torch.utils.data.Dataset, device: torch.device, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true masks (N, 3, S, S), boolean, for every item of a mask dataset."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    preds, truths = [], []
    for x, y in loader:
        preds.append(predict_masks(model, x, device))
        truths.append(y.numpy() > 0.5)
    empty = np.zeros((0, len(MASK_CLASSES), 1, 1), bool)
    return (np.concatenate(preds) if preds else empty), (
        np.concatenate(truths) if truths else empty
    )
