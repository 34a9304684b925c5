"""The segment task: heart and lung masks, and the cardiothoracic ratio measured from them."""

from .ctr import Measurement, clean_mask, measure_ctr

__all__ = ["Measurement", "clean_mask", "measure_ctr"]
