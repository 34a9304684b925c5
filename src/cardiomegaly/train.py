"""Training: one loop, read top to bottom. Also runs under ``torchrun`` (PyTorch DDP).

>>> from cardiomegaly import TrainConfig, train
>>> result = train(TrainConfig(data="synthetic", preset="demo", weights="none"))  # doctest: +SKIP
>>> result.run_dir, result.test["auroc"]                                           # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from . import __version__
from .config import TrainConfig, from_dict, load_yaml, save_yaml
from .data.cache import ImageCache
from .data.dataset import XrayDataset, train_augmentation
from .data.records import load_records
from .data.split import patient_split, save_splits
from .errors import UserError
from .evaluate import auroc, choose_threshold, summary_metrics
from .fileio import atomic_open, atomic_write_text
from .model import CardioNet, build_model, load_model, load_weights, preprocessing_for, save_model

log = logging.getLogger(__name__)

AUX_WEIGHT = 0.4  # InceptionV3's auxiliary loss weight (Szegedy et al. 2016)
MIN_FREE_BYTES = 200 * 2**20


@dataclass
class TrainResult:
    """Where the run went and how the best model did."""

    run_dir: Path
    best_epoch: int
    val_auroc: float
    test: dict[str, float]


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def train(
    cfg: TrainConfig | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
) -> TrainResult:
    """Train a model as ``cfg`` says; write the run folder; evaluate the best model on test.

    ``resume`` continues a killed run from its ``last.pt`` (with the configuration saved there)
    and ends with the same weights as an uninterrupted run on the CPU.
    """
    if resume is None and cfg is None:
        raise UserError("give a TrainConfig, or resume= a run folder")
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "last.pt").is_file():
            raise UserError(f"{run_dir}: no last.pt to resume from")
        cfg = from_dict(TrainConfig, load_yaml(run_dir / "config.yaml"))
    ddp = _setup_distributed(cfg.device)
    try:
        return _train(cfg, ddp, out, resume)
    finally:
        if ddp.world > 1:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, ddp: _Dist, out, resume) -> TrainResult:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    run_dir = Path(resume) if resume else _run_dir(out, ddp)
    if Path(cfg.data).exists():  # a resume from another folder finds the data again
        cfg = dataclasses.replace(cfg, data=os.path.abspath(cfg.data))
    # The model first: a missing weights file or an offline download fails in seconds.
    model = build_model(cfg.arch, dropout=cfg.dropout, aux_logits=cfg.aux_logits)
    weights_info = load_weights(model, cfg.weights) if not resume else {}
    if ddp.main and not resume:
        _check_writable(run_dir)
        save_yaml(cfg, run_dir / "config.yaml")

    # Data: records, patient-wise split (kept with the run), cache warmed once by rank 0.
    records = load_records(cfg.data, cfg.data_config)
    if resume:
        cfg.split.split_file = str(run_dir / "splits.csv")
    split = patient_split(records, cfg.split)
    cache = ImageCache(cfg.image_size, cfg.resize, root=cfg.cache_dir)
    if ddp.main:
        save_splits(records, split, run_dir / "splits.csv")
        bad = cache.warm(list(records.table["path"]))
        for _path, reason in bad:
            print(f"skipped     {reason}")
        _write_skipped(run_dir, bad)
    _barrier(ddp)
    bad_paths = set(_read_skipped(run_dir))
    keep = ~records.table["path"].isin(bad_paths)
    tables = {name: records.table[keep & (split == name)] for name in ("train", "val", "test")}
    for name, table in tables.items():
        if table["label"].nunique() < 2:
            raise UserError(f"the {name} split has only one class; more data or other fractions")
    train_ds = XrayDataset(tables["train"], cache, train_augmentation(cfg.augment))
    val_ds = XrayDataset(tables["val"], cache)
    test_ds = XrayDataset(tables["test"], cache)

    # Loss and optimisation.
    model.to(ddp.device)
    if ddp.device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    positives = float(tables["train"]["label"].sum())
    pos_weight = None if cfg.balanced_sampler else (len(train_ds) - positives) / positives
    criterion = nn.BCEWithLogitsLoss(
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight, device=ddp.device)
    )

    # From scratch there is nothing worth freezing: one stage, all layers, lr.
    stages = _stages(cfg)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.head_parameters(), "lr": cfg.lr},
            {
                "params": model.backbone_parameters(),
                "lr": cfg.lr if cfg.weights == "none" else cfg.backbone_lr,
            },
        ],
        weight_decay=cfg.weight_decay,
    )
    scheduler = _scheduler(cfg, optimizer)
    # Loss scaling only for float16; bfloat16 (where the GPU has it) needs none.
    fp16 = ddp.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    state: dict[str, Any] = {"epoch": 0, "best_auroc": -1.0, "best_epoch": -1, "bad_epochs": 0,
                             "history": [], "weights": weights_info}  # fmt: skip
    if resume:
        saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        model.net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        if ddp.main:
            print(f"resuming {run_dir} after epoch {state['epoch']}")

    for epoch in range(state["epoch"], cfg.epochs):
        stage, blocks = stages[epoch]
        model.set_trainable(blocks)
        net: nn.Module = model
        if ddp.world > 1:  # re-wrapped each epoch: the set of trainable parameters may change
            net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        # Seeds per epoch: augmentation, dropout and order are the same after a resume.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        loader = _train_loader(cfg, train_ds, ddp, epoch)
        start = time.perf_counter()

        # Train one epoch.
        model.train()
        total, logits_seen, labels_seen = 0.0, [], []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs} stage {stage}",
                   disable=not ddp.main, unit="batch", leave=False)  # fmt: skip
        for x, y in bar:
            x, y = _to_device(x, ddp.device), y.to(ddp.device, torch.float32)
            with _autocast(ddp.device):
                logits, aux = net(x, with_aux=True)
                loss = criterion(logits.float(), y)
                if aux is not None:
                    loss = loss + AUX_WEIGHT * criterion(aux.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.item() * len(y)
            logits_seen.append(logits.detach().float().cpu())
            labels_seen.append(y.cpu())
            if ddp.main:
                bar.set_postfix(
                    loss=f"{total / sum(len(t) for t in labels_seen):.4f}",
                    auroc=f"{auroc(torch.cat(labels_seen), torch.cat(logits_seen)):.3f}",
                )
        train_logits, train_labels = _gather(ddp, torch.cat(logits_seen), torch.cat(labels_seen))
        train_loss = _gather_sum(ddp, total) / len(train_labels)

        # Validate.
        val_logits = _predict(model, val_ds, cfg.batch_size, ddp)
        val_labels = torch.tensor(val_ds.labels)
        val_loss = criterion(val_logits.to(ddp.device), val_labels.to(ddp.device)).item()
        val_probs = torch.sigmoid(val_logits)
        val_auroc = auroc(val_labels, val_probs)
        lr = optimizer.param_groups[0]["lr"]
        if cfg.schedule == "plateau":
            scheduler.step(val_auroc if math.isfinite(val_auroc) else 0.0)
        else:
            scheduler.step()
        row = {
            "epoch": epoch + 1, "stage": stage, "lr": lr,
            "train_loss": train_loss, "val_loss": val_loss,
            "train_auroc": auroc(train_labels, train_logits),
            "val_auroc": val_auroc,
            "train_accuracy": float(((train_logits > 0).float() == train_labels).float().mean()),
            "val_accuracy": float(((val_probs >= 0.5).float() == val_labels).float().mean()),
            "seconds": time.perf_counter() - start,
        }  # fmt: skip
        state["history"].append(row)
        state["epoch"] = epoch + 1
        improved = val_auroc > state["best_auroc"]
        if improved:
            state.update(best_auroc=val_auroc, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if ddp.main:
            print(
                f"epoch {epoch + 1:>3}/{cfg.epochs} stage {stage}  loss {train_loss:.4f}  "
                f"val loss {val_loss:.4f}  val AUROC {val_auroc:.4f}  "
                f"{row['seconds']:.0f} s{'  *best' if improved else ''}"
            )
            if improved:
                threshold = choose_threshold(val_labels, val_probs, cfg.threshold_rule)
                meta = _metadata(cfg, records, tables, state, threshold)
                save_model(run_dir / "model.safetensors", model, meta)
            _write_history(run_dir, state["history"])
            _save_last(run_dir / "last.pt", model, optimizer, scheduler, state)
        _barrier(ddp)
        if state["bad_epochs"] >= cfg.patience:
            if ddp.main:
                print(f"early stop: no better validation AUROC for {cfg.patience} epochs")
            break

    # The best model, read back from its file, on the test split.
    best, meta = load_model(run_dir / "model.safetensors")
    best.to(ddp.device)
    test_probs = torch.sigmoid(_predict(best, test_ds, cfg.batch_size, ddp))
    test = summary_metrics(test_ds.labels, test_probs.numpy(), meta["threshold"]["value"])
    if ddp.main:
        _write_test(run_dir, tables["test"], test_probs.numpy(), test, meta)
        print(
            f"test AUROC {test['auroc']:.4f}  accuracy {test['accuracy']:.3f}  at threshold "
            f"{test['threshold']:.3f} (chosen on validation)  ({test['n']} images, "
            f"{test['positives']} positive)"
        )
    return TrainResult(run_dir, state["best_epoch"], state["best_auroc"], test)


# ----------------------------------------------------------------------------------- helpers


def _setup_distributed(device: str) -> _Dist:
    """One process, or one rank of a ``torchrun`` job (gloo on CPU, nccl on GPU)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device_ = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    return _Dist(dist.get_rank(), dist.get_world_size(), device_)


def _barrier(ddp: _Dist) -> None:
    if ddp.world > 1:
        dist.barrier()


def _run_dir(out: str | Path | None, ddp: _Dist) -> Path:
    """runs/train/exp, exp2, ... (or ``out``); rank 0 decides, every rank uses its answer."""
    chosen = [None]
    if ddp.main:
        if out is not None:
            path = Path(out)
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                raise UserError(f"{path}: exists and is not an empty folder; give a new --out")
        else:
            base = Path("runs") / "train"
            path = next(base / (f"exp{i}" if i > 1 else "exp") for i in range(1, 100_000)
                        if not (base / (f"exp{i}" if i > 1 else "exp")).exists())  # fmt: skip
        chosen = [str(path)]
    if ddp.world > 1:
        dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


def _check_writable(run_dir: Path) -> None:
    """Fail before an hour of training, not after it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc})") from None
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"{run_dir}: only {free // 2**20} MiB free; a run needs about 200 MiB")
    print(f"run folder {run_dir}")


def _write_skipped(run_dir: Path, bad: list[tuple[str, str]]) -> None:
    with atomic_open(run_dir / "skipped.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(bad)


def _read_skipped(run_dir: Path) -> list[str]:
    with open(run_dir / "skipped.csv", newline="", encoding="utf-8") as f:
        return [row["path"] for row in csv.DictReader(f)]


def _stages(cfg: TrainConfig) -> list[tuple[int, str | tuple[str, ...]]]:
    """(stage, trainable blocks) for every epoch."""
    if cfg.weights == "none":
        return [(1, "all")] * cfg.epochs
    blocks: str | tuple[str, ...] = "all" if "all" in cfg.unfreeze else tuple(cfg.unfreeze)
    head = min(cfg.head_epochs, cfg.epochs)
    return [(1, "head")] * head + [(2, blocks)] * (cfg.epochs - head)


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=2)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)


def _train_loader(cfg: TrainConfig, ds: XrayDataset, ddp: _Dist, epoch: int) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    if ddp.world > 1:
        if cfg.balanced_sampler:
            raise UserError(
                "--balanced-sampler is not supported with torchrun; use the loss weight"
            )
        sampler = torch.utils.data.DistributedSampler(ds, seed=cfg.seed, shuffle=True)
        sampler.set_epoch(epoch)
    elif cfg.balanced_sampler:
        labels = torch.tensor(ds.labels)
        weights = torch.where(labels == 1, 0.5 / labels.sum(), 0.5 / (1 - labels).sum())
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(ds), generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(ds, generator=generator)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      generator=generator, drop_last=len(ds) > cfg.batch_size)  # fmt: skip


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


def _autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16 where supported), full precision on CPU."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _gather(ddp: _Dist, *tensors: torch.Tensor) -> list[torch.Tensor]:
    if ddp.world == 1:
        return list(tensors)
    parts: list[Any] = [None] * ddp.world
    dist.all_gather_object(parts, [t.cpu() for t in tensors])
    return [torch.cat([p[i] for p in parts]) for i in range(len(tensors))]


def _gather_sum(ddp: _Dist, value: float) -> float:
    if ddp.world == 1:
        return value
    parts: list[Any] = [None] * ddp.world
    dist.all_gather_object(parts, value)
    return float(sum(parts))


@torch.no_grad()
def _predict(model: CardioNet, ds: XrayDataset, batch_size: int, ddp: _Dist) -> torch.Tensor:
    """Logits for every item of ``ds`` in order; ranks score interleaved shards and gather."""
    model.eval()
    indices = list(range(ddp.rank, len(ds), ddp.world))
    loader = DataLoader(Subset(ds, indices), batch_size=batch_size, shuffle=False)
    out = []
    for x, _ in loader:
        with _autocast(ddp.device):
            out.append(model(_to_device(x, ddp.device)).float().cpu())
    logits = torch.cat(out) if out else torch.empty(0)
    if ddp.world == 1:
        return logits
    parts: list[Any] = [None] * ddp.world
    dist.all_gather_object(parts, (indices, logits))
    merged = torch.empty(len(ds))
    for idx, part in parts:
        merged[idx] = part
    return merged


def _metadata(cfg, records, tables, state, threshold) -> dict[str, Any]:
    """What the model file says about itself (DESIGN: model file)."""
    return {
        "preprocessing": preprocessing_for(cfg.arch, cfg.image_size, cfg.resize),
        "threshold": {"value": threshold, "rule": cfg.threshold_rule,
                      "chosen_on": "validation split"},
        "training": {
            "data": str(cfg.data),
            "format": records.format,
            "split": {name: {"images": len(t), "patients": int(t["patient"].nunique()),
                             "positives": int(t["label"].sum())} for name, t in tables.items()},
            "split_seed": cfg.split.seed,
            "epochs": state["epoch"],
            "best_epoch": state["best_epoch"],
            "seed": cfg.seed,
            "val_auroc": state["best_auroc"],
            "weights": state["weights"],
            "preset": cfg.preset,
            "config": dataclasses.asdict(cfg),
        },
        "versions": {"cardiomegaly": __version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": "research only; not a medical device",
    }  # fmt: skip


def _save_last(path: Path, model, optimizer, scheduler, state) -> None:
    """Everything needed to resume, loadable with ``weights_only=True`` (no pickled objects)."""
    payload = {"model": model.net.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "state": state}  # fmt: skip
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with atomic_open(run_dir / "history.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    _plot_curves(run_dir / "curves.png", history)


def _plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("loss", "accuracy", "auroc"),
                              ("loss (weighted BCE)", "accuracy (at p = 0.5)", "AUROC"),
                              strict=True):  # fmt: skip
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train (augmented)")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "o-", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        stage2 = [h["epoch"] for h in history if h["stage"] == 2]
        if stage2 and stage2[0] > 1:
            ax.axvline(stage2[0] - 0.5, color="grey", ls="--", lw=1)
    axes[0].set_yscale("log")  # early validation losses of an untrained network are huge
    axes[0].legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _write_test(run_dir: Path, table, probs: np.ndarray, metrics: dict, meta: dict) -> None:
    """The best model on the test split: metrics.json and predictions.csv under test/."""
    folder = run_dir / "test"
    threshold = meta["threshold"]["value"]
    report = {
        "data": meta["training"]["data"],
        "split": "test (patient-wise, held out from training and threshold choice)",
        "threshold_rule": meta["threshold"]["rule"],
        **metrics,
    }
    atomic_write_text(folder / "metrics.json", json.dumps(report, indent=2) + "\n")
    with atomic_open(folder / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "patient", "label", "probability", "prediction"])
        for (path, patient, label), p in zip(
            table[["path", "patient", "label"]].itertuples(index=False), probs, strict=True
        ):
            writer.writerow([path, patient, int(label), f"{p:.6f}", int(p >= threshold)])
