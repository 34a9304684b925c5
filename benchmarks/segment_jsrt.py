"""Heart and lung segmentation on JSRT: K-fold patient-wise cross-validation, from scratch, CPU.

Not a test: a measurement (tens of minutes on 2 cores). For each candidate network and fold it
trains with the ``segment`` preset (fold k as the test split, a tenth of the rest for early
stopping), then pools the test films of every fold: Dice and IoU per organ and the ratio's mean
absolute error against the masks' ratio, with patient-bootstrap intervals, and CPU speed.

JSRT is one hospital's films. ``--judge DATA`` (given once or more) scores every fold model's
ratio as a cardiomegaly score on labelled films of another hospital (NIH: never trained on):
AUROC and how many films it flags, per fold model, so that a recipe that fits JSRT more closely
at the cost of other hospitals shows it. ``--seed S`` trains the same folds again with another
seed: how far one recipe's numbers move between trainings is the yardstick for a difference
between recipes.

    python benchmarks/segment_jsrt.py --data ../shared/data/jsrt-ctr --archs unet basicunet \\
        --folds 5 --image-size 256 --epochs 30 --out runs/bench/segment \\
        --judge ../shared/data/nih-cxr-cardiomegaly --judge ../shared/data/nih-cxr-other-findings
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cardiomegaly import TrainConfig, train
from cardiomegaly.data.records import load_records
from cardiomegaly.data.split import save_splits
from cardiomegaly.evaluate.metrics import percentile_interval
from cardiomegaly.segment.ctr import MASK_CLASSES
from cardiomegaly.segment.evaluate import evaluate_segmenter
from cardiomegaly.segment.model import build_segmenter


def folds_for(patients: pd.Series, k: int, seed: int) -> dict[str, int]:
    """Patient -> fold, patients shuffled with ``seed`` and dealt round-robin."""
    unique = np.array(sorted(set(patients)))
    np.random.default_rng(seed).shuffle(unique)
    return {p: i % k for i, p in enumerate(unique)}


def write_split(records, fold_of: dict[str, int], fold: int, k: int, path: Path) -> None:
    rng = np.random.default_rng(fold)
    rest = sorted(p for p, f in fold_of.items() if f != fold)
    val = set(rng.choice(rest, max(1, len(rest) // 10), replace=False))
    split = records.table["patient"].map(
        lambda p: "test" if fold_of[p] == fold else "val" if p in val else "train"
    )
    save_splits(records, split, path)


def speed(arch: str, size: int, width: int) -> float:
    """Films per second through the network alone, batch 8, eval mode, this CPU."""
    net = build_segmenter(arch, width).eval()
    x = torch.rand(8, 1, size, size)
    with torch.no_grad():
        net(x)
        start = time.perf_counter()
        for _ in range(3):
            net(x)
    return 24 / (time.perf_counter() - start)


def bootstrap(frame: pd.DataFrame, column: str, n: int = 2000, seed: int = 0) -> list[float]:
    patients = frame["patient"].to_numpy()
    unique = np.unique(patients)
    by = {p: frame[column].to_numpy()[patients == p] for p in unique}
    rng = np.random.default_rng(seed)
    means = [np.mean(np.concatenate([by[p] for p in rng.choice(unique, len(unique))]))
             for _ in range(n)]  # fmt: skip
    return percentile_interval(np.array(means))


def _judge(model: Path, data: list[str], fold: int) -> dict:
    """The fold model's ratio as a cardiomegaly score on every film of ``data``."""
    result = evaluate_segmenter(model, data, "all", model.parent / "judge")
    m = result.metrics
    return {"fold": fold, "films": m["films"], "flagged": m["flagged"], "auroc": m["auroc"],
            "auroc_by_view": m["auroc_by_view"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/jsrt-ctr")
    parser.add_argument("--archs", nargs="+", default=["unet", "basicunet"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, nargs="*", help="run these folds only")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="training seed (the folds stay fixed)")
    parser.add_argument(
        "--augment",
        type=json.loads,
        default={},
        help="augmentation overrides as JSON, e.g. '{\"rotation\": 15}'",
    )
    parser.add_argument("--judge", action="append", help="labelled films of other hospitals")
    parser.add_argument("--out", default="runs/bench/segment")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(args.data)
    fold_of = folds_for(records.table["patient"], args.folds, seed=0)
    summary = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "data": args.data, "folds": args.folds, "image_size": args.image_size,
               "epochs": args.epochs, "seed": args.seed, "augment": args.augment,
               "judge": args.judge,
               "candidates": {}}  # fmt: skip
    for arch in args.archs:
        frames, minutes, judged = [], [], []
        for fold in args.only_folds if args.only_folds is not None else range(args.folds):
            split_file = out / f"{arch}-fold{fold}-splits.csv"
            write_split(records, fold_of, fold, args.folds, split_file)
            config = TrainConfig.from_preset("segment", data=args.data, arch=arch,
                                             width=args.width, image_size=args.image_size,
                                             epochs=args.epochs, export_onnx=False,
                                             seed=args.seed,
                                             augment=args.augment,
                                             split={"split_file": str(split_file)})  # fmt: skip
            start = time.perf_counter()
            result = train(config, out=out / f"{arch}-fold{fold}")
            minutes.append((time.perf_counter() - start) / 60)
            frame = pd.read_csv(result.run_dir / "test" / "predictions.csv")
            frame["patient"] = frame["path"]  # one film per JSRT patient
            frame["fold"] = fold
            frames.append(frame)
            if args.judge:
                judged.append(_judge(result.run_dir / "model.safetensors", args.judge, fold))
        pooled = pd.concat(frames, ignore_index=True)
        pooled.to_csv(out / f"{arch}-pooled.csv", index=False)
        both = pooled.dropna(subset=["ctr", "ctr_reference"]).copy()
        both["abs_error"] = (both["ctr"] - both["ctr_reference"]).abs()
        entry = {
            "films": len(pooled),
            "dice": {k: {"value": float(pooled[f"dice_{k}"].mean()),
                         "ci95": bootstrap(pooled, f"dice_{k}")} for k in MASK_CLASSES},
            "iou": {k: float(pooled[f"iou_{k}"].mean()) for k in MASK_CLASSES},
            "ctr_mae": {"value": float(both["abs_error"].mean()),
                        "ci95": bootstrap(both, "abs_error")},
            "ctr_flagged": int(pooled["ctr"].isna().sum()),
            "minutes_per_fold": float(np.mean(minutes)),
            "films_per_second_eval_b8": speed(arch, args.image_size, args.width),
        }  # fmt: skip
        if judged:
            entry["judged"] = judged
        summary["candidates"][arch] = entry
        print(json.dumps({arch: entry}, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
