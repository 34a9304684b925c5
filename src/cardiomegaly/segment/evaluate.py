"""``cardiomegaly evaluate SEGMODEL``: how well a segment model outlines and measures.

On mask data: Dice and IoU per organ, the ratio's error against the masks' own ratio (mean
absolute error, Bland-Altman), and the ratio's AUROC for ``ratio > 0.5`` of the masks. On
classification data (NIH and the like): the ratio as a cardiomegaly score, AUROC overall and per
view. Every interval is a patient bootstrap; every figure names its data and split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.cache import ImageCache
from ..data.records import DataArg, data_label
from ..data.sources.masks import mask_columns
from ..data.split import select_records
from ..evaluate import plots
from ..evaluate.html import esc, figures_section, page, sources_text, table
from ..evaluate.metrics import (
    auroc,
    bootstrap_mean,
    choose_threshold,
    operating_point,
    patient_bootstrap,
    percentile_interval,
)
from ..evaluate.run import EvalResult, out_folder
from ..fileio import atomic_open, atomic_write_text
from ..model import read_metadata
from .ctr import AP_NOTE, MASK_CLASSES
from .data import square_masks
from .measure import Measurer, dice, iou

log = logging.getLogger(__name__)

CAPTIONS = {
    "bland_altman.png": "Bland-Altman: measured minus reference ratio against their mean; "
    "dashed, the 95 % limits of agreement",
    "roc.png": "ROC of the measured ratio as a score",
    "ratio_by_label.png": "Measured ratio by label; dashed, the textbook 0.5",
}


def evaluate_segmenter(
    model: str | Path,
    data: DataArg,
    split: str = "test",
    out: str | Path | None = None,
    *,
    batch_size: int = 8,
    device: str = "auto",
    n_boot: int = 2000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> EvalResult:
    """Evaluate a segment model file on ``data`` (its ``split``; ``all`` for data it never saw)
    and write the evaluation folder: metrics.json, predictions.csv, figures and report.html."""
    meta = read_metadata(model)
    _, table, description = select_records(model, meta, data, split)
    measurer = Measurer.load(model, device=device)
    folder = out_folder(out)
    frame = _measure(measurer, table, batch_size, cache_dir)
    context = {
        "model": str(model),
        "data": data_label(data),
        "split": split,
        "split_description": description,
    }
    metrics = _metrics(frame, n_boot, seed) | context
    if "ctr_reference" not in frame and split == "test":  # thresholds per view, on validation
        _, val_table, _ = select_records(model, meta, data, "val")
        val = _measure(measurer, val_table, batch_size, cache_dir).dropna(subset=["ctr"])
        if val["label"].nunique() == 2 and frame["ctr"].notna().any():
            metrics["view_aware"] = _view_aware(val, frame, n_boot, seed)
        else:
            log.warning("no view-aware score: it needs measured films of both classes in the "
                        "validation split and measured test films")  # fmt: skip
    with atomic_open(folder / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        frame.drop(columns=["patient"]).round(5).to_csv(f, index=False)
    figures = _figures(folder, frame, metrics)
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(folder / "report.html", _report(metrics, meta, figures))
    return EvalResult(folder, metrics)


def _measure(measurer: Measurer, table: pd.DataFrame, batch_size: int, cache_dir) -> pd.DataFrame:
    """One row per film: the ratio (or why none) and, on mask data, Dice and IoU per organ
    against its masks (squared to the model's size) and the reference ratio."""
    has_masks = set(mask_columns()) <= set(table.columns)
    cache = ImageCache(measurer.image_size, measurer.resize, root=cache_dir)
    rows = []
    films = measurer.measure_many(list(table["path"]), batch_size, progress=True, total=len(table))
    for film, measured in zip(table.itertuples(index=False), films, strict=True):
        row = {"path": film.path, "patient": film.patient, "label": int(film.label),
               "view": film.view, "ctr": measured.ctr, "error": measured.error,
               "quality": measured.row()["quality"]}  # fmt: skip
        if measured.error is None and has_masks:
            truth = square_masks(pd.Series(film._asdict()), cache)
            for k, organ in enumerate(MASK_CLASSES):
                row[f"dice_{organ}"] = dice(measured.masks[organ], truth[k] > 0)
                row[f"iou_{organ}"] = iou(measured.masks[organ], truth[k] > 0)
            row["ctr_reference"] = film.ctr
        rows.append(row)
    return pd.DataFrame(rows)


def _view_aware(val: pd.DataFrame, test: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """An AP film magnifies the heart, so one threshold for both views loses. Each view gets
    its own threshold on the ratio (Youden's J on the validation split; views with one class
    there take the threshold of all films), and the score is the ratio minus its view's
    threshold: one scale on which AP and PA films compare. ``val`` holds measured films only."""
    overall = choose_threshold(val["label"], val["ctr"], "youden")
    thresholds = {}
    for view, group in val.groupby("view"):
        both = group["label"].nunique() == 2
        thresholds[view or "unknown"] = (
            choose_threshold(group["label"], group["ctr"], "youden") if both else overall
        )
    scored = test.dropna(subset=["ctr"])
    shift = scored["view"].map(lambda v: thresholds.get(v or "unknown", overall))
    score = (scored["ctr"] - shift).to_numpy()
    y = scored["label"].to_numpy()
    patients = scored["patient"].astype(str).to_numpy()
    point = operating_point(y, score, 0.0)
    return {
        "thresholds": {k: round(float(v), 4) for k, v in thresholds.items()},
        "threshold_all_views": round(float(overall), 4),
        "chosen_on": f"validation split ({len(val)} films), Youden's J per view",
        "score": "ratio minus its view's threshold",
        "auroc": _auroc_with_ci(y, score, patients, n_boot, seed),
        "auroc_one_threshold": _auroc_with_ci(y, scored["ctr"].to_numpy(), patients, n_boot, seed),
        "sensitivity": point["sensitivity"],
        "specificity": point["specificity"],
    }


def _mean_with_ci(
    values: np.ndarray, patients: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    if not len(values):
        return {"value": None, "undefined": "no film"}
    boot = bootstrap_mean(values, patients, np.zeros(len(values)), n=n_boot, seed=seed)
    return {"value": float(np.mean(values)), "ci95": percentile_interval(boot)}


def _auroc_with_ci(y, score, patients, n_boot, seed) -> dict[str, Any]:
    if len(set(y)) < 2:
        return {"value": None, "undefined": "one class only"}
    boot = patient_bootstrap(y, score, patients, n=n_boot, seed=seed)
    return {
        "value": auroc(y, score),
        "ci95": percentile_interval(boot.auroc),
        "n": len(y),
        "positives": int(np.sum(y)),
    }


def _metrics(frame: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    measured = frame.dropna(subset=["ctr"])
    out: dict[str, Any] = {
        "films": len(frame),
        "patients": int(frame["patient"].nunique()),
        "unreadable": int(frame["error"].notna().sum()),
        "flagged": int((frame["error"].isna() & frame["ctr"].isna()).sum()),
        "bootstrap": {"resamples": n_boot, "seed": seed, "unit": "patient"},
        "note": AP_NOTE,
    }
    patients = measured["patient"].astype(str).to_numpy()
    if "ctr_reference" in frame:  # mask data
        scored = frame.dropna(subset=["dice_heart"])
        p = scored["patient"].astype(str).to_numpy()
        for name in ("dice", "iou"):
            out[name] = {
                organ: _mean_with_ci(scored[f"{name}_{organ}"].to_numpy(), p, n_boot, seed)
                for organ in MASK_CLASSES
            }
        both = measured.dropna(subset=["ctr_reference"])
        diff = (both["ctr"] - both["ctr_reference"]).to_numpy()
        pb = both["patient"].astype(str).to_numpy()
        out["ctr_error"] = {
            "mae": _mean_with_ci(np.abs(diff), pb, n_boot, seed),
            "bias": float(diff.mean()) if len(diff) else None,
            "limits_of_agreement": [
                float(diff.mean() - 1.96 * diff.std(ddof=1)),
                float(diff.mean() + 1.96 * diff.std(ddof=1)),
            ]
            if len(diff) > 1
            else None,
        }
        y = (both["ctr_reference"] > 0.5).astype(int).to_numpy()
        out["auroc_ratio_over_0_5"] = _auroc_with_ci(y, both["ctr"].to_numpy(), pb, n_boot, seed)
    else:  # classification data: the ratio as a cardiomegaly score
        y = measured["label"].to_numpy()
        out["auroc"] = _auroc_with_ci(y, measured["ctr"].to_numpy(), patients, n_boot, seed)
        out["auroc_by_view"] = {
            view or "unknown": _auroc_with_ci(
                g["label"].to_numpy(),
                g["ctr"].to_numpy(),
                g["patient"].astype(str).to_numpy(),
                n_boot,
                seed,
            )
            for view, g in measured.groupby("view")
        }
    return out


def _figures(folder: Path, frame: pd.DataFrame, metrics: dict[str, Any]) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    measured = frame.dropna(subset=["ctr"])
    where = f"{metrics.get('split', '')} split, {len(measured)} films"
    if "ctr_reference" in frame:
        both = measured.dropna(subset=["ctr_reference"])
        if len(both) > 1:
            fig, ax = plots.figure()
            mean = (both["ctr"] + both["ctr_reference"]) / 2
            diff = both["ctr"] - both["ctr_reference"]
            ax.scatter(mean, diff, s=14, alpha=0.7)
            err = metrics["ctr_error"]
            ax.axhline(err["bias"], color="k", lw=1, label=f"bias {err['bias']:+.4f}")
            for limit in err["limits_of_agreement"]:
                ax.axhline(limit, color="grey", ls="--", lw=1)
            ax.set_xlabel("mean of measured and reference ratio")
            ax.set_ylabel("measured - reference")
            ax.set_title(f"Bland-Altman: measured against reference ratio\n{where}")
            ax.legend()
            figures["bland_altman.png"] = folder / "bland_altman.png"
            plots.save(fig, figures["bland_altman.png"])
        label = (both["ctr_reference"] > 0.5).astype(int)
    else:
        both, label = measured, measured["label"]
    if label.nunique() == 2:
        figures["roc.png"] = folder / "roc.png"
        plots.roc_plot(
            figures["roc.png"],
            label.to_numpy(),
            both["ctr"].to_numpy(),
            title=f"ROC of the ratio\n{where}",
        )
        fig, ax = plots.figure()
        for value, name in ((0, "negative"), (1, "positive")):
            ax.hist(both["ctr"][label == value], bins=20, alpha=0.6, label=name)
        ax.axvline(0.5, color="k", ls="--", lw=1)
        ax.set_xlabel("cardiothoracic ratio (measured)")
        ax.set_title(f"ratio by label\n{where}")
        ax.legend()
        figures["ratio_by_label.png"] = folder / "ratio_by_label.png"
        plots.save(fig, figures["ratio_by_label.png"])
    return figures


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci95")
    return f"{entry['value']:.3f}" + (f" ({ci[0]:.3f} to {ci[1]:.3f})" if ci else "")


def _report(metrics: dict[str, Any], meta: dict[str, Any], figures: dict[str, Path]) -> str:
    rows = [
        ["model", esc(metrics["model"])],
        [
            "network",
            esc(f"{meta['architecture']['name']}, {meta['preprocessing']['image_size']} px"),
        ],
        ["evaluated on", esc(f"{sources_text(metrics['data'])}, split: {metrics['split']}")],
        [
            "films",
            esc(
                f"{metrics['films']} ({metrics['patients']} patients); "
                f"{metrics['flagged']} flagged, {metrics['unreadable']} unreadable"
            ),
        ],
    ]
    sections = [
        "<h1>Heart and lung segmentation: evaluation</h1>",
        f"<p class='sub'>{esc(metrics['split_description'])}</p>",
        "<h2>What was evaluated</h2>" + table(None, rows, numeric_from=2),
    ]
    if "dice" in metrics:
        organs = [
            [esc(o.replace("_", " ")), _ci(metrics["dice"][o]), _ci(metrics["iou"][o])]
            for o in MASK_CLASSES
        ]
        err = metrics["ctr_error"]
        loa = err["limits_of_agreement"]
        sections += [
            "<h2>Outlines</h2>" + table(["organ", "Dice (95 % CI)", "IoU (95 % CI)"], organs),
            "<h2>The ratio against the reference ratio</h2>",
        ]
        if err["bias"] is None:
            sections.append("<p class='headline'>no film measured: every film was flagged (the "
                            "reasons are in predictions.csv).</p>")  # fmt: skip
        else:
            sections.append(
                f"<p class='headline'>mean absolute error <b>{_ci(err['mae'])}</b>; bias "
                f"{err['bias']:+.4f}"
                + (f", limits of agreement {loa[0]:+.3f} to {loa[1]:+.3f}" if loa else "")
                + "; AUROC for a reference ratio over 0.5: "
                + f"{_ci(metrics['auroc_ratio_over_0_5'])}.</p>"
            )
    else:
        views = [
            [esc(v), _ci(a), str(a.get("n", "")), str(a.get("positives", ""))]
            for v, a in metrics["auroc_by_view"].items()
        ]
        sections += [
            "<h2>The ratio as a cardiomegaly score</h2>",
            f"<p class='headline'>AUROC <b>{_ci(metrics['auroc'])}</b> (patient bootstrap)</p>",
            table(["view", "AUROC (95 % CI)", "films", "positives"], views),
            f"<div class='warn'>{esc(AP_NOTE)}.</div>",
        ]
        if "view_aware" in metrics:
            va = metrics["view_aware"]
            cuts = ", ".join(f"{v} {t:.3f}" for v, t in va["thresholds"].items())
            sections.append(
                "<h2>View-aware score</h2><p>Thresholds per view, chosen on the "
                f"{esc(va['chosen_on'])}: {esc(cuts)}. Score: {esc(va['score'])}. AUROC "
                f"<b>{_ci(va['auroc'])}</b> against {_ci(va['auroc_one_threshold'])} for the plain "
                f"ratio; at the views' thresholds sensitivity {_ci(va['sensitivity'])}, "
                f"specificity {_ci(va['specificity'])} (Wilson).</p>"
            )
    sections.append(figures_section(figures, CAPTIONS))
    sections.append(
        "<h2>Methods</h2><p class='note'>Masks: sigmoid &gt; 0.5, the largest connected "
        "component of each organ with its holes filled. Ratio: widest horizontal extent of the "
        "heart over the widest extent of both lungs, on the model's square input. Intervals: "
        f"{metrics['bootstrap']['resamples']} bootstrap resamples of patients, percentile "
        "method. Flagged films (implausible geometry) have no ratio and are left out of the "
        "ratio's figures, and counted above.</p>"
    )
    return page("cardiomegaly: segmentation evaluation", sections)
