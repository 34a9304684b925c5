"""From scored records to numbers with intervals, figures, and one folder a reader can open.

>>> metrics = assess(scored, thresholds={"youden (model threshold)": 0.41})  # doctest: +SKIP
>>> metrics["auroc"]["value"], metrics["auroc"]["ci95"]                       # doctest: +SKIP
(0.91, [0.84, 0.96])
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..fileio import atomic_open, atomic_write_text
from . import plots
from .html import render_report
from .metrics import (
    FPR_GRID,
    auprc,
    auroc,
    calibration,
    delong_interval,
    operating_point,
    patient_bootstrap,
    percentile_interval,
)

log = logging.getLogger(__name__)

MIN_SUBGROUP_POSITIVES = 10
#: The subgroup of all positives against one kind of negative.
BY_KIND = "positives vs"
FIGURES = {
    "roc.png": "ROC curve",
    "pr.png": "precision-recall curve",
    "calibration.png": "calibration (reliability diagram)",
    "confusion.png": "confusion matrix at the model's threshold",
    "histogram.png": "scores per class",
    "training_curves.png": "training curves",
}


@dataclass
class Assessment:
    """The numbers of one evaluation (``metrics`` is what metrics.json holds) and the ROC band."""

    metrics: dict[str, Any]
    roc_band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)


def model_thresholds(meta: dict[str, Any]) -> dict[str, float]:
    """Operating points the model file carries, all chosen on validation at training time.

    The model's own threshold comes first; sens90 and spec90 follow when the file has them.
    """
    threshold = meta["threshold"]
    out = {f"{threshold['rule']} (model threshold)": float(threshold["value"])}
    for rule, value in threshold.get("operating_points", {}).items():
        if rule != threshold["rule"]:
            out[rule] = float(value)
    return out


def assess(
    scored: pd.DataFrame,
    thresholds: dict[str, float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> Assessment:
    """Discrimination, operating points, calibration and subgroups of scored records.

    ``scored`` has columns label, probability and patient (view, sex and age when known).
    Intervals: AUROC by patient bootstrap (stratified, ``n_boot`` resamples) and by DeLong;
    AUPRC and F1 by patient bootstrap; proportions by Wilson.
    """
    y = scored["label"].to_numpy(dtype=int)
    p = scored["probability"].to_numpy(dtype=float)
    patients = scored["patient"].astype(str).to_numpy()
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    warnings: list[str] = []
    metrics: dict[str, Any] = {
        "images": len(y),
        "patients": len(set(patients)),
        "positives": positives,
        "negatives": negatives,
        "prevalence": positives / len(y) if len(y) else None,
    }
    both = positives > 0 and negatives > 0
    curves = None
    if both:
        curves = patient_bootstrap(
            y, p, patients, n=n_boot, seed=seed, thresholds=list(thresholds.values())
        )
    bootstrap_note = {"resamples": n_boot, "unit": "patient", "stratified": True, "seed": seed}
    if both:
        dl = delong_interval(y, p) if min(positives, negatives) >= 2 else None
        metrics["auroc"] = {
            "value": auroc(y, p),
            "ci95": percentile_interval(curves.auroc),
            "ci95_method": "patient bootstrap (percentile)",
            "delong": dl
            and {"se": dl["se"], "ci95": dl["ci95"], "note": "treats images as independent"},
            "bootstrap": bootstrap_note,
        }
        metrics["auprc"] = {
            "value": auprc(y, p),
            "ci95": percentile_interval(curves.auprc),
            "prevalence": positives / len(y),
        }
    else:
        reason = (
            f"AUROC and AUPRC are undefined: the data has only "
            f"{'negative' if positives == 0 else 'positive'} images "
            f"({positives} positive, {negatives} negative)"
        )
        warnings.append(reason)
        metrics["auroc"] = {"value": None, "undefined": reason}
        metrics["auprc"] = {"value": None, "undefined": reason}
    metrics["operating_points"] = {}
    for name, t in thresholds.items():
        op = operating_point(y, p, t)
        if curves is not None:
            op["f1"]["ci95"] = percentile_interval(curves.f1[t])
        metrics["operating_points"][name] = op
    metrics["calibration"] = calibration(y, p)
    metrics["subgroups"] = _subgroups(scored, n_boot, seed, warnings)
    if both and positives < MIN_SUBGROUP_POSITIVES:
        warnings.append(f"only {positives} positive images: every interval here is wide")
    metrics["warnings"] = warnings
    band = None
    if curves is not None:
        low, high = np.nanpercentile(curves.tpr, [2.5, 97.5], axis=0)
        band = (FPR_GRID, low, high)
    return Assessment(_json_safe(metrics), band, warnings)


def _subgroups(scored: pd.DataFrame, n_boot: int, seed: int, warnings: list[str]) -> dict:
    groups: dict[str, dict[str, np.ndarray]] = {}
    for column in ("source", "view", "sex"):
        if column in scored:
            values = scored[column].fillna("").astype(str)
            names = sorted(v for v in values.unique() if v)
            if len(names) > 1:
                groups[column] = {v: (values == v).to_numpy() for v in names}
    if "age" in scored and scored["age"].notna().any():
        age = pd.to_numeric(scored["age"], errors="coerce")
        groups["age"] = {
            "<40": (age < 40).to_numpy(),
            "40-65": age.between(40, 65).to_numpy(),
            ">65": (age > 65).to_numpy(),
        }
    kinds = _negative_kinds(scored)
    if len(kinds) > 1:
        groups[BY_KIND] = kinds
    out: dict[str, dict] = {}
    small: list[str] = []
    for column, masks in groups.items():
        out[column] = {}
        for name, mask in masks.items():
            part = scored[mask]
            if part.empty:
                continue
            y = part["label"].to_numpy(dtype=int)
            p = part["probability"].to_numpy(dtype=float)
            entry: dict[str, Any] = {
                "images": len(part),
                "patients": part["patient"].nunique(),
                "positives": int(y.sum()),
                "auroc": auroc(y, p),
                "ci95": None,
            }
            if 0 < y.sum() < len(y):
                curves = patient_bootstrap(y, p, part["patient"].astype(str), n=n_boot, seed=seed)
                entry["ci95"] = percentile_interval(curves.auroc)
            if y.sum() < MIN_SUBGROUP_POSITIVES:
                entry["warning"] = f"fewer than {MIN_SUBGROUP_POSITIVES} positives"
                small.append(f"{column} {name} ({int(y.sum())})")
            out[column][name] = entry
    if small:
        warnings.append(
            f"subgroups with fewer than {MIN_SUBGROUP_POSITIVES} positive images, "
            f"whose AUROC to read with care: {', '.join(small)}"
        )
    return out


def _negative_kinds(scored: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every positive with the negatives of one kind ("no finding negatives": healthy films;
    "other findings negatives": films sick for another reason). A model that learnt what sets
    the healthy films apart (their era, their markers) rather than the heart scores well
    against the first and not the second: a gap between them shows the shortcut."""
    if "negative_kind" not in scored:
        return {}
    kind = scored["negative_kind"].fillna("").astype(str)
    positive = (scored["label"] == 1).to_numpy()
    names = sorted(k for k in kind[scored["label"] == 0].unique() if k)
    return {f"{k} negatives": positive | (kind == k).to_numpy() for k in names}


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(
    folder: str | Path,
    scored: pd.DataFrame,
    meta: dict[str, Any],
    context: dict[str, Any],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    training_curves: str | Path | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """Assess ``scored`` and write metrics.json, predictions.csv, the figures and report.html.

    ``context`` says what was evaluated: model path, data, split and its description, skipped
    records. ``warnings`` come first among the report's warnings. Returns the metrics (as in
    metrics.json).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    thresholds = model_thresholds(meta)
    result = assess(scored, thresholds, n_boot=n_boot, seed=seed)
    result.metrics["warnings"] = [*warnings, *result.metrics["warnings"]]
    metrics = {
        **context,
        "threshold_rule": meta["threshold"]["rule"],
        "threshold_chosen_on": meta["threshold"].get("chosen_on"),
        **result.metrics,
    }
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _write_predictions(folder / "predictions.csv", scored, meta["threshold"]["value"])

    y = scored["label"].to_numpy(dtype=int)
    p = scored["probability"].to_numpy(dtype=float)
    title = f"{context.get('split', '')} split, {len(y)} images"
    primary = next(iter(thresholds))
    if result.roc_band is not None:
        plots.roc_plot(
            folder / "roc.png",
            y,
            p,
            title=f"ROC: {title}",
            band=result.roc_band,
            points=metrics["operating_points"],
            label=f"AUROC {metrics['auroc']['value']:.3f}",
        )
        auprc_text = f"AUPRC {metrics['auprc']['value']:.3f}"
        plots.pr_plot(folder / "pr.png", y, p, title=f"precision-recall: {title}\n{auprc_text}")
    if metrics["calibration"]["slope"] is not None:
        plots.calibration_plot(
            folder / "calibration.png", metrics["calibration"], title=f"calibration: {title}"
        )
    op = metrics["operating_points"][primary]
    plots.confusion_plot(
        folder / "confusion.png",
        op["confusion"],
        title=f"{primary}\nthreshold {op['threshold']:.3f}",
    )
    plots.histogram_plot(
        folder / "histogram.png", y, p, thresholds[primary], title=f"scores: {title}"
    )
    if training_curves is not None and Path(training_curves).is_file():
        shutil.copyfile(training_curves, folder / "training_curves.png")
    figures = {name: caption for name, caption in FIGURES.items() if (folder / name).is_file()}
    html = render_report(metrics, meta, {name: folder / name for name in figures}, figures)
    atomic_write_text(folder / "report.html", html)
    return metrics


def _write_predictions(path: Path, scored: pd.DataFrame, threshold: float) -> None:
    wanted = ("path", "patient", "source", "view", "sex", "age", "negative_kind", "fold")
    columns = [c for c in wanted if c in scored]
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "label", "probability", "prediction"])
        for row in scored.itertuples(index=False):
            values = [getattr(row, c) for c in columns]
            values = ["" if isinstance(v, float) and math.isnan(v) else v for v in values]
            writer.writerow(
                [
                    *values,
                    int(row.label),
                    f"{row.probability:.6f}",
                    int(row.probability >= threshold),
                ]
            )
