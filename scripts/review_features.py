"""Would the default model's own features tell non-digits apart? A measurement for issue #19.

The review's "not a digit" evidence today is a one-class model of training digits in pixel space.
This script tries the model-side evidence the issue names (Lee et al. 2018): class-conditional
Gaussians with one shared covariance over the default ensemble's penultimate features (each
member's last convolution block, averaged over its 4x4 positions: 4 x 128 values), the image's
Mahalanobis distance to the nearest class mean as the score, and, as a cheaper image-only
contender, the same on histograms of oriented gradients. The Gaussians and the threshold are
fitted on training images only (the threshold on training images the Gaussians did not see); the
members themselves trained on every training image, which the test quantile below shows.

    PIPELINE_DATA_DIR=../shared/datasets .venv/bin/python scripts/review_features.py

Prints the share flagged of real digits and of each non-digit kind (rendered as `bench review`
renders them, another seed), with and without the review's "several digits" rule. Needs the
`train` extra (Keras) and the release's bncnn-x4.keras.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from pipeline import data, manifest, preprocess, review, runtime
from pipeline.classify import review_model_path
from pipeline.errors import BlankImageError
from pipeline.samples import letter_ink, pair_ink, scanned, scribble_ink

FIT, THRESHOLD, TEST, RENDERED = 20_000, 5_000, 2_000, 600


def member_features(model_path: Path) -> object:
    """A function from uint8 [n, 28, 28] digits to (features [n, 512], probabilities [n, 10]):
    the model's `features` output (`runtime.feature_view`), as classify gets it."""
    predictor = runtime.load(model_path)

    def run(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats, probs = [], []
        for k in range(0, len(digits), 1000):
            p, f = predictor.run(preprocess.scale(digits[k : k + 1000]))
            assert f is not None, f"{model_path}: no features output"
            feats.append(f)
            probs.append(p)
        return np.concatenate(feats), np.concatenate(probs)

    return run


def gradient_histograms(digits: np.ndarray, cell: int = 4, bins: int = 8) -> np.ndarray:
    """Unsigned gradient orientation histograms per cell, L2-normalised, square-rooted."""
    f = digits.astype(np.float32) / 255
    gy, gx = np.gradient(f, axis=(1, 2))
    magnitude, angle = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
    which = np.minimum((angle / np.pi * bins).astype(int), bins - 1)
    n, grid = len(digits), 28 // cell
    out = np.stack(
        [
            np.where(which == k, magnitude, 0).reshape(n, grid, cell, grid, cell).sum((2, 4))
            for k in range(bins)
        ],
        axis=-1,
    ).reshape(n, -1)
    return np.sqrt(out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-6))


class Gaussians:
    """Class means and one shared covariance; `distance` to the nearest mean (Mahalanobis, squared)."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray) -> None:
        self.means = np.stack([feats[labels == c].mean(axis=0) for c in range(10)])
        centred = feats - self.means[labels]
        cov = centred.T @ centred / len(feats)
        self.precision = np.linalg.inv(cov + 1e-3 * np.eye(cov.shape[0]))

    def distance(self, feats: np.ndarray) -> np.ndarray:
        d = [np.einsum("ij,jk,ik->i", feats - m, self.precision, feats - m) for m in self.means]
        return np.min(d, axis=0)


def main() -> None:
    release = manifest.release_dir()
    if release is None:
        sys.exit("no release folder")
    run = member_features(release / "bncnn-x4.keras")
    x_train, y_train = data.load(data.Split.TRAIN)
    x_test, _ = data.load(data.Split.TEST)
    rng = np.random.default_rng(20261201)

    def rendered(make: object) -> np.ndarray:
        out = []
        for _ in range(RENDERED):
            with contextlib.suppress(BlankImageError):  # a scribble may render too faint
                out.append(scanned(make(), rng))  # type: ignore[operator]
        return np.stack(out)

    def pick() -> np.ndarray:
        return x_test[int(rng.integers(len(x_test)))]

    sets = {
        "MNIST test digits": x_test[:TEST],
        "test digits as scans": rendered(pick),
        "two digits side by side": rendered(lambda: pair_ink(pick(), pick(), rng)),
        "printed letters": rendered(lambda: letter_ink(rng)),
        "scribbles": rendered(lambda: scribble_ink(rng)),
        "Fashion-MNIST test": data.test_images(data.Dataset.FASHION_MNIST)[:TEST],
    }
    fit, held = slice(0, FIT), slice(FIT, FIT + THRESHOLD)
    train_feats, _ = run(x_train[: FIT + THRESHOLD])
    outputs = {name: run(digits) for name, digits in sets.items()}
    checker = review.load(review_model_path())
    several = {
        name: np.array(checker.reasons(digits, outputs[name][1], 0.0)) == review.SEVERAL_DIGITS
        for name, digits in sets.items()
    }
    scorers = {
        "ensemble features": (
            Gaussians(train_feats[fit], y_train[fit]),
            lambda n, d: outputs[n][0],
            train_feats[held],
        ),
        "gradient histograms": (
            Gaussians(gradient_histograms(x_train[fit]), y_train[fit]),
            lambda n, d: gradient_histograms(d),
            gradient_histograms(x_train[held]),
        ),
    }
    for label, (gauss, feats_of, held_feats) in scorers.items():
        held_d = gauss.distance(held_feats)
        test_d = gauss.distance(feats_of("MNIST test digits", sets["MNIST test digits"]))
        print(f"\n{label}: distance quantiles, held-out training images vs test digits")
        for q in (0.95, 0.97, 0.99):
            print(f"  {q:.2f}: {np.quantile(held_d, q):9.1f} {np.quantile(test_d, q):9.1f}")
        for q in (0.97, 0.98, 0.99):
            limit = np.quantile(held_d, q)
            print(f"  threshold at the training quantile {q:.2f} (flagged; with 'several digits'):")
            for name, digits in sets.items():
                far = gauss.distance(feats_of(name, digits)) > limit
                print(f"    {name:26s} {far.mean():6.1%} {(far | several[name]).mean():6.1%}")


if __name__ == "__main__":
    main()
