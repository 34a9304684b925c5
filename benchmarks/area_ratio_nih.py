"""The heart's area against the thorax's as the segment model's cardiomegaly score, in place of the
diameter ratio: a candidate of ``docs/experiments.md``, measured on a cross-validation run.

Not a test: a measurement (about a minute on 2 cores). RUN is a ``train --folds K --ctr-model
SEGMODEL`` folder. Every film of its ``oof/combined.csv`` is measured again with that segment
model; where the ratio was measured (not flagged), the cardiothoracic area ratio is the heart's
area over the thorax's, the thorax being, row by row, the span from the leftmost to the rightmost
pixel of the lungs and the heart (the cleaned masks ``measure`` reads the ratio from). The
combined score is formed again with the area ratio in the ratio's place (``CombinedScore``: ranks
within each view, no fitted parameter, threshold by the run's rule) and written as OUT's
``oof/combined.csv``, so that ``compare_oof.py RUN OUT`` pairs the two, the ratio column
included. The diameter ratio measured again must equal the run's (checked).

    python benchmarks/area_ratio_nih.py runs/train/cv5-ctr --out runs/bench/area-ratio
    python benchmarks/compare_oof.py runs/train/cv5-ctr runs/bench/area-ratio
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cardiomegaly.artifacts import model_sha256
from cardiomegaly.combine import CombinedScore
from cardiomegaly.segment.measure import Measurer


def area_ratio(masks: dict[str, np.ndarray]) -> float:
    """Heart area over the row-by-row span of lungs and heart (cleaned boolean masks)."""
    union = masks["heart"] | masks["left_lung"] | masks["right_lung"]
    rows = np.flatnonzero(union.any(axis=1))
    left = union[rows].argmax(axis=1)
    right = union.shape[1] - 1 - union[rows, ::-1].argmax(axis=1)
    return float(masks["heart"].sum() / (right - left + 1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a train --folds K --ctr-model SEGMODEL run folder")
    parser.add_argument("--out", required=True, help="folder to write oof/combined.csv into")
    args = parser.parse_args()
    run = Path(args.run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    frame = pd.read_csv(run / "oof" / "combined.csv", keep_default_na=False, na_values=[""])
    measurer = Measurer.load(config["ctr_model"], device="cpu", backend="torch")
    ctr, ctar = [], []
    for got in measurer.measure_many(frame["path"], batch_size=16):
        ok = got.ctr is not None
        ctr.append(got.ctr if ok else np.nan)
        ctar.append(area_ratio(got.masks) if ok else np.nan)
    ctr, ctar = np.array(ctr, float), np.array(ctar, float)
    same = (np.isnan(ctr) == frame["ctr"].isna().to_numpy()).all()
    if not same or not np.allclose(ctr[~np.isnan(ctr)], frame["ctr"].dropna(), atol=1e-5):
        raise SystemExit(f"{run}: the ratio measured again differs from the run's")
    measured = ~np.isnan(ctar)
    probability, view = frame["probability"].to_numpy(), frame["view"].fillna("").to_numpy()
    label = frame["label"].to_numpy()
    score = CombinedScore.fit(probability[measured], ctar[measured], view[measured],
                              label[measured], config.get("threshold_rule", "youden"),
                              model_sha256(config["ctr_model"]), "out-of-fold")  # fmt: skip
    out = frame.assign(
        ctr=np.round(ctar, 6),
        combined=score.scores(probability, ctar, view),
        combined_or_probability=score.scores_or_probability(probability, ctar, view),
    )
    decided = (out["combined"] >= score.threshold).astype("Int64")
    out["prediction"] = decided.where(out["combined"].notna())
    folder = Path(args.out) / "oof"
    folder.mkdir(parents=True, exist_ok=True)
    out.to_csv(folder / "combined.csv", index=False)
    print(f"{measured.sum()} of {len(frame)} films measured; area ratio "
          f"{np.nanmean(ctar):.3f} on average (diameter ratio {np.nanmean(ctr):.3f}); "
          f"{folder / 'combined.csv'}")  # fmt: skip


if __name__ == "__main__":
    main()
