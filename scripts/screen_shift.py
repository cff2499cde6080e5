"""How the screen (pipeline/classify/screen.py) behaves on handwriting unlike MNIST's: the first
N test digits distorted five ways (elastic warps, rotation/scale/shear, thicker and thinner
strokes), classified by the release's default model behind its screen and alone:

    .venv/bin/python scripts/screen_shift.py [--count 5000] [--seed 123]

Prints, per distortion, both accuracies, the answers the screen changed (won, lost) and the share
of images it sent on to the model. docs/classify.md ("The screen") quotes a run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import cv2
import numpy as np

from pipeline import data, manifest, preprocess, review, runtime
from pipeline.classify import review_model_path, screen


def distortions(rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Simard-style elastic warps, a random affine map, and strokes a pixel thicker or thinner."""
    grid_x, grid_y = np.meshgrid(np.arange(28, dtype=np.float32), np.arange(28, dtype=np.float32))

    def elastic(alpha: float, sigma: float) -> Callable[[np.ndarray], np.ndarray]:
        def warp(image: np.ndarray) -> np.ndarray:
            dx, dy = (
                cv2.GaussianBlur((rng.random((28, 28)) * 2 - 1).astype(np.float32), (0, 0), sigma) * alpha
                for _ in range(2)
            )
            return cv2.remap(image, grid_x + dx, grid_y + dy, cv2.INTER_LINEAR)

        return warp

    def affine(image: np.ndarray) -> np.ndarray:
        matrix = cv2.getRotationMatrix2D((14, 14), rng.uniform(-20, 20), rng.uniform(0.8, 1.1))
        matrix[0, 1] += rng.uniform(-0.3, 0.3)
        return cv2.warpAffine(image, matrix, (28, 28))

    kernel = np.ones((2, 2), np.uint8)
    return {
        "elastic (alpha 34, sigma 4)": elastic(34, 4),
        "elastic (alpha 60, sigma 5)": elastic(60, 5),
        "rotate, scale, shear": affine,
        "thicker strokes (dilate 2x2)": lambda image: cv2.dilate(image, kernel),
        "thinner strokes (erode 2x2)": lambda image: cv2.erode(image, kernel),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    model = manifest.choose_model(None).path
    checker = review.load(review_model_path()).for_model(manifest.source_sha256(model))
    screened = screen.load(screen.source_for(model, checker))
    if not isinstance(screened, screen.Screened):
        raise SystemExit(f"{model}: the release names no screen for it")
    alone = runtime.load(model)
    images, labels = data.load(data.Split.TEST, limit=args.count)
    for name, distort in distortions(np.random.default_rng(args.seed)).items():
        x = preprocess.scale(np.stack([distort(image) for image in images]))
        mine, theirs = screened.predict(x).argmax(axis=1), alone.predict(x).argmax(axis=1)
        changed = mine != theirs
        sent = 1 - screened.sure(*screened.first.run(x)).mean()  # type: ignore[arg-type]
        print(
            f"{name:30s} alone {np.mean(theirs == labels):.2%}  screened {np.mean(mine == labels):.2%}  "
            f"changed {changed.sum()} (won {np.sum(changed & (mine == labels))}, "
            f"lost {np.sum(changed & (theirs == labels))})  sent on {sent:.1%}"
        )


if __name__ == "__main__":
    main()
