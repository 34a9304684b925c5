"""The segment model's heart width against NIH's radiologist heart boxes: does the measured heart
follow the heart's size on another hospital's films?

Not a test: a measurement (a minute on 2 cores). JSRT's masks judge the outlines on JSRT's films
only. NIH's boxed films (Cardiomegaly positives with a radiologist's box around the heart, in
``BBox_List_2017.csv``) are another hospital's, AP and PA: the box's width is an independent,
if loose, reading of the heart's transverse size. For every boxed film: the predicted heart and
thorax widths and the box's width, all in model pixels; then the bias (heart minus box), Spearman's
rho between the heart's width and the box's, and, as a control, rho between the thorax's width and
the box's (bigger chests hold bigger hearts: a heart outline that tracks the heart must do better
than that), with patient-bootstrap 95 % intervals, overall and per view.

    python benchmarks/heart_boxes_nih.py --model runs/train/seg/model.safetensors \\
        --data ../shared/data/nih-cxr-cardiomegaly --out runs/bench/heart-boxes.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import spearmanr

from cardiomegaly.data.preprocess import box_to_square
from cardiomegaly.data.records import load_records
from cardiomegaly.segment.measure import Measurer


def measure_boxed(model: str, data: str) -> pd.DataFrame:
    """One row per boxed film: view, patient, the box's and the measured widths (model pixels)."""
    table = load_records(data).table
    boxed = table[table["box_w"].notna()].reset_index(drop=True)
    measurer = Measurer.load(model)
    rows = []
    for (_, rec), got in zip(boxed.iterrows(), measurer.measure_many(boxed["path"]), strict=True):
        width, height = Image.open(rec["path"]).size
        box = (rec["box_x"], rec["box_y"], rec["box_w"], rec["box_h"])
        x, _, w, _ = box_to_square(box, width, height, measurer.image_size, measurer.resize)
        m = got.measurement
        heart, thorax = (None, None) if m is None else (m.heart, m.thorax)
        rows.append({
            "film": Path(rec["path"]).name,  # the file name, as predict's CSV has its path
            "patient": rec["patient"],
            "view": rec["view"],
            "quality": "unreadable" if got.error else m.quality,
            "box_left": x, "box_right": x + w, "box_width": w,
            "heart_left": heart.left[0] if heart else np.nan,
            "heart_right": heart.right[0] + 1 if heart else np.nan,
            "heart_width": heart.width if heart else np.nan,
            "thorax_width": thorax.width if thorax else np.nan,
            "ctr": np.nan if got.ctr is None else got.ctr,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _stats(f: pd.DataFrame) -> dict[str, float]:
    heart, box, thorax = f["heart_width"], f["box_width"], f["thorax_width"]
    rho_heart = spearmanr(heart, box).statistic
    rho_thorax = spearmanr(thorax, box).statistic
    return {
        "bias_px": float((heart - box).mean()),
        "bias_pct": float(100 * ((heart - box) / box).mean()),
        "mean_abs_pct": float(100 * ((heart - box).abs() / box).mean()),
        "rho_heart_box": float(rho_heart),
        "rho_thorax_box": float(rho_thorax),
        "rho_difference": float(rho_heart - rho_thorax),
        "left_edge_px": float((f["heart_left"] - f["box_left"]).mean()),
        "right_edge_px": float((f["heart_right"] - f["box_right"]).mean()),
    }


def summarise(frame: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each statistic with its patient-bootstrap 95 % interval, on the films with a heart and a
    thorax outline (flagged ones included: a flag is about the ratio, not the outline)."""
    rows = []
    rng = np.random.default_rng(seed)
    for view in ("all", "PA", "AP"):
        f = frame if view == "all" else frame[frame["view"] == view]
        f = f[f["heart_width"].notna() & f["thorax_width"].notna()].reset_index(drop=True)
        point = _stats(f)
        patients = f["patient"].unique()
        films_of = {p: np.flatnonzero(f["patient"].to_numpy() == p) for p in patients}
        draws = []
        for _ in range(n_boot):
            drawn = rng.choice(patients, size=len(patients))
            draws.append(_stats(f.iloc[np.concatenate([films_of[p] for p in drawn])]))
        draws = pd.DataFrame(draws)
        for name, value in point.items():
            low, high = np.percentile(draws[name].dropna(), [2.5, 97.5])
            rows.append({"view": view, "films": len(f), "patients": len(patients),
                         "statistic": name, "value": value, "low": low, "high": high})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a segment model file")
    parser.add_argument("--data", required=True, help="an NIH folder with BBox_List_2017.csv")
    parser.add_argument("--out", required=True, help="per-film CSV; the summary goes beside it")
    args = parser.parse_args()
    frame = measure_boxed(args.model, args.data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.drop(columns="patient").to_csv(out, index=False)
    summary = summarise(frame)
    summary.to_csv(out.with_suffix(".summary.csv"), index=False)
    flagged = int((frame["quality"] != "ok").sum())
    print(f"{len(frame)} boxed films, {frame['patient'].nunique()} patients, {flagged} flagged "
          f"or unreadable; widths in model pixels")  # fmt: skip
    for view, part in summary.groupby("view", sort=False):
        print(f"\n{view} ({int(part['films'].iloc[0])} films)")
        for r in part.itertuples():
            print(f"  {r.statistic:<16}{r.value:8.3f}  ({r.low:.3f} to {r.high:.3f})")


if __name__ == "__main__":
    main()
