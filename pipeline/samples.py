"""Write test digits as image files, as-is or rendered as scans, so anyone can try classify.

`render_scan` is the inverse of `pipeline.preprocess.to_mnist`: it turns an MNIST digit into what
a back office actually receives (dark ink on light paper, larger, off-centre, slightly rotated,
blurred, noisy, JPEG-compressed). The tests and the scan-accuracy benchmark use it to measure how
well preprocessing undoes all of that.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline import data, defaults
from pipeline.choices import Style
from pipeline.errors import DataError
from pipeline.files import atomic_open, atomic_path


def render_scan(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Render one white-on-black image (a 28x28 digit, or any ink `pair_ink`, `letter_ink` and
    `scribble_ink` make, 28 px tall) as a grayscale 'scan' of random size and quality."""
    factor = rng.uniform(2.0, 8.0)
    side = round(28 * factor)
    width = round(digit.shape[1] * side / digit.shape[0])
    img = Image.fromarray(digit).resize((width, side), Image.Resampling.BICUBIC)
    img = img.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR, fillcolor=0)
    ink = np.asarray(img, dtype=np.float32) / 255.0
    # Margins on each side: 10% to 80% of the digit's size, independently, so it is off-centre.
    top, bottom, left, right = (int(side * rng.uniform(0.1, 0.8)) for _ in range(4))
    canvas = np.zeros((side + top + bottom, width + left + right), dtype=np.float32)
    canvas[top : top + side, left : left + width] = ink
    paper, pen = rng.uniform(200, 250), rng.uniform(10, 90)
    page = paper - (paper - pen) * canvas
    page += rng.normal(0, rng.uniform(2, 8), page.shape)  # sensor and paper texture noise
    out = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:  # a faint scanner frame, which preprocessing must ignore
        draw = ImageDraw.Draw(out)
        grey = int(paper - rng.uniform(10, 30))
        draw.rectangle((2, 2, out.width - 3, out.height - 3), outline=grey, width=2)
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * factor / 3))


def scanned(ink: np.ndarray, rng: np.random.Generator, quality: int | None = None) -> np.ndarray:
    """`ink` rendered as a scan, saved as JPEG (quality 60-94 unless given) and preprocessed back
    to the 28x28 digit classify would see; BlankImageError if none is left."""
    from pipeline import preprocess

    page = render_scan(ink, rng)
    buf = io.BytesIO()
    page.save(buf, format="JPEG", quality=int(rng.integers(60, 95)) if quality is None else quality)
    return preprocess.to_mnist(Image.open(buf))


# Non-digits, as forms hold them: for `pipeline bench review` and the tests of `pipeline.review`.
# Each is white ink on black, 28 px tall like an MNIST digit, to go through `render_scan`.

# Letters that are not drawn like a digit (O, I, l, S, Z, B, G, b, g, q, D and their kin are left
# out: no image evidence can tell an O from a 0).
LETTERS = "ACEFHJKMNPRTUVWXYacdefhjkmnprtuvwxy"


def pair_ink(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two 28x28 digits written side by side (a "10" in a one-digit box), 1-5 px apart."""
    a, b = _ink_crop(first), _ink_crop(second)
    gap, height = int(rng.integers(1, 6)), max(a.shape[0], b.shape[0])
    out = np.zeros((height, a.shape[1] + gap + b.shape[1]), np.uint8)
    out[(height - a.shape[0]) // 2 :][: a.shape[0], : a.shape[1]] = a
    out[(height - b.shape[0]) // 2 :][: b.shape[0], a.shape[1] + gap :] = b
    return _field(out)


def letter_ink(rng: np.random.Generator) -> np.ndarray:
    """A printed letter (Pillow's built-in font, random size, weight and slant)."""
    from PIL import ImageFont

    img = Image.new("L", (160, 160), 0)
    font = ImageFont.load_default(size=int(rng.integers(40, 90)))
    weight = int(rng.integers(0, 4))
    ImageDraw.Draw(img).text((30, 10), str(rng.choice(list(LETTERS))), fill=255, font=font,
                             stroke_width=weight, stroke_fill=255)  # fmt: skip
    img = img.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR)
    return _field(_ink_crop(np.asarray(img)))


def scribble_ink(rng: np.random.Generator) -> np.ndarray:
    """A pen scribble: a random path, a hatched cross-out or a scrawled coil."""
    size = 112
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    width, kind = int(rng.integers(4, 10)), int(rng.integers(0, 3))
    if kind == 0:
        points = [(float(x), float(y)) for x, y in rng.uniform(10, size - 10, (int(rng.integers(5, 12)), 2))]
        draw.line(points, fill=255, width=width, joint="curve")
    elif kind == 1:
        lines = int(rng.integers(4, 9))
        x0, x1 = rng.uniform(5, 30), rng.uniform(80, 107)
        for k in range(lines):
            y = 15 + k * 80 / lines
            draw.line((x0, y + rng.uniform(-8, 8), x1, y + rng.uniform(5, 25)), fill=255, width=width)
    else:
        cx, cy = rng.uniform(40, 72, 2)
        turns = np.linspace(0, rng.uniform(8, 20), 40)
        radius = rng.uniform(20, 45, 40)
        draw.line(list(zip(cx + radius * np.cos(turns), cy + radius * np.sin(turns), strict=True)),
                  fill=255, width=width, joint="curve")  # fmt: skip
    return _field(_ink_crop(np.asarray(img)))


def _ink_crop(ink: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero((ink > 30).any(axis=1)), np.flatnonzero((ink > 30).any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _field(ink: np.ndarray) -> np.ndarray:
    """Ink scaled to 20 px tall with a 4 px margin, like an MNIST digit in its 28 px field."""
    h, w = ink.shape
    width = max(1, round(w * 20 / h))
    small = np.asarray(Image.fromarray(ink).resize((width, 20), Image.Resampling.LANCZOS))
    out = np.zeros((28, width + 8), np.uint8)
    out[4:24, 4 : 4 + width] = small
    return out


FORM_FIELDS = ("box", "underline", "comb")


def render_form(digit: np.ndarray, rng: np.random.Generator, field: str | None = None) -> Image.Image:
    """Render one digit as handwritten into a printed form field, as a scan of that field.

    The field is a box, an underline or a comb (an underline with ticks at the cell's sides),
    printed as dark as the pen or lighter, 1-4 px thick, 5% inside to 15% outside the digit's
    20x20 box on each side (people write through lines), with 5-30% paper around it; the page is
    then scanned a little askew (up to 2 degrees), blurred, noisy and JPEG-compressed (by the
    caller). `pipeline.preprocess.erase_form_lines` must find the lines and leave the digit.
    """
    field = field or str(rng.choice(FORM_FIELDS))
    factor = rng.uniform(2.0, 6.0)
    side = round(28 * factor)
    ink = (
        np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
        / 255.0
    )
    gap = [side * rng.uniform(-0.05, 0.15) for _ in range(4)]  # top, bottom, left, right
    pad = [round(side * rng.uniform(0.05, 0.3) + max(g, 0.0)) for g in gap]
    height, width = side + pad[0] + pad[1], side + pad[2] + pad[3]
    canvas = np.zeros((height, width), dtype=np.float32)
    canvas[pad[0] : pad[0] + side, pad[2] : pad[2] + side] = ink
    paper, pen = rng.uniform(200, 250), rng.uniform(10, 90)
    page = Image.fromarray(np.clip(paper - (paper - pen) * canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(page)
    line, thick = int(rng.uniform(0, 0.6 * paper)), int(rng.integers(1, 5))
    margin = side * 4 / 28  # the digit's 20x20 box sits 4/28 inside its 28x28 field
    x0 = max(0.0, pad[2] + margin - gap[2] - thick)
    x1 = min(width - 1.0, pad[2] + side - margin + gap[3])
    y0 = max(0.0, pad[0] + margin - gap[0] - thick)
    y1 = min(height - 1.0, pad[0] + side - margin + gap[1])
    if field == "box":
        draw.rectangle((x0, y0, x1, y1), outline=line, width=thick)
    else:
        draw.line((0, y1, width, y1), fill=line, width=thick)
        if field == "comb":
            tick = 0.3 * (y1 - y0)
            draw.line((x0, y1 - tick, x0, y1), fill=line, width=thick)
            draw.line((x1, y1 - tick, x1, y1), fill=line, width=thick)
    page = page.rotate(rng.uniform(-2, 2), resample=Image.Resampling.BILINEAR, fillcolor=int(paper))
    noisy = np.asarray(page, dtype=np.float32) + rng.normal(0, rng.uniform(2, 8), (height, width))
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
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
        raise DataError(f"unknown style {style!r}; choose mnist, scan or form") from None
    if count < 1:
        raise DataError("--count must be at least 1")
    images, labels = data.load(data.Split.TEST, dataset, data_dir)
    if start + count > len(images):
        raise DataError(f"only {len(images) - start} test images available from index {start}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + count):
        # Each image under a temporary name until complete: a full disk leaves no cut file.
        if style is Style.MNIST:
            name = f"{i:05d}_{labels[i]}.png"
            with atomic_path(out / name) as tmp:
                Image.fromarray(images[i]).save(tmp, format="PNG", optimize=False)
        else:
            name = f"{i:05d}_{labels[i]}.jpg"
            render = render_scan if style is Style.SCAN else render_form
            with atomic_path(out / name) as tmp:
                render(images[i], rng).save(tmp, format="JPEG", quality=int(rng.integers(60, 92)))
        rows.append((name, int(labels[i])))
    labels_csv = out / "labels.csv"
    with atomic_open(labels_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return SamplesResult(out, count, labels_csv)
