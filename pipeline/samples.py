"""Write test digits as image files, as-is or rendered as scans, so anyone can try classify.

`render_scan` is the inverse of `pipeline.preprocess.to_mnist`: it turns an MNIST digit into what
a back office actually receives (dark ink on light paper, larger, off-centre, slightly rotated,
blurred, noisy, JPEG-compressed). The tests and the scan-accuracy benchmark use it to measure how
well preprocessing undoes all of that.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline import data, defaults
from pipeline.errors import DataError
from pipeline.files import atomic_open


class Style(StrEnum):
    MNIST = "mnist"  # 28x28 PNG exactly as in the dataset
    SCAN = "scan"  # dark ink on light paper, larger, margins, blur, noise, JPEG


def render_scan(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Render one 28x28 white-on-black digit as a grayscale 'scan' of random size and quality."""
    factor = rng.uniform(2.0, 8.0)
    side = round(28 * factor)
    img = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    img = img.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR, fillcolor=0)
    ink = np.asarray(img, dtype=np.float32) / 255.0
    # Margins on each side: 10% to 80% of the digit's size, independently, so it is off-centre.
    top, bottom, left, right = (int(side * rng.uniform(0.1, 0.8)) for _ in range(4))
    canvas = np.zeros((side + top + bottom, side + left + right), dtype=np.float32)
    canvas[top : top + side, left : left + side] = ink
    paper, pen = rng.uniform(200, 250), rng.uniform(10, 90)
    page = paper - (paper - pen) * canvas
    page += rng.normal(0, rng.uniform(2, 8), page.shape)  # sensor and paper texture noise
    out = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:  # a faint scanner frame, which preprocessing must ignore
        draw = ImageDraw.Draw(out)
        grey = int(paper - rng.uniform(10, 30))
        draw.rectangle((2, 2, out.width - 3, out.height - 3), outline=grey, width=2)
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * factor / 3))


@dataclass(frozen=True)
class SamplesResult:
    folder: Path
    count: int
    labels_csv: Path


def write_samples(
    out: Path,
    count: int,
    style: Style | str = Style.MNIST,
    dataset: str = defaults.DATASET,
    data_dir: Path | None = None,
    seed: int = defaults.SEED,
    start: int = 0,
) -> SamplesResult:
    """Write `count` test-set digits into `out` with a labels.csv (file,label) beside them.

    File names carry the index and label (`00042_7.png`) so results can be checked by eye; scans
    are JPEG, as most scanners and phones write them.
    """
    try:
        style = Style(style)
    except ValueError:
        raise DataError(f"unknown style {style!r}; choose mnist or scan") from None
    if count < 1:
        raise DataError("--count must be at least 1")
    images, labels = data.load(data.Split.TEST, dataset, data_dir)
    if start + count > len(images):
        raise DataError(f"only {len(images) - start} test images available from index {start}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + count):
        if style is Style.MNIST:
            name = f"{i:05d}_{labels[i]}.png"
            Image.fromarray(images[i]).save(out / name, optimize=False)
        else:
            name = f"{i:05d}_{labels[i]}.jpg"
            render_scan(images[i], rng).save(out / name, quality=int(rng.integers(60, 92)))
        rows.append((name, int(labels[i])))
    labels_csv = out / "labels.csv"
    with atomic_open(labels_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return SamplesResult(out, count, labels_csv)
