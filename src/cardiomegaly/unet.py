"""The U-Net both tasks share: MONAI's UNet as the segment task builds it, and its down path (the
encoder) as a classifier backbone, so that a segment model trained on heart and lung masks can
start a classifier (``--arch unet_encoder --weights SEGMODEL``, the ``small-data`` preset).

>>> enc = UNetEncoder(16)
>>> enc(torch.rand(2, 3, 64, 64)).shape
torch.Size([2, 1])
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn


def monai_unet(width: int, out_channels: int) -> nn.Module:
    """MONAI's UNet: residual units (two per level), strided convolutions, five levels of
    ``width`` to ``16 * width`` channels, one grey input channel."""
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=out_channels,
        channels=tuple(width * 2**i for i in range(5)),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="batch",
    )


def encoder_blocks(unet: nn.Module) -> list[nn.Module]:
    """The down path of a :func:`monai_unet`: one block per level, then the bottom, in order."""
    blocks, level = [unet.model[0]], unet.model[1].submodule
    while isinstance(level, nn.Sequential):
        blocks.append(level[0])
        level = level[1].submodule
    return [*blocks, level]


class UNetEncoder(nn.Module):
    """A U-Net's encoder as a classifier: each film standardised by its own mean and spread (as
    the segment model sees it), the deepest features averaged, one logit (``fc``)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*encoder_blocks(monai_unet(width, 1)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :1]  # the classifier replicates grey to 3 channels; the U-Net takes one
        x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        return self.fc(torch.flatten(self.pool(self.encoder(x)), 1))


def encoder_state(unet_state: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """A segment U-Net's weights (its ``state_dict``) as the ``encoder.*`` weights of a
    :class:`UNetEncoder` of the same width; the decoder and the output layer are left out."""
    out_channels = unet_state["model.2.0.conv.bias"].shape[0]  # the up path's last layer
    unet = monai_unet(width, out_channels)
    unet.load_state_dict(unet_state)
    encoder = nn.Sequential(*encoder_blocks(unet))
    return {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
