"""Training: one loop, read top to bottom. Also runs under ``torchrun`` (PyTorch DDP).

>>> from cardiomegaly import TrainConfig, train
>>> result = train(TrainConfig(data="synthetic", preset="demo", weights="none"))  # doctest: +SKIP
>>> result.run_dir, result.test["auroc"]                                           # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from . import __version__
from .artifacts import probabilities
from .config import THRESHOLD_RULES, TrainConfig, from_dict, load_yaml, save_yaml
from .crossval import CVResult, train_folds
from .data.cache import ImageCache, seen_metadata
from .data.dataset import XrayDataset, train_augmentation
from .data.records import Records, absolute_sources, load_records
from .data.split import TEST_SPLIT, patient_split, save_splits
from .errors import UserError
from .evaluate import plots
from .evaluate.metrics import auroc, choose_threshold, fit_temperature
from .evaluate.report import write_report
from .export import export_beside
from .fileio import atomic_open
from .model import CardioNet, build_model, load_model, load_weights, preprocessing_for, save_model
from .progress import progress_bar
from .runs import (
    Dist,
    RunState,
    barrier,
    check_space,
    check_writable,
    gather,
    gather_sum,
    load_checkpoint,
    read_skipped,
    run_folder,
    save_checkpoint,
    setup_distributed,
    train_loader,
    write_skipped,
)
from .runtime import autocast, score_dataset, to_device
from .segment.crop import ThoraxCrop
from .segment.train import SegmentResult, train_segmenter
from .tta import TTA_VIEWS, with_tta

log = logging.getLogger(__name__)

AUX_WEIGHT = 0.4  # InceptionV3's auxiliary loss weight (Szegedy et al. 2016)


@dataclass
class TrainResult:
    """Where the run went and how the best model did."""

    run_dir: Path
    best_epoch: int
    val_auroc: float
    test: dict[str, float]


def train(
    cfg: TrainConfig | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    ctr_model: str | Path | None = None,
) -> TrainResult | SegmentResult | CVResult:
    """Train a model as ``cfg`` says; write the run folder; evaluate the best model on test.
    ``cfg.task`` chooses the classifier (this module) or heart and lung segmentation
    (:mod:`cardiomegaly.segment.train`); ``cfg.folds`` > 1 trains one classifier per fold
    and their ensemble (:mod:`cardiomegaly.crossval`).

    ``resume`` continues a killed run from its ``last.pt`` (with the configuration saved there)
    and ends with the same weights as an uninterrupted run on the CPU. A cross-validation
    resumed with ``ctr_model`` (a segment model) pools its folds again and adds the combined
    score (:mod:`cardiomegaly.combine`) without training again what is finished.
    """
    if resume is None and cfg is None:
        raise UserError("give a TrainConfig, or resume= a run folder")
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir}: no config.yaml, so no run to resume; start a new one")
        saved = load_yaml(run_dir / "config.yaml")
        if ctr_model is not None:
            saved["ctr_model"] = str(ctr_model)
        cfg = from_dict(TrainConfig, saved)
    ddp = setup_distributed(cfg.device)
    try:
        if cfg.task == "segment":
            return train_segmenter(cfg, ddp, out, resume)
        if cfg.folds > 1:
            return train_folds(cfg, ddp, out, resume, train_one=_train)
        return _train(cfg, ddp, out, resume)
    finally:
        if ddp.world > 1:
            dist.destroy_process_group()


@dataclass
class _Data:
    """The records, the three splits of the run, and their datasets."""

    records: Records
    tables: dict[str, pd.DataFrame]
    train: XrayDataset
    val: XrayDataset
    test: XrayDataset
    seen: list[str]  # fingerprints of the films trained or tuned on (train and val)
    crop: ThoraxCrop | None  # the cut every film goes through (--thorax-crop)

    def embedded(self) -> dict[str, torch.Tensor] | None:
        """What the model file carries besides the classifier: the cut's segment model."""
        return None if self.crop is None else self.crop.tensors()


@dataclass
class _Optim:
    """Loss, optimiser, learning-rate schedule and loss scaling of one run."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None  # the moving average of the weights, when asked for

    def judged(self, model: CardioNet) -> CardioNet:
        """The weights that are validated and saved: the average when there is one."""
        return model if self.ema is None else self.ema.module


def _train(cfg: TrainConfig, ddp: Dist, out, resume) -> TrainResult:
    _seed(cfg.seed)
    run_dir = Path(resume) if resume else run_folder(out, ddp)
    # Absolute paths: a resume from another folder finds the data again.
    thorax = str(Path(cfg.thorax_crop).resolve()) if cfg.thorax_crop else None
    cfg = dataclasses.replace(cfg, data=absolute_sources(cfg.data), thorax_crop=thorax)
    # The model first: a missing weights file or an offline download fails in seconds.
    model = build_model(cfg.arch, dropout=cfg.dropout, aux_logits=cfg.aux_logits)
    crop = ThoraxCrop.load(thorax, device=cfg.device) if thorax else None
    if crop is not None and ddp.main:
        log.info("thorax cut  every film cut to its heart and lungs as %s finds them", thorax)
    # Killed before the first epoch ended (no last.pt): a resume starts over, weights included.
    restart = resume is not None and (run_dir / "last.pt").is_file()
    state = RunState(weights={} if restart else load_weights(model, cfg.weights))
    if ddp.main and not (run_dir / "config.yaml").is_file():
        _start_run_folder(run_dir, cfg, model)
    data = _prepare_data(cfg, run_dir, ddp, resume, crop)
    model.to(ddp.device)
    if ddp.device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    opt = _optimisation(cfg, model, data, ddp)
    if restart:
        state = _resume(run_dir, model, opt, ddp)
    stages = _stages(cfg)
    board = _tensorboard(run_dir) if ddp.main else None
    curves = plots.Redraw(lambda: _plot_curves(run_dir / "curves.png", state.history))

    for epoch in range(state.epoch, cfg.epochs):
        stage, blocks = stages[epoch]
        model.set_trainable(blocks)
        net: nn.Module = model
        if ddp.world > 1:  # re-wrapped each epoch: the set of trainable parameters may change
            net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        # Seeds per epoch: augmentation, dropout and order are the same after a resume.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        loader = _train_loader(cfg, data.train, ddp, epoch)
        start = time.perf_counter()

        # Train one epoch.
        model.train()
        total, logits_seen, labels_seen = 0.0, [], []
        bar = progress_bar(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs} stage {stage}",
            unit="batch",
            every=0,
            enabled=ddp.main,
        )
        for x, y in bar:
            x, y = to_device(x, ddp.device), y.to(ddp.device, torch.float32)
            with autocast(ddp.device):
                logits, aux = net(x, with_aux=True)
                loss = opt.criterion(logits.float(), y)
                if aux is not None:
                    loss = loss + AUX_WEIGHT * opt.criterion(aux.float(), y)
            opt.optimizer.zero_grad(set_to_none=True)
            opt.scaler.scale(loss).backward()
            opt.scaler.step(opt.optimizer)
            opt.scaler.update()
            if opt.ema is not None:
                opt.ema.update_parameters(model)
            total += loss.item() * len(y)
            logits_seen.append(logits.detach().float().cpu())
            labels_seen.append(y.cpu())
            if ddp.main:
                bar.set_postfix(
                    loss=f"{total / sum(len(t) for t in labels_seen):.4f}",
                    auroc=f"{auroc(torch.cat(labels_seen), torch.cat(logits_seen)):.3f}",
                )
        train_logits, train_labels = gather(ddp, torch.cat(logits_seen), torch.cat(labels_seen))
        train_loss = gather_sum(ddp, total) / len(train_labels)

        # Validate.
        val_logits = _score(opt.judged(model), data.val, cfg, ddp)
        val_labels = torch.tensor(data.val.labels)
        val_loss = opt.criterion(val_logits.to(ddp.device), val_labels.to(ddp.device)).item()
        val_probs = torch.sigmoid(val_logits)
        val_auroc = auroc(val_labels, val_probs)
        lr = opt.optimizer.param_groups[0]["lr"]
        if cfg.schedule == "plateau":
            opt.scheduler.step(val_auroc if math.isfinite(val_auroc) else 0.0)
        else:
            opt.scheduler.step()
        row = {
            "epoch": epoch + 1,
            "stage": stage,
            "lr": lr,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_auroc": auroc(train_labels, train_logits),
            "val_auroc": val_auroc,
            "train_accuracy": float(((train_logits > 0).float() == train_labels).float().mean()),
            "val_accuracy": float(((val_probs >= 0.5).float() == val_labels).float().mean()),
            "seconds": time.perf_counter() - start,
        }

        # Record: history, best model, resumable state; then stop early or go on.
        improved = state.record(row, val_auroc)
        if ddp.main:
            log.info(
                "epoch %3d/%d stage %d  loss %.4f  val loss %.4f  val AUROC %.4f  %.0f s%s",
                epoch + 1,
                cfg.epochs,
                stage,
                train_loss,
                val_loss,
                val_auroc,
                row["seconds"],
                "  *best" if improved else "",
            )
            if improved:
                meta = _metadata(cfg, data, state, val_labels.numpy(), val_probs.numpy())
                save_model(run_dir / "model.safetensors", opt.judged(model), meta, data.embedded())
            _write_history(run_dir, state.history)
            curves.update()
            _log_scalars(board, row)
            _save_last(run_dir / "last.pt", model, opt, state)
        barrier(ddp)
        if state.bad_epochs >= cfg.patience:
            if ddp.main:
                log.info("early stop: no better validation AUROC for %d epochs", cfg.patience)
            break

    if ddp.main:
        curves.flush()
    if board is not None:
        board.close()
    test = _finish(cfg, ddp, run_dir, data)
    return TrainResult(run_dir, state.best_epoch, state.best, test)


# ------------------------------------------------------------------------- setup and teardown


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _start_run_folder(run_dir: Path, cfg: TrainConfig, model: CardioNet) -> None:
    """Writable, room for what the run writes, and the resolved config saved first."""
    check_writable(run_dir)
    # The model file, last.pt (weights and two Adam moments), model.onnx, and reports.
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    check_space(run_dir, 5 * weights + 50 * 2**20, "this run")
    save_yaml(cfg, run_dir / "config.yaml")


def _prepare_data(
    cfg: TrainConfig, run_dir: Path, ddp: Dist, resume, crop: ThoraxCrop | None
) -> _Data:
    """Records, the patient-wise split (kept with the run), the cache warmed once by rank 0
    (films cut by ``crop`` when there is one)."""
    records = load_records(cfg.data, cfg.data_config)
    if resume and (run_dir / "splits.csv").is_file():
        cfg.split.split_file = str(run_dir / "splits.csv")
    split = patient_split(records, cfg.split)
    cache = ImageCache(cfg.image_size, cfg.resize, root=cfg.cache_dir, crop=crop)
    if ddp.main:
        save_splits(records, split, run_dir / "splits.csv")
        paths = list(records.table["path"])
        space = "the preprocessing cache (--cache-dir chooses another place)"
        check_space(cache.folder, cache.bytes_needed(paths), space)
        bad = cache.warm(paths)
        for _path, reason in bad:
            log.warning("skipped     %s", reason)
        write_skipped(run_dir, bad)
    barrier(ddp)
    bad_paths = {path for path, _ in read_skipped(run_dir)}
    keep = ~records.table["path"].isin(bad_paths)
    tables = {name: records.table[keep & (split == name)] for name in ("train", "val", "test")}
    for name, table in tables.items():
        if table["label"].nunique() < 2:
            raise UserError(f"the {name} split has only one class; more data or other fractions")
    learnt_from = pd.concat([tables["train"], tables["val"]])["path"]
    return _Data(
        records,
        tables,
        train=XrayDataset(tables["train"], cache, train_augmentation(cfg.augment)),
        val=XrayDataset(tables["val"], cache),
        test=XrayDataset(tables["test"], cache),
        seen=sorted(set(cache.fingerprints(learnt_from))),
        crop=crop,
    )


def _optimisation(cfg: TrainConfig, model: CardioNet, data: _Data, ddp: Dist) -> _Optim:
    """Weighted BCE (or a balanced sampler), AdamW with a slower backbone when pretrained."""
    positives = float(data.tables["train"]["label"].sum())
    pos_weight = None if cfg.balanced_sampler else (len(data.train) - positives) / positives
    criterion = nn.BCEWithLogitsLoss(
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight, device=ddp.device)
    )
    # From scratch there is nothing worth freezing: one stage, all layers, lr.
    backbone_lr = cfg.lr if cfg.weights == "none" else cfg.backbone_lr
    optimizer = torch.optim.AdamW(
        [
            {"params": model.head_parameters(), "lr": cfg.lr},
            {"params": model.backbone_parameters(), "lr": backbone_lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    # Loss scaling only for float16; bfloat16 (where the GPU has it) needs none.
    fp16 = ddp.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    ema = None
    if cfg.ema:  # batch-norm statistics are averaged too (use_buffers)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    return _Optim(criterion, optimizer, _scheduler(cfg, optimizer), scaler, ema)


def _resume(run_dir: Path, model: CardioNet, opt: _Optim, ddp: Dist) -> RunState:
    saved = load_checkpoint(run_dir / "last.pt")
    model.net.load_state_dict(saved["model"])
    opt.optimizer.load_state_dict(saved["optimizer"])
    opt.scheduler.load_state_dict(saved["scheduler"])
    if opt.ema is not None and "ema" in saved:
        opt.ema.load_state_dict(saved["ema"])
    state = RunState.from_checkpoint(saved["state"])
    if ddp.main:
        log.info("resuming %s after epoch %d", run_dir, state.epoch)
    return state


def _finish(cfg: TrainConfig, ddp: Dist, run_dir: Path, data: _Data) -> dict[str, Any]:
    """The best model, read back from its file; calibrated on validation when asked; evaluated
    on the test split, which nothing before has looked at; exported to ONNX."""
    best, meta = load_model(run_dir / "model.safetensors")
    best.to(ddp.device)
    answers = with_tta(best, meta)  # through its test-time views, if any, as in every later use
    if cfg.calibrate or answers is not best:
        val_logits = _score(answers, data.val, cfg, ddp)
        if cfg.calibrate:
            temperature = fit_temperature(val_logits.numpy(), data.val.labels)
            meta["calibration"] = {"temperature": temperature, "fitted_on": "validation split"}
            if ddp.main:  # the model file is rewritten with it below, after the test evaluation
                log.info("temperature %.3f (fitted on validation)", temperature)
        # chosen again on what the model answers: calibrated, and through its views
        meta["threshold"] = _threshold(cfg, data.val.labels, probabilities(val_logits, meta))

    test_probs = probabilities(_score(answers, data.test, cfg, ddp), meta)
    if not ddp.main:
        return {}
    scored = data.tables["test"].assign(probability=test_probs)
    skipped = [{"path": p, "reason": r} for p, r in read_skipped(run_dir)]
    context = {
        "model": str(run_dir / "model.safetensors"),
        "data": cfg.data,
        "format": data.records.format,
        "split": "test",
        "split_description": TEST_SPLIT.format(seed=cfg.split.seed),
        "skipped": skipped,
    }
    test = write_report(
        run_dir / "test", scored, meta, context, training_curves=run_dir / "curves.png"
    )
    auc = test["auroc"]
    # The model file remembers how it did on test, for the model card (weights unchanged), and
    # the temperature and thresholds when --calibrate refitted them.
    meta["evaluation"] = {
        "split": "test",
        "images": test["images"],
        "positives": test["positives"],
        "auroc": auc["value"],
        "auroc_ci95": auc.get("ci95"),
    }
    save_model(run_dir / "model.safetensors", best, meta, data.embedded())
    primary = next(iter(test["operating_points"].values()))
    log.info(
        "test AUROC %s (95 %% CI %s, patient bootstrap)  sensitivity %s  specificity %s at "
        "threshold %.3f (chosen on validation)  (%d images, %d positive)",
        _fmt(auc["value"]),
        _fmt_ci(auc.get("ci95")),
        _fmt(primary["sensitivity"]["value"]),
        _fmt(primary["specificity"]["value"]),
        primary["threshold"],
        test["images"],
        test["positives"],
    )
    if cfg.export_onnx:
        export_beside(run_dir / "model.safetensors")
    return test


def _tensorboard(run_dir: Path):
    """A TensorBoard writer into ``run_dir/tensorboard`` when tensorboard is installed (the
    ``tensorboard`` extra); otherwise None, and history.csv and curves.png say the same."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _log_scalars(board, row: dict[str, Any]) -> None:
    if board is None:
        return
    for key, value in row.items():
        if key not in ("epoch", "stage") and math.isfinite(value):
            board.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
    board.flush()


# ----------------------------------------------------------------------------------- helpers


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


def _train_loader(cfg: TrainConfig, ds: XrayDataset, ddp: Dist, epoch: int) -> DataLoader:
    labels = ds.labels if cfg.balanced_sampler else None
    return train_loader(ds, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                        epoch=epoch, ddp=ddp, balanced_labels=labels)  # fmt: skip


def _score(model, ds: XrayDataset, cfg: TrainConfig, ddp: Dist) -> torch.Tensor:
    return score_dataset(model, ds, cfg.batch_size, ddp.device, rank=ddp.rank, world=ddp.world)


def _threshold(cfg: TrainConfig, labels, probs) -> dict[str, Any]:
    """The model's threshold by its rule, and the other standard operating points, on validation."""
    return {
        "value": choose_threshold(labels, probs, cfg.threshold_rule),
        "rule": cfg.threshold_rule,
        "chosen_on": "validation split",
        "operating_points": {
            rule: choose_threshold(labels, probs, rule) for rule in THRESHOLD_RULES
        },
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt_ci(ci: list[float] | None) -> str:
    return "n/a" if not ci else f"{ci[0]:.3f} to {ci[1]:.3f}"


def _metadata(
    cfg: TrainConfig, data: _Data, state: RunState, val_labels: np.ndarray, val_probs: np.ndarray
) -> dict[str, Any]:
    """What the model file says about itself (DESIGN: model file)."""
    split = {
        name: {
            "images": len(t),
            "patients": int(t["patient"].nunique()),
            "positives": int(t["label"].sum()),
        }
        for name, t in data.tables.items()
    }
    versions = {
        "cardiomegaly": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    return {
        "preprocessing": {
            **preprocessing_for(cfg.arch, cfg.image_size, cfg.resize),
            **({"thorax_crop": data.crop.to_metadata()} if data.crop else {}),
            **({"tta": dict(TTA_VIEWS)} if cfg.tta else {}),
        },
        "threshold": _threshold(cfg, val_labels, val_probs),
        "training": {
            "data": cfg.data,
            "format": data.records.format,
            "split": split,
            "split_seed": cfg.split.seed,
            "epochs": state.epoch,
            "best_epoch": state.best_epoch,
            "seed": cfg.seed,
            "val_auroc": state.best,
            "weights": state.weights,
            "preset": cfg.preset,
            "config": dataclasses.asdict(cfg),
        },
        "versions": versions,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": "research only; not a medical device",
        "seen": seen_metadata(data.seen),
    }


def _save_last(path: Path, model: CardioNet, opt: _Optim, state: RunState) -> None:
    """Everything needed to resume, loadable with ``weights_only=True`` (no pickled objects)."""
    payload = {
        "model": model.net.state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "state": dataclasses.asdict(state),
    }
    if opt.ema is not None:
        payload["ema"] = opt.ema.state_dict()
    save_checkpoint(path, payload)


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with atomic_open(run_dir / "history.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    epochs = [h["epoch"] for h in history]
    fig, axes = plots.figure(13, 3.8, ncols=3)
    titles = {"loss": "loss (weighted BCE)", "accuracy": "accuracy (at p = 0.5)", "auroc": "AUROC"}
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
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
    plots.save(fig, path)
