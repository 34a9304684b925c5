"""Records as tensors: a torch Dataset over the preprocessing cache, and training augmentation.

>>> ds = XrayDataset(records.table, ImageCache(299))            # doctest: +SKIP
>>> x, y = ds[0]                                                      # doctest: +SKIP
>>> x.shape, y                                                        # doctest: +SKIP
(torch.Size([1, 299, 299]), 1.0)
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn
from torchvision.transforms import v2

from ..config import AugmentConfig
from .cache import ImageCache


class XrayDataset(torch.utils.data.Dataset):
    """(image (1, S, S) float in [0, 1], label float) for each row of a records table."""

    def __init__(
        self, table: pd.DataFrame, cache: ImageCache, augment: nn.Module | None = None
    ) -> None:
        self.paths = list(table["path"])
        self.labels = [float(v) for v in table["label"]]
        self.cache = cache
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float]:
        x = torch.from_numpy(self.cache.get(self.paths[i]))[None]
        if self.augment is not None:
            x = self.augment(x).clamp_(0.0, 1.0)
        return x, self.labels[i]


class RandomGamma(nn.Module):
    """x ** g with log g uniform in [-amount, amount]: exposure curves of other equipment."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.amount <= 0:
            return x
        g = math.exp((torch.rand(()).item() * 2 - 1) * self.amount)
        return x.clamp(0.0, 1.0) ** g


def train_augmentation(cfg: AugmentConfig) -> nn.Module:
    """Small rotations, shifts, scaling and exposure changes; a horizontal flip only if asked.

    Random numbers come from torch's global generator, so seeding it makes epochs repeatable.
    """
    ops: list[nn.Module] = [
        v2.RandomAffine(
            degrees=cfg.rotation,
            translate=(cfg.translate, cfg.translate),
            scale=tuple(cfg.scale),
            interpolation=v2.InterpolationMode.BILINEAR,
        )
    ]
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops.append(v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast))
    ops.append(RandomGamma(cfg.gamma))
    return v2.Compose(ops)
