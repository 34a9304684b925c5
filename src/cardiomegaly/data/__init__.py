"""Data: sources -> records table -> patient-wise split -> image loading -> preprocessing cache."""

from .cache import ImageCache, default_cache_dir
from .images import ImageMeta, load_image
from .phantom import synthesize
from .preprocess import box_to_square, to_square
from .records import RECORD_COLUMNS, Records, detect_format, load_records
from .split import patient_split, read_splits, save_splits

__all__ = [
    "RECORD_COLUMNS",
    "ImageCache",
    "ImageMeta",
    "Records",
    "box_to_square",
    "default_cache_dir",
    "detect_format",
    "load_image",
    "load_records",
    "patient_split",
    "read_splits",
    "save_splits",
    "synthesize",
    "to_square",
]
