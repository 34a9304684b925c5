"""How models run: the device, its threads, mixed precision, and batched scoring.

Below every stage that runs a network (train, evaluate, predict, explain). torch is imported
inside the functions: :func:`cpu_threads` serves ONNX Runtime sessions, and predict on a CPU never
loads torch (half a gigabyte of memory, seconds of start-up).
"""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from .artifacts import METADATA_KEY, beside, read_onnx_metadata
from .errors import UserError
from .fileio import sha256_of
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


# ----------------------------------------------------------------------------- ONNX Runtime


def cuda_wanted(device: str) -> bool:
    """Whether ``device`` would run on CUDA, asking torch only where a GPU could be."""
    if device == "cpu" or (os.name == "posix" and not glob.glob("/dev/nvidia[0-9]*")):
        return False
    return select_device(device).type == "cuda"


def onnx_session(path: str | Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with :func:`cpu_threads` threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    # A memory plan per input shape holds every activation at once: without it, peak memory at
    # batch 16 and 299 px falls by about 0.2 GB at no cost in speed (make bench).
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_backend(
    path: str | Path, device: str = "auto", backend: str = "auto"
) -> tuple[ort.InferenceSession | None, dict[str, Any]]:
    """The ONNX Runtime session (and its metadata) that should answer for model file ``path``,
    or (None, {}) for PyTorch. Either task.

    ``auto``: the ``model.onnx`` beside the model file, when the model runs on the CPU and the
    export's metadata carries the SHA-256 of the model file as it is now (training writes one).
    ``onnx``: that export (or ``path`` itself when it is one), whatever it was made from.
    """
    path = Path(path)
    if backend not in ("auto", "torch", "onnx"):
        raise UserError(f"unknown backend '{backend}'; choose auto, torch or onnx")
    if path.suffix == ".onnx":
        backend = "onnx"
    onnx_path = path if path.suffix == ".onnx" else beside(path, ".onnx")
    if backend == "auto" and onnx_path.is_file() and not cuda_wanted(device):
        try:
            session = onnx_session(onnx_path)
            meta = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        except Exception:  # not ours, or not readable: PyTorch answers instead
            return None, {}
        if meta.get("exported_from", {}).get("sha256") == sha256_of(path):
            return session, meta
    if backend == "onnx":
        if not onnx_path.is_file():
            raise UserError(f"{onnx_path}: no ONNX export; make it with "
                            f"'cardiomegaly export {path} --format onnx'")  # fmt: skip
        return onnx_session(onnx_path), read_onnx_metadata(onnx_path)
    return None, {}
