"""Export a model file to ONNX or TorchScript; every export checks itself against PyTorch.

The exported graph takes what the model takes: grey images in [0, 1], shape (batch, 1, S, S),
and returns one logit per image. The model file's metadata (preprocessing, threshold, temperature)
travels inside the export, so an ONNX consumer needs nothing else.

>>> result = export("runs/train/exp/model.safetensors", "onnx")   # doctest: +SKIP
>>> result.path, result.max_probability_difference                 # doctest: +SKIP
(PosixPath('runs/train/exp/model.onnx'), 3.6e-07)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from scipy.special import expit

from .artifacts import METADATA_KEY, beside, is_export_of, read_onnx_metadata
from .data.phantom import sample_films
from .data.split import select_records
from .errors import UserError
from .evaluate.metrics import auroc
from .fileio import FILE_MODE, sha256_of
from .model import load_embedded, load_model, read_metadata
from .predict import Classifier
from .segment.crop import thorax_onnx_path
from .segment.model import load_segmenter, segmenter_from_state
from .tta import with_tta

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
OPSET = 18
PARITY_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    """The exported file and how far its probabilities are from PyTorch's on sample inputs."""

    path: Path
    format: str
    max_probability_difference: float
    samples: int


def export(
    model: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    samples: int = 8,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` (a model.safetensors) to ``format``, verify it, and write it atomically.

    ``out`` defaults to the model's path with ``.onnx`` or ``.torchscript.pt``; an existing
    file is never overwritten. The export is refused (and nothing written) when its probabilities
    differ from PyTorch's by more than 1e-4 on ``samples`` seeded phantom films. A classifier
    that cuts films to the thorax exports in two files: its own graph, and its segment model's
    beside it (``model.thorax.onnx``, checked the same way).
    """
    if format not in FORMATS:
        raise UserError(f"unknown export format '{format}'; choose onnx or torchscript")
    model = Path(model)
    out = Path(out) if out else beside(model, FORMATS[format])
    again = format == "onnx" and is_export_of(out, model)  # e.g. the one training wrote
    if out.exists() and not again:
        raise UserError(f"{out}: exists; give another --out (nothing was changed)")
    net, meta = _load(model)
    thorax = meta["preprocessing"].get("thorax_crop")
    if thorax and format != "onnx":
        raise UserError(f"{model}: cuts films to the thorax with a segment model that a "
                        "TorchScript file cannot carry; export --format onnx")  # fmt: skip
    seg_out = thorax_onnx_path(out)
    seg_again = again and is_export_of(seg_out, model)
    if thorax and seg_out.exists() and not seg_again:
        raise UserError(f"{seg_out}: exists, and is no export of {model}; give another --out "
                        "(nothing was changed)")  # fmt: skip
    # Which model file this is an export of: predict's default backend uses a model.onnx only
    # when it matches the model file beside it byte for byte.
    exported_from = {"exported_from": {"sha256": sha256_of(model)}}
    difference = _write_checked(net, {**meta, **exported_from}, out, format, again, samples, seed)
    if thorax:
        seg_meta = {**thorax["segment_model"], **exported_from}
        seg = segmenter_from_state(load_embedded(model), seg_meta, model)
        difference = max(difference, _write_checked(seg, seg_meta, seg_out, "onnx", seg_again,
                                                     samples, seed))  # fmt: skip
    log.debug("exported %s (max probability difference %.2e)", out, difference)
    return ExportResult(out, format, difference, samples)


def _write_checked(
    net: torch.nn.Module,
    meta: dict[str, Any],
    out: Path,
    format: str,
    again: bool,
    samples: int,
    seed: int,
) -> float:
    """Export ``net`` to ``out`` (or, ``again``, check the export already there) and return the
    largest probability difference to PyTorch; refuse beyond :data:`PARITY_TOLERANCE`."""
    size = int(meta["preprocessing"]["image_size"])
    # Chest-like films, not noise: on noise the logits saturate and any export looks perfect.
    x = torch.from_numpy(sample_films(samples, size, seed)).float().div(255)[:, None]
    with torch.no_grad():
        reference = net(x).numpy()
    if again:  # already there: checked again, not rewritten
        difference = float(np.abs(_sigmoid(_onnx_logits(out, x)) - _sigmoid(reference)).max())
        if difference > PARITY_TOLERANCE:
            raise UserError(
                f"{out}: an export of this model that differs from it by {difference:.2e}; "
                "delete it and export again"
            )
        return difference
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if format == "onnx":
            got = _export_onnx(net, meta, x, Path(tmp))
        else:
            got = _export_torchscript(net, meta, x, Path(tmp))
        difference = float(np.abs(_sigmoid(got) - _sigmoid(reference)).max())
        if difference > PARITY_TOLERANCE:
            raise RuntimeError(
                f"{format} export differs from PyTorch by {difference:.2e} in probability "
                f"(limit {PARITY_TOLERANCE}); not written"
            )
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return difference


def export_beside(model_file: Path) -> None:
    """model.onnx beside a model file that training just wrote, which predict and measure run on
    ONNX Runtime on a CPU. A failed export costs speed, not the run: say so and go on."""
    onnx_path = model_file.with_suffix(".onnx")
    onnx_path.unlink(missing_ok=True)  # an export of an earlier model file in this run
    thorax_onnx_path(onnx_path).unlink(missing_ok=True)
    try:
        result = export(model_file, "onnx", onnx_path)
    except Exception as exc:
        log.warning("no model.onnx: the export failed (%s); predict will use PyTorch", exc)
        return
    log.info("exported    %s (max probability difference to PyTorch %.1e)", result.path,
             result.max_probability_difference)  # fmt: skip


def _load(model: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Either task's network: a classifier gives one logit per film, a segment model one logit
    map per organ; both exports take the same input and carry their metadata."""
    if read_metadata(model).get("task", "classify") == "segment":
        return load_segmenter(model)
    net, meta = load_model(model)
    return with_tta(net, meta), meta  # its test-time views are part of what it answers


def _export_onnx(
    net: torch.nn.Module, meta: dict[str, Any], x: torch.Tensor, path: Path
) -> np.ndarray:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (x,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits" if meta.get("task") == "segment" else "logit"],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    onnx.save(proto, str(path))
    return _onnx_logits(path, x)


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


def _export_torchscript(
    net: torch.nn.Module, meta: dict[str, Any], x: torch.Tensor, path: Path
) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it still serves C++
        traced = torch.jit.trace(net, x)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(x).numpy()


INT8_MAX_AUROC_CHANGE = 0.005


@dataclass
class Int8Result:
    """The int8 model (kept only when validation AUROC moved by at most 0.005) and its figures."""

    path: Path | None
    val_auroc_fp32: float
    val_auroc_int8: float
    images_per_second_fp32: float
    images_per_second_int8: float
    calibration_images: int
    val_images: int

    @property
    def kept(self) -> bool:
        return self.path is not None


def int8_acceptable(auroc_fp32: float, auroc_int8: float) -> bool:
    """The int8 model is kept only if validation AUROC moved by at most 0.005 either way.

    >>> int8_acceptable(0.900, 0.896), int8_acceptable(0.900, 0.894)
    (True, False)
    """
    return abs(auroc_int8 - auroc_fp32) <= INT8_MAX_AUROC_CHANGE + 1e-12


def quantize_int8(
    model: str | Path,
    onnx_fp32: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    *,
    calibration: int = 64,
    batch_size: int = 16,
) -> Int8Result:
    """Static int8 quantisation (ONNX Runtime, QDQ, per-channel weights) of an fp32 export,
    calibrated on ``calibration`` images of the model's training split, and checked on its
    validation split: written to ``out`` (``model.int8.onnx``) only if AUROC moves by at most
    0.005.
    """
    onnx_fp32 = Path(onnx_fp32)
    out = Path(out) if out else beside(onnx_fp32, ".int8.onnx")
    if out.exists():
        raise UserError(f"{out}: exists; give another --out (nothing was changed)")
    meta = read_onnx_metadata(onnx_fp32)
    fp32 = Classifier.load(onnx_fp32)
    _, train_table, _ = select_records(model, meta, data, "train")
    _, val_table, _ = select_records(model, meta, data, "val")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(train_table), min(calibration, len(train_table)), replace=False)
    calib = [
        p
        for p in fp32.predict_many(list(train_table["path"].iloc[np.sort(picks)]))
        if p.error is None
    ]
    calib_images = np.stack([fp32.preprocess(p.path) for p in calib])[:, None]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calib_images, max(1, len(calib_images) // 8)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_fp32), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(quantized), _Reader(), **int8_settings())
        proto = onnx.load(str(quantized))
        onnx.helper.set_model_props(
            proto,
            {
                METADATA_KEY: json.dumps(
                    {
                        **meta,
                        "quantization": {
                            "type": "static QDQ, uint8 activations, per-channel 7-bit int8 weights",
                            "calibration_images": len(calib_images),
                        },
                    }
                )
            },
        )
        onnx.save(proto, str(quantized))
        int8 = Classifier(
            None,
            meta,
            session=ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"]),
            crop=fp32.crop,
        )

        val_paths = list(val_table["path"])
        images = np.stack([fp32.preprocess(p) for p in val_paths])
        labels = val_table["label"].to_numpy()
        scores, speed = {}, {}
        for name, clf in (("fp32", fp32), ("int8", int8)):
            clf.probabilities(images[:batch_size])  # warm-up
            start = time.perf_counter()
            scores[name] = np.concatenate(
                [
                    clf.probabilities(images[i : i + batch_size])
                    for i in range(0, len(images), batch_size)
                ]
            )
            speed[name] = len(images) / (time.perf_counter() - start)
        aurocs = {name: auroc(labels, score) for name, score in scores.items()}
        result = Int8Result(
            None,
            aurocs["fp32"],
            aurocs["int8"],
            speed["fp32"],
            speed["int8"],
            len(calib_images),
            len(images),
        )
        if int8_acceptable(result.val_auroc_fp32, result.val_auroc_int8):
            os.chmod(quantized, FILE_MODE)
            os.replace(quantized, out)
            result.path = out
    return result


def int8_settings() -> dict[str, Any]:
    """The keyword arguments of ONNX Runtime's ``quantize_static`` that ``--int8`` uses.

    uint8 activations with int8 weights run on x86's fast integer kernel (1.5x int8 x int8 on
    AVX2, ``make bench``); 7-bit weights (``reduce_range``) keep AVX2's 16-bit intermediate sums
    from saturating.

    >>> int8_settings()["per_channel"]
    True
    """
    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "reduce_range": True,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
    }


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return expit(z.astype(np.float64))  # no overflow warning for saturated logits
