"""cardiomegaly: detect an enlarged heart on chest X-rays. Research tool, not a medical device.

The public API, re-exported explicitly::

    >>> import cardiomegaly as cm
    >>> records = cm.load_records("synthetic")                      # doctest: +SKIP
    >>> split = cm.patient_split(records, cm.SplitConfig(seed=0))   # doctest: +SKIP
"""

__version__ = "0.1.0"

from .config import Columns, DataConfig, PreprocessConfig, SplitConfig
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
from .summary import DataSummary, summarize

__all__ = [
    "RECORD_COLUMNS",
    "Columns",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSummary",
    "ImageCache",
    "ImageError",
    "ImageMeta",
    "PreprocessConfig",
    "Records",
    "SplitConfig",
    "UserError",
    "__version__",
    "box_to_square",
    "detect_format",
    "load_image",
    "load_records",
    "patient_split",
    "read_splits",
    "save_splits",
    "summarize",
    "synthesize",
    "to_square",
]
