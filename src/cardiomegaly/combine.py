"""The classifier's probability and the cardiothoracic ratio as one score.

Each number becomes its percentile among the out-of-fold films of the same view (the probability
among the out-of-fold probabilities, the ratio among the measured ratios), and the score is the
mean of the two percentiles: no fitted weight, and a view-aware score, since an AP film
magnifies the heart and ranks it against other AP films. ``train --folds K --ctr-model SEGMODEL``
keeps the reference values of each view and a threshold chosen on the pooled out-of-fold scores
in the ensemble file; ``predict``, ``evaluate``, ``serve`` and the DICOM results give the score
when they are handed the same segment model.

On the NIH cross-validation the score's AUROC was above both of its parts', with overlapping
intervals (README, results table).

>>> c = CombinedScore.fit(np.array([.1, .2, .8, .9]), np.array([.40, .45, .55, .60]),
...                       np.array(["PA"] * 4), np.array([0, 0, 1, 1]), "youden", "sha", "oof")
>>> c.score(0.85, 0.58, "PA") >= c.threshold
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import model_sha256

#: A view with fewer reference films than this is ranked among all films instead.
MIN_VIEW_FILMS = 20
#: The reference of every film, whatever its view (also for films of unknown view).
ALL_VIEWS = "all"


def _twice_rank(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Twice the mid-rank of each ``x`` among the sorted ``reference`` (an integer): divided by
    twice the reference's length, its percentile in [0, 1]."""
    below = np.searchsorted(reference, x, side="left")
    at_or_below = np.searchsorted(reference, x, side="right")
    return below + at_or_below


@dataclass(frozen=True)
class CombinedScore:
    """Per view, the sorted reference probabilities and ratios; the threshold on the score; the
    SHA-256 of the segment model whose ratios the reference holds."""

    references: dict[str, tuple[np.ndarray, np.ndarray]]
    threshold: float
    rule: str
    segment_model: str
    chosen_on: str

    @classmethod
    def fit(
        cls,
        probability: np.ndarray,
        ctr: np.ndarray,
        view: np.ndarray,
        label: np.ndarray,
        rule: str,
        segment_model: str,
        chosen_on: str,
    ) -> CombinedScore:
        """References from measured films (no NaN ratio), and the threshold by ``rule`` on
        their scores against those references."""
        # imported here: predict, which only scores, runs without the evaluation's torch
        from .evaluate.metrics import choose_threshold

        probability, ctr = np.asarray(probability, float), np.asarray(ctr, float)
        view = np.asarray(view, dtype=object)
        refs = {ALL_VIEWS: (np.sort(probability), np.sort(ctr))}
        for v in sorted({str(v) for v in view if v}):
            own = view == v
            if own.sum() >= MIN_VIEW_FILMS:
                refs[v] = (np.sort(probability[own]), np.sort(ctr[own]))
        refs = {v: (np.round(p, 6), np.round(c, 6)) for v, (p, c) in refs.items()}
        unfitted = cls(refs, 0.5, rule, segment_model, chosen_on)
        scores = unfitted.scores(probability, ctr, view)
        return cls(refs, choose_threshold(label, scores, rule), rule, segment_model, chosen_on)

    def reference_view(self, view: str | None) -> str:
        """The reference a film of ``view`` is ranked in: its own view's, or all films'."""
        return view if view and view in self.references else ALL_VIEWS

    def _ranks(
        self, probability: np.ndarray, ctr: np.ndarray, view: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each film's probability and ratio as twice their mid-ranks in its reference (NaN
        ratio: NaN), and twice the reference's length: the percentiles are the ranks divided by
        it. Scores are formed from these integers, so that two films with the same rational
        score get the same number, not two that differ in the last bit and break a tie."""
        # to the references' six decimals, so that a number read back from a CSV scores the same
        probability, ctr = (
            np.round(np.asarray(probability, float), 6),
            np.round(np.asarray(ctr, float), 6),
        )
        n = len(probability)
        p_rank, c_rank, length = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        chosen = np.array([self.reference_view(v) for v in view], dtype=object)
        for v in set(chosen):
            own = chosen == v
            p_ref, c_ref = self.references[v]
            p_rank[own] = _twice_rank(p_ref, probability[own])
            c_rank[own] = _twice_rank(c_ref, ctr[own])
            length[own] = 2 * len(p_ref)
        c_rank[np.isnan(ctr)] = np.nan
        return p_rank, c_rank, length

    def scores(self, probability: np.ndarray, ctr: np.ndarray, view: np.ndarray) -> np.ndarray:
        """The score of each film; NaN where the ratio is NaN (not measured)."""
        p_rank, c_rank, length = self._ranks(probability, ctr, view)
        return (p_rank + c_rank) / (2 * length)

    def scores_or_probability(
        self, probability: np.ndarray, ctr: np.ndarray, view: np.ndarray
    ) -> np.ndarray:
        """The score of each film, and where the ratio is missing the probability's percentile
        alone: every film ranked, those without a ratio by the classifier only. What the score
        is worth on all films, not only on those the segment model could measure."""
        p_rank, c_rank, length = self._ranks(probability, ctr, view)
        return np.where(np.isnan(c_rank), 2 * p_rank, p_rank + c_rank) / (2 * length)

    def score(self, probability: float, ctr: float | None, view: str | None) -> float | None:
        """One film's score, or None when its ratio is missing (flagged or unreadable)."""
        if ctr is None or probability is None:
            return None
        return float(self.scores(np.array([probability]), np.array([ctr]), [view])[0])

    def answer(self, probability: float, ctr: float | None, view: str | None) -> dict[str, Any]:
        """What a prediction says of the score: value, threshold, label, the reference used."""
        s = self.score(probability, ctr, view)
        return {"score": None if s is None else round(s, 6), "threshold": round(self.threshold, 6),
                "label": None if s is None else int(s >= self.threshold),
                "ranked_among": self.reference_view(view)}  # fmt: skip

    def to_metadata(self) -> dict[str, Any]:
        """The model file's ``combined`` entry (JSON)."""
        return {
            "score": "mean of the probability's and the ratio's percentiles among the "
            "out-of-fold films of the same view",
            "segment_model_sha256": self.segment_model,
            "threshold": {"value": self.threshold, "rule": self.rule, "chosen_on": self.chosen_on},
            "references": {
                v: {"films": len(p), "probability": p.tolist(), "ctr": c.tolist()}
                for v, (p, c) in self.references.items()
            },
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> CombinedScore | None:
        """The score a model file carries, or None."""
        entry = meta.get("combined")
        if not entry:
            return None
        refs = {v: (np.asarray(r["probability"], float), np.asarray(r["ctr"], float))
                for v, r in entry["references"].items()}  # fmt: skip
        t = entry["threshold"]
        return cls(refs, float(t["value"]), t["rule"], entry["segment_model_sha256"],
                   t["chosen_on"])  # fmt: skip


def combined_for(
    meta: dict[str, Any], segment_model: str | Path
) -> tuple[CombinedScore | None, str]:
    """The classifier's combined score when ``segment_model`` is the one it was calibrated with,
    else None and why (an empty reason when the classifier carries no combined score)."""
    combined = CombinedScore.from_metadata(meta)
    if combined is None:
        return None, ""
    if model_sha256(segment_model) != combined.segment_model:
        return None, (
            f"no combined score: the classifier's was calibrated with another segment model "
            f"(SHA-256 {combined.segment_model[:12]}), not {segment_model}; give that one"
        )
    return combined, ""
