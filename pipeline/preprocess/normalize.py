"""Scan normalization: a decoded image to an MNIST-style 28x28 digit, and data set batches to model input.

MNIST digits are white ink on black, fit into a 20x20 box with antialiasing and placed by their
centre of mass in a 28x28 field. Scans are the opposite on every count: dark ink on light paper,
any size, with margins, noise and skew. `to_mnist` undoes those differences step by step so a
model trained on MNIST sees what it was trained on; training uses `deskew_batch` and `scale` from
here too, so the two can never drift apart.

An image that already is an MNIST-style 28x28 digit passes through bit-identical: classifying the
MNIST test set as PNG files gives exactly the accuracy that `pipeline verify` reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline import defaults
from pipeline.errors import BlankImageError, ImageError
from pipeline.preprocess import kernels
from pipeline.preprocess.decode import REDUCTION_INFO, read_gray, to_gray, to_working_size
from pipeline.preprocess.forms import erase_form_lines
from pipeline.preprocess.masks import INK_LEVEL, Located, locate

if TYPE_CHECKING:
    from PIL import Image


def _border(gray: np.ndarray) -> np.ndarray:
    """The outer frame of the image, about 5% of each side (at least one pixel)."""
    h, w = gray.shape
    bh, bw = max(1, h // 20), max(1, w // 20)
    return np.concatenate(
        [gray[:bh].ravel(), gray[-bh:].ravel(), gray[:, :bw].ravel(), gray[:, -bw:].ravel()]
    )


def _paper(gray: np.ndarray) -> tuple[float, bool]:
    """The border's mean level, and whether it is mostly light: dark ink on light paper (scans)
    rather than MNIST's white on black (most border pixels above 127, counted rather than sorted
    for a median). One pass over the frame `_border` cuts (`kernels.frame`), without cutting it."""
    total, light, count = kernels.frame(gray)
    return total / count, 2 * light > count


def _local_level(gray: np.ndarray, light_paper: bool) -> np.ndarray:
    """The paper's brightness, for unevenly lit pages and photos, at a small size (uint8, its
    longer side _LEVEL_SIDE): `kernels.enlarge` gives it under every pixel.

    At a 64-pixel working size, a max filter (min filter for light ink on dark paper) wider than
    any pen stroke removes the ink and leaves the paper; a blur smooths it. The small steps give
    PIL's pixels (its box reduction, rank filter and Gaussian blur, which `kernels.paper_level`
    reproduces in C): OpenCV's stand-ins moved the level enough to change a few form-field
    answers either way.
    """
    h, w = gray.shape
    scale = _LEVEL_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return kernels.paper_level(gray, size, light_paper, _LEVEL_RANK, _LEVEL_BLUR)


# The paper level's working size, in pixels; its rank filter's size (wider than a pen stroke
# there) and its blur's radius.
_LEVEL_SIDE, _LEVEL_RANK, _LEVEL_BLUR = 64, 9, 4.0


def _ink_values(gray: np.ndarray) -> tuple[np.ndarray, Located]:
    """Ink strength in 0..255 (uint8, white digit on black), the paper removed, the ink stretched,
    and where the ink is (`masks.locate`).

    Scans rarely have white paper and black ink: grey paper, pencil and faded toner shrink the
    range, and the model was trained on digits whose strokes reach 255. Phone photos also light
    the page unevenly: on images large enough, dark ink on light paper is measured as the fraction
    of the local paper brightness it absorbs (1 - pixel / paper), which cancels the lighting.
    Measured on digits under a lighting gradient (paper 30/50/70% darker on one side): 53/28/14%
    accurate with one global paper level, 99/99/16% with the local one (at 70% the border no
    longer tells the polarity: the limit of this method).

    The stretched ink is rounded to 8 bits here, so each later full-size pass touches a quarter of
    the memory float32 would; the digit ends in 8 bits anyway. The common case, dark ink on light
    paper under the local level, is one C loop (`kernels.absorbed_ink`) giving the bytes OpenCV's
    divide and `_stretch` gave.
    """
    light_paper = _paper(gray)[1]
    if min(gray.shape) >= 2 * defaults.FIELD_SIZE:
        level = _local_level(gray, light_paper)
        if light_paper:  # 255 * (paper - pixel) / paper, negatives (paper darker than ink) to 0
            found = kernels.absorbed_ink(np.ascontiguousarray(gray), level, defaults.BLANK_MAX_INK, INK_LEVEL)
            if found is None:
                raise BlankImageError("blank: no ink found")
            ink, mask, box = found  # stretched as `_stretch` stretches, located as `locate` does
            return ink, Located(mask, box)
        values = cv2.subtract(gray, kernels.enlarge(level, gray.shape))
    else:
        values = 255 - gray if light_paper else gray
        values = np.clip(values.astype(np.float32) - float(np.median(_border(values))), 0, None)
    ink = _stretch(values)
    return ink, locate(ink)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Scale ink (0 = paper; uint8, or float32 up to 255) so that the strong strokes reach 255, as
    MNIST's do, and round it to 8 bits, once.

    "Strong" is above half the strongest pixel, and the scale is their 90th percentile, read from
    the image's histogram (to the nearest level).
    """
    rounded = cv2.convertScaleAbs(values) if values.dtype != np.uint8 else values
    top, scale = kernels.stretch_levels(rounded)
    if top < defaults.BLANK_MAX_INK:
        raise BlankImageError("blank: no ink found")
    return cv2.convertScaleAbs(values, alpha=255.0 / scale)


def _ink_box(located: Located) -> tuple[tuple[int, int, int, int], bool]:
    """Bounding box (top, bottom, left, right; exclusive ends) of the ink, ignoring specks, and
    whether all the ink was thinner than the opening below.

    On a large image a 3x3 opening removes dust and JPEG speckle, and its box locates the digit.
    The opening also erases strokes thinner than 3 px (a small digit on a big page), so the box is
    then grown back over the unopened ink it touches, until it stops changing; specks away from
    the digit stay out. `located`: the ink's mask and box (`masks.locate`).
    """
    mask, full = located
    if full is None:
        raise BlankImageError("blank: no ink above the noise threshold")
    h, w = mask.shape
    if min(h, w) < 4 * defaults.FIELD_SIZE:
        return full, False
    # The opening only where the ink is, with two pixels of paper around it: past the ink's box
    # there is nothing to open, and that margin gives the edge pixels the neighbours they have in
    # the whole image (an ink box at the image's edge keeps the image's own edge). Then the box
    # grows back over the unopened ink it touches (`kernels.opened_box`).
    return kernels.opened_box(mask, full)


def _fit_and_centre(digit: np.ndarray) -> np.ndarray:
    """Scale the cropped digit into the 20x20 box and centre it by mass in the 28x28 field, pen
    strokes that would vanish at that scale thickened first (the seed's "stroke normalization").

    MNIST strokes are about 1.8 px wide in the 20-pixel box. A fine pen on a large scan shrinks to
    a faint 0.2 px line there, which the model never saw. At an intermediate scale (the digit's
    longer side at 4 x 20 = 80 px, where MNIST strokes measure 5-12 px), a stroke thinner than
    MNIST's 5th percentile is dilated to MNIST's median; thicker strokes are left alone. Then the
    digit is resized into the box (PIL's Lanczos), placed in the field, and moved so its centre of
    mass is the field's centre, as MNIST's are (the 4-pixel margin keeps it inside).

    One C call (`kernels.fit_and_centre`): PIL's resampling, the stroke width from a 3x3 erosion,
    the dilation, the moments and the move, with Python's rounding; the steps were a dozen numpy,
    OpenCV and Python calls on images of a few thousand pixels.
    """
    box, field = defaults.BOX_SIZE, defaults.FIELD_SIZE
    fitted = kernels.fit_and_centre(digit, box, field, 4 * box, _MIN_STROKE_80, _TARGET_STROKE_80)
    if fitted is None:
        raise BlankImageError("blank: digit vanished when scaled")
    return fitted


# Stroke widths at the 80-pixel scale, measured on the MNIST test set: 5th percentile and median.
_MIN_STROKE_80, _TARGET_STROKE_80 = 4.8, 7.3


def deskew(digit: np.ndarray) -> np.ndarray:
    """Moment-based deskew of one 28x28 uint8 digit: shear so its main axis is vertical.

    The classic MNIST trick (used by LeCun's deskewed-MNIST results): with image moments,
    skew = cov(x, y) / var(y); shearing by -skew about the centre of mass straightens slanted
    handwriting, which removes variation the model would otherwise have to learn.
    """
    values = digit.astype(np.float64)
    mass = values.sum()
    if mass <= 0:
        return digit
    ys, xs = np.indices(values.shape)
    cy, cx = (ys * values).sum() / mass, (xs * values).sum() / mass
    var_y = (((ys - cy) ** 2) * values).sum() / mass
    if var_y < 1e-6:
        return digit
    alpha = (((xs - cx) * (ys - cy)) * values).sum() / mass / var_y
    from PIL import Image  # here: a scan's classify needs PIL only where its model deskews

    # PIL's AFFINE maps each output pixel (x, y) to the input (x + alpha*(y - cy), y).
    img = Image.fromarray(digit)
    out = img.transform(
        img.size,
        Image.Transform.AFFINE,
        (1.0, alpha, -alpha * cy, 0.0, 1.0, 0.0),
        resample=Image.Resampling.BILINEAR,
        fillcolor=0,
    )
    return np.asarray(out)


def deskew_batch(images: np.ndarray) -> np.ndarray:
    """Deskew every image of a uint8 N x 28 x 28 batch (training and evaluation data)."""
    return np.stack([deskew(im) for im in images]) if len(images) else images.copy()


class _FullSizeNeeded(Exception):
    """The reduced decode lost the digit: small, or its strokes under 3 px (see `_scan`)."""


def to_mnist(img: Image.Image, *, deskew_digit: bool = False, erase_lines: bool = True) -> np.ndarray:
    """Turn one decoded image into an MNIST-style 28x28 uint8 digit (white on black).

    Printed form lines around the digit are erased first (`erase_form_lines`); `erase_lines=False`
    is for measuring what that step is worth. Raises BlankImageError when there is no ink: a
    blank form field must be reported, not guessed.
    """
    return _gray_to_mnist(to_gray(img), img.info.get(REDUCTION_INFO, 1) > 1, deskew_digit, erase_lines)


def _gray_to_mnist(gray: np.ndarray, drafted: bool, deskew_digit: bool, erase_lines: bool) -> np.ndarray:
    """`to_mnist` of decoded pixels; `drafted`: a JPEG decoded at reduced size (see `_scan`)."""
    if gray.ndim != 2:
        raise ImageError(f"unsupported image layout {gray.shape}")
    field = defaults.FIELD_SIZE
    if gray.shape == (field, field):
        # Already MNIST geometry: only polarity may differ, so MNIST digits pass bit-identical.
        paper, light = _paper(gray)
        if light:
            gray, paper = 255 - gray, 255 - paper
        if int(gray.max()) - paper < defaults.BLANK_MAX_INK:
            raise BlankImageError("blank: no ink found")
        digit = np.ascontiguousarray(gray)
    else:
        digit = _scan(gray, erase_lines, drafted=drafted)
    return deskew(digit) if deskew_digit else digit


def _scan(gray: np.ndarray, erase_lines: bool, drafted: bool) -> np.ndarray:
    """A scan to its 28x28 digit, worked on at reduced size where that loses nothing.

    A large image is worked on at `to_working_size` (a JPEG was already decoded so: `drafted`).
    Where the digit turns out small there (under WORK_MIN_DIGIT px), its strokes all thinner than
    the speck filter, or no ink is left at all, the reduction is what cost it: the work is done
    again at full size (`_FullSizeNeeded` asks `load_digit` to decode the file again).
    """
    work = to_working_size(gray)
    reduced = drafted or work is not gray
    try:
        return _scan_at(work, erase_lines, check=reduced)
    except (_TooCoarse, BlankImageError):
        if not reduced:
            raise
    if drafted:
        raise _FullSizeNeeded
    return _scan_at(gray, erase_lines, check=False)


class _TooCoarse(Exception):
    """The digit is too small, or its strokes too thin, at the reduced working size."""


def _scan_at(gray: np.ndarray, erase_lines: bool, check: bool) -> np.ndarray:
    values, located = _ink_values(gray)
    lines = erase_form_lines(values, located) if erase_lines else None
    if lines is not None:
        values = _stretch(np.where(lines, np.uint8(0), values))
        located = locate(values)
    (top, bottom, left, right), thin = _ink_box(located)
    if check and (thin or max(bottom - top, right - left) < defaults.WORK_MIN_DIGIT):
        raise _TooCoarse
    return _fit_and_centre(values[top:bottom, left:right])


def load_digit(
    path: Path | str,
    *,
    deskew_digit: bool = False,
    max_pixels: int = defaults.MAX_IMAGE_PIXELS,
    erase_lines: bool = True,
) -> np.ndarray:
    """Open, decode and preprocess one file: what each classify worker does per image. A large
    JPEG is decoded at reduced size, and again at full size in the rare case that loses the digit."""
    gray, factor = read_gray(path, max_pixels, reduce=True)
    try:
        return _gray_to_mnist(gray, factor > 1, deskew_digit, erase_lines)
    except _FullSizeNeeded:
        pass
    gray, _ = read_gray(path, max_pixels)
    return _gray_to_mnist(gray, False, deskew_digit, erase_lines)


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 N x 28 x 28 -> float32 N x 28 x 28 x 1 in [0, 1]: the input every artifact expects."""
    x = np.array(images, dtype=np.float32)  # a copy, divided in place: one page-sized array
    np.divide(x, np.float32(255.0), out=x)
    return x[..., np.newaxis]


def model_input(images: np.ndarray, deskew: bool) -> np.ndarray:
    """A uint8 N x 28 x 28 data set batch as a model sees it: deskewed when the model was trained
    so, then scaled. The one place training, export, verify and ensembles prepare data set images."""
    return scale(deskew_batch(images) if deskew else images)


PREPROCESSING_DESCRIPTION = {
    "input": "float32 [N, 28, 28, 1], values in [0, 1] (pixel / 255)",
    "digit": "white ink on black, longer side fit to 20 px, centred by mass in 28x28 (MNIST)",
    "module": "pipeline.preprocess.to_mnist",
}
