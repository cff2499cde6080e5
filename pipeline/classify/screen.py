"""The screen: a small network that answers in front of the default model where it is sure.

The release's default (`bncnn-x4`, four networks averaged) costs about ten times what reading a
scan does; `micro` (one network of 50k parameters, a twentieth of one member's multiply-adds)
costs about as much as conv2d. Most digits are easy: where micro gives one digit at least
`defaults.SCREEN_CONFIDENCE` and its own features lie within the review's limit for that digit
(`review.ReviewModel.screen`, fitted like the model's own evidence, on training digits), its
answer stands; every other digit (unsure, or unlike the training digits to micro's eyes: letters,
scribbles, clothing) goes to the default model, which answers and is reviewed as without a screen.
Each row is reviewed by the features of the network that answered it, so a screened answer is
never `not_a_digit` by features (its image evidence still applies).

What is screened: the model the review's features were fitted on, when the review names a screen
whose file is in the same folder (`scripts/fit_review.py --screen`). `--no-screen` runs the model
alone. The figures (answers changed, rows sent on, speed) are in docs/classify.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import defaults, manifest, review, runtime
from pipeline.errors import ArtifactError
from pipeline.formats import Format


@dataclass(frozen=True)
class Source:
    """What a process loads to predict (picklable: classify's workers get it): the model, and
    the screen in front of it where there is one."""

    model: Path
    screen: Path | None = None
    gate: review.FeatureGaussian | None = None
    width: int = 0  # the model's features per image (the review's fit of them)
    confidence: float = defaults.SCREEN_CONFIDENCE


@dataclass
class Screened:
    """`runtime.Predictor` of a screen and the model behind it (`load`)."""

    path: Path  # the model's: what the run reports, and its review's features belong to
    first: runtime.Predictor
    then: runtime.Predictor
    gate: review.FeatureGaussian
    width: int
    confidence: float
    format: Format = Format.ONNX
    threads: int | None = None
    slices: bool = True  # `run` takes any number of images (classify.chunks.predict_digits)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[0]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The screen's probabilities where it is sure, the model's elsewhere; the features are
        the model's (NaN on the rows it did not see) beside the screen's, for the review.

        Both networks run in slices of CLASSIFY_INFERENCE_BATCH, the model on the rows sent on
        from all of `images`: given 32 at a time, it saw about three a call, and the ensemble
        costs more an image in such small batches (docs/benchmarks.md)."""
        step = defaults.CLASSIFY_INFERENCE_BATCH
        probs, seen = runtime.run_sliced(self.first, images, step)
        if seen is None:
            raise ArtifactError(f"{self.first.path}: the screen has no features output")
        features = np.full((len(images), self.width + seen.shape[1]), np.nan, np.float32)
        features[:, self.width :] = seen
        send = np.flatnonzero(~self.sure(probs, seen))
        if len(send):
            model_probs, model_features = runtime.run_sliced(self.then, images[send], step)
            if model_features is None or model_features.shape[1] != self.width:
                raise ArtifactError(f"{self.path}: not the features the review was fitted on")
            probs = probs.copy()
            probs[send] = model_probs
            features[send, : self.width] = model_features
        return probs, features

    def sure(self, probs: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Rows the screen answers alone: confident, and near the training digits of that class."""
        near = self.gate.distances(features, probs.argmax(axis=1)) <= self.gate.limit
        return (probs.max(axis=1) >= self.confidence) & near


def source_for(model: Path, fitted: review.ReviewModel | None) -> Source:
    """`model` with the screen the release's review (`fitted`) names for it beside it, or alone:
    no review, no screen fitted, the review's features not of this model, or the screen's file
    missing or not the one fitted."""
    if fitted is None or fitted.screen is None or fitted.feature_means is None:
        return Source(model)
    if runtime.format_of(model) is not Format.ONNX:
        return Source(model)
    if manifest.source_sha256(model) != fitted.fitted.get("features", {}).get("source_sha256"):
        return Source(model)
    about = fitted.fitted.get("screen", {})
    first = model.parent / str(about.get("artifact", ""))
    if not about.get("artifact") or not first.is_file():
        return Source(model)
    if manifest.source_sha256(first) != about.get("source_sha256"):
        return Source(model)
    return Source(model, first, fitted.screen, fitted.feature_means.shape[1])


def load(source: Source, threads: int | None = None) -> runtime.Predictor:
    """The predictor for `source`: the model alone, or `Screened`."""
    then = runtime.load(source.model, threads=threads)
    if source.screen is None or source.gate is None:
        return then
    first = runtime.load(source.screen, threads=threads)
    return Screened(source.model, first, then, source.gate, source.width, source.confidence, threads=threads)
