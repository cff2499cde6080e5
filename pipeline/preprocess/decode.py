"""Decoding: one image file to a grayscale array, with the guards a batch job over strangers' files needs.

Only regular files are opened, decompression bombs are refused from the header before any pixel
is decoded, EXIF orientation is applied, and every PIL mode (palette, 16-bit, CMYK, alpha) comes out
as 8-bit grayscale with transparency over white paper.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline import defaults
from pipeline.errors import ImageError
from pipeline.preprocess import kernels

if TYPE_CHECKING:
    from PIL import Image


def _pil() -> ModuleType:
    """PIL's Image module, imported where a file first needs it: the scans batch jobs are made of
    are read by OpenCV (`read_gray`), and a classify run whose files never need PIL forks its
    workers without PIL's import and its format plugins' (~40 ms before the first file). PIL's
    own bomb guard would warn, then raise at twice its limit; we refuse earlier, by our limit,
    before any pixel is decoded, so it is switched off to keep a single rule."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return Image


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
    _check_regular(path)
    return _decode(_open_header(path), max_pixels, reduce)


def _check_regular(path: Path | str) -> int:
    """Refuse anything but a regular file (a FIFO or device named `x.png` would block or never
    end, and opening some devices acts); its size in bytes."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("not a regular file")
        return info.st_size
    except FileNotFoundError as exc:
        raise ImageError("unreadable: file not found (dangling link or removed)") from exc
    except OSError as exc:
        raise ImageError(f"unreadable: {exc.strerror or exc}") from exc


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """The decompression-bomb guard and the smallest image that can hold a digit, from the header."""
    if width * height > max_pixels:
        raise ImageError(f"refused: {width}x{height} pixels exceeds the limit of {max_pixels}")
    if min(width, height) < defaults.MIN_IMAGE_SIDE:
        raise ImageError(f"too small to hold a digit: {width}x{height}")


def _open_header(path: Path | str) -> Image.Image:
    """PIL's `Image.open`: the header only, its failures as ImageError."""
    pil = _pil()
    try:
        img = pil.open(path)
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except PermissionError as exc:
        raise ImageError("permission denied") from exc
    except pil.UnidentifiedImageError as exc:
        raise ImageError("not an image (unrecognised format)") from exc
    except OSError as exc:
        raise ImageError(f"cannot open: {exc}") from exc
    return img


def _decode(img: Image.Image, max_pixels: int, reduce: bool) -> Image.Image:
    """Decode an opened image (see `open_image`), closing it if that fails."""
    try:
        width, height = img.size
        _check_size(width, height, max_pixels)
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
        from PIL import ImageOps

        return ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not cost the image
        return img


# Where `open_image(reduce=True)` notes how much smaller than the file it decoded a JPEG.
REDUCTION_INFO = "pipeline.reduction"


def read_gray(
    path: Path | str, max_pixels: int = defaults.MAX_IMAGE_PIXELS, reduce: bool = False
) -> tuple[np.ndarray, int]:
    """A file's pixels as 8-bit grayscale, and how much smaller than the file they were decoded
    (1, or the `reduction` of a large JPEG with `reduce`): what `open_image` and `to_gray` give,
    by a shorter way for the files batch jobs are made of.

    An 8-bit grayscale PNG with nothing to apply (no transparency, palette or EXIF block) has its
    header read here and its pixels decoded by OpenCV from the bytes already read; a JPEG in gray
    or YCbCr that ends where JPEGs end, with no rotation to apply, has its header read by PIL (the
    same guards, messages and luma) and is decoded by OpenCV, reduced by the same DCT scaling.
    Both decoders are the ones PIL uses (zlib, libjpeg-turbo), so the pixels are the same, and
    PIL's per-image Python work is what is saved. Anything else, or anything OpenCV declines
    (a truncated PNG), takes `open_image`, whose errors say what is wrong with the file.
    """
    size = _check_regular(path)
    try:
        # The file's descriptor, not a Python file object: a buffered reader's set-up and its two
        # reads were a large share of the time a small PNG takes. A small file is read in one
        # call (what its header says is checked after); a larger one's header first, so that a
        # file of another format or over the short way's size is not read here for nothing.
        fd = os.open(path, os.O_RDONLY | _O_BINARY)
        try:
            whole = size <= _ONE_READ_BYTES
            data = _read_to_end(fd, size) if whole else os.read(fd, _PNG_HEAD)
            head = data[:_PNG_HEAD]
            short = head.startswith((_PNG_SIGNATURE, _JPEG_START)) and size <= _SHORT_MAX_BYTES
            if short and head.startswith(_PNG_SIGNATURE):
                _png_size_check(head, max_pixels)  # before a large file's rest is read
            if not short:
                data = b""
            elif not whole:
                data += _read_to_end(fd, size - len(data))
        finally:
            os.close(fd)
    except PermissionError as exc:
        raise ImageError("permission denied") from exc
    except OSError as exc:
        raise ImageError(f"unreadable: {exc.strerror or exc}") from exc
    if data.startswith(_PNG_SIGNATURE):
        gray = _png_gray(data)
        if gray is not None:
            return gray, 1
    elif data:
        found = _jpeg_gray(data, max_pixels, reduce)
        if found is not None:
            return found
    with open_image(path, max_pixels, reduce) as img:
        return to_gray(img), img.info.get(REDUCTION_INFO, 1)


# Windows opens files in text mode unless told otherwise; elsewhere there is no such flag.
_O_BINARY = getattr(os, "O_BINARY", 0)


def _read_to_end(fd: int, expected: int) -> bytes:
    """The rest of the file from `fd`, `expected` bytes by its size: asked for in one read (one
    byte more, so a file that grew is read on). Exactly `expected` bytes back is the end (the
    byte more was not there); anything else is read on to the end, as a file's read() does."""
    ask = max(expected, 0) + 1
    part = os.read(fd, ask)
    if len(part) == expected:
        return part
    parts = [part]
    while part:
        part = os.read(fd, _READ_BLOCK)
        parts.append(part)
    return b"".join(parts)


# How much `_read_to_end` asks for at a time past the expected size.
_READ_BLOCK = 1 << 16


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Files larger than this take PIL's way, which reads only the header before the bomb guard: the
# shorter way reads the whole file first (digit scans and photos are far smaller).
_SHORT_MAX_BYTES = 32 * 1024 * 1024
# Files up to this size are read in one call, header and all: scans of one digit are a few
# kilobytes, and a small file of another format read for nothing costs less than the calls saved.
_ONE_READ_BYTES = 1024 * 1024
# JPEG's start-of-image marker and the first byte of the next marker.
_JPEG_START = b"\xff\xd8\xff"
# The signature and the IHDR chunk: where a PNG's size, bit depth and colour type are.
_PNG_HEAD = 33


def _png_size_check(head: bytes, max_pixels: int) -> None:
    """The bomb guard from a PNG's IHDR chunk (a header PIL would not read passes silently)."""
    if len(head) >= _PNG_HEAD and head[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", head, 16)
        _check_size(width, height, max_pixels)


def _png_gray(data: bytes) -> np.ndarray | None:
    """An 8-bit grayscale PNG's pixels (see `read_gray`, which has checked its size), or None for
    any other PNG: the chunk headers are walked in C (`kernels.png_plain_gray`), where a Python
    loop over them was a tenth of a 28x28 digit's time."""
    size = kernels.png_plain_gray(data)
    if size is None:
        return None
    gray = _png_inflated(data, *size)
    if gray is not None:
        return gray
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if gray is None or gray.dtype != np.uint8 or gray.shape != (size[1], size[0]):
        return None
    return gray


def _png_inflated(data: bytes, width: int, height: int) -> np.ndarray | None:
    """The pixels of a plain 8-bit grayscale PNG (`kernels.png_idat` says which), decoded here:
    zlib's inflate (which checks the stream's Adler-32) and the row filters undone in C. The
    same steps as libpng's, without its set-up for every file, which took most of the time a
    28x28 digit took to decode. None where anything is unusual (the stream shorter or longer
    than the rows, data after its end): OpenCV's way then decodes it as before."""
    idat = kernels.png_idat(data)
    if idat is None:
        return None
    expected = height * (width + 1)  # a filter byte and the pixels, each row
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(idat, expected)  # never more than the rows hold
        if not inflater.eof:  # the stream's end (and checksum) left to read, or more pixels
            raw += inflater.decompress(inflater.unconsumed_tail, 1)
    except zlib.error:
        return None
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        return None
    gray = np.empty((height, width), np.uint8)
    return gray if kernels.png_unfilter(raw, gray) else None


# OpenCV's grayscale JPEG decoding at 1/1, 1/2, 1/4 and 1/8 size, EXIF rotation left to PIL.
_JPEG_FLAGS = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def _jpeg_gray(data: bytes, max_pixels: int, reduce: bool) -> tuple[np.ndarray, int] | None:
    """A gray or YCbCr JPEG's luma and its reduction (see `read_gray`), or None where PIL should
    decode it: another kind of JPEG (`kernels.jpeg_frame`), a rotation to apply, a file that does not end
    with JPEG's end-of-image marker (truncated: OpenCV would fill the missing part with grey where
    PIL fails)."""
    if not data.endswith(b"\xff\xd9"):
        return None
    frame = kernels.jpeg_frame(data)
    if frame is None:
        return None
    width, height, exif = frame
    if exif and not _upright(data):
        return None
    _check_size(width, height, max_pixels)
    factor = reduction(width, height) if reduce else 1
    flags = _JPEG_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if gray is None or gray.shape != (-(-height // factor), -(-width // factor)):
        return None
    return gray, factor


def _upright(data: bytes) -> bool:
    """Whether a JPEG's EXIF block asks for no rotation (PIL reads it); False if PIL cannot."""
    try:
        with _pil().open(io.BytesIO(data)) as img:
            return bool(img.getexif().get(_ORIENTATION, 1) == 1)
    except Exception:  # a malformed EXIF block: PIL's way decides
        return False


# The EXIF tag of the image's orientation.
_ORIENTATION = 0x0112


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
        pil = _pil()
        paper = pil.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(pil.alpha_composite(paper, rgba).convert("L"))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F" and arr.max() <= 1.0:
            top = 1.0
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if mode == "CMYK":
        img = img.convert("RGB")
    return np.asarray(img.convert("L"))
