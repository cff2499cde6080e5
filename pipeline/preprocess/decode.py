"""Decoding: one image file to a grayscale array, with the guards a batch job over strangers' files needs.

Only regular files are opened, decompression bombs are refused from the header before any pixel
is decoded, EXIF orientation is applied, and every PIL mode (palette, 16-bit, CMYK, alpha) comes out
as 8-bit grayscale with transparency over white paper.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from pipeline import defaults
from pipeline.errors import ImageError

# PIL's own bomb guard would warn, then raise at twice its limit; we refuse earlier, by our limit,
# before any pixel is decoded, so switch PIL's off to keep a single rule.
Image.MAX_IMAGE_PIXELS = None


def open_image(
    path: Path | str, max_pixels: int = defaults.MAX_IMAGE_PIXELS, reduce: bool = False
) -> Image.Image:
    """Open and decode one image file, refusing decompression bombs before decoding pixels.

    `Image.open` only reads the header, so the pixel count is known before the expensive (and
    memory-hungry) decode; a 1-bit 100k x 100k PNG is a few kilobytes on disk but 10 GB in memory.
    Only regular files are opened: a FIFO or device named `x.png` would block or never end.
    With `reduce`, a large JPEG is decoded at the size `reduction` says (DCT scaling: the decoder
    skips the work) and `img.info[REDUCTION_INFO]` holds the factor.
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
        if img.format in ("JPEG", "MPO"):
            # Decode straight to gray (JPEG's own luma, the same weights as convert("L")) and,
            # for a large photo, at reduced size: both cost the decoder less, not more.
            factor = reduction(width, height) if reduce else 1
            img.draft("L" if img.mode == "RGB" else img.mode, (width // factor, height // factor))
            img.info[REDUCTION_INFO] = factor
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


# Where `open_image(reduce=True)` notes how much smaller than the file it decoded a JPEG.
REDUCTION_INFO = "pipeline.reduction"


def reduction(width: int, height: int) -> int:
    """How much smaller than the file an image is worked on: 1, 2, 4 or 8 (see WORK_MIN_SIDE)."""
    factor = 1
    while (
        factor < defaults.WORK_MAX_REDUCTION and min(width, height) // (2 * factor) >= defaults.WORK_MIN_SIDE
    ):
        factor *= 2
    return factor


def to_working_size(gray: np.ndarray) -> np.ndarray:
    """A decoded image reduced by `reduction` (block averages), for what the JPEG decoder did
    not already reduce: other formats, and JPEGs passed in already decoded."""
    h, w = gray.shape[:2]
    factor = reduction(w, h)
    if factor == 1:
        return gray
    return cv2.resize(
        gray[: h - h % factor, : w - w % factor], (w // factor, h // factor), interpolation=cv2.INTER_AREA
    )


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
