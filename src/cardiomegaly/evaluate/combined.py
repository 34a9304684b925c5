"""The combined score (:mod:`cardiomegaly.combine`) on scored records: every film measured by
the segment model, scored, written to ``combined.csv`` and assessed like a probability on the
films with a ratio, beside its two parts on the same films. Films the segment model flags are
left out of that assessment, and which films they are depends on the segment model, so the score
is also assessed on every film, those without a ratio ranked by the classifier's percentile alone
(``all_films``; the column ``combined_or_probability``). Used by ``train --folds K --ctr-model``
(out-of-fold) and ``evaluate --ctr-model`` (any data)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..combine import CombinedScore
from ..fileio import atomic_open
from .metrics import auroc, patient_bootstrap, percentile_interval
from .report import assess

log = logging.getLogger(__name__)


def measure_records(
    scored: pd.DataFrame, segment_model: str | Path, device: str = "auto"
) -> pd.DataFrame:
    """``scored`` with each film's ratio (``ctr``, NaN when flagged or unreadable), the reason
    (``ctr_quality``) and its ``view`` ("" when unknown)."""
    from ..segment.measure import Measurer

    measurer = Measurer.load(segment_model, device=device)
    measured = list(measurer.measure_many(scored["path"], 8, progress=True, total=len(scored)))
    view = scored["view"].fillna("").astype(str) if "view" in scored else ""
    return scored.assign(
        ctr=[np.nan if m.ctr is None else m.ctr for m in measured],
        ctr_quality=[m.error or (m.measurement.quality if m.measurement else "")
                     for m in measured],
        view=view,
    )  # fmt: skip


def assess_combined(
    frame: pd.DataFrame,
    combined: CombinedScore,
    segment_model: str | Path,
    folder: Path,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score the measured ``frame`` (from :func:`measure_records`), write
    ``folder/combined.csv`` and return the assessment (what metrics.json keeps as
    ``combined``), or why there is none."""
    ok = frame["ctr"].notna().to_numpy()
    if not ok.any():
        reason = f"no combined score: none of the {len(frame)} films could be measured"
        log.warning("%s", reason)
        return {"not_fitted": reason, "segment_model": str(segment_model)}
    numbers = frame["probability"], frame["ctr"], frame["view"].to_numpy()
    frame = frame.assign(
        combined=combined.scores(*numbers),
        combined_or_probability=combined.scores_or_probability(*numbers),
    )
    folder.mkdir(parents=True, exist_ok=True)
    keep = [c for c in ("path", "patient", "source", "view", "negative_kind", "fold") if c in frame]
    keep += ["label", "probability", "ctr", "ctr_quality", "combined", "combined_or_probability"]
    # The scores are written exactly: the threshold is one of them (chosen on these very films
    # out of fold), and a score rounded below it would read as the wrong side of the cut.
    exact = ["combined", "combined_or_probability"]
    table = frame[keep].round({c: 6 for c in keep if c not in exact})
    with atomic_open(folder / "combined.csv", "w", encoding="utf-8", newline="") as f:
        table.assign(
            prediction=(frame["combined"] >= combined.threshold).astype(int).where(ok)
        ).astype({"prediction": "Int64"}).to_csv(f, index=False)  # 0, 1, or blank unmeasured
    part, threshold = frame[ok], {f"{combined.rule} (combined threshold)": combined.threshold}
    result = assess(part.assign(probability=part["combined"]), threshold, n_boot=n_boot,
                    seed=seed)  # fmt: skip
    keys = ("images", "patients", "positives", "auroc", "operating_points", "subgroups", "warnings")
    metrics = {k: result.metrics[k] for k in keys}
    every = assess(frame.assign(probability=frame["combined_or_probability"]), threshold,
                   n_boot=n_boot, seed=seed)  # fmt: skip
    metrics["all_films"] = {
        k: every.metrics[k] for k in ("images", "positives", "auroc", "subgroups")
    }
    metrics["parts_on_the_same_films"] = {
        name: _auroc_ci(part, column, n_boot, seed)
        for name, column in (("probability", "probability"), ("ratio", "ctr"))
    }
    metrics.update(
        score=combined.to_metadata()["score"],
        segment_model=str(segment_model),
        not_measured=int((~ok).sum()),
        threshold=combined.threshold,
        threshold_chosen_on=combined.chosen_on,
        views=sorted(combined.references),
    )
    log.info("combined with the ratio: AUROC %.4f on %d measured films (%d not measured); "
             "%.4f on all films, those not measured by the classifier alone",
             metrics["auroc"]["value"] or np.nan, int(ok.sum()), int((~ok).sum()),
             every.metrics["auroc"]["value"] or np.nan)  # fmt: skip
    return metrics


def _auroc_ci(frame: pd.DataFrame, column: str, n_boot: int, seed: int) -> dict[str, Any]:
    y, s = frame["label"].to_numpy(), frame[column].to_numpy(dtype=float)
    if y.min() == y.max():
        return {"value": None, "ci95": None}
    boot = patient_bootstrap(y, s, frame["patient"].astype(str).to_numpy(), n=n_boot, seed=seed)
    return {"value": auroc(y, s), "ci95": percentile_interval(boot.auroc)}
