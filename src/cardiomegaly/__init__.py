"""cardiomegaly: detect an enlarged heart on chest X-rays. Research tool, not a medical device.

The public API, re-exported explicitly::

    >>> import cardiomegaly as cm
    >>> records = cm.load_records("synthetic")                      # doctest: +SKIP
    >>> split = cm.patient_split(records, cm.SplitConfig(seed=0))   # doctest: +SKIP
"""

__version__ = "0.1.0"

from .config import (
    AugmentConfig,
    Columns,
    DataConfig,
    PreprocessConfig,
    SplitConfig,
    TrainConfig,
)
from .data import (
    RECORD_COLUMNS,
    ImageCache,
    ImageMeta,
    Records,
    box_to_square,
    detect_format,
    load_image,
    load_records,
    patient_split,
    read_splits,
    save_splits,
    synthesize,
    to_square,
)
from .errors import ConfigError, DataError, ImageError, UserError
from .evaluate import EvalResult, auroc, choose_threshold, compare, evaluate, operating_point
from .explain import explain
from .export import export
from .model import CardioNet, build_model, load_model, load_weights, read_metadata, save_model
from .predict import Classifier, Prediction
from .summary import DataSummary, summarize
from .train import TrainResult, train

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
