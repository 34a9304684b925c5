"""``cardiomegaly train --folds K``: K-fold patient-wise cross-validation and its ensemble.

Patients are dealt to K folds (per source, stratified by label). Fold k's run is a plain
training run in ``fold{k}/`` with fold k as its test split and the other patients split into
training and validation (early stopping, threshold). Every film is then scored exactly once, by
the model that never saw its patient: the out-of-fold predictions, pooled into one evaluation
with patient-bootstrap intervals (``oof/``). The K models become one ensemble model file (the
mean of their probabilities), with its threshold chosen on the pooled out-of-fold predictions.

    run/
      config.yaml  folds.csv  model.safetensors  model.onnx
      oof/         metrics.json  predictions.csv  report.html  figures
      fold0/ ... fold{K-1}/   plain run folders (resumable one by one; a finished fold
                              keeps its model file and evaluation, not its last.pt)

>>> result = train(TrainConfig(data="synthetic", folds=5, weights="none"))  # doctest: +SKIP
>>> result.oof["auroc"]["ci95"]                                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import __version__
from .artifacts import model_sha256
from .combine import CombinedScore
from .config import THRESHOLD_RULES, TrainConfig, save_yaml
from .data.cache import seen_metadata
from .data.records import Records, absolute_sources, load_records
from .data.split import film_keys, fold_split, patient_folds, patient_in_two_parts, save_splits
from .errors import UserError
from .evaluate.combined import assess_combined, measure_records
from .evaluate.metrics import choose_threshold, operating_point
from .evaluate.report import write_report
from .export import export_beside
from .fileio import atomic_open
from .model import Ensemble, load_embedded, load_model, read_metadata, save_model
from .runs import Dist, barrier, check_writable, run_folder

log = logging.getLogger(__name__)


@dataclass
class CVResult:
    """Where the cross-validation went: the fold runs, the pooled out-of-fold evaluation (what
    oof/metrics.json holds) and the ensemble model file."""

    run_dir: Path
    folds: list[Any]  # each fold's TrainResult
    oof: dict[str, Any]

    @property
    def model(self) -> Path:
        return self.run_dir / "model.safetensors"


def train_folds(
    cfg: TrainConfig, ddp: Dist, out, resume, *, train_one: Callable[..., Any]
) -> CVResult:
    """Train ``cfg.folds`` models with ``train_one`` (the plain training loop), pool their
    out-of-fold predictions, and write the ensemble. A resumed run skips finished folds and
    resumes the interrupted one."""
    run_dir = Path(resume) if resume else run_folder(out, ddp)
    cfg = dataclasses.replace(cfg, data=absolute_sources(cfg.data))
    if cfg.ctr_model:  # a wrong file fails now, not after hours of training
        from .segment.measure import Measurer

        cfg = dataclasses.replace(cfg, ctr_model=os.path.abspath(cfg.ctr_model))
        Measurer.load(cfg.ctr_model, device=cfg.device)
    records = load_records(cfg.data, cfg.data_config)
    saved = run_dir / "folds.csv"
    if resume and saved.is_file():  # finished folds were tested on these films: keep them
        folds = _saved_folds(records, saved)
    else:
        folds = patient_folds(records, cfg.folds, cfg.split.seed)
    if ddp.main:
        check_writable(run_dir)
        save_yaml(cfg, run_dir / "config.yaml")  # as resolved (a resume may add ctr_model)
        _save_folds(records, folds, saved)
    results = []
    for k in range(cfg.folds):
        fold_dir = run_dir / f"fold{k}"
        if _finished(fold_dir):
            log.info("fold %d/%d: finished earlier (%s)", k + 1, cfg.folds, fold_dir)
            results.append(None)
            continue
        if ddp.main and not (fold_dir / "splits.csv").is_file():
            fold_dir.mkdir(parents=True, exist_ok=True)
            save_splits(records, fold_split(records, folds, k, cfg.split), fold_dir / "splits.csv")
        barrier(ddp)
        log.info("fold %d/%d: %s", k + 1, cfg.folds, fold_dir)
        # The members need no ONNX export of their own: the ensemble gets one.
        member_cfg = dataclasses.replace(cfg, folds=1, export_onnx=False, ctr_model=None)
        results.append(train_one(member_cfg, ddp, None, fold_dir))
        # A finished fold is never resumed: its resume state (weights, Adam moments) goes.
        if ddp.main:
            (fold_dir / "last.pt").unlink(missing_ok=True)
    oof: dict[str, Any] = {}
    if ddp.main:
        oof = _pool(cfg, records, run_dir)
    barrier(ddp)
    return CVResult(run_dir, results, oof)


def _finished(fold_dir: Path) -> bool:
    """A fold whose best model has been evaluated on its test fold (training's last step)."""
    model = fold_dir / "model.safetensors"
    return model.is_file() and "evaluation" in read_metadata(model)


def _saved_folds(records: Records, path: Path) -> pd.Series:
    """The fold of every row as ``folds.csv`` assigned it when the run began, matched by image
    path; a resume on data whose films or patients changed since is refused (dealt again, a
    patient a finished fold trained on could land in another fold's test split)."""
    saved = pd.read_csv(path, dtype={"path": str})
    if not {"path", "fold"} <= set(saved.columns):  # an earlier version's, one row per patient
        raise UserError(f"{path}: not a folds.csv of this version (no path and fold columns); "
                        "start a new run, or resume with the version that began it")  # fmt: skip
    saved = saved.set_index("path")["fold"]
    keys = film_keys(records)
    added, gone = int((~keys.isin(saved.index)).sum()), len(set(saved.index) - set(keys))
    if added or gone:
        raise UserError(
            f"{path.parent}: the data changed since this run began ({added} images added, "
            f"{gone} gone), so its folds no longer hold; start a new run"
        )
    folds = keys.map(saved).astype(int).rename("fold")
    if patient_in_two_parts(folds, records):
        raise UserError(
            f"{path.parent}: the data's patients changed since this run began (a patient's "
            "images are now in two folds), so its folds no longer hold; start a new run"
        )
    return folds


def _save_folds(records: Records, folds: pd.Series, path: Path) -> None:
    """folds.csv: every image's fold, patient (the pseudonym), label and path (as splits.csv
    names it), by fold and patient."""
    table = pd.DataFrame({"fold": folds, "patient": records.table["patient"],
                          "label": records.table["label"], "path": film_keys(records)})  # fmt: skip
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        table.sort_values(["fold", "patient", "path"]).to_csv(f, index=False)


def _pool(cfg: TrainConfig, records: Records, run_dir: Path) -> dict[str, Any]:
    """Out-of-fold predictions of every film, their evaluation, and the ensemble file."""
    parts = []
    for k in range(cfg.folds):
        scored = pd.read_csv(run_dir / f"fold{k}" / "test" / "predictions.csv")
        meta = read_metadata(run_dir / f"fold{k}" / "model.safetensors")
        parts.append(scored[["path", "probability"]].assign(
            fold=k, fold_threshold=float(meta["threshold"]["value"])))  # fmt: skip
    pooled = pd.concat(parts, ignore_index=True)
    twice = pooled["path"].duplicated(keep=False)
    if twice.any():  # cannot happen with patient-wise folds; a broken run folder would do it
        raise UserError(f"{run_dir}: {int(twice.sum())} films were scored by two folds")
    scored = records.table.merge(pooled, on="path", how="inner", validate="one_to_one")
    unscored = len(records) - len(scored)
    y, p = scored["label"].to_numpy(), scored["probability"].to_numpy()
    models = [run_dir / f"fold{k}" / "model.safetensors" for k in range(cfg.folds)]
    metas = [read_metadata(m) for m in models]
    temperatures = [float(m.get("calibration", {}).get("temperature", 1.0)) for m in metas]
    ensemble = Ensemble([load_model(m)[0] for m in models], temperatures)
    meta = _ensemble_metadata(cfg, records, metas, y, p)
    meta["architecture"] = ensemble.describe()
    decided = (p >= scored["fold_threshold"].to_numpy()).astype(float)
    folder = run_dir / "oof"
    extra: dict[str, Any] = {}
    if cfg.ctr_model:
        combined, extra["combined"] = _combine(cfg, scored, folder)
        if combined is not None:
            meta["combined"] = combined.to_metadata()
    context = {
        "model": str(run_dir / "model.safetensors"),
        "data": cfg.data,
        "format": records.format,
        "split": "out-of-fold",
        "split_description": (
            f"out-of-fold: every film scored once, by the model of the one of {cfg.folds} "
            f"patient-wise folds (seed {cfg.split.seed}) that held its patient out"
        ),
        "folds": cfg.folds,
        "unscored": unscored,
        "operating_point_at_fold_thresholds": {
            "note": "each film at the threshold its own fold chose on validation: the honest "
            "operating point of these predictions (the ensemble's threshold was chosen on them)",
            **operating_point(y, decided, 0.5),
        },
        **extra,
    }
    metrics = write_report(folder, scored, meta, context)
    auc = metrics["auroc"]
    meta["evaluation"] = {"split": "out-of-fold", "images": metrics["images"],
                          "positives": metrics["positives"], "auroc": auc["value"],
                          "auroc_ci95": auc.get("ci95")}  # fmt: skip
    # The members share one cut (the same segment model): the ensemble carries it once.
    save_model(run_dir / "model.safetensors", ensemble, meta, load_embedded(models[0]))
    ci = auc.get("ci95") or [np.nan, np.nan]
    log.info("out-of-fold AUROC %.4f (95 %% CI %.3f to %.3f; %d films, %d positive, %d folds; "
             "every film scored once, by the fold model that never saw its patient)",
             auc["value"] or np.nan, *ci, len(y), int(y.sum()), cfg.folds)  # fmt: skip
    if cfg.export_onnx:
        export_beside(run_dir / "model.safetensors")
    return metrics


def _combine(
    cfg: TrainConfig, scored: pd.DataFrame, folder: Path
) -> tuple[CombinedScore | None, dict[str, Any]]:
    """Measure every film with the segment model, fit the combined score on the out-of-fold
    probabilities (views from the records), and assess it on the films with a ratio."""
    frame = measure_records(scored, cfg.ctr_model, cfg.device)
    part = frame[frame["ctr"].notna()]
    if part["label"].nunique() < 2:
        reason = (
            f"no combined score: {len(part)} of {len(frame)} films measured, "
            f"{int(part['label'].sum())} of them positive; both classes are needed"
        )
        log.warning("%s", reason)
        return None, {"not_fitted": reason, "segment_model": cfg.ctr_model}
    rule, view = cfg.threshold_rule, part["view"].to_numpy()
    combined = CombinedScore.fit(
        part["probability"].to_numpy(), part["ctr"].to_numpy(), view, part["label"].to_numpy(),
        rule, model_sha256(cfg.ctr_model),
        f"pooled out-of-fold predictions of {cfg.folds} folds ({len(part)} measured films)",
    )  # fmt: skip
    metrics = assess_combined(frame, combined, cfg.ctr_model, folder)
    metrics["operating_point_nested"] = _nested_operating_point(part, view, rule)
    return combined, metrics


def _nested_operating_point(part: pd.DataFrame, view: np.ndarray, rule: str) -> dict[str, Any]:
    """Each fold's films decided by a combined score (references and threshold) fitted on the
    other folds' films only: the honest operating point, since the ensemble's combined
    threshold was chosen on these very films."""
    decided = np.zeros(len(part))
    folds, y = part["fold"].to_numpy(), part["label"].to_numpy()
    p, c = part["probability"].to_numpy(), part["ctr"].to_numpy()
    for k in np.unique(folds):
        own = folds == k
        if len(np.unique(y[~own])) < 2:
            return {"undefined": f"the folds other than {k} hold one class only"}
        fitted = CombinedScore.fit(p[~own], c[~own], view[~own], y[~own], rule, "", "")
        decided[own] = fitted.scores(p[own], c[own], view[own]) >= fitted.threshold
    return {
        **operating_point(y, decided, 0.5),
        "note": "each fold's films at the threshold fitted on the other folds' films",
        "threshold": None,  # one per fold
    }


def _ensemble_metadata(
    cfg: TrainConfig, records: Records, metas: list[dict[str, Any]], y: np.ndarray, p: np.ndarray
) -> dict[str, Any]:
    first = metas[0]
    return {
        "preprocessing": first["preprocessing"],
        "threshold": {
            "value": choose_threshold(y, p, cfg.threshold_rule),
            "rule": cfg.threshold_rule,
            "chosen_on": f"pooled out-of-fold predictions of {cfg.folds} folds",
            "operating_points": {r: choose_threshold(y, p, r) for r in THRESHOLD_RULES},
        },
        "training": {
            "data": cfg.data,
            "format": records.format,
            "folds": cfg.folds,
            "split_seed": cfg.split.seed,
            "seed": cfg.seed,
            "fold_val_auroc": [m["training"]["val_auroc"] for m in metas],
            "fold_test_auroc": [m.get("evaluation", {}).get("auroc") for m in metas],
            "fold_best_epoch": [m["training"]["best_epoch"] for m in metas],
            "weights": first["training"]["weights"],
            "preset": cfg.preset,
            "config": dataclasses.asdict(cfg),
        },
        "versions": {"cardiomegaly": __version__, "torch": torch.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": "research only; not a medical device",
        "seen": seen_metadata(fp for m in metas for fp in m.get("seen", {}).get("films", [])),
    }
