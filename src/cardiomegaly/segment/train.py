"""Training for the segment task: heart and lung masks. One loop, read top to bottom; the run
folder, resume, early stopping (on validation Dice), DDP and progress as for classification.

>>> from cardiomegaly import TrainConfig, train
>>> train(TrainConfig.from_preset("segment", data="../shared/data/jsrt-ctr"))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision
from monai.losses import DiceLoss
from torch import nn

from .. import __version__
from ..config import TrainConfig, save_yaml
from ..data.cache import ImageCache
from ..data.records import absolute_sources, load_records
from ..data.sources.masks import mask_columns
from ..data.split import patient_split, save_splits
from ..errors import UserError
from ..evaluate import plots
from ..export import export_beside
from ..fileio import atomic_open, sha256_of
from ..model import is_model_file
from ..progress import progress_bar
from ..runs import (
    Dist,
    RunState,
    barrier,
    check_space,
    check_writable,
    gather_sum,
    load_checkpoint,
    read_skipped,
    run_folder,
    save_checkpoint,
    train_loader,
    write_skipped,
)
from ..runtime import autocast, to_device
from .ctr import MASK_CLASSES
from .data import JointAugment, MaskDataset
from .evaluate import evaluate_segmenter
from .measure import dice
from .model import (
    SegNet,
    build_segmenter,
    load_segmenter,
    save_segmenter,
    score_masks,
    segment_preprocessing,
)

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """Where the run went and how the best model did (Dice on validation and test)."""

    run_dir: Path
    best_epoch: int
    val_dice: float
    test: dict[str, Any]


class DiceBCELoss(nn.Module):
    """Soft Dice plus binary cross-entropy, each organ its own sigmoid (the masks overlap at
    their borders). Not MONAI's DiceCELoss: with several channels its cross-entropy is a softmax
    across them, which makes the organs compete for every pixel, background included."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


def train_segmenter(cfg: TrainConfig, ddp: Dist, out=None, resume=None) -> SegmentResult:
    """Train a segment model as ``cfg`` says (``cfg.task == "segment"``)."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    run_dir = Path(resume) if resume else run_folder(out, ddp)
    # Absolute paths: a resume from another folder finds the data again.
    cfg = dataclasses.replace(cfg, data=absolute_sources(cfg.data))
    preprocessing = segment_preprocessing(cfg.image_size, cfg.resize)  # a bad size fails now
    model = build_segmenter(cfg.arch, cfg.width)
    state = RunState(weights=_load_weights(model, cfg.weights) if not resume else {})
    if ddp.main and not resume:
        check_writable(run_dir)
        check_space(
            run_dir, 5 * sum(p.numel() * 4 for p in model.parameters()) + 50 * 2**20, "this run"
        )
        save_yaml(cfg, run_dir / "config.yaml")
    records, tables, datasets = _prepare_data(cfg, run_dir, ddp, resume)
    model.to(ddp.device)
    criterion = DiceBCELoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if resume and (run_dir / "last.pt").is_file():
        saved = load_checkpoint(run_dir / "last.pt")
        model.net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = RunState.from_checkpoint(saved["state"])
        log.info("resuming %s after epoch %d", run_dir, state.epoch)
    curves = plots.Redraw(lambda: _plot_curves(run_dir / "curves.png", state.history))

    for epoch in range(state.epoch, cfg.epochs):
        net: nn.Module = model
        if ddp.world > 1:
            net = nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        loader = train_loader(datasets["train"], batch_size=cfg.batch_size, workers=cfg.workers,
                              seed=cfg.seed, epoch=epoch, ddp=ddp)  # fmt: skip
        start = time.perf_counter()

        # Train one epoch.
        model.train()
        total, seen = 0.0, 0
        bar = progress_bar(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", every=0, enabled=ddp.main
        )
        for x, y in bar:
            x, y = to_device(x, ddp.device), y.to(ddp.device)
            with autocast(ddp.device):
                loss = criterion(net(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(x), seen + len(x)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        train_loss = gather_sum(ddp, total) / max(1.0, gather_sum(ddp, float(seen)))

        # Validate: Dice of the thresholded masks per organ.
        pred, truth = score_masks(model, datasets["val"], ddp.device, cfg.batch_size)
        per_organ = {
            organ: float(np.mean([dice(p[k], t[k]) for p, t in zip(pred, truth, strict=True)]))
            for k, organ in enumerate(MASK_CLASSES)
        }
        val_dice = float(np.mean(list(per_organ.values())))
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "val_dice": val_dice,
            **{f"val_dice_{k}": v for k, v in per_organ.items()},
            "seconds": time.perf_counter() - start,
        }

        # Record, keep the best, stop early or go on.
        improved = state.record(row, val_dice)
        if ddp.main:
            log.info(
                "epoch %3d/%d  loss %.4f  val Dice %.4f (heart %.3f, lungs %.3f / %.3f)  %.0f s%s",
                epoch + 1,
                cfg.epochs,
                train_loss,
                val_dice,
                per_organ["heart"],
                per_organ["left_lung"],
                per_organ["right_lung"],
                row["seconds"],
                "  *best" if improved else "",
            )
            if improved:
                save_segmenter(
                    run_dir / "model.safetensors",
                    model,
                    _metadata(cfg, records.format, tables, state, preprocessing),
                )
            _write_history(run_dir, state.history)
            curves.update()
            save_checkpoint(
                run_dir / "last.pt",
                {
                    "model": model.net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": dataclasses.asdict(state),
                },
            )
        barrier(ddp)
        if state.bad_epochs >= cfg.patience:
            if ddp.main:
                log.info("early stop: no better validation Dice for %d epochs", cfg.patience)
            break

    test = {}
    if ddp.main:
        curves.flush()
        test = _evaluate_test(cfg, ddp, run_dir)
        if cfg.export_onnx:
            export_beside(run_dir / "model.safetensors")
    return SegmentResult(run_dir, state.best_epoch, state.best, test)


# ------------------------------------------------------------------------------------ helpers


def _load_weights(model: SegNet, source: str) -> dict[str, Any]:
    """none, a segment model file (fine-tuning), or a state dict whose matching tensors (an
    encoder trained elsewhere, say) are copied; the file's SHA-256 is recorded."""
    if source in ("none", "imagenet"):
        if source == "imagenet":
            log.warning("no ImageNet weights exist for a U-Net; it starts from random weights")
        return {"source": "none"}
    path = Path(source)
    if not path.is_file():
        raise UserError(f"--weights {source}: no such file; use none or a weights file")
    if is_model_file(path):
        other, _ = load_segmenter(path)
        state = other.net.state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"{path}: not a PyTorch state dict ({type(exc).__name__})") from None
    own = model.net.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise UserError(f"{path}: no tensor fits a {model.arch} of width {model.width}")
    model.net.load_state_dict({**own, **fits})
    log.info("loaded %d of %d tensors from %s", len(fits), len(own), path)
    return {
        "source": "file",
        "file": path.name,
        "sha256": sha256_of(path),
        "tensors_loaded": len(fits),
        "tensors": len(own),
    }


def _prepare_data(cfg: TrainConfig, run_dir: Path, ddp: Dist, resume):
    """Records with masks, the patient-wise split (kept with the run), the cache warmed once."""
    records = load_records(cfg.data, cfg.data_config)
    if not set(mask_columns()) <= set(records.table.columns):
        raise UserError(
            f"{cfg.data}: no masks; the segment task needs a folder of images/ and "
            "masks/heart|left_lung|right_lung/ (or phantoms from cardiomegaly synth)"
        )
    if resume and (run_dir / "splits.csv").is_file():
        cfg.split.split_file = str(run_dir / "splits.csv")
    split = patient_split(records, cfg.split)
    cache = ImageCache(cfg.image_size, cfg.resize, root=cfg.cache_dir)
    if ddp.main:
        save_splits(records, split, run_dir / "splits.csv")
        bad = cache.warm(list(records.table["path"]))
        for _path, reason in bad:
            log.warning("skipped     %s", reason)
        write_skipped(run_dir, bad)
    barrier(ddp)
    bad_paths = {path for path, _ in read_skipped(run_dir)}
    keep = ~records.table["path"].isin(bad_paths)
    tables = {name: records.table[keep & (split == name)] for name in ("train", "val", "test")}
    for name, table in tables.items():
        if table.empty:
            raise UserError(f"the {name} split is empty; more films or other fractions")
    datasets = {  # the test split is scored at the end, as evaluate does
        "train": MaskDataset(tables["train"], cache, JointAugment(cfg.augment)),
        "val": MaskDataset(tables["val"], cache),
    }
    return records, tables, datasets


def _metadata(cfg, data_format, tables, state, preprocessing) -> dict[str, Any]:
    split = {
        name: {"images": len(t), "patients": int(t["patient"].nunique())}
        for name, t in tables.items()
    }
    return {
        "preprocessing": preprocessing,
        "training": {
            "data": cfg.data,
            "format": data_format,
            "split": split,
            "split_seed": cfg.split.seed,
            "epochs": state.epoch,
            "best_epoch": state.best_epoch,
            "seed": cfg.seed,
            "val_dice": state.best,
            "weights": state.weights,
            "config": dataclasses.asdict(cfg),
        },
        "versions": {
            "cardiomegaly": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": "research only; not a medical device",
    }


def _evaluate_test(cfg: TrainConfig, ddp: Dist, run_dir: Path) -> dict[str, Any]:
    """The best model on the test split, which nothing before has looked at: the evaluation
    folder ``test/`` as ``cardiomegaly evaluate`` writes it (Dice, IoU, the ratio's error)."""
    result = evaluate_segmenter(run_dir / "model.safetensors", cfg.data, "test", run_dir / "test",
                                batch_size=cfg.batch_size, device=ddp.device.type,
                                cache_dir=cfg.cache_dir)  # fmt: skip
    m = result.metrics
    log.info("test Dice heart %.4f, left lung %.4f, right lung %.4f; ratio mean absolute error "
             "%.4f (%d films, %d flagged)", m["dice"]["heart"]["value"],
             m["dice"]["left_lung"]["value"], m["dice"]["right_lung"]["value"],
             m["ctr_error"]["mae"]["value"], m["films"], m["flagged"])  # fmt: skip
    return m


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with atomic_open(run_dir / "history.csv", "w", newline="", encoding="utf-8") as f:
        pd.DataFrame(history).to_csv(f, index=False)


def _plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    fig, axes = plots.figure(10, 3.8, ncols=2)
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    axes[0].set_title("loss (Dice + cross-entropy)")
    for organ in MASK_CLASSES:
        axes[1].plot(
            epochs, [h[f"val_dice_{organ}"] for h in history], "o-", label=organ.replace("_", " ")
        )
    axes[1].set_title("validation Dice")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    plots.save(fig, path)
