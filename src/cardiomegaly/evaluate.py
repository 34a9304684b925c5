"""Metrics on scored records. (The full clinical evaluation and report build on these.)

>>> summary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5)["auroc"]
0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from .errors import ConfigError


def auroc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, np.asarray(scores)))


def choose_threshold(
    labels: Sequence[float], probs: Sequence[float], rule: str = "youden"
) -> float:
    """The operating threshold on probabilities, chosen by ``rule`` on (validation) data.

    youden: maximise sensitivity + specificity - 1; sens90 / spec90: the threshold that keeps
    sensitivity (specificity) at 90 % or more with the best specificity (sensitivity); fixed:X.
    """
    if rule.startswith("fixed:"):
        try:
            return float(rule.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"threshold rule '{rule}': give fixed:0.5 and the like") from None
    y, p = np.asarray(labels), np.asarray(probs)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if rule == "youden":
        k = int(np.argmax(tpr - fpr))
    elif rule == "sens90":
        k = int(np.flatnonzero(tpr >= 0.9)[0])
    elif rule == "spec90":
        k = int(np.flatnonzero(1 - fpr >= 0.9)[-1])
    else:
        raise ConfigError(f"unknown threshold rule '{rule}' (youden, sens90, spec90, fixed:X)")
    return float(thresholds[k])


def summary_metrics(
    labels: Sequence[float], probs: Sequence[float], threshold: float
) -> dict[str, float]:
    """AUROC, and accuracy, sensitivity and specificity at ``threshold`` (prob >= threshold)."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs)
    predicted = (p >= threshold).astype(int)
    positives, negatives = int(y.sum()), int((1 - y).sum())
    tp = int(((predicted == 1) & (y == 1)).sum())
    tn = int(((predicted == 0) & (y == 0)).sum())
    return {
        "n": len(y),
        "positives": positives,
        "auroc": auroc(y, p),
        "threshold": float(threshold),
        "accuracy": float((predicted == y).mean()) if len(y) else math.nan,
        "sensitivity": tp / positives if positives else math.nan,
        "specificity": tn / negatives if negatives else math.nan,
    }
