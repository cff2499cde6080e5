"""Which classified images need a person: not one digit, or a digit the model is unsure of.

`classify` gives every readable image a digit; a form's field may hold something else (a "10" in a
one-digit box, initials, a crossed-out mark, a stray picture). Three kinds of evidence, each from
the 28x28 image the model saw, so every engine and artifact format agrees on them:

- several digits: two or more ink components of digit size side by side (each at least
  `SIDE_BY_SIDE_SHARE` of the ink, their columns barely overlapping). A digit's own pieces (a 5's
  bar, a broken 4) lie above one another, not beside (0.12% of MNIST's test digits count);
- not a digit: the image is far from every training digit of the class it was read as, in pixels
  (its distance to that class's principal subspace, `components` per class) or in shape (the
  Mahalanobis distance of a few ink statistics: area, stroke width, fill, extent). Both are
  one-class models of MNIST's training digits: no non-digit is needed to fit them, and their
  limits are quantiles of training digits the fit did not see;
- low confidence: the top probability under `--review-below`.

`fit` makes a `ReviewModel` from training images only (scripts/fit_review.py; the release ships
it as review.npz beside the models); `ReviewModel.reasons` returns one reason per image ("" for
none).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ClassifyError
from pipeline.files import atomic_open
from pipeline.preprocess import kernels

SEVERAL_DIGITS, NOT_A_DIGIT, LOW_CONFIDENCE = "several_digits", "not_a_digit", "low_confidence"
REASONS = (SEVERAL_DIGITS, NOT_A_DIGIT, LOW_CONFIDENCE)

# Ink, for the shape statistics: a quarter of full strength, as preprocessing's INK_THRESHOLD.
_INK = 64
# A component counts towards "several digits" when it holds this share of the ink at least:
# a digit's stray specks and serifs are smaller.
SIDE_BY_SIDE_SHARE = 0.2
# Two components are side by side when their columns overlap by at most this share of the
# narrower one (a 1 leaning into its neighbour still counts).
SIDE_BY_SIDE_OVERLAP = 0.25
SHAPE_FEATURES = ("log area", "log stroke width", "fill", "mean ink", "width", "height")


class ReviewError(ClassifyError):
    """The review model file is missing or unreadable: classify cannot start (exit 9)."""


def _counts_and_pairs(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ink's counts (`kernels.EVIDENCE_COUNTS`) and the side-by-side flag of uint8 [n, 28, 28]
    digits: one C pass over each (`kernels.digit_evidence`)."""
    return kernels.digit_evidence(digits, _INK, SIDE_BY_SIDE_SHARE, SIDE_BY_SIDE_OVERLAP)


def _shape(counts: np.ndarray) -> np.ndarray:
    """`shape_features` from the ink's counts: the float arithmetic, per image."""
    area = counts[:, 0].astype(np.float64)
    changes, width, height, ink_sum = counts[:, 1], counts[:, 2], counts[:, 3], counts[:, 4]
    fill = area / np.maximum(width * height, 1)
    strength = ink_sum / np.maximum(area, 1) / 255
    # The ink's edge length is its changes between neighbouring pixels along rows and columns: a
    # stroke of width w and length L has area w L and about 2 L changes, so w = 2 area / changes.
    return np.column_stack(
        [np.log1p(area), np.log(2 * area / np.maximum(changes, 1) + 0.5), fill, strength, width, height]
    )


def shape_features(digits: np.ndarray) -> np.ndarray:
    """Ink statistics of uint8 [n, 28, 28] digits: float64 [n, len(SHAPE_FEATURES)].

    Ink area (pixels over a quarter of full strength: faint halos and noise do not count), stroke
    width, fill of the bounding box, mean ink strength, and the box's
    width and height: digits are strokes of a fairly fixed width filling part of a 20 px box;
    clothing, blots and pairs of digits are not.
    """
    return _shape(_counts_and_pairs(digits)[0])


def side_by_side(digit: np.ndarray) -> bool:
    """Whether a 28x28 digit holds two or more digit-sized ink components next to each other."""
    return bool(side_by_side_batch(digit[np.newaxis])[0])


def side_by_side_batch(digits: np.ndarray) -> np.ndarray:
    """`side_by_side` for uint8 [n, 28, 28] digits: 8-connected components of the ink, those
    holding `SIDE_BY_SIDE_SHARE` of it at least, and whether two of them overlap in columns by
    at most `SIDE_BY_SIDE_OVERLAP` of the narrower one."""
    return _counts_and_pairs(digits)[1]


@dataclass(frozen=True)
class Evidence:
    """What the image alone says, for a batch: computed where the digits are made (classify's
    decoding workers), so the process that runs the model only adds what needs its answer."""

    shape: np.ndarray  # float64 [n, len(SHAPE_FEATURES)]
    several: np.ndarray  # bool [n]: digits side by side


def image_evidence(digits: np.ndarray) -> Evidence:
    counts, several = _counts_and_pairs(digits)
    return Evidence(_shape(counts), several)


@dataclass(frozen=True)
class FeatureGaussian:
    """Ten class means and a whitening of their shared covariance, for one network's features:
    the squared length of (features - mean of the class read) @ whitening is the Mahalanobis
    distance, and `limit` the distance over which a digit counts as far."""

    means: np.ndarray  # float32 [10, D]
    whitening: np.ndarray  # float32 [D, D]
    limit: float

    def distances(self, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each feature vector from its class's mean."""
        return _mahalanobis_squared(features, self.means, self.whitening, classes)


def _mahalanobis_squared(
    features: np.ndarray, means: np.ndarray, whitening: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    z = (features.astype(np.float32) - means[classes]) @ whitening
    return np.square(z).sum(axis=1)


def fit_gaussian(
    features: np.ndarray, labels: np.ndarray, held_features: np.ndarray, held_classes: np.ndarray,
    quantile: float,
) -> FeatureGaussian:  # fmt: skip
    """Class means and a shared covariance of training-side digits' features, and the limit at
    `quantile` of other training-side digits' distances from the mean of the class the model gave
    them (as classify measures it)."""
    feats = features.astype(np.float64)
    means = np.stack([feats[labels == c].mean(axis=0) for c in range(10)])
    centred = feats - means[labels]
    cov = centred.T @ centred / len(feats)
    # A little ridge: some feature channels are (near) constant among digits and would make
    # the inverse explode on anything else; 1e-3 of the mean variance keeps them finite.
    cov += 1e-3 * np.trace(cov) / len(cov) * np.eye(len(cov))
    # (x - m) @ L with L L^T the inverse covariance: L is triangular, so half of it is zeros,
    # which the saved file compresses away (the release's size budget)
    whitening = np.linalg.cholesky(np.linalg.inv(cov)).astype(np.float32)
    gauss = FeatureGaussian(means.astype(np.float32), whitening, 1.0)
    return replace(gauss, limit=float(np.quantile(gauss.distances(held_features, held_classes), quantile)))


@dataclass(frozen=True)
class ReviewModel:
    means: np.ndarray  # float32 [10, 784]: each class's mean training digit (pixels / 255)
    components: np.ndarray  # float32 [10, k, 784]: each class's principal directions
    residual_limit: float  # distance to the predicted class's subspace above which: not a digit
    shape_mean: np.ndarray  # float64 [F]
    shape_inverse_covariance: np.ndarray  # float64 [F, F]
    shape_limit: float  # squared Mahalanobis distance above which: not a digit
    fitted: dict[str, Any]  # how: data, sizes, quantile, what the limits flag on held-out digits
    # The model's own evidence, for a model whose artifacts return features (runtime.run): each
    # class's mean feature vector, a whitening of their shared covariance (the squared length of
    # (features - mean) @ whitening is the Mahalanobis distance), and the limit. None: not fitted.
    feature_means: np.ndarray | None = None  # float32 [10, D]
    feature_whitening: np.ndarray | None = None  # float32 [D, D]
    feature_limit: float = 0.0
    # The screen's evidence (pipeline.classify.screen): the same for the small network that
    # answers in front of the model above, fitted on its features. None: not fitted.
    screen: FeatureGaussian | None = None

    def for_model(self, source_sha256: str | None) -> ReviewModel:
        """This review for a model whose artifacts come from the Keras file with `source_sha256`:
        its feature evidence only where that is the model it was fitted on (another model's
        features mean something else), else the image evidence alone."""
        fitted = self.fitted.get("features", {}).get("source_sha256")
        if self.feature_means is None or (source_sha256 is not None and source_sha256 == fitted):
            return self
        return replace(self, feature_means=None, feature_whitening=None, feature_limit=0.0, screen=None)

    def uses_features(self, features: np.ndarray | None) -> bool:
        """Whether `features` (from the model being run) are what the feature limit was fitted on:
        the model's own, or (from a screened run) the model's beside the screen's."""
        if features is None or self.feature_means is None or features.ndim != 2:
            return False
        own = self.feature_means.shape[1]
        return features.shape[1] == own or (
            self.screen is not None and features.shape[1] == own + self.screen.means.shape[1]
        )

    def feature_distances(self, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each feature vector from its class's mean."""
        assert self.feature_means is not None and self.feature_whitening is not None
        return _mahalanobis_squared(features, self.feature_means, self.feature_whitening, classes)

    def feature_ratios(self, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Each row's feature distance as a multiple of its limit (over 1: not a digit). A screened
        run's rows carry the model's features (NaN where the screen answered alone) beside the
        screen's: each row is judged by the network that gave its answer."""
        assert self.feature_means is not None
        own = self.feature_means.shape[1]
        if features.shape[1] == own:
            return self.feature_distances(features, classes) / self.feature_limit
        assert self.screen is not None
        model = ~np.isnan(features[:, 0])
        out = np.empty(len(features), np.float32)
        out[model] = self.feature_distances(features[model, :own], classes[model]) / self.feature_limit
        out[~model] = self.screen.distances(features[~model, own:], classes[~model]) / self.screen.limit
        return out

    def residuals(self, digits: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Distance of each digit (pixels / 255) from the principal subspace of its class."""
        # The digits grouped by class (a stable sort: each class's rows in their order, the same
        # matrix a mask would pick), pixels / 255 divided in place: a chunk's float copies were
        # most of this step's time (the page-sized arrays' first touches).
        order = np.argsort(classes, kind="stable")
        x = digits.reshape(len(digits), -1)[order].astype(np.float32)
        np.divide(x, np.float32(255), out=x)
        out = np.zeros(len(x), np.float32)
        # bincount, not np.unique: np.unique imports numpy.ma (50 ms in every classify worker)
        ends = np.cumsum(np.bincount(classes, minlength=len(self.means))).tolist()
        for c, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            if start == end:
                continue
            z = x[start:end] - self.means[c]
            # The directions are orthonormal: what lies off the subspace is what its projection
            # leaves of the squared length (one product instead of projecting back).
            inside = np.square(z @ self.components[c].T).sum(axis=1)
            out[order[start:end]] = np.sqrt(np.maximum(np.square(z).sum(axis=1) - inside, 0))
        return out

    def distance(
        self, digits: np.ndarray, probs: np.ndarray, shape: np.ndarray | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:  # fmt: skip
        """How far from a digit, as a multiple of the limits: over 1 is `not_a_digit` (a score to
        rank by, for AUROC). `shape`: the digits' `shape_features`, if already computed. With the
        model's `features` (what the limit was fitted on), the distance is theirs alone: the
        network's view of a digit separates letters and scribbles far better than pixels do."""
        if features is not None and self.uses_features(features):
            return self.feature_ratios(features, probs.argmax(axis=1))
        residual = self.residuals(digits, probs.argmax(axis=1)) / self.residual_limit
        shape = shape_features(digits) if shape is None else shape
        return np.maximum(residual, self._mahalanobis(shape) / self.shape_limit)

    def shape_distances(self, digits: np.ndarray) -> np.ndarray:
        return self._mahalanobis(shape_features(digits))

    def _mahalanobis(self, shape: np.ndarray) -> np.ndarray:
        z = shape - self.shape_mean
        return np.einsum("ij,jk,ik->i", z, self.shape_inverse_covariance, z)

    def reasons(
        self,
        digits: np.ndarray,
        probs: np.ndarray,
        review_below: float = 0.0,
        evidence: Evidence | None = None,
        features: np.ndarray | None = None,
    ) -> list[str]:
        """One reason per digit, the first that applies in REASONS order, "" for none."""
        if not len(digits):
            return []
        evidence = evidence or image_evidence(digits)
        far = self.distance(digits, probs, evidence.shape, features) > 1
        unsure = probs.max(axis=1) < review_below
        reasons = np.where(far, NOT_A_DIGIT, np.where(unsure, LOW_CONFIDENCE, ""))
        return [str(r) for r in np.where(evidence.several, SEVERAL_DIGITS, reasons)]


def fit(
    images: np.ndarray, labels: np.ndarray, held_images: np.ndarray, held_labels: np.ndarray,
    components: int, quantile: float, source: dict[str, Any],
) -> ReviewModel:  # fmt: skip
    """Fit on training-side digits, and set the two limits at `quantile` of other training-side
    digits the fit did not see (so each limit flags about 1 - quantile of new digits).

    The caller mixes MNIST's own images with training images rendered as scans and preprocessed
    back (scripts/fit_review.py): preprocessing leaves its own marks (stroke width, ink strength),
    and a model of MNIST alone would call every scanned digit odd."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255
    means = np.zeros((10, x.shape[1]), np.float32)
    dirs = np.zeros((10, components, x.shape[1]), np.float32)
    for c in range(10):
        xc = x[labels == c]
        means[c] = xc.mean(axis=0)
        dirs[c] = np.linalg.svd(xc - means[c], full_matrices=False)[2][:components]
    features = shape_features(images)
    model = ReviewModel(means, dirs, 0.0, features.mean(axis=0), np.linalg.inv(np.cov(features.T)), 0.0, {})
    residual = model.residuals(held_images, held_labels)
    shape = model.shape_distances(held_images)
    residual_limit, shape_limit = float(np.quantile(residual, quantile)), float(np.quantile(shape, quantile))
    flagged = (residual > residual_limit) | (shape > shape_limit)
    pairs = side_by_side_batch(held_images)
    fitted = {
        **source,
        "fit_images": len(images),
        "held_out_images": len(held_images),
        "components_per_class": components,
        "quantile": quantile,
        "held_out_flagged": float((flagged | pairs).mean()),
        "held_out_flagged_several_digits": float(pairs.mean()),
        "shape_features": list(SHAPE_FEATURES),
    }
    return ReviewModel(
        means, dirs, residual_limit, model.shape_mean, model.shape_inverse_covariance, shape_limit, fitted
    )


def fit_features(
    model: ReviewModel, features: np.ndarray, labels: np.ndarray, held_features: np.ndarray,
    held_classes: np.ndarray, quantile: float, source: dict[str, Any],
) -> ReviewModel:  # fmt: skip
    """Add the model's own evidence: `fit_gaussian` on its features (`quantile`: the share of
    other training-side digits under the limit)."""
    gauss = fit_gaussian(features, labels, held_features, held_classes, quantile)
    fitted = {**model.fitted, "features": _about(source, features, held_features, quantile)}
    return replace(
        model, feature_means=gauss.means, feature_whitening=gauss.whitening, feature_limit=gauss.limit,
        fitted=fitted,
    )  # fmt: skip


def fit_screen(
    model: ReviewModel, features: np.ndarray, labels: np.ndarray, held_features: np.ndarray,
    held_classes: np.ndarray, quantile: float, source: dict[str, Any],
) -> ReviewModel:  # fmt: skip
    """Add the screen's evidence (`fit_gaussian` on the screen network's features): the screen
    answers alone only for digits under this limit, and their review is judged by it."""
    gauss = fit_gaussian(features, labels, held_features, held_classes, quantile)
    fitted = {**model.fitted, "screen": _about(source, features, held_features, quantile)}
    return replace(model, screen=gauss, fitted=fitted)


def _about(source: dict[str, Any], features: np.ndarray, held: np.ndarray, quantile: float) -> dict[str, Any]:
    """What a feature fit records of itself in the review file."""
    return {
        **source, "fit_images": len(features), "held_out_images": len(held),
        "dimensions": int(features.shape[1]), "quantile": quantile,
    }  # fmt: skip


def save(model: ReviewModel, path: Path) -> None:
    extra: dict[str, Any] = {}
    if model.feature_means is not None and model.feature_whitening is not None:
        # float16 whitening, as for the components: distances move by 2e-4 of themselves
        extra = {
            "feature_means": model.feature_means,
            "feature_whitening": model.feature_whitening.astype(np.float16),
            "feature_limit": model.feature_limit,
        }
    if model.screen is not None:
        extra.update(
            screen_means=model.screen.means, screen_whitening=model.screen.whitening.astype(np.float16),
            screen_limit=model.screen.limit,
        )  # fmt: skip
    with atomic_open(path, "wb") as f:
        np.savez_compressed(
        f, means=model.means, components=model.components.astype(np.float16),
        residual_limit=model.residual_limit, shape_mean=model.shape_mean,
        shape_inverse_covariance=model.shape_inverse_covariance, shape_limit=model.shape_limit,
        fitted=json.dumps(model.fitted), **extra,
    )  # fmt: skip


def load(path: Path) -> ReviewModel:
    try:
        with np.load(path) as f:
            features = "feature_means" in f.files
            screen = (
                FeatureGaussian(
                    f["screen_means"], f["screen_whitening"].astype(np.float32), float(f["screen_limit"])
                )
                if "screen_means" in f.files
                else None
            )
            return ReviewModel(
                f["means"], f["components"].astype(np.float32), float(f["residual_limit"]),
                f["shape_mean"], f["shape_inverse_covariance"], float(f["shape_limit"]),
                json.loads(str(f["fitted"])),
                f["feature_means"] if features else None,
                f["feature_whitening"].astype(np.float32) if features else None,
                float(f["feature_limit"]) if features else 0.0,
                screen,
            )  # fmt: skip
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ReviewError(f"{path}: cannot read the review model ({exc})") from exc
