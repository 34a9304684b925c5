"""cardiomegaly: detect an enlarged heart on chest X-rays. Research tool, not a medical device.

The public API, re-exported explicitly::

    >>> import cardiomegaly as cm
    >>> records = cm.load_records("synthetic")                      # doctest: +SKIP
    >>> split = cm.patient_split(records, cm.SplitConfig(seed=0))   # doctest: +SKIP
"""

__version__ = "0.1.0"

import importlib
import sys
import types

# Where each public name lives. Loaded on first use: `cardiomegaly predict` on ONNX Runtime never
# imports torch (half a gigabyte), and `cardiomegaly --help` answers at once.
_EXPORTS = {
    **dict.fromkeys(
        [
            "AugmentConfig",
            "Columns",
            "DataConfig",
            "PreprocessConfig",
            "SplitConfig",
            "TrainConfig",
        ],
        ".config",
    ),
    **dict.fromkeys(
        [
            "RECORD_COLUMNS",
            "ImageCache",
            "ImageMeta",
            "Records",
            "box_to_square",
            "detect_format",
            "load_image",
            "load_records",
            "patient_split",
            "read_splits",
            "save_splits",
            "synthesize",
            "to_square",
        ],
        ".data",
    ),
    **dict.fromkeys(["ConfigError", "DataError", "ImageError", "UserError"], ".errors"),
    **dict.fromkeys(
        ["EvalResult", "auroc", "choose_threshold", "compare", "evaluate", "operating_point"],
        ".evaluate",
    ),
    "explain": ".explain",
    "export": ".export",
    **dict.fromkeys(
        ["CardioNet", "build_model", "load_model", "load_weights", "read_metadata", "save_model"],
        ".model",
    ),
    **dict.fromkeys(["Classifier", "Prediction"], ".predict"),
    **dict.fromkeys(["DataSummary", "summarize"], ".summary"),
    **dict.fromkeys(["TrainResult", "train"], ".train"),
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cardiomegaly' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``cardiomegaly.train`` stays the function when the submodule of that name is imported
    (Python would otherwise bind the submodule there); submodules stay in ``sys.modules``."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "RECORD_COLUMNS",
    "AugmentConfig",
    "CardioNet",
    "Classifier",
    "Columns",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSummary",
    "EvalResult",
    "ImageCache",
    "ImageError",
    "ImageMeta",
    "Prediction",
    "PreprocessConfig",
    "Records",
    "SplitConfig",
    "TrainConfig",
    "TrainResult",
    "UserError",
    "__version__",
    "auroc",
    "box_to_square",
    "build_model",
    "choose_threshold",
    "compare",
    "detect_format",
    "evaluate",
    "explain",
    "export",
    "load_image",
    "load_model",
    "load_records",
    "load_weights",
    "operating_point",
    "patient_split",
    "read_metadata",
    "read_splits",
    "save_model",
    "save_splits",
    "summarize",
    "synthesize",
    "to_square",
    "train",
]
