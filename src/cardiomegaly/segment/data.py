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
    simulated fluid (``cfg.fluid`` of the films), brightness, contrast, gamma and a random
    window of the film alone."""

    def __init__(self, cfg: AugmentConfig, window: float = 0.15) -> None:
        super().__init__()
        self.geometry = v2.RandomAffine(
            degrees=cfg.rotation, translate=(cfg.translate,) * 2, scale=tuple(cfg.scale)
        )
        self.jitter = v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast)
        self.gamma, self.window, self.fluid = cfg.gamma, window, cfg.fluid

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.geometry(tv_tensors.Image(x), tv_tensors.Mask(y))
        x, y = x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
        if self.fluid > 0 and torch.rand(()).item() < self.fluid:
            x = simulated_fluid(x, y)
        x = self.jitter(x).clamp(0, 1)
        if self.gamma > 0:
            x = x ** math.exp((torch.rand(()).item() * 2 - 1) * self.gamma)
        if self.window > 0:  # a narrower window, as another hospital's display settings
            lo = torch.rand(()).item() * self.window
            hi = 1 - torch.rand(()).item() * self.window
            x = ((x - lo) / (hi - lo)).clamp(0, 1)
        return x, y


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _ramp(coordinate: torch.Tensor, edge: float, softness: float) -> torch.Tensor:
    """0 well before ``edge``, 1 well after it, a logistic step ``softness`` pixels wide."""
    return torch.sigmoid((coordinate - edge) / softness)


def simulated_fluid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The film (1, S, S) with a pleural effusion drawn over the base of one lung or both (by
    the masks (3, S, S): heart, left lung, right lung), and now and then a haze over a lung:
    denser towards the heart's own brightness, never darker. The masks are not changed.

    The fluid fills a lung from its base up to a level between 15 % and 60 % of its height,
    higher at the chest wall (a meniscus), over the lung and a few pixels around it with a soft
    edge (not below the lung, so the heart's outline is not taught to run down into the belly);
    what it covers is blended halfway to fully towards the heart's median brightness.
    """
    size = x.shape[-1]
    heart, lungs = y[0] > 0, [y[1] > 0, y[2] > 0]
    if not heart.any() or not all(lung.any() for lung in lungs):
        return x
    target = x[0][heart].median()
    rows = torch.arange(size, dtype=x.dtype)[:, None]
    cols = torch.arange(size, dtype=x.dtype)[None, :]
    pick = torch.rand(()).item()
    sides = lungs[:1] if pick < 0.4 else lungs[1:] if pick < 0.8 else lungs
    cover = torch.zeros(size, size, dtype=x.dtype)
    for lung in sides:
        r = torch.nonzero(lung.any(1)).flatten()
        c = torch.nonzero(lung.any(0)).flatten()
        top, base = float(r[0]), float(r[-1])
        first, last = float(c[0]), float(c[-1])
        # which side is the chest wall: the lung lies on that side of the film's middle
        wall_left = (first + last) / 2 < size / 2
        from_wall = ((cols - first) if wall_left else (last - cols)) / max(last - first, 1.0)
        level = base - _uniform(0.15, 0.6) * (base - top)
        level = level - _uniform(0.0, 0.15) * (base - top) * (1 - from_wall.clamp(0, 1))
        vertical = _ramp(rows, level, _uniform(0.008, 0.025) * size)
        cover = torch.maximum(cover, _uniform(0.5, 1.0) * vertical * _softened(lung, 11))
    if torch.rand(()).item() < 0.3:  # a haze over one lung (edema, a supine film's fluid)
        lung = lungs[int(torch.rand(()).item() < 0.5)]
        cover = torch.maximum(cover, _uniform(0.1, 0.4) * _softened(lung, 15))
    return x + cover * (target - x).clamp(min=0)


def _softened(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A boolean mask (S, S) grown by ``width // 2`` pixels, then averaged over ``width`` x
    ``width`` pixels: 1 inside, fading to 0 just outside."""
    m = mask.float()[None, None]
    grown = nn.functional.max_pool2d(m, width, stride=1, padding=width // 2)
    return nn.functional.avg_pool2d(grown, width, stride=1, padding=width // 2)[0, 0]
