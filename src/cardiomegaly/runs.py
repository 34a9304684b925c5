"""What every training run shares, whatever its task: the run folder, disk-space and
write checks, skipped films, DDP (one process or a ``torchrun`` rank), the epoch's loader,
resumable checkpoints.

Below ``train`` (classify) and ``segment.train`` (segment).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from .errors import UserError, first_line
from .fileio import atomic_open, next_run_folder
from .runtime import select_device

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where a run stands after each epoch; saved in last.pt as plain values (resumable)."""

    epoch: int = 0
    best: float = -1.0  # the best validation score so far: AUROC, or mean Dice
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    weights: dict[str, Any] = dataclasses.field(default_factory=dict)

    def record(self, row: dict[str, Any], score: float) -> bool:
        """Add an epoch's history row and its validation score; whether it is the best yet."""
        self.history.append(row)
        self.epoch = int(row["epoch"])
        improved = score > self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = score, self.epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> RunState:
        """The state a last.pt holds (``best_auroc``: written before the segment task)."""
        saved = dict(saved)
        if "best_auroc" in saved:
            saved["best"] = saved.pop("best_auroc")
        return cls(**saved)


@dataclass
class Dist:
    """This process's place in a (possibly one-process) distributed run."""

    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """One process, or one rank of a ``torchrun`` job (gloo on CPU, nccl on GPU)."""
    chosen = select_device(device)
    use_cuda = chosen.type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(0, 1, chosen)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device_ = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), device_)


def barrier(ddp: Dist) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if ddp.world > 1:
        dist.barrier()


def run_folder(out: str | Path | None, ddp: Dist) -> Path:
    """runs/train/exp, exp2, ... (or ``out``); rank 0 decides, every rank uses its answer."""
    chosen = [None]
    if ddp.main:
        if out is not None:
            path = Path(out)
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                raise UserError(f"{path}: exists and is not an empty folder; give a new --out")
        else:
            path = next_run_folder(Path("runs") / "train", "exp")
        chosen = [str(path)]
    if ddp.world > 1:
        dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


def check_writable(run_dir: Path) -> None:
    """Fail before an hour of training, not after it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc})") from None
    log.info("run folder %s", run_dir)


def check_space(folder: Path, needed: int, what: str) -> None:
    """Fail now when the disk cannot hold what the run will write, not after an hour."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UserError(
            f"{folder}: {free / 2**20:.0f} MiB free, but {what} needs about "
            f"{needed / 2**20:.0f} MiB; free some space first"
        )


def write_skipped(run_dir: Path, bad: list[tuple[str, str]]) -> None:
    """``skipped.csv``: the films that could not be read, with the reason."""
    with atomic_open(run_dir / "skipped.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(bad)


def read_skipped(run_dir: Path) -> list[tuple[str, str]]:
    """The (path, reason) rows of ``skipped.csv``, which rank 0 wrote for every rank."""
    with open(run_dir / "skipped.csv", newline="", encoding="utf-8") as f:
        return [(row["path"], row["reason"]) for row in csv.DictReader(f)]


def gather(ddp: Dist, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor concatenated over the ranks (itself in one process)."""
    if ddp.world == 1:
        return list(tensors)
    parts: list[Any] = [None] * ddp.world
    dist.all_gather_object(parts, [t.cpu() for t in tensors])
    return [torch.cat([p[i] for p in parts]) for i in range(len(tensors))]


def gather_sum(ddp: Dist, value: float) -> float:
    """``value`` summed over the ranks."""
    if ddp.world == 1:
        return value
    parts: list[Any] = [None] * ddp.world
    dist.all_gather_object(parts, value)
    return float(sum(parts))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """last.pt, unpickling nothing but tensors and plain containers (``weights_only``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = first_line(exc)
        raise UserError(
            f"{path}: not a checkpoint this tool wrote; refused ({reason[:120]})"
        ) from None


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """A resumable checkpoint (tensors and plain containers only), written atomically."""
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def train_loader(
    ds: Dataset,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    epoch: int,
    ddp: Dist,
    balanced_labels: list[int] | None = None,
) -> DataLoader:
    """One epoch's shuffled training batches, the same after a resume (seeded by ``seed`` and
    ``epoch``); under torchrun each rank its share. ``balanced_labels`` (0/1 per item) draws
    balanced batches instead, which torchrun does not support."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if ddp.world > 1:
        if balanced_labels is not None:
            raise UserError(
                "--balanced-sampler is not supported with torchrun; use the loss weight"
            )
        sampler = torch.utils.data.DistributedSampler(ds, seed=seed, shuffle=True)
        sampler.set_epoch(epoch)
    elif balanced_labels is not None:
        labels = torch.tensor(balanced_labels)
        weights = torch.where(labels == 1, 0.5 / labels.sum(), 0.5 / (1 - labels).sum())
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(ds), generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(ds, generator=generator)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        drop_last=len(ds) > batch_size,
        pin_memory=ddp.device.type == "cuda",
    )
