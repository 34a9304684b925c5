"""Metrics on scored records, with the uncertainty a clinical reader needs.

scikit-learn computes the curves and point metrics; this module adds what it lacks: confidence
intervals by resampling *patients* (a patient's images are not independent), DeLong's variance
and paired test, Wilson intervals, calibration slope and intercept, and temperature scaling.

>>> auroc([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
0.75
>>> round(delong([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])[0], 2)
0.75
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from ..config import check_threshold_rule

Z95 = 1.959963984540054


def auroc(labels: Sequence[float], scores: Sequence[float], weights=None) -> float:
    """Area under the ROC curve; NaN when only one class is present.

    >>> auroc([0, 1, 1], [0.2, 0.9, 0.1])
    0.5
    """
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, np.asarray(scores), sample_weight=weights))


def auprc(labels: Sequence[float], scores: Sequence[float], weights=None) -> float:
    """Average precision (area under the precision-recall curve); NaN without positives."""
    y = np.asarray(labels)
    if y.sum() == 0 or len(np.unique(y)) < 2:
        return math.nan
    return float(average_precision_score(y, np.asarray(scores), sample_weight=weights))


def choose_threshold(
    labels: Sequence[float], probs: Sequence[float], rule: str = "youden"
) -> float:
    """The operating threshold on probabilities, chosen by ``rule`` on (validation) data.

    youden: maximise sensitivity + specificity - 1; sens90 / spec90: the threshold that keeps
    sensitivity (specificity) at 90 % or more with the best specificity (sensitivity); fixed:X.

    >>> choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8])
    0.6
    """
    check_threshold_rule(rule)
    if rule.startswith("fixed:"):
        return float(rule.split(":", 1)[1])
    y, p = np.asarray(labels), np.asarray(probs)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if rule == "youden":
        k = int(np.argmax(tpr - fpr))
    elif rule == "sens90":
        k = int(np.flatnonzero(tpr >= 0.9)[0])
    else:  # spec90; check_threshold_rule admits nothing else
        k = int(np.flatnonzero(1 - fpr >= 0.9)[-1])
    return float(thresholds[k])


# ------------------------------------------------------------------------ intervals: Wilson


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (nan, nan) when ``n`` is 0.

    >>> [round(v, 4) for v in wilson(8, 10)]
    [0.4902, 0.9433]
    """
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def operating_point(
    labels: Sequence[float], probs: Sequence[float], threshold: float
) -> dict[str, object]:
    """Confusion matrix and sensitivity, specificity, PPV, NPV, accuracy (Wilson) and F1.

    Predicted positive means probability >= ``threshold``.

    >>> op = operating_point([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5)
    >>> op["confusion"], op["sensitivity"]["value"]
    ({'tn': 1, 'fp': 1, 'fn': 1, 'tp': 1}, 0.5)
    """
    y = np.asarray(labels).astype(int)
    predicted = (np.asarray(probs) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())

    def proportion(k: int, n: int) -> dict[str, object]:
        return {"value": k / n if n else None, "ci95": _nan_none(wilson(k, n)), "k": k, "n": n}

    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {
        "threshold": float(threshold),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "sensitivity": proportion(tp, tp + fn),
        "specificity": proportion(tn, tn + fp),
        "ppv": proportion(tp, tp + fp),
        "npv": proportion(tn, tn + fn),
        "accuracy": proportion(tp + tn, len(y)),
        "f1": {"value": f1},
    }


def _nan_none(pair: tuple[float, float]) -> list[float] | None:
    return None if any(math.isnan(v) for v in pair) else [float(v) for v in pair]


# -------------------------------------------------------------------------- intervals: DeLong


def delong(
    labels: Sequence[float], *scores: Sequence[float]
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """AUROC(s) and their DeLong covariance (DeLong et al. 1988, Sun & Xu's fast algorithm).

    With one score vector: (auc, variance). With several scored on the same cases: (aucs,
    covariance matrix), for the paired test. Images are treated as independent; the patient
    bootstrap is the interval that respects patients.

    >>> auc, var = delong([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    >>> round(auc, 2), round(var, 4)
    (0.75, 0.125)
    """
    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two positives and two negatives")
    aucs, v10, v01 = [], [], []
    for s in scores:
        s = np.asarray(s, dtype=float)
        pos, neg = s[y], s[~y]
        tz = stats.rankdata(np.concatenate([pos, neg]))  # midranks handle ties as psi = 1/2
        tx, ty = stats.rankdata(pos), stats.rankdata(neg)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # per positive: share of negatives scored below it
        v01.append(1.0 - (tz[m:] - ty) / m)  # per negative: share of positives above it
    cov = np.atleast_2d(np.cov(np.array(v10))) / m + np.atleast_2d(np.cov(np.array(v01))) / n
    if len(scores) == 1:
        return float(aucs[0]), float(cov[0, 0])
    return np.array(aucs), cov


def delong_interval(labels: Sequence[float], scores: Sequence[float]) -> dict[str, object]:
    """AUROC with DeLong's standard error and 95 % interval (clipped to [0, 1])."""
    auc, var = delong(labels, scores)
    se = math.sqrt(max(var, 0.0))
    return {"value": auc, "se": se, "ci95": [max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)]}


def delong_test(
    labels: Sequence[float], scores_a: Sequence[float], scores_b: Sequence[float]
) -> dict[str, float]:
    """Paired DeLong test of AUROC(a) - AUROC(b) on the same cases: difference, z, p."""
    aucs, cov = delong(labels, scores_a, scores_b)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 0:
        return {"difference": diff, "se": 0.0, "z": math.nan, "p": 1.0 if diff == 0 else 0.0}
    z = diff / math.sqrt(var)
    return {"difference": diff, "se": math.sqrt(var), "z": z, "p": math.erfc(abs(z) / math.sqrt(2))}


# ------------------------------------------------------------------- intervals: patient bootstrap


def patient_resamples(
    patients: Sequence[str], labels: Sequence[float], n: int = 2000, seed: int = 0
) -> Iterator[np.ndarray]:
    """Weights per image for ``n`` bootstrap resamples of *patients*, stratified by class.

    A drawn patient brings all of its images; a patient drawn twice counts twice. Patients are
    drawn separately from those with and without a positive image, so every resample has both
    classes when the data has them (as pROC's stratified bootstrap).

    >>> w = next(patient_resamples(["a", "a", "b"], [1, 1, 0], n=1))
    >>> bool(w[0] == w[1])
    True
    """
    codes, uniques = _factorize(patients)
    y = np.asarray(labels)
    positive_patient = np.zeros(len(uniques), dtype=bool)
    np.logical_or.at(positive_patient, codes, y > 0)
    groups = [np.flatnonzero(positive_patient), np.flatnonzero(~positive_patient)]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        counts = np.zeros(len(uniques))
        for group in groups:
            if len(group):
                # The draws of rng.choice(group, size=len(group)), without its overhead (tested).
                drawn = group[rng.integers(0, len(group), size=len(group))]
                counts += np.bincount(drawn, minlength=len(uniques))
        yield counts[codes]


def bootstrap_mean(
    values: Sequence[float],
    patients: Sequence[str],
    labels: Sequence[float],
    *,
    n: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """The mean of ``values`` (one per image) in each of ``n`` patient resamples (those of
    :func:`patient_resamples`); resamples that hold no image are left out.

    >>> sorted(set(bootstrap_mean([1.0, 3.0], ["a", "b"], [0, 0], n=400).round(1).tolist()))
    [1.0, 2.0, 3.0]
    """
    x = np.asarray(values, dtype=float)
    parts = []
    for w in _resample_batches(patients, labels, n, seed):
        w = w[w.sum(axis=1) > 0]
        parts.append(w @ x / w.sum(axis=1))
    return np.concatenate(parts) if parts else np.array([])


def _resample_batches(
    patients: Sequence[str], labels: Sequence[float], n: int, seed: int
) -> Iterator[np.ndarray]:
    """:func:`patient_resamples` stacked into (resamples, images) matrices of about 4 M weights."""
    resamples = patient_resamples(patients, labels, n, seed)
    chunk = max(1, 4_000_000 // max(len(patients), 1))
    while batch := [w for _, w in zip(range(chunk), resamples, strict=False)]:
        yield np.stack(batch)


def _factorize(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    return codes, uniques


FPR_GRID = np.linspace(0.0, 1.0, 101)


@dataclass
class BootstrapCurves:
    """Statistics of one score vector over patient resamples (one entry per resample)."""

    auroc: np.ndarray  # (B,)
    auprc: np.ndarray  # (B,)
    tpr: np.ndarray  # (B, len(FPR_GRID)): the ROC curve's sensitivity at each FPR of the grid
    f1: dict[float, np.ndarray]  # threshold -> (B,)


def patient_bootstrap(
    labels: Sequence[float],
    scores: Sequence[float],
    patients: Sequence[str],
    *,
    n: int = 2000,
    seed: int = 0,
    thresholds: Sequence[float] = (),
) -> BootstrapCurves:
    """AUROC, AUPRC, the ROC curve and F1 at ``thresholds`` over ``n`` patient resamples.

    The same ``seed`` and patients give the same resamples, so two models bootstrapped apart are
    still paired. Vectorised over resamples (a weighted Mann-Whitney count on distinct scores);
    equal to scikit-learn's metrics with ``sample_weight`` = the resample's counts (tested).

    >>> y, p = [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9]
    >>> curves = patient_bootstrap(y, p, ["a", "b", "c", "d"], n=50)
    >>> bool(0 <= curves.auroc.min() <= curves.auroc.max() <= 1)
    True
    """
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # groups of equal scores, highest first
    parts = [
        _weighted_curves(w, y, s, starts, thresholds)
        for w in _resample_batches(np.asarray(patients)[order], y, n, seed)
    ]
    return BootstrapCurves(
        auroc=np.concatenate([p[0] for p in parts]),
        auprc=np.concatenate([p[1] for p in parts]),
        tpr=np.concatenate([p[2] for p in parts]),
        f1={t: np.concatenate([p[3][i] for p in parts]) for i, t in enumerate(thresholds)},
    )


def _weighted_curves(w, y, s, starts, thresholds):
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.add.reduceat(w * y, starts, axis=1)  # positive weight per distinct score
        neg = np.add.reduceat(w * (1 - y), starts, axis=1)
        tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        n_pos, n_neg = tp[:, -1:], fp[:, -1:]
        # A positive beats the negatives below its score and ties half of those level with it.
        auc = np.sum(pos * (n_neg - fp + 0.5 * neg), axis=1) / (n_pos * n_neg)[:, 0]
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = np.sum(pos * precision, axis=1) / n_pos[:, 0]
        fpr = np.hstack([np.zeros((len(w), 1)), fp / n_neg])
        tpr = np.hstack([np.zeros((len(w), 1)), tp / n_pos])
        grid = np.array([np.interp(FPR_GRID, f, t) for f, t in zip(fpr, tpr, strict=True)])
        f1 = []
        for t in thresholds:
            predicted = s >= t
            tp_t = w @ (y * predicted)
            fp_t = w @ ((1 - y) * predicted)
            fn_t = w @ (y * ~predicted)
            f1.append(2 * tp_t / (2 * tp_t + fp_t + fn_t))
    return auc, ap, grid, f1


def percentile_interval(values: np.ndarray) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the finite values; None when there are none."""
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


# ---------------------------------------------------------------------------------- calibration


def calibration(labels: Sequence[float], probs: Sequence[float], bins: int = 10) -> dict:
    """Reliability table (equal-width bins), ECE, Brier score, calibration slope and intercept.

    Slope: b in logit P(y) = a + b logit(p); intercept: a with the slope fixed at 1
    (calibration-in-the-large). A perfectly calibrated model has slope 1 and intercept 0.

    >>> calibration([0, 1], [0.0, 1.0])["brier"]
    0.0
    """
    y = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)
    which = np.minimum((p * bins).astype(int), bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            mean_p, observed = float(p[inside].mean()), float(y[inside].mean())
            ece += count / len(y) * abs(mean_p - observed)
            table.append(
                {
                    "bin": [b / bins, (b + 1) / bins],
                    "count": count,
                    "mean_probability": mean_p,
                    "observed": observed,
                }
            )
    slope, intercept = _calibration_line(y, p)
    return {
        "bins": table,
        "ece": float(ece),
        "brier": float(brier_score_loss(y, p)) if len(y) else math.nan,
        "slope": slope,
        "intercept": intercept,
    }


def _calibration_line(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    if len(np.unique(y)) < 2:
        return math.nan, math.nan
    logit = np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))

    def nll(a: float, b: float) -> float:
        z = a + b * logit
        return float(np.sum(np.logaddexp(0, z) - y * z))

    fit = optimize.minimize(lambda ab: nll(*ab), x0=[0.0, 1.0], method="BFGS")
    # The score of the intercept-only model with offset logit(p) is monotone in a: one root.
    intercept = optimize.brentq(lambda a: float(np.sum(y - _sigmoid(a + logit))), -30, 30)
    return float(fit.x[1]), float(intercept)


def fit_temperature(logits: Sequence[float], labels: Sequence[float]) -> float:
    """The temperature T minimising the log loss of sigmoid(logit / T) (Guo et al. 2017).

    >>> round(fit_temperature([-4.0, 4.0, 4.0, -4.0, 4.0], [0, 1, 1, 1, 0]), 1) > 1
    True
    """
    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=float)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float(np.sum(np.logaddexp(0, s) - y * s))

    result = optimize.minimize_scalar(nll, bounds=(-4, 4), method="bounded")
    return float(math.exp(result.x))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))
