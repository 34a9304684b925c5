"""What exported artefacts say about themselves: the metadata inside an ONNX export and the
probabilities a model file defines.

Below predict, export, evaluate and training. It never imports torch: predict on a CPU runs an
ONNX export on ONNX Runtime and reads everything it needs from here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .fileio import sha256_of

log = logging.getLogger(__name__)

#: The key under which model files and exports keep their metadata JSON.
METADATA_KEY = "cardiomegaly"


#: What each task's model is for, in the words of the error a wrong one gets.
_TASK_WORDS = {
    "classify": "a classification model; measure needs a segmentation model "
    "(cardiomegaly train --task segment)",
    "segment": "a segmentation model; give a classifier here (a segmentation model goes to "
    "measure, or to --ctr-model)",
}


def require_task(meta: dict[str, Any], task: str, path: str | Path) -> None:
    """Refuse a model file of the other task, saying where it belongs (files without a task are
    classifiers: the first format said nothing).

    >>> require_task({"task": "segment"}, "segment", "seg.safetensors")
    >>> require_task({}, "segment", "clf.safetensors")
    Traceback (most recent call last):
    ...
    cardiomegaly.errors.UserError: clf.safetensors: a classification model; measure needs a ...
    """
    found = meta.get("task", "classify")
    if found != task:
        raise UserError(f"{path}: {_TASK_WORDS.get(found, f'a model of task {found!r}')}")


def temperature(meta: dict[str, Any]) -> float:
    """The calibration temperature of a model file: 1 unless fitted on validation at training.

    >>> temperature({}), temperature({"calibration": {"temperature": 2.0}})
    (1.0, 2.0)
    """
    return float(meta.get("calibration", {}).get("temperature", 1.0))


def probabilities(logits: Any, meta: dict[str, Any]) -> np.ndarray:
    """Probabilities as the model file defines them: sigmoid(logit / temperature), float32.

    ``logits`` is anything numpy reads (an array, a CPU tensor); one definition for PyTorch and
    ONNX Runtime alike.

    >>> probabilities(np.array([0.0, 2.0]), {"calibration": {"temperature": 2.0}}).round(4)
    array([0.5   , 0.7311], dtype=float32)
    """
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature(meta))
    with np.errstate(over="ignore"):  # a saturated logit is probability 0 or 1
        return (1 / (1 + np.exp(-z))).astype(np.float32)


def beside(path: str | Path, suffix: str) -> Path:
    """A file that belongs to model file ``path``: beside it, with its stem and ``suffix``
    (``model.safetensors`` -> ``model.onnx``, ``model.int8.onnx`` -> ``model.thorax.onnx``).

    >>> beside("runs/x/model.int8.onnx", ".thorax.onnx").as_posix()
    'runs/x/model.thorax.onnx'
    """
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + suffix)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The model metadata inside an ONNX file written by :func:`cardiomegaly.export.export`."""
    import onnx  # the protobuf reader; predict's default path reads the session's metadata

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise UserError(f"{path}: not a readable ONNX file") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise UserError(f"{path}: an ONNX file, but not one exported by cardiomegaly")
    return json.loads(props[METADATA_KEY])


def model_sha256(path: str | Path) -> str:
    """The SHA-256 that names a model: the model file's own, or for an ONNX export the one of
    the file it was exported from (so a model and its export are the same model)."""
    if Path(path).suffix == ".onnx":
        source = read_onnx_metadata(path).get("exported_from", {}).get("sha256")
        if source:
            return source
    return sha256_of(path)


def is_export_of(onnx_path: str | Path, model_path: str | Path) -> bool:
    """Whether ``onnx_path`` was exported from ``model_path`` as it is now (same bytes).

    >>> is_export_of("nowhere/model.onnx", "nowhere/model.safetensors")
    False
    """
    onnx_path, model_path = Path(onnx_path), Path(model_path)
    if not onnx_path.is_file() or not model_path.is_file():
        return False
    try:
        source = read_onnx_metadata(onnx_path).get("exported_from", {}).get("sha256")
    except UserError:
        return False
    matches = source == sha256_of(model_path)
    if not matches:
        log.info("%s is not an export of %s as it is now", onnx_path, model_path)
    return matches
