"""Is `confidence` a probability? Expected calibration error and the reliability diagram's bins.

A back office sets a review threshold on the confidence column; that works as a dial only if,
among the answers given with confidence about 0.9, about 90% are right. The expected calibration
error (ECE, Guo et al. 2017) measures the gap: the answers are put in equal-width bins of their
top-1 confidence, and the gap between each bin's mean confidence and its accuracy is averaged,
weighted by the bin's share of the answers. numpy only: evaluate, verify and the benchmarks share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import defaults


@dataclass(frozen=True)
class Bin:
    """One confidence bin: (lower, upper], its answers, their mean confidence and accuracy."""

    lower: float
    upper: float
    count: int
    confidence: float | None  # None for an empty bin
    accuracy: float | None


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = defaults.ECE_BINS) -> list[Bin]:
    """The top-1 answers binned by confidence: what the reliability diagram draws."""
    probs = np.asarray(probs, dtype=np.float64)
    first = probs.argmax(axis=1)
    return binned(probs[np.arange(len(probs)), first], first == np.asarray(labels), bins)


def binned(confidence: np.ndarray, right: np.ndarray, bins: int = defaults.ECE_BINS) -> list[Bin]:
    """Answers given with `confidence`, right or not, in equal-width bins (a results CSV has
    only the top-1 confidence: this is all the ECE needs)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(right, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin k holds (edges[k], edges[k + 1]]; a confidence of exactly 0 goes to the first bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for k in range(bins):
        inside = which == k
        n = int(inside.sum())
        out.append(
            Bin(
                float(edges[k]), float(edges[k + 1]), n,
                float(confidence[inside].mean()) if n else None,
                float(right[inside].mean()) if n else None,
            )
        )  # fmt: skip
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = defaults.ECE_BINS) -> float:
    """Expected calibration error of the top-1 confidence (0: calibrated)."""
    return ece_of(reliability(probs, labels, bins))


def ece_of(table: list[Bin]) -> float:
    """The ECE of binned answers: the bins' confidence-accuracy gaps weighted by their counts."""
    total = sum(b.count for b in table)
    if total == 0:
        return 0.0
    gaps = [
        b.count * abs(b.confidence - b.accuracy)
        for b in table
        if b.confidence is not None and b.accuracy is not None
    ]
    return float(sum(gaps) / total)
