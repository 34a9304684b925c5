"""Phantoms written by cardiomegaly synth, or generated into the cache on the fly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ...config import DataConfig
from ...segment.ctr import MASK_CLASSES
from ..cache import default_cache_dir
from ..phantom import synthesize
from ._common import (
    Result,
    _read_csv,
    _require,
    _rows,
)
from .masks import mask_columns


def synthetic_root(cfg: DataConfig) -> Path:
    """Phantoms made on the fly (n, size, seed from ``cfg``), generated once into the cache."""
    root = default_cache_dir() / "synthetic" / f"n{cfg.n}-size{cfg.size}-seed{cfg.seed}"
    if not (root / "phantoms.csv").is_file():
        synthesize(root, n=cfg.n, size=cfg.size, seed=cfg.seed, progress=False)
    return root


def read_synthetic(root: Path, cfg: DataConfig) -> Result:
    """Phantoms: a folder written by ``cardiomegaly synth`` (or :func:`synthetic_root`)."""
    if not cfg.csv and not (root / "phantoms.csv").is_file():
        root = synthetic_root(cfg)  # a data YAML that only says format: synthetic
    csv = root / (cfg.csv or "phantoms.csv")
    df = _read_csv(csv)
    _require(df, ["image", "patient", "label", "ctr"], csv)
    table = pd.DataFrame(
        {
            "path": df["image"].map(lambda p: str(root / p)),
            "label": pd.to_numeric(df["label"], errors="coerce"),
            "patient": df["patient"],
            "view": df.get("view", ""),
            "sex": df.get("sex", ""),
            "age": pd.to_numeric(df.get("age", np.nan), errors="coerce"),
            "source": "synthetic",
            "source_row": _rows(csv, df),
            "ctr": pd.to_numeric(df["ctr"], errors="coerce"),
        }
    )
    for column in ("box_x", "box_y", "box_w", "box_h"):
        if column in df.columns:
            table[column] = pd.to_numeric(df[column], errors="coerce")
    if (root / "masks").is_dir():  # phantoms know their heart and lungs
        for organ, column in zip(MASK_CLASSES, mask_columns(), strict=True):
            table[column] = df["image"].map(
                lambda p, o=organ: str(root / "masks" / o / Path(p).name)
            )
    excluded: Counter = Counter()
    bad = table["label"].isna() | ~table["label"].isin([0, 1])
    excluded["label is not 0 or 1"] += int(bad.sum())
    return table[~bad].copy(), excluded, ["synthetic phantoms: for demos and tests only"]
