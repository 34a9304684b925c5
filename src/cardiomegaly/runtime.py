"""How models run: the device, its threads, mixed precision, and batched scoring.

Below every stage that runs a network (train, evaluate, predict, explain). torch is imported
inside the functions: :func:`cpu_threads` serves ONNX Runtime sessions, and predict on a CPU never
loads torch (half a gigabyte of memory, seconds of start-up).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .progress import progress_bar

if TYPE_CHECKING:
    import torch

    from .data.dataset import XrayDataset
    from .model import CardioNet


def cpu_threads(cgroup: str | Path = "/sys/fs/cgroup") -> int:
    """The threads worth running: the CPUs this process may use, capped by a container's CPU
    quota (cgroup v2 ``cpu.max``: Docker ``--cpus``, Kubernetes limits), which
    ``os.cpu_count()`` and torch's default do not see. Oversubscribed threads are slower.

    >>> cpu_threads() >= 1
    True
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = n or 1
    try:
        quota, period = (Path(cgroup) / "cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def select_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when there is one, else the CPU. On the CPU, torch's thread pool is cut
    to :func:`cpu_threads` when it is larger.

    >>> select_device("cpu")
    device(type='cpu')
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device '{device}'; use auto, cpu or cuda")
    if device == "cpu" or not torch.cuda.is_available():
        if torch.get_num_threads() > cpu_threads():
            torch.set_num_threads(cpu_threads())
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")  # one GPU per rank


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch; on the CPU in channels_last, the layout oneDNN convolutions run fastest in."""
    import torch

    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


def autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16 where supported), full precision on CPU."""
    import torch

    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


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
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, Subset

    device = device or next(model.parameters()).device
    model.eval()
    indices = list(range(rank, len(ds), world))
    loader = DataLoader(
        Subset(ds, indices), batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda"
    )
    out = []
    for x, _ in progress_bar(loader, desc="scoring", unit="batch", every=0, enabled=progress):
        with torch.no_grad(), autocast(device):
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
