"""Scoring: a model and images in, probabilities out, with the model file's own preprocessing.

>>> model, meta = load_model("runs/train/exp/model.safetensors")                 # doctest: +SKIP
>>> logits = score_dataset(model, XrayDataset(records.table, ImageCache(299)))  # doctest: +SKIP
>>> probs = probabilities(logits, meta)                                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .data.dataset import XrayDataset
from .model import CardioNet


def select_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when there is one, else the CPU.

    >>> select_device("cpu")
    device(type='cpu')
    """
    from .errors import UserError

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device '{device}'; use auto, cpu or cuda")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch; on the CPU in channels_last, the layout oneDNN convolutions run fastest in."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


def autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16 where supported), full precision on CPU."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def score_dataset(
    model: CardioNet,
    ds: XrayDataset,
    batch_size: int = 32,
    device: torch.device | None = None,
    *,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
) -> torch.Tensor:
    """Logits for every item of ``ds``, in order.

    Under ``torch.distributed`` (``world`` > 1) each rank scores an interleaved shard and all
    ranks receive the merged result.
    """
    device = device or next(model.parameters()).device
    model.eval()
    indices = list(range(rank, len(ds), world))
    loader = DataLoader(Subset(ds, indices), batch_size=batch_size, shuffle=False)
    out = []
    for x, _ in tqdm(loader, desc="scoring", unit="batch", leave=False, disable=not progress):
        with autocast(device):
            out.append(model(to_device(x, device)).float().cpu())
    logits = torch.cat(out) if out else torch.empty(0)
    if world == 1:
        return logits
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (indices, logits))
    merged = torch.empty(len(ds))
    for idx, part in parts:
        merged[idx] = part
    return merged


def probabilities(logits: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Probabilities as the model file defines them: sigmoid(logit / temperature).

    The temperature is 1 unless temperature scaling was fitted on validation at training time.

    >>> probabilities(torch.tensor([0.0, 2.0]), {"calibration": {"temperature": 2.0}})
    tensor([0.5000, 0.7311])
    """
    temperature = float(meta.get("calibration", {}).get("temperature", 1.0))
    return torch.sigmoid(logits.float() / temperature)
