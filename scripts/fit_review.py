"""Fit the review model (pipeline/review.py) on MNIST's training images and write it beside the
release models:

    .venv/bin/python scripts/fit_review.py [--out exported/review.npz]

The last 10,000 training images are held out to set the limits; the test set is not read. Each
side also gets training images rendered as scans (`samples.render_scan`, JPEG) and preprocessed
back, so the model knows what preprocessing does to a real digit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline import data, review
from pipeline.errors import BlankImageError
from pipeline.samples import scanned


def _scanned(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    out, kept = [], []
    for image, label in zip(images, labels, strict=True):
        try:
            out.append(scanned(image, rng))
            kept.append(label)
        except BlankImageError:
            continue
    return np.stack(out), np.array(kept)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("exported/review.npz"))
    parser.add_argument("--held-out", type=int, default=10_000)
    parser.add_argument(
        "--scanned", type=int, default=10_000, help="Training images rendered as scans, per side."
    )
    parser.add_argument("--components", type=int, default=40)
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    images, labels = data.load(data.Split.TRAIN)
    fit_x, fit_y = images[: -args.held_out], labels[: -args.held_out]
    held_x, held_y = images[-args.held_out :], labels[-args.held_out :]
    scan_fit = _scanned(fit_x[: args.scanned], fit_y[: args.scanned], args.seed)
    scan_held = _scanned(held_x[: args.scanned], held_y[: args.scanned], args.seed + 1)
    model = review.fit(
        np.concatenate([fit_x, scan_fit[0]]), np.concatenate([fit_y, scan_fit[1]]),
        np.concatenate([held_x, scan_held[0]]), np.concatenate([held_y, scan_held[1]]),
        args.components, args.quantile,
        {"data": "MNIST train (test set not read)", "rendered_as_scans": args.scanned, "seed": args.seed},
    )  # fmt: skip
    review.save(model, args.out)
    print(f"{args.out}: {model.fitted}")


if __name__ == "__main__":
    main()
