"""Evaluation: metrics with confidence intervals, plots, and one self-contained report.

>>> from cardiomegaly import evaluate
>>> result = evaluate("runs/train/exp/model.safetensors", "data/", split="test")  # doctest: +SKIP
>>> result.metrics["auroc"]["value"], result.metrics["auroc"]["ci95"]             # doctest: +SKIP
"""

from .metrics import auroc, choose_threshold, delong, fit_temperature, operating_point, wilson
from .report import assess, write_report
from .run import EvalResult, compare, evaluate

__all__ = [
    "EvalResult",
    "assess",
    "auroc",
    "choose_threshold",
    "compare",
    "delong",
    "evaluate",
    "fit_temperature",
    "operating_point",
    "wilson",
    "write_report",
]
