"""Evaluation of any model or artifact on a test set: accuracy, per-class accuracy, calibration, figures.

It runs through `pipeline.runtime`, so a `.keras` file and an int8 `.tflite` are evaluated the same
way, and writes the seed's two figures: a confusion matrix and the examples figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline import calibration, data, defaults, manifest, preprocess, report, runtime
from pipeline.files import write_json


@dataclass(frozen=True)
class ReviewRow:
    """What a "review every row whose confidence is below `threshold`" rule would do."""

    threshold: float
    flagged: float  # share of the images below the threshold
    errors_flagged: int  # wrong predictions among them
    errors: int  # wrong predictions in all
    accuracy_kept: float | None  # accuracy of the images at or above it (None: none are)


@dataclass(frozen=True)
class Evaluation:
    model: Path
    accuracy: float
    per_class: list[float]
    images: int
    confusion_png: Path
    examples_png: Path
    metrics_json: Path
    review: list[ReviewRow]
    ece: float  # expected calibration error of the top-1 confidence (calibration.ece)
    reliability_png: Path


def review_rows(
    probs: np.ndarray, labels: np.ndarray, thresholds: tuple[float, ...] = defaults.REVIEW_THRESHOLDS
) -> list[ReviewRow]:
    """For each threshold, how many rows a confidence-based manual review would flag and how many
    of the model's errors it would catch: how a back office picks its threshold, since confidence
    (`classify`'s column) ranks answers but is not a calibrated probability."""
    first, confidence, _, _ = runtime.top2(probs)
    wrong = first != labels
    rows = []
    for t in thresholds:
        low = confidence < t
        kept = float((~wrong[~low]).mean()) if (~low).any() else None
        rows.append(ReviewRow(t, float(low.mean()), int((wrong & low).sum()), int(wrong.sum()), kept))
    return rows


def evaluate(
    model_path: Path,
    out: Path | None = None,
    dataset: str = defaults.DATASET,
    data_dir: Path | None = None,
    limit: int | None = None,
    deskew: bool | None = None,
) -> Evaluation:
    """Score `model_path` on the test split and write confusion.png, examples.png, evaluation.json
    into `out` (default: beside the model, or ./release-reports for a shipped release model)."""
    report.require_matplotlib()
    predictor = runtime.load(model_path)
    images, labels = data.load(data.Split.TEST, dataset, data_dir, limit=limit)
    if deskew if deskew is not None else manifest.expected_deskew(model_path):
        images = preprocess.deskew_batch(images)
    probs = predictor.predict(preprocess.scale(images))
    pred = runtime.top2(probs)[0]
    per_class = [float((pred[labels == d] == d).mean()) if (labels == d).any() else 0.0 for d in range(10)]
    out = manifest.report_dir(model_path, out)
    out.mkdir(parents=True, exist_ok=True)
    stem = model_path.name.replace(".", "_")
    matrix = report.confusion(labels, pred)
    accuracy = float((pred == labels).mean())
    confusion_png = report.plot_confusion(
        matrix,
        out / f"{stem}.confusion.png",
        title=f"{model_path.name}: {accuracy:.2%} on {len(labels)} test digits",
    )
    examples_png = report.plot_examples(images, labels, probs, out / f"{stem}.examples.png")
    metrics_json = out / f"{stem}.evaluation.json"
    review = review_rows(probs, labels)
    bins = calibration.reliability(probs, labels)
    ece = calibration.ece_of(bins)
    reliability_png = report.plot_reliability(
        {f"{model_path.name} (ECE {ece:.4f})": bins},
        out / f"{stem}.reliability.png",
        title=f"{model_path.name} on {len(labels):,} test images",
    )
    write_json(
        metrics_json,
        {
            "model": str(model_path), "dataset": dataset, "images": len(labels),
            "accuracy": accuracy, "per_class_accuracy": per_class,
            "confusion_matrix": matrix.tolist(), "review_thresholds": [asdict(r) for r in review],
            "ece": ece, "reliability": [asdict(b) for b in bins],
        },
    )  # fmt: skip
    return Evaluation(
        model_path, accuracy, per_class, len(labels), confusion_png, examples_png, metrics_json, review, ece,
        reliability_png,
    )  # fmt: skip
