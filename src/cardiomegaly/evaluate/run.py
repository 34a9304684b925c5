"""``cardiomegaly evaluate``: score a model file on records and write the evaluation folder.

>>> model, data = "runs/train/exp/model.safetensors", "../shared/data/nih-cxr-cardiomegaly"
>>> result = evaluate(model, data, split="test")                    # doctest: +SKIP
>>> result.folder, result.metrics["auroc"]["ci95"]                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..artifacts import probabilities
from ..combine import combined_for
from ..data.cache import ImageCache, count_seen
from ..data.dataset import XrayDataset
from ..data.records import DataArg, data_label
from ..data.split import select_records
from ..errors import UserError
from ..fileio import atomic_open, atomic_write_text, fresh_folder, next_run_folder
from ..model import load_model, read_metadata
from ..runtime import score_dataset, select_device
from ..tta import with_tta
from . import plots
from .combined import assess_combined, measure_records
from .html import render_comparison
from .metrics import auroc, delong_test, patient_bootstrap, percentile_interval
from .report import write_report

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Where the evaluation went and what metrics.json (or comparison.json) holds."""

    folder: Path
    metrics: dict[str, Any]


def evaluate(
    model: str | Path,
    data: DataArg,
    split: str = "test",
    out: str | Path | None = None,
    *,
    batch_size: int = 32,
    device: str = "auto",
    n_boot: int = 2000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    ctr_model: str | Path | None = None,
) -> EvalResult:
    """Evaluate one model file on ``data`` (its ``split``) and write the evaluation folder.

    ``split``: test or val of the patient-wise split the model was trained with (read back from
    the run's ``splits.csv`` or redrawn from the seed in the model file), or all records.
    ``ctr_model``: the segment model the classifier's combined score was calibrated with; the
    score is then evaluated too (``combined.csv``, and a section of the report).
    """
    meta = read_metadata(model)
    combined = None
    if ctr_model is not None:
        combined, why_not = combined_for(meta, ctr_model)
        if combined is None:
            raise UserError(why_not or (
                f"{model}: carries no combined score; make one with 'train --folds K "
                "--ctr-model SEGMODEL', or resume a finished cross-validation with --ctr-model"
            ))  # fmt: skip
    scored, context = _scored_records(model, meta, data, split, batch_size, device, cache_dir)
    folder = out_folder(out)
    if combined is not None:
        frame = measure_records(scored, ctr_model, device)
        context["combined"] = assess_combined(frame, combined, ctr_model, folder,
                                              n_boot=n_boot, seed=seed)  # fmt: skip
    curves = Path(model).parent / "curves.png"
    metrics = write_report(
        folder,
        scored,
        meta,
        context,
        n_boot=n_boot,
        seed=seed,
        training_curves=curves if curves.is_file() else None,
        warnings=[w for w in [_seen_warning(context["seen_by_model"], len(scored))] if w],
    )
    return EvalResult(folder, metrics)


def compare(
    model_a: str | Path,
    model_b: str | Path,
    data: DataArg,
    split: str = "test",
    out: str | Path | None = None,
    *,
    batch_size: int = 32,
    device: str = "auto",
    n_boot: int = 2000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> EvalResult:
    """Two model files on the same records: AUROC difference, paired bootstrap CI, DeLong p.

    The records and split come from model A's file; B is scored on exactly the same images.
    """
    meta_a, meta_b = read_metadata(model_a), read_metadata(model_b)
    scored_a, context = _scored_records(model_a, meta_a, data, split, batch_size, device, cache_dir)
    scored_b, _ = _scored_records(
        model_b, meta_b, data, split, batch_size, device, cache_dir, only=scored_a["path"]
    )
    scored_b = scored_b.set_index("path").loc[scored_a["path"]].reset_index()
    y = scored_a["label"].to_numpy(dtype=int)
    if y.min() == y.max():
        raise UserError(
            "the records have one class only: AUROC, and so the comparison, is "
            "undefined; give data with positives and negatives"
        )
    pa, pb = scored_a["probability"].to_numpy(), scored_b["probability"].to_numpy()
    patients = scored_a["patient"].astype(str).to_numpy()
    boot_a = patient_bootstrap(y, pa, patients, n=n_boot, seed=seed)
    boot_b = patient_bootstrap(y, pb, patients, n=n_boot, seed=seed)  # the same resamples
    test = delong_test(y, pa, pb)
    notes = []
    if _split_source(meta_a) != _split_source(meta_b) and split != "all":
        notes.append(
            "the two models were trained on different data or splits: model B may "
            "have seen some of these records in training"
        )
    result = {
        **context,
        "model_a": str(model_a),
        "model_b": str(model_b),
        "images": len(y),
        "patients": len(set(patients)),
        "positives": int(y.sum()),
        "auroc_a": {"value": auroc(y, pa), "ci95": percentile_interval(boot_a.auroc)},
        "auroc_b": {"value": auroc(y, pb), "ci95": percentile_interval(boot_b.auroc)},
        "difference": {
            "value": test["difference"],
            "ci95": percentile_interval(boot_a.auroc - boot_b.auroc),
            "ci95_method": f"paired patient bootstrap, {n_boot} resamples, seed {seed}",
            "delong_z": test["z"],
            "delong_p": test["p"],
        },
        "notes": notes,
    }
    folder = out_folder(out)
    atomic_write_text(folder / "comparison.json", json.dumps(result, indent=2) + "\n")
    with atomic_open(folder / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        pd.DataFrame(
            {
                "path": scored_a["path"],
                "patient": scored_a["patient"],
                "label": y,
                "probability_a": np.round(pa, 6),
                "probability_b": np.round(pb, 6),
            }
        ).to_csv(f, index=False)
    plots.roc_compare_plot(
        folder / "roc.png",
        y,
        {f"A {result['auroc_a']['value']:.3f}": pa, f"B {result['auroc_b']['value']:.3f}": pb},
        title=f"A: {Path(model_a).name}  B: {Path(model_b).name}\n"
        f"{context['split']} split, {len(y)} images",
    )
    atomic_write_text(folder / "report.html", render_comparison(result, folder / "roc.png"))
    return EvalResult(folder, result)


# ------------------------------------------------------------------------------------ helpers


def _scored_records(model, meta, data, split, batch_size, device, cache_dir, only=None):
    """Records of ``split``, scored by ``model`` with its own preprocessing; and the context."""
    records, table, description = select_records(model, meta, data, split)
    if only is not None:
        table = table[table["path"].isin(set(only))]
    from ..segment.crop import ThoraxCrop  # below evaluate; the segment task loads torch

    pre = meta["preprocessing"]
    crop = ThoraxCrop.of_classifier(model, meta, device)
    cache = ImageCache(pre["image_size"], pre["resize"], root=cache_dir, crop=crop)
    bad = cache.warm(list(table["path"]))
    for _path, reason in bad:
        log.warning("skipped     %s", reason)
    table = table[~table["path"].isin({p for p, _ in bad})].reset_index(drop=True)
    if table.empty:
        raise UserError(f"{data}: no readable images in the {split} split")
    net, _ = load_model(model)
    dev = select_device(device)
    net = with_tta(net.to(dev), meta)
    logits = score_dataset(net, XrayDataset(table, cache), batch_size, dev, progress=True)
    scored = table.assign(probability=probabilities(logits, meta))
    context = {
        "model": str(model),
        "data": data_label(data),
        "format": records.format,
        "split": split,
        "split_description": description,
        "skipped": [{"path": p, "reason": r} for p, r in bad],
        "seen_by_model": count_seen(meta, cache.fingerprints(table["path"])),
    }
    return scored, context


def _seen_warning(seen: int | None, films: int) -> str:
    """The contamination guard's sentence: how many of the scored films the model learnt from
    (same pixels, whatever their names), or that its file cannot say."""
    if seen is None:
        return ("the model file records no fingerprints of its training films (written by an "
                "older version), so whether it has seen these films cannot be checked")  # fmt: skip
    if seen == 0:
        return ""
    return (f"the model was trained or tuned on {seen} of these {films} films (the same "
            "pixels, whatever the file names): these numbers are optimistic")  # fmt: skip


def _split_source(meta: dict[str, Any]) -> tuple:
    training = meta.get("training", {})
    split = training.get("config", {}).get("split", {})
    return (training.get("data"), split.get("seed"), split.get("train"), split.get("val"))


def out_folder(out: str | Path | None) -> Path:
    """``out``, or the next runs/evaluate/expN; new or empty."""
    return fresh_folder(out if out else next_run_folder(Path("runs") / "evaluate", "exp"))
