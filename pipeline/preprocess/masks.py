"""Small helpers shared by normalization and form-line erasure: binary masks and rank filters."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import cv2
import numpy as np

from pipeline import defaults
from pipeline.preprocess import kernels

# One thread: classify runs one decoding process per core already, and an OpenCV thread pool
# started in a process that later forks its workers could leave them waiting on it.
cv2.setNumThreads(1)
# OpenCV's warnings (a PNG it declines to decode, which PIL then decodes or reports) would print a
# line per file on a batch job's terminal: errors only.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def ink_mask(values: np.ndarray) -> np.ndarray:
    """Where the located ink is above the noise threshold: `values > INK_THRESHOLD * 255`.

    For 8-bit ink the same pixels are found against the threshold's integer part (an integer is
    above t exactly when it is above floor(t)): against a float, numpy converts every pixel to
    float64 first, which costs far more than the comparison itself (docs/benchmarks.md).
    """
    if values.dtype == np.uint8:
        return values > INK_LEVEL
    return values > defaults.INK_THRESHOLD * 255


# INK_THRESHOLD on the 8-bit scale, rounded down (see `ink_mask`).
INK_LEVEL = math.floor(defaults.INK_THRESHOLD * 255)


class Located(NamedTuple):
    """Where an ink image's ink is: its `ink_mask` and that mask's `bbox` (None: no ink)."""

    mask: np.ndarray
    box: tuple[int, int, int, int] | None


def locate(values: np.ndarray) -> Located:
    """The ink mask and its box, made once per ink image: form-line erasure and the digit's box
    both start from them, and left alone by the erasure (most scans), the ink is the same. 8-bit
    ink (every scan's) in one C pass (`kernels.locate`)."""
    if values.dtype == np.uint8:
        return Located(*kernels.locate(values, INK_LEVEL))
    mask = ink_mask(values)
    return Located(mask, bbox(mask))


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), exclusive ends, of a mask's nonzero pixels; None if it has none
    (`kernels.bbox`)."""
    return kernels.bbox(mask)


def stroke_width(image: np.ndarray, threshold: int = 0) -> float:
    """Mean stroke width of the pixels above `threshold` (of a bool mask: its True pixels): twice
    the area over the boundary length, the boundary being what a 3x3 erosion removes (counted
    by `kernels.erosion`, without making the mask or the eroded image)."""
    area, eroded, _ = kernels.erosion(image, threshold)
    if area == 0:
        return 0.0
    return 2.0 * area / max(area - eroded, 1)


def erode3(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion of a bool mask with the edges repeated (PIL's MinFilter(3))."""
    return min_filter(np.ascontiguousarray(mask).view(np.uint8), 3).view(np.bool_)


def max_filter(image: np.ndarray, size: int) -> np.ndarray:
    """PIL's MaxFilter(size) on a uint8 image, with OpenCV's dilation: the same pixels (edges
    repeated, tested on every size used), over a hundred times faster on a scan-sized image."""
    return cv2.dilate(image, _square(size), borderType=cv2.BORDER_REPLICATE)


def min_filter(image: np.ndarray, size: int) -> np.ndarray:
    """PIL's MinFilter(size) on a uint8 image, with OpenCV's erosion (see `max_filter`)."""
    return cv2.erode(image, _square(size), borderType=cv2.BORDER_REPLICATE)


@functools.cache
def _square(size: int) -> np.ndarray:
    """The size x size structuring element, made once per size: a scan asks for four or five,
    and numpy's array creation cost more than a small erosion."""
    kernel = np.ones((size, size), np.uint8)
    kernel.setflags(write=False)
    return kernel
