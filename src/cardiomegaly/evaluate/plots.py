"""The evaluation figures (matplotlib, PNG): each readable at a glance, each says its data.

>>> roc_plot("roc.png", [0, 1, 1], [0.2, 0.7, 0.9], title="test split")   # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from ..fileio import atomic_open

_COLOURS = {"negative": "#4477aa", "positive": "#cc3311", "band": "#bbccee"}
_MARKERS = {"youden": "o", "sens90": "^", "spec90": "s"}


def figure(width: float = 5.2, height: float = 4.6, **kwargs) -> tuple[Figure, Any]:
    """A figure and its axes (``Figure.subplots`` arguments). No pyplot: no display is needed,
    no global backend is switched, and nothing is left open."""
    matplotlib.rcParams.update({"font.size": 10, "axes.titlesize": 11})
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(**kwargs)


def save(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG, atomically."""
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


class Redraw:
    """A picture that follows a run (its training curves), redrawn after an epoch only when
    ``every`` seconds have passed since it was last drawn, and always by :meth:`flush` at the end.

    Drawing costs about a second: nothing beside an epoch of minutes, which is redrawn every
    time, but most of an epoch of seconds (phantoms, tests), which would spend its time drawing.

    >>> drawn = []
    >>> curves = Redraw(lambda: drawn.append(1), every=60)
    >>> curves.update(); curves.update(); curves.flush(); curves.flush()
    >>> len(drawn)
    1
    >>> every_time = Redraw(lambda: drawn.append(1), every=0)
    >>> every_time.update(); every_time.update(); every_time.flush()
    >>> len(drawn)
    3
    """

    def __init__(self, draw: Callable[[], None], every: float = 30.0):
        self._draw, self._every = draw, every
        self._last = time.monotonic()
        self._stale = True  # a resumed run draws at its end even when it has no epoch left

    def update(self) -> None:
        """The data changed: draw now if the last drawing is old enough."""
        self._stale = True
        if time.monotonic() - self._last >= self._every:
            self.flush()

    def flush(self) -> None:
        """Draw now if anything changed since the last drawing."""
        if self._stale:
            self._draw()
            self._last, self._stale = time.monotonic(), False


def roc_plot(
    path: str | Path,
    labels: Sequence[float],
    probs: Sequence[float],
    *,
    title: str,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    points: dict[str, dict] | None = None,
    label: str = "model",
) -> None:
    """ROC curve with its bootstrap band (fpr grid, low, high) and operating points."""
    fig, ax = figure()
    if band is not None:
        ax.fill_between(
            band[0],
            band[1],
            band[2],
            color=_COLOURS["band"],
            alpha=0.7,
            lw=0,
            label="95 % CI (patient bootstrap)",
        )
    fpr, tpr, _ = roc_curve(labels, probs)
    ax.plot(fpr, tpr, color="#222222", lw=2, label=label)
    for name, op in (points or {}).items():
        sens, spec = op["sensitivity"]["value"], op["specificity"]["value"]
        if sens is None or spec is None:
            continue
        ax.plot(
            1 - spec,
            sens,
            _MARKERS.get(name.split()[0], "D"),
            ms=9,
            mec="black",
            label=f"{name}: t = {op['threshold']:.3f}",
        )
    _finish_roc(fig, ax, path, title)


def roc_compare_plot(
    path: str | Path, labels: Sequence[float], curves: dict[str, Sequence[float]], *, title: str
) -> None:
    """Several models' ROC curves on the same records."""
    fig, ax = figure()
    for name, probs in curves.items():
        fpr, tpr, _ = roc_curve(labels, probs)
        ax.plot(fpr, tpr, lw=2, label=name)
    _finish_roc(fig, ax, path, title)


def _finish_roc(fig, ax, path: str | Path, title: str) -> None:
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title=title,
    )
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)


def pr_plot(
    path: str | Path, labels: Sequence[float], probs: Sequence[float], *, title: str
) -> None:
    """Precision-recall curve with the prevalence (a random model's precision) marked."""
    fig, ax = figure()
    precision, recall, _ = precision_recall_curve(labels, probs)
    prevalence = float(np.mean(labels))
    ax.step(recall, precision, where="post", color="#222222", lw=2, label="model")
    ax.axhline(prevalence, color="grey", ls=":", label=f"prevalence {prevalence:.3f}")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title=title,
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)


def calibration_plot(path: str | Path, calibration: dict, *, title: str) -> None:
    """Reliability diagram (observed vs predicted per bin, marker area ~ count) with counts."""
    fig, (ax, hist) = figure(5.2, 5.8, nrows=2, height_ratios=[3, 1], sharex=True)
    bins = calibration["bins"]
    predicted = [b["mean_probability"] for b in bins]
    observed = [b["observed"] for b in bins]
    counts = [b["count"] for b in bins]
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfect calibration")
    ax.plot(predicted, observed, "o-", color="#222222", label="model")
    ax.set(ylim=(-0.02, 1.02), ylabel="observed fraction positive", title=title)
    ax.text(
        0.02,
        0.97,
        f"ECE {calibration['ece']:.3f}   Brier {calibration['brier']:.3f}\n"
        f"slope {calibration['slope']:.2f}   intercept {calibration['intercept']:.2f}",
        transform=ax.transAxes,
        va="top",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    hist.bar([(b["bin"][0] + b["bin"][1]) / 2 for b in bins], counts, width=0.09, color="#888888")
    hist.set(xlim=(0, 1), xlabel="predicted probability", ylabel="images")
    save(fig, path)


def confusion_plot(path: str | Path, confusion: dict[str, int], *, title: str) -> None:
    """The 2 x 2 confusion matrix with counts and row percentages."""
    fig, ax = figure(4.4, 4.0)
    grid = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    rows = grid.sum(axis=1, keepdims=True)
    share = np.divide(grid, rows, out=np.zeros_like(grid, dtype=float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{grid[i, j]}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.6 else "black",
                fontsize=13,
            )
    ax.set_xticks([0, 1], ["predicted\nnegative", "predicted\npositive"])
    ax.set_yticks([0, 1], ["negative", "cardiomegaly"])
    ax.set_title(title)
    save(fig, path)


def histogram_plot(
    path: str | Path,
    labels: Sequence[float],
    probs: Sequence[float],
    threshold: float,
    *,
    title: str,
) -> None:
    """Score distribution per class, the threshold as a line."""
    fig, ax = figure(5.6, 3.8)
    y, p = np.asarray(labels), np.asarray(probs)
    edges = np.linspace(0, 1, 26)
    for value, name in ((0, "negative"), (1, "positive")):
        ax.hist(
            p[y == value],
            bins=edges,
            alpha=0.6,
            color=_COLOURS[name],
            label=f"{name} ({int((y == value).sum())})",
        )
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="predicted probability of cardiomegaly", ylabel="images", title=title)
    ax.legend(fontsize=8)
    save(fig, path)
