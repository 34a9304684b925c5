"""Films and their masks as tensors, and augmentation that moves both together.

Films come from the preprocessing cache (decoded once per size); masks are decoded once, squared
with the same policy as their film, and held in memory (three bytes per pixel per film).
Geometric augmentation moves film and masks alike; exposure, windowing and contrast change the
film only: other hospitals' films differ most in those.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import AugmentConfig
from ..data.cache import ImageCache
from ..data.preprocess import to_square
from ..data.sources.masks import mask_columns, read_mask
from ..errors import ImageError


class MaskDataset(torch.utils.data.Dataset):
    """(film (1, S, S) float in [0, 1], masks (3, S, S) float 0/1) for each row of a records
    table with mask columns."""

    def __init__(
        self, table: pd.DataFrame, cache: ImageCache, augment: JointAugment | None = None
    ) -> None:
        self.paths = list(table["path"])
        self.cache, self.augment = cache, augment
        self.masks = (
            np.stack([square_masks(row, cache) for _, row in table.iterrows()])
            if len(table)
            else np.zeros((0, 3, cache.size, cache.size), np.uint8)
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.cache.get(self.paths[i]))[None]
        y = torch.from_numpy(self.masks[i])
        if self.augment is not None:
            x, y = self.augment(x, y)
        return x, y.float()


def square_masks(row: pd.Series, cache: ImageCache) -> np.ndarray:
    """A record's three masks (3, S, S) as uint8 0/1, squared with the cache's size and resize
    policy, as its film is; a file that is no mask raises ImageError naming it."""
    out = []
    for column in mask_columns():
        try:
            mask = read_mask(row[column])
        except ValueError as exc:
            raise ImageError(str(exc)) from None
        square = to_square(mask.astype(np.float32), cache.size, cache.resize)
        out.append(square > 0.5)
    return np.stack(out).astype(np.uint8)


class JointAugment(nn.Module):
    """Rotation, shift and scale of film and masks together (masks by nearest neighbour), then
    brightness, contrast, gamma and a random window of the film alone."""

    def __init__(self, cfg: AugmentConfig, window: float = 0.15) -> None:
        super().__init__()
        self.geometry = v2.RandomAffine(
            degrees=cfg.rotation, translate=(cfg.translate,) * 2, scale=tuple(cfg.scale)
        )
        self.jitter = v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast)
        self.gamma, self.window = cfg.gamma, window

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.geometry(tv_tensors.Image(x), tv_tensors.Mask(y))
        x = self.jitter(x).as_subclass(torch.Tensor).clamp(0, 1)
        if self.gamma > 0:
            x = x ** math.exp((torch.rand(()).item() * 2 - 1) * self.gamma)
        if self.window > 0:  # a narrower window, as another hospital's display settings
            lo = torch.rand(()).item() * self.window
            hi = 1 - torch.rand(()).item() * self.window
            x = ((x - lo) / (hi - lo)).clamp(0, 1)
        return x, y.as_subclass(torch.Tensor)
