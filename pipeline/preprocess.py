"""How any image becomes an MNIST-style 28x28 input: the only preprocessing code in the project.

MNIST digits are white ink on black, fit into a 20x20 box with antialiasing and placed by their
centre of mass in a 28x28 field. Scans are the opposite on every count: dark ink on light paper,
any size, with margins, noise and skew. `to_mnist` undoes those differences step by step so a
model trained on MNIST sees what it was trained on; training uses `deskew_batch` and `scale` from
here too, so the two can never drift apart.

An image that already is an MNIST-style 28x28 digit passes through bit-identical: classifying the
MNIST test set as PNG files gives exactly the accuracy that `pipeline verify` reports.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from pipeline import defaults
from pipeline.errors import BlankImageError, ImageError

# PIL's own bomb guard would warn, then raise at twice its limit; we refuse earlier, by our limit,
# before any pixel is decoded, so switch PIL's off to keep a single rule.
Image.MAX_IMAGE_PIXELS = None


def open_image(path: Path | str, max_pixels: int = defaults.MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and decode one image file, refusing decompression bombs before decoding pixels.

    `Image.open` only reads the header, so the pixel count is known before the expensive (and
    memory-hungry) decode; a 1-bit 100k x 100k PNG is a few kilobytes on disk but 10 GB in memory.
    Only regular files are opened: a FIFO or device named `x.png` would block or never end.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ImageError("not a regular file")
    except FileNotFoundError as exc:
        raise ImageError("unreadable: file not found (dangling link or removed)") from exc
    except OSError as exc:
        raise ImageError(f"unreadable: {exc.strerror or exc}") from exc
    try:
        img = Image.open(path)
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except PermissionError as exc:
        raise ImageError("permission denied") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not an image (unrecognised format)") from exc
    except OSError as exc:
        raise ImageError(f"cannot open: {exc}") from exc
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(f"refused: {width}x{height} pixels exceeds the limit of {max_pixels}")
        if min(width, height) < defaults.MIN_IMAGE_SIDE:
            raise ImageError(f"too small to hold a digit: {width}x{height}")
        try:
            img.load()  # decodes, then closes the file of a single-frame image
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"corrupt or truncated image data: {exc}") from exc
    except BaseException:
        img.close()
        raise
    if img.format in _NO_ORIENTATION_FORMATS and "exif" not in img.info:
        return img  # nothing to rotate; skips exif_transpose's copy on the hot path
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not cost the image
        return img


# Formats whose orientation can only come from an embedded EXIF block (img.info["exif"]).
_NO_ORIENTATION_FORMATS = frozenset({"PNG", "GIF", "BMP"})


def to_gray(img: Image.Image) -> np.ndarray:
    """Any PIL mode to an 8-bit grayscale array; transparency is composited over white paper."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img)
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(paper, rgba).convert("L"))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F" and arr.max() <= 1.0:
            top = 1.0
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if mode == "CMYK":
        img = img.convert("RGB")
    return np.asarray(img.convert("L"))


def _border(gray: np.ndarray) -> np.ndarray:
    """The outer frame of the image, about 5% of each side (at least one pixel)."""
    h, w = gray.shape
    bh, bw = max(1, h // 20), max(1, w // 20)
    return np.concatenate(
        [gray[:bh].ravel(), gray[-bh:].ravel(), gray[:, :bw].ravel(), gray[:, -bw:].ravel()]
    )


def _local_level(gray: np.ndarray, light_paper: bool) -> np.ndarray:
    """The paper's brightness under every pixel, for unevenly lit pages and photos.

    At a 64-pixel working size, a max filter (min filter for light ink on dark paper) wider than
    any pen stroke removes the ink and leaves the paper; a blur smooths it, and it is scaled back
    to full size.
    """
    h, w = gray.shape
    scale = 64 / max(h, w)
    small = Image.fromarray(gray).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX
    )
    rank = ImageFilter.MaxFilter(9) if light_paper else ImageFilter.MinFilter(9)
    level = small.filter(rank).filter(ImageFilter.GaussianBlur(4))
    return np.asarray(level.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _ink_values(gray: np.ndarray) -> np.ndarray:
    """Ink strength in 0..255 (white digit on black) with the paper removed and the ink stretched.

    Scans rarely have white paper and black ink: grey paper, pencil and faded toner shrink the
    range, and the model was trained on digits whose strokes reach 255. Phone photos also light
    the page unevenly: on images large enough, dark ink on light paper is measured as the fraction
    of the local paper brightness it absorbs (1 - pixel / paper), which cancels the lighting.
    Measured on digits under a lighting gradient (paper 30/50/70% darker on one side): 53/28/14%
    accurate with one global paper level, 99/99/16% with the local one (at 70% the border no
    longer tells the polarity: the limit of this method).
    """
    light_paper = np.median(_border(gray)) > 127
    values = gray.astype(np.float32)
    if min(gray.shape) >= 2 * defaults.FIELD_SIZE:
        paper = _local_level(gray, light_paper)
        values = 255.0 * (1.0 - values / np.maximum(paper, 1.0)) if light_paper else values - paper
    else:
        if light_paper:
            values = 255.0 - values
        values = values - float(np.median(_border(values)))
    values = np.clip(values, 0, None)
    top = float(values.max())
    if top < defaults.BLANK_MAX_INK:
        raise BlankImageError("blank: no ink found")
    strong = values[values > 0.5 * top]
    scale = float(np.percentile(strong, 90)) if strong.size else top
    return np.clip(values * (255.0 / max(scale, 1.0)), 0, 255)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _ink_box(values: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right; exclusive ends) of the ink, ignoring specks.

    On a large image a 3x3 opening removes dust and JPEG speckle, and its box locates the digit.
    The opening also erases strokes thinner than 3 px (a small digit on a big page), so the box is
    then grown back over the unopened ink it touches, until it stops changing; specks away from
    the digit stay out.
    """
    mask = values > defaults.INK_THRESHOLD * 255
    full = _bbox(mask)
    if full is None:
        raise BlankImageError("blank: no ink above the noise threshold")
    h, w = mask.shape
    if min(h, w) < 4 * defaults.FIELD_SIZE:
        return full
    m = Image.fromarray(mask.astype(np.uint8) * 255)
    opened = _bbox(np.asarray(m.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))) > 0)
    if opened is None:
        return full
    top, bottom, left, right = opened
    for _ in range(8):
        pad = 2 + max(bottom - top, right - left) // 10
        t, b, l_, r = max(0, top - pad), min(h, bottom + pad), max(0, left - pad), min(w, right + pad)
        inner = _bbox(mask[t:b, l_:r])
        assert inner is not None  # the window holds the opened box, which holds ink
        grown = (t + inner[0], t + inner[1], l_ + inner[2], l_ + inner[3])
        if grown == (top, bottom, left, right):
            break
        top, bottom, left, right = grown
    return top, bottom, left, right


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask: twice the area over the boundary length."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    eroded = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3))) > 0
    boundary = int((mask & ~eroded).sum())
    return 2.0 * area / max(boundary, 1)


def _normalize_stroke(img: Image.Image) -> Image.Image:
    """Thicken pen strokes that would vanish at MNIST scale (the seed's "stroke normalization").

    MNIST strokes are about 1.8 px wide in the 20-pixel box. A fine pen on a large scan shrinks to
    a faint 0.2 px line there, which the model never saw. At an intermediate scale (the digit's
    longer side at 4 x 20 = 80 px, where MNIST strokes measure 5-12 px), a stroke thinner than
    MNIST's 5th percentile is dilated to MNIST's median; thicker strokes are left alone.
    """
    side = 4 * defaults.BOX_SIZE
    scale = side / max(img.size)
    mid = img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
        Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC,
    )
    values = np.asarray(mid)
    width = stroke_width(values > 0.5 * max(int(values.max()), 1))
    if 0 < width < _MIN_STROKE_80:
        grow = 2 * round((_TARGET_STROKE_80 - width) / 2) + 1  # MaxFilter(k) widens by k - 1
        mid = mid.filter(ImageFilter.MaxFilter(max(3, grow)))
    return mid


# Stroke widths at the 80-pixel scale, measured on the MNIST test set: 5th percentile and median.
_MIN_STROKE_80, _TARGET_STROKE_80 = 4.8, 7.3


def _fit_and_centre(digit: np.ndarray) -> np.ndarray:
    """Scale the cropped digit into the 20x20 box and centre it by mass in the 28x28 field."""
    h, w = digit.shape
    box, field = defaults.BOX_SIZE, defaults.FIELD_SIZE
    factor = box / max(h, w)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    img = _normalize_stroke(Image.fromarray(np.rint(digit).astype(np.uint8)))
    small = np.asarray(img.resize((nw, nh), Image.Resampling.LANCZOS), dtype=np.float32)
    out = np.zeros((field, field), dtype=np.float32)
    top, left = (field - nh) // 2, (field - nw) // 2
    out[top : top + nh, left : left + nw] = small
    mass = out.sum()
    if mass <= 0:
        raise BlankImageError("blank: digit vanished when scaled")
    ys, xs = np.indices(out.shape)
    cy, cx = (ys * out).sum() / mass, (xs * out).sum() / mass
    dy, dx = round(field / 2 - cy), round(field / 2 - cx)  # MNIST: mass at (14, 14)
    # Shift without wrapping; the 4-pixel margin keeps the digit inside the field.
    shifted = np.zeros_like(out)
    src_y = slice(max(0, -dy), field - max(0, dy))
    dst_y = slice(max(0, dy), field - max(0, -dy))
    src_x = slice(max(0, -dx), field - max(0, dx))
    dst_x = slice(max(0, dx), field - max(0, -dx))
    shifted[dst_y, dst_x] = out[src_y, src_x]
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


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


def to_mnist(img: Image.Image, *, deskew_digit: bool = False) -> np.ndarray:
    """Turn one decoded image into an MNIST-style 28x28 uint8 digit (white on black).

    Raises BlankImageError when there is no ink: a blank form field must be reported, not guessed.
    """
    gray = to_gray(img)
    if gray.ndim != 2:
        raise ImageError(f"unsupported image layout {gray.shape}")
    field = defaults.FIELD_SIZE
    if gray.shape == (field, field):
        # Already MNIST geometry: only polarity may differ, so MNIST digits pass bit-identical.
        # This is classify's hot path, so the border is read once and "median > 127" is decided
        # by counting (same answer, a quarter of the time of np.median on 108 pixels).
        border = _border(gray)
        paper = float(border.mean())
        if 2 * int(np.count_nonzero(border > 127)) > border.size:
            gray, paper = 255 - gray, 255 - paper
        if int(gray.max()) - paper < defaults.BLANK_MAX_INK:
            raise BlankImageError("blank: no ink found")
        digit = np.ascontiguousarray(gray)
    else:
        values = _ink_values(gray)
        top, bottom, left, right = _ink_box(values)
        digit = _fit_and_centre(values[top:bottom, left:right])
    return deskew(digit) if deskew_digit else digit


def load_digit(
    path: Path | str, *, deskew_digit: bool = False, max_pixels: int = defaults.MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Open, decode and preprocess one file: what each classify worker does per image."""
    with open_image(path, max_pixels) as img:
        return to_mnist(img, deskew_digit=deskew_digit)


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 N x 28 x 28 -> float32 N x 28 x 28 x 1 in [0, 1]: the input every artifact expects."""
    return (np.asarray(images, dtype=np.float32) / np.float32(255.0))[..., np.newaxis]


def model_input(images: np.ndarray, deskew: bool) -> np.ndarray:
    """A uint8 N x 28 x 28 data set batch as a model sees it: deskewed when the model was trained
    so, then scaled. The one place training, export, verify and ensembles prepare data set images."""
    return scale(deskew_batch(images) if deskew else images)


PREPROCESSING_DESCRIPTION = {
    "input": "float32 [N, 28, 28, 1], values in [0, 1] (pixel / 255)",
    "digit": "white ink on black, longer side fit to 20 px, centred by mass in 28x28 (MNIST)",
    "module": "pipeline.preprocess.to_mnist",
}


@dataclass(frozen=True)
class Augmentation:
    """The random distortions training applies, and their ranges: one source for the host-side
    augmentation (`augment`, numpy) and the on-device one of `pipeline train --fast` (JAX).

    Each image gets a rotation, a scale, a shear and a shift drawn uniformly from +/- these
    ranges, then an elastic distortion (Simard et al., 2003): a random displacement field,
    Gaussian-smoothed with `elastic_sigma` pixels and scaled to at most `elastic_alpha / 10` pixels.
    """

    rotation_deg: float = 10.0  # handwriting leans a few degrees either way; 10 keeps a 6 a 6
    shift: float = 2.0  # pixels: MNIST centres by mass, real crops are off by a pixel or two
    scale_range: float = 0.1  # +/- 10% size: the 20 px box is a convention, pens vary more
    shear: float = 0.15  # slant, beyond what rotation covers
    elastic_alpha: float = 12.0  # at most 1.2 px of local displacement: stroke wobble, not a new digit
    elastic_sigma: float = 4.0  # smoothness of that displacement, in pixels

    def draw(self, uniform: Callable[[float, float, tuple[int, ...]], Any], n: int, h: int, w: int) -> Warp:
        """This augmentation's random numbers for n images of h x w, from `uniform(low, high,
        shape)`: numpy's `Generator.uniform` on the host, a keyed `jax.random.uniform` on a device.
        The draw order is fixed, so a seeded generator gives the same images every time."""
        rotation = uniform(-self.rotation_deg, self.rotation_deg, (n,))
        zoom = uniform(1 - self.scale_range, 1 + self.scale_range, (n,))
        shear = uniform(-self.shear, self.shear, (n,))
        shift = uniform(-self.shift, self.shift, (2, n))
        noise = uniform(-1.0, 1.0, (2, n, h, w)) if self.elastic_alpha > 0 else None
        return Warp(rotation, zoom, shear, shift, noise, self.elastic_alpha, self.elastic_sigma)


@dataclass(frozen=True)
class Warp:
    """One batch's drawn distortion: per-image rotation (degrees), zoom, shear, shift (x and y
    rows), the elastic noise (x and y fields, or None) and the elastic settings."""

    rotation: Any
    zoom: Any
    shear: Any
    shift: Any
    noise: Any
    elastic_alpha: float
    elastic_sigma: float


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float = Augmentation.rotation_deg,
    shift: float = Augmentation.shift,
    scale_range: float = Augmentation.scale_range,
    shear: float = Augmentation.shear,
    elastic_alpha: float = Augmentation.elastic_alpha,
    elastic_sigma: float = Augmentation.elastic_sigma,
) -> np.ndarray:
    """Randomly rotate, shift, scale, shear and elastically distort float images [N, 28, 28, 1].

    Pure numpy on the host, so it works with every Keras backend and never runs inside a compiled
    Keras step: Keras' random image layers inside a jit-compiled JAX model were pathologically
    slow on the GPU machine. It must also keep up with the GPU (tens of thousands of images a
    second), so the whole batch is one float32 bilinear gather (see `warp`).
    """
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    recipe = Augmentation(rotation_deg, shift, scale_range, shear, elastic_alpha, elastic_sigma)
    return warp(np, images, recipe.draw(rng.uniform, n, h, w))


def warp(xp: Any, images: Any, drawn: Warp) -> Any:
    """Apply a drawn distortion to images [N, H, W, 1] with array module `xp` (numpy, or
    jax.numpy inside a compiled training step): the same arithmetic on the host and the device.

    Each output pixel reads the input at its inverse-mapped position (about the field's centre),
    displaced by the elastic field, with bilinear weights. The elastic field is the noise smoothed
    by a truncated Fourier transform done as two small real matrix products (`_smooth_field`):
    the Gaussian leaves nothing above 5 cycles per image.
    """
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    src = images.reshape(n, h, w)
    theta = xp.deg2rad(drawn.rotation)
    cos, sin = xp.cos(theta) / drawn.zoom, xp.sin(theta) / drawn.zoom
    sh, tx, ty = drawn.shear, drawn.shift[0], drawn.shift[1]
    # Inverse map (output pixel -> input position) about the field's centre, per image.
    a, b = cos, -sin + sh * cos
    c, d = sin, cos + sh * sin
    cy, cx = (h - 1) / 2, (w - 1) / 2
    col = lambda v: v.astype(xp.float32)[:, None, None]  # noqa: E731
    ys = (xp.arange(h, dtype=xp.float32) - xp.float32(cy))[:, None]
    xs = (xp.arange(w, dtype=xp.float32) - xp.float32(cx))[None, :]
    sx = col(a) * xs + col(b) * ys + col(cx - tx)
    sy = col(c) * xs + col(d) * ys + col(cy - ty)
    if drawn.noise is not None and drawn.elastic_alpha > 0:
        fields = []
        for noise in (drawn.noise[0], drawn.noise[1]):
            field = _smooth_field(noise, drawn.elastic_sigma, xp)
            fields.append(field / (xp.abs(field).max(axis=(1, 2), keepdims=True) + xp.float32(1e-8)))
        # at most alpha/10 pixels of displacement
        sx = sx + xp.float32(drawn.elastic_alpha / 10) * fields[0]
        sy = sy + xp.float32(drawn.elastic_alpha / 10) * fields[1]
    return _bilinear(src, sx, sy, xp)[..., None]


_FIELD_CYCLES = 5  # highest frequency kept: exp(-2 (pi sigma k / 28)^2) < 1e-6 beyond it at sigma 4


def _smooth_field(noise: Any, sigma: float, xp: Any = np) -> Any:
    """Gaussian-smooth noise [N, H, W] with a periodic boundary, as an FFT would.

    A Gaussian is separable and the noise is real, so keeping the low frequencies of the Fourier
    transform, weighting them by the Gaussian's transform and transforming back is one real
    matrix for the rows and one for the columns: two small float32 products, fast on a CPU and a
    GPU, with no complex arithmetic."""
    rows, cols = _smoothing_matrices(noise.shape[1], noise.shape[2], sigma)
    return (xp.asarray(rows) @ noise.astype(xp.float32) @ xp.asarray(cols)).astype(xp.float32)


@functools.lru_cache(maxsize=8)
def _smoothing_matrices(h: int, w: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """For each axis of length n, the symmetric matrix K[i, j] = sum over |f| <= k of
    g(f) cos(2 pi (i - j) f / n) / n: the truncated inverse transform of the Gaussian's transform
    g(f) = exp(-2 (pi sigma f / n)^2) applied to the forward transform."""

    def axis(n: int) -> np.ndarray:
        f = np.arange(-min(_FIELD_CYCLES, n // 2 - 1), min(_FIELD_CYCLES, n // 2 - 1) + 1)
        gauss = np.exp(-2 * (np.pi * sigma * f / n) ** 2)
        offset = np.subtract.outer(np.arange(n), np.arange(n))[..., None]
        return (np.cos(2 * np.pi * offset * f / n) @ gauss / n).astype(np.float32)

    return axis(h), axis(w)


def _bilinear(src: Any, sx: Any, sy: Any, xp: Any = np) -> Any:
    """Sample src [N, H, W] at (sy, sx) with bilinear weights in float32; outside reads 0."""
    n, h, w = src.shape
    stride = w + 2
    padded = xp.pad(src.astype(xp.float32), ((0, 0), (1, 1), (1, 1)))
    sx = xp.clip(sx + xp.float32(1), 0, w + 0.999).astype(xp.float32)
    sy = xp.clip(sy + xp.float32(1), 0, h + 0.999).astype(xp.float32)
    x0, y0 = xp.floor(sx), xp.floor(sy)
    wx, wy = sx - x0, sy - y0
    # x0 <= w and y0 <= h after the clip, so the +1 neighbours stay inside the padded field.
    base = (xp.arange(n, dtype=xp.int32) * (h + 2) * stride)[:, None, None]
    idx = y0.astype(xp.int32) * stride + x0.astype(xp.int32) + base
    flat = padded.reshape(-1)
    top_left, top_right = xp.take(flat, idx), xp.take(flat, idx + 1)
    bottom_left, bottom_right = xp.take(flat, idx + stride), xp.take(flat, idx + stride + 1)
    top = top_left + (top_right - top_left) * wx
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    return top + (bottom - top) * wy
