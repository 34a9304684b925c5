"""Recipes for few films without pretrained weights, ranked by pooled out-of-fold AUROC.

Not a test: a measurement (tens of minutes per candidate on 2 cores). Each candidate trains with
``--folds K`` on every ``--data`` source together (both NIH folders: No Finding negatives of an
earlier era, and same-era negatives with other findings), and is judged on the pooled
out-of-fold predictions: AUROC with its patient-bootstrap interval, overall and by kind of
negative, never on one test split. Optionally each candidate's out-of-fold probability is also
merged with a cardiothoracic ratio (``--ctr CSV``, from ``cardiomegaly measure``) by averaging
their ranks within each view (no fitted parameter), and scored with test-time augmentation
(``--tta``: each fold model on its own test films in nine views, probabilities averaged).
A candidate whose weights are "phantoms" starts from the demo preset's model, trained first.
``--crop-thorax`` trains and scores every candidate on copies of the films cut to the thorax
(``ThoraxCrop``: the square around the heart and lungs that ``--seg-model`` finds, widened by a
tenth on each side; written once under ``OUT/thorax-crops``; no label is used to cut them).
The ``unet-encoder`` candidates are the ``unet_encoder`` classifier: the encoder half of the
segment task's U-Net (global average pooling, one logit) on whole films;
``unet-encoder-256-seg-init`` is the ``small-data`` preset's recipe started from ``--seg-model
SEGMODEL`` (a JSRT U-Net), and ``small-data`` the preset as it ships, which also cuts the films
to the thorax with that model inside the tool (the same films as ``--crop-thorax`` gives);
the earlier ``small-data`` candidates keep the 256 px, and the 16 epochs without weight
averaging, that the preset had when they were measured (``small-data-16``: the preset before it
adopted weight averaging; ``small-data-256``: before it adopted 192 px).

    python benchmarks/recipes_nih.py --data ../shared/data/nih-cxr-cardiomegaly \\
        --data ../shared/data/nih-cxr-other-findings --candidates resnet18-128 inception-128 \\
        --folds 5 --out runs/bench/recipes --ctr runs/bench/ctr.csv
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cardiomegaly import Classifier, TrainConfig, train
from cardiomegaly.artifacts import probabilities
from cardiomegaly.data.images import load_image
from cardiomegaly.data.preprocess import quantize
from cardiomegaly.evaluate.metrics import auroc, patient_bootstrap, percentile_interval
from cardiomegaly.segment.crop import ThoraxCrop
from cardiomegaly.tta import TTA_VIEWS, with_tta

#: name -> TrainConfig overrides; weights none (from scratch) unless a candidate names them.
CANDIDATES: dict[str, dict[str, Any]] = {
    "inception-299": {"arch": "inception_v3", "image_size": 299, "epochs": 30, "batch_size": 32},
    "inception-128": {"arch": "inception_v3", "image_size": 128, "epochs": 16, "batch_size": 32},
    "inception-160": {"arch": "inception_v3", "image_size": 160, "epochs": 16, "batch_size": 32},
    # the demo model (phantoms, 128 px, 12 epochs) as the starting point instead of random weights
    "inception-128-phantom-init": {"arch": "inception_v3", "image_size": 128, "epochs": 16,
                                   "batch_size": 32, "weights": "phantoms"},
    "inception-128-ema": {"arch": "inception_v3", "image_size": 128, "epochs": 16,
                          "batch_size": 32, "ema": 0.99},
    # twice the schedule, weights averaged over about the last 200 steps (8 epochs)
    "inception-128-long-ema": {"arch": "inception_v3", "image_size": 128, "epochs": 32,
                               "batch_size": 32, "ema": 0.995},
    "inception-128-strong-aug": {
        "arch": "inception_v3", "image_size": 128, "epochs": 16, "batch_size": 32,
        "augment": {"rotation": 15, "translate": 0.1, "scale": [0.8, 1.2], "brightness": 0.3,
                    "contrast": 0.3, "gamma": 0.3},
    },
    "resnet18-128": {"arch": "resnet18", "image_size": 128, "epochs": 20, "batch_size": 32,
                     "lr": 1e-3},
    "resnet18-224": {"arch": "resnet18", "image_size": 224, "epochs": 20, "batch_size": 32,
                     "lr": 1e-3},
    "resnet18-128-strong-aug": {
        "arch": "resnet18", "image_size": 128, "epochs": 30, "batch_size": 32, "lr": 1e-3,
        "augment": {"rotation": 15, "translate": 0.1, "scale": [0.8, 1.2], "brightness": 0.3,
                    "contrast": 0.3, "gamma": 0.3},
    },
    "resnet18-128-ema": {"arch": "resnet18", "image_size": 128, "epochs": 20, "batch_size": 32,
                         "lr": 1e-3, "ema": 0.99},
    "densenet121-128": {"arch": "densenet121", "image_size": 128, "epochs": 16, "batch_size": 32},
    # the small-data preset's network (the JSRT U-Net's encoder, 256 px, 16 epochs as the
    # preset then was) on whole films from random weights, where all layers train from the
    # start at lr 1e-3 ...
    "unet-encoder-256": {"preset": "small-data", "thorax_crop": "none", "tta": False,
                         "image_size": 256, "epochs": 16, "ema": 0.0},
    # ... from the segment model's encoder (--seg-model), 3 epochs head only, then all layers
    # at lr 1e-3 ...
    "unet-encoder-256-seg-init": {"preset": "small-data", "weights": "segment",
                                  "thorax_crop": "none", "tta": False, "image_size": 256,
                                  "epochs": 16, "ema": 0.0},
    # ... the same on films the segment model cuts to the thorax ...
    "small-data-no-tta": {"preset": "small-data", "weights": "segment", "tta": False,
                          "image_size": 256, "epochs": 16, "ema": 0.0},
    # ... answering through test-time views as well ...
    "small-data-16": {"preset": "small-data", "weights": "segment", "image_size": 256,
                      "epochs": 16, "ema": 0.0},
    # ... 32 epochs, the weights averaged over the steps ...
    "small-data-256": {"preset": "small-data", "weights": "segment", "image_size": 256},
    # ... and the preset as it ships: at 192 px
    "small-data": {"preset": "small-data", "weights": "segment"},
}  # fmt: skip


def _auroc_ci(frame: pd.DataFrame, score: str, n_boot: int = 2000) -> dict[str, Any]:
    y = frame["label"].to_numpy()
    s = frame[score].to_numpy()
    if y.min() == y.max():
        return {"value": None, "ci95": None, "films": len(y)}
    boot = patient_bootstrap(y, s, frame["patient"].astype(str).to_numpy(), n=n_boot, seed=0)
    return {"value": auroc(y, s), "ci95": percentile_interval(boot.auroc), "films": len(y),
            "positives": int(y.sum())}  # fmt: skip


def _by_kind(frame: pd.DataFrame, score: str) -> dict[str, Any]:
    out = {"all": _auroc_ci(frame, score)}
    for kind in ("no finding", "other findings"):
        part = frame[(frame["label"] == 1) | (frame["negative_kind"] == kind)]
        out[f"vs {kind}"] = _auroc_ci(part, score)
        for view in ("PA", "AP"):
            out[f"vs {kind}, {view}"] = _auroc_ci(part[part["view"] == view], score)
    return out


def _rank_within_view(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame.groupby("view")[column].rank(pct=True)


def _tta(run: Path, oof: pd.DataFrame) -> pd.Series:
    """Each film's mean probability over the test-time views (``cardiomegaly.tta``: the film,
    scales 0.92 and 1.08, 4 px shifts, +-5 degrees), from the fold model that never saw it."""
    out = pd.Series(np.nan, index=oof.index)
    for fold, part in oof.groupby("fold"):
        clf = Classifier.load(run / f"fold{fold}" / "model.safetensors", backend="torch")
        views = with_tta(clf.model, {"preprocessing": {**clf.meta["preprocessing"],
                                                       "tta": TTA_VIEWS}})  # fmt: skip
        for start in range(0, len(part), 32):
            chunk = part.iloc[start : start + 32]
            x = torch.from_numpy(np.stack([clf.preprocess(p) for p in chunk["path"]]))[:, None]
            with torch.no_grad():
                out[chunk.index] = probabilities(views(x), clf.meta)
    return out


def _phantom_model(run: Path) -> Path:
    """The demo preset's model (phantoms, 128 px, from scratch), trained once into ``run``."""
    if not (run / "model.safetensors").is_file():
        train(TrainConfig.from_preset("demo", export_onnx=False), out=run)
    return run / "model.safetensors"


def _thorax_crops(folders: list[str], seg_model: str, out: Path) -> list[str]:
    """Copies of the data folders with every PNG or JPEG film cut to its thorax by
    :class:`ThoraxCrop` (lossless PNGs of the decoded films; label files copied, heart boxes left
    out: they no longer fit)."""
    crop = ThoraxCrop.load(seg_model)
    copies = []
    for folder in map(Path, folders):
        copy = out / folder.name
        copies.append(str(copy))
        copy.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if f.is_file() and f.name not in ("BBox_List_2017.csv", "labels.csv"):
                (copy / f.name).write_bytes(f.read_bytes())
        cut = 0
        for film in sorted(folder.rglob("*")):
            target = _moved(film, [str(folder)], [str(copy)])
            if film.suffix.lower() not in (".png", ".jpg", ".jpeg") or target.exists():
                continue
            image, meta = load_image(film)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(quantize(crop(image), meta.bits)).save(target)
            cut += 1
        logging.info("%s: %d films cut to the thorax in %s", folder, cut, copy)
    return copies


def _moved(path: Path, folders: list[str], copies: list[str]) -> Path:
    """A film's path in the copy of its data folder, as a PNG (itself, resolved, outside the
    folders)."""
    for folder, copy in zip(folders, copies, strict=True):
        folder_path = Path(folder).resolve()
        if path.resolve().is_relative_to(folder_path):
            moved = Path(copy).resolve() / path.resolve().relative_to(folder_path)
            return moved.with_suffix(".png")
    return path.resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--candidates", nargs="+", default=["resnet18-128"], choices=CANDIDATES)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--ctr", help="a measure CSV (path, ctr) of the same films")
    parser.add_argument("--tta", action="store_true", help="also score with test-time views")
    parser.add_argument("--seg-model", help="a segment model: the unet-encoder's starting weights")
    parser.add_argument(
        "--crop-thorax",
        action="store_true",
        help="train and score on the films cut to the thorax by --seg-model",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (the folds stay fixed)")
    parser.add_argument("--out", default="runs/bench/recipes")
    args = parser.parse_args()
    if args.crop_thorax and not args.seg_model:
        parser.error("--crop-thorax needs --seg-model")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.setdefault("machine", f"{platform.machine()}, {torch.get_num_threads()} threads")
    summary["torch"] = torch.__version__
    summary["data"] = args.data
    summary["seed"], summary["crop_thorax"] = args.seed, args.crop_thorax
    data = (
        _thorax_crops(args.data, args.seg_model, out / "thorax-crops")
        if args.crop_thorax
        else args.data
    )
    ctr = pd.read_csv(args.ctr)[["path", "ctr"]] if args.ctr else None
    if ctr is not None:  # measure writes paths as given, the records resolved: match resolved
        moved = args.crop_thorax  # the films are their cut copies
        ctr["path"] = [str(_moved(Path(p), args.data, data) if moved else Path(p).resolve())
                       for p in ctr["path"]]  # fmt: skip
    for name in args.candidates:
        run = out / name
        start = time.perf_counter()
        overrides = {"weights": "none", **CANDIDATES[name]}
        preset = overrides.pop("preset", None)
        if overrides["weights"] == "phantoms":
            overrides["weights"] = str(_phantom_model(out / "phantoms"))
        if overrides["weights"] == "segment":
            if not args.seg_model:
                parser.error(f"{name} needs --seg-model")
            overrides["weights"] = args.seg_model
        config = TrainConfig.from_preset(preset, data=data, folds=args.folds, seed=args.seed,
                                         export_onnx=False, **overrides)  # fmt: skip
        if config.thorax_crop and args.crop_thorax:
            parser.error(f"{name} cuts films itself; leave out --crop-thorax")
        train(config, out=None if run.exists() else run, resume=run if run.exists() else None)
        minutes = (time.perf_counter() - start) / 60
        oof = pd.read_csv(run / "oof" / "predictions.csv", keep_default_na=False,
                          dtype={"patient": str})  # fmt: skip
        entry = {"config": CANDIDATES[name], "minutes": round(minutes, 1),
                 "classifier": _by_kind(oof, "probability")}  # fmt: skip
        if args.tta:
            oof["tta"] = _tta(run, oof)
            entry["classifier_tta"] = _by_kind(oof, "tta")
        if ctr is not None:
            oof["path"] = [str(Path(p).resolve()) for p in oof["path"]]
            both = oof.merge(ctr, on="path", how="inner")
            both = both[pd.to_numeric(both["ctr"], errors="coerce").notna()].copy()
            both["ctr"] = both["ctr"].astype(float)
            both["merged"] = (_rank_within_view(both, "probability")
                              + _rank_within_view(both, "ctr")) / 2  # fmt: skip
            entry["ratio_alone"] = _by_kind(both, "ctr")
            entry["classifier_on_measured"] = _by_kind(both, "probability")
            entry["classifier_plus_ratio"] = _by_kind(both, "merged")
        summary.setdefault("candidates", {})[name] = entry
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({name: entry}, indent=1))


if __name__ == "__main__":
    main()
