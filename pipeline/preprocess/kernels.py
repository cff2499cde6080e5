"""The scan path's pixel loops: form-line search and tracing, the ink's absorption, stretch, mask
and box, erosion counts, PIL's resampling and Gaussian blur, the digit's fit into the 28x28 field,
the border's levels, and the JPEG and PNG header walks; compiled C (`_loops.c`).

Why compiled: on a scan of a few hundred pixels each step touches only a few thousand pixels, so
the time went into the dozens of numpy calls per image and their Python overhead, not into the
pixels; one loop per step does the same work in one call. The rules that decide what the lines
mean stay in `forms` in Python; what is here is mechanical (runs, bands, fits, strips, ticks,
histograms, boxes). Each loop gives the bytes the library it replaced gave (OpenCV's, PIL's,
numpy's; the tests hold them to it). Where the pixels are the cost, the loops are vectorised:
SSE2 (every x86-64) by the compiler or by hand, and AVX2 where the processor has it, chosen at
run time (`_loops.use_widest(False)` turns AVX2 off, for the tests, which run both ways).

Why C and not a JIT: the loops are built with the package (setup.py), so a process loads them
at once, where numba's import and compiler were paid by every run of scans before its workers
could start, and held LLVM's library in memory (docs/benchmarks.md). This module allocates the
arrays and says what each loop computes; `_loops.c` holds only the arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

try:
    from pipeline.preprocess import _loops
except ImportError as exc:  # a checkout used without installing it: nothing compiled _loops.c
    raise ImportError(
        "the scan loops (pipeline/preprocess/_loops.c) are not built: install the package "
        "(make setup, or pip install -e .), with a C compiler and Python's headers",
        name=__name__,
    ) from exc

if TYPE_CHECKING:
    from PIL import Image

# One row of `long_bands`' result: a band's rows lo:hi and columns start:end, its fitted centre
# line (row at column 0, slope), thickness and wobble.
LO, HI, START, END, INTERCEPT, SLOPE, THICKNESS, WOBBLE = range(8)


def long_bands(m: np.ndarray, length: int, reach: int, thickest: int) -> np.ndarray:
    """The bands of the bool mask `m` (oriented so the lines run along its rows; any strides)
    that may be straight lines: one float64 row per band (LO ... WOBBLE).

    A row qualifies when, with each pixel ORed with the `reach` rows on each side of it (a tilted
    line drifts across rows), it holds a run of ink at least `length` long. Adjacent qualifying
    rows form a band, which is kept if it is at most `thickest` rows tall; its columns span its
    long runs, and a straight line is fitted to its ink: each column's centre is the mean row of
    its ink, columns a stroke crosses (more ink than the line's median thickness plus one) left
    out. A printed line's centres lie within a fraction of a pixel of the fit, a digit's long flat
    curve wanders further (the wobble). Least squares in closed form about the mean column: an
    exactly level line gets slope 0 and its centre row exactly, so `strip` rounds it the same way
    at every column.
    """
    out = np.empty((m.shape[0], 8), np.float64)
    return out[: _loops.long_bands(m, length, reach, thickest, out)]


def strip(
    intercept: float, slope: float, thickness: float, start: int, end: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """`forms._strip`: first and last-plus-one rows of the line in each of its columns, its
    thickness and a pixel of blur on each side about the fitted centre, within 0..height."""
    first = np.empty(max(0, end - start), np.int64)
    last = np.empty_like(first)
    _loops.strip(intercept, slope, thickness, start, end, height, first, last)
    return first, last


def line_pixels(m: np.ndarray, line: np.ndarray, extent: int, out: np.ndarray) -> None:
    """`forms._line_pixels` into the bool `out` (oriented as `m`): the line's strip, and each tick
    standing on it: a run of ink leaving the strip at most a band thick, at least twice as long
    as wide, shorter than 40% of `extent`, with clear paper 2 px above it and in the second column
    beside it (drawn one pixel wider than the run, for its blurred edges, so that column beside
    it is the tick's: a tick printed a pixel askew leans into it). `line` is a `long_bands` row."""
    _loops.line_pixels(m, line, extent, out)


def fit_and_centre(
    digit: np.ndarray, box: int, field: int, side: int, min_stroke: float, target_stroke: float
) -> np.ndarray | None:
    """`normalize._fit_and_centre` of an 8-bit digit crop (any strides): resized (PIL's Lanczos,
    bicubic when enlarging) to `side` pixels on its longer side; if its strokes there (over half
    the strongest level, width from `erosion`'s counts) are thinner than `min_stroke`, a square
    max filter (PIL's MaxFilter, edges repeated) widens them towards `target_stroke`; resized
    into a `box` square and centred in a `field` square, then moved by its centre of mass to the
    field's centre, without wrapping. Sizes and the move rounded as Python's round() rounds
    (to even). Returns the field, or None when no ink is left (a blank)."""
    out = np.empty((field, field), np.uint8)
    kept = _loops.fit_and_centre(digit, box, field, side, min_stroke, target_stroke, out)
    return out if kept else None


def png_plain_gray(data: bytes) -> tuple[int, int] | None:
    """`decode._png_gray`'s test of a PNG file's bytes: (width, height) from its IHDR chunk when
    it is 8-bit grayscale and, walking the chunk headers to IEND, none changes what PIL makes of
    it (tRNS transparency, a PLTE palette, an eXIf block); None otherwise, or when IEND is never
    reached (a file cut short)."""
    return _loops.png_plain_gray(data)


def png_idat(data: bytes) -> bytes | None:
    """The compressed pixels (its IDAT chunks joined) of a PNG file that `decode` can unfilter
    itself: 8-bit grayscale, not interlaced, standard compression and filters, every chunk whole,
    the critical ones (IHDR, IDAT, IEND) with a correct CRC, the IDATs in one run, no palette,
    transparency or EXIF block, no unknown critical chunk and nothing after IEND. None for
    anything else: OpenCV's or PIL's way then decodes or refuses the file as before."""
    return _loops.png_idat(data)


def png_unfilter(raw: bytes, out: np.ndarray) -> bool:
    """Undo PNG's row filters (None, Sub, Up, Average, Paeth; one byte a pixel) of inflated 8-bit
    grayscale rows, each a filter byte and its pixels, into the contiguous uint8 `out` (height x
    width); False where a row names no such filter."""
    return _loops.png_unfilter(raw, out)


def jpeg_frame(data: bytes) -> tuple[int, int, bool] | None:
    """Width, height and whether an EXIF block is present, for `decode`'s short way to decode a
    JPEG (what PIL opens as L or RGB), read without PIL's parser: that is Python code run for
    every file, a large share of the time a small scan takes to decode. It walks the markers from
    the first after start-of-image to the start of scan (fill bytes skipped, TEM and restart
    markers without a length), takes the width and height of its one frame and whether an APP1
    block starts with "Exif\\0\\0"; None when a marker is missing or cut short, another start or
    end of image comes first, there are two frames or none, or the frame is not 8-bit baseline,
    extended or progressive Huffman (SOF0-SOF2) of one or three components with both sizes
    non-zero: PIL's way then opens or refuses the file with its own message."""
    return _loops.jpeg_frame(data)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), exclusive ends, of the nonzero pixels of a bool or 8-bit image
    (any strides); None if there are none. Each row's first and last ink found 16 bytes a compare,
    where OpenCV's boundingRect read every pixel of the ink's rows too."""
    return _loops.bbox(mask)


def locate(values: np.ndarray, level: int) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The bool mask `values > level` of an 8-bit image (any strides) and its `bbox`, in one pass
    over the image."""
    mask = np.empty(values.shape, bool)
    return mask, _loops.locate(values, level, mask)


def erosion(image: np.ndarray, threshold: int = 0) -> tuple[int, int, tuple[int, int, int, int] | None]:
    """The ink of an 8-bit or bool image (pixels above `threshold`; any strides), what a 3x3
    erosion with the edges repeated leaves of it (PIL's MinFilter(3), OpenCV's erode), and the box
    (top, bottom, left, right; exclusive ends) of what it leaves, None if nothing: the counts the
    stroke width is made of, and where the 3x3 opening leaves ink, in one pass without the mask
    or the eroded image."""
    area, eroded, top, bottom, left, right = _loops.erosion(image, threshold)
    return area, eroded, ((top, bottom, left, right) if eroded else None)


def opened_box(mask: np.ndarray, box: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], bool]:
    """`normalize._ink_box` on a large image: the box (top, bottom, left, right; exclusive ends)
    of what a 3x3 opening (edges repeated) leaves of the bool `mask`'s ink inside its box `box`
    with two pixels of paper around it, grown by the opening's dilation, then grown over the ink
    it touches until it stops changing (eight rounds at most, each looking `2 + a tenth of the
    box` further); and whether the opening left nothing (then the box is `box`). One call, where
    the erosion, the boxes of each round and their windows were a dozen calls and slices."""
    top, bottom, left, right = box
    return _loops.opened_box(mask, top, bottom, left, right)


def profile(m: np.ndarray) -> tuple[np.ndarray, int, int, int, int]:
    """`forms._profile` of the bool mask `m` (oriented so the lines run along its rows; any
    strides; some ink): the ink above each row (int64, one more than `m` has rows: entry r is the
    ink of rows < r), the height from the first inked row to the last, the columns where the
    running share of the ink first reaches 1% and 99% (plus one), and the total. One pass along
    whichever axis is contiguous: `forms._ends` reads the ink on either side of a line from the
    running sums, where numpy summed slices for every line."""
    rows = np.empty(m.shape[0] + 1, np.int64)
    height, first, last, total = _loops.profile(m, rows)
    return rows, height, first, last, total


def ink_extents(m: np.ndarray, enough: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """`forms._may_accept`'s bounds on the extent of the ink of the bool mask `m` (any strides),
    down its rows and along its columns: for each axis, the first position by which the running
    ink reaches `enough`, and the last position with at least `enough` ink after it, plus two
    (-1 where there is none). One pass along whichever axis is contiguous."""
    first_row, last_row, first_column, last_column = _loops.ink_extents(m, float(enough))
    return (first_row, last_row), (first_column, last_column)


def stretch_levels(rounded: np.ndarray) -> tuple[int, int]:
    """`normalize._stretch`'s levels of an 8-bit ink image: the strongest level present, and the
    scale (the 90th percentile of the levels above half the strongest, 256 if none reach it)."""
    return _loops.stretch_levels(rounded)


def absorbed_ink(
    gray: np.ndarray, level: np.ndarray, min_top: int, ink_level: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int] | None] | None:
    """`normalize._ink_values` for dark ink on light paper under a local paper level: the ink as
    the fraction of the paper's light it absorbs, 255 * (paper - pixel) / paper (0 where the paper
    is darker), in float32 as OpenCV's divide gives it, then `normalize._stretch` of it (the levels
    of its rounding, then scaled, rounded and saturated as OpenCV's convertScaleAbs does): the same
    bytes in two passes instead of six OpenCV calls, each a pass over the image. `level` is the
    paper at its small size (`paper_level`), enlarged a row at a time as `enlarge` enlarges it,
    so the page-sized paper is never made. The divisions, eight or four pixels an instruction
    (AVX2 where the processor has it, SSE2), bound it: their float results are kept for the
    second pass in a buffer the process reuses (an image over 4 megapixels divides again
    instead). Returns the stretched ink with its mask above `ink_level` and that mask's box (what
    `locate` gives, made in the second pass while each row is at hand), or None when the ink's
    strongest level is under `min_top` (a blank). `gray`: 8-bit, rows contiguous."""
    out = np.empty(gray.shape, np.uint8)
    mask = np.empty(gray.shape, bool)
    top, _, box = _loops.absorbed_ink(gray, level, min_top, out, ink_level, mask)
    return (out, mask, box) if top >= min_top else None


def paper_level(
    gray: np.ndarray, size: tuple[int, int], light_paper: bool, rank: int, radius: float
) -> np.ndarray:
    """The paper's brightness at a small `size` ((width, height), as PIL's): PIL's box reduction
    of the page to it, its MaxFilter(rank) (MinFilter for light ink on dark paper), then its
    GaussianBlur(radius); the same pixels as those three PIL steps, in one call."""
    width, height = size
    out = np.empty((height, width), np.uint8)
    _loops.paper_level(gray, rank, light_paper, radius, out)
    return out


def enlarge(level: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A small 8-bit image enlarged bilinearly to `shape` (height, width): pixel centres aligned
    and clamped at the edges as OpenCV's INTER_LINEAR places them, 11-bit weights, the two passes
    summed exactly and rounded once to the nearest. OpenCV's own enlargement rounds its vector
    and scalar paths differently, and differently from one version to the next; this one is the
    same everywhere, and `absorbed_ink` makes it row by row."""
    out = np.empty(shape, np.uint8)
    _loops.enlarge(level, out)
    return out


def gaussian_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """PIL's `ImageFilter.GaussianBlur(radius)` of an 8-bit image, the same pixels (three passes
    of an extended box along the rows, then along the columns, in PIL's fixed point; tested
    against PIL), without the image's round trip through PIL. The scan path blurs inside
    `paper_level`; this is the same C pass on its own, where the tests hold it to PIL."""
    out = np.empty_like(image)
    _loops.gaussian_blur(image, radius, out)
    return out


def frame(image: np.ndarray) -> tuple[int, int, int]:
    """The border frame of an 8-bit image as `normalize._border` cuts it (about 5% of each side,
    corners counted twice): the sum of its pixels, how many are above 127, and how many there are.
    Every image is asked its paper's polarity, a 28x28 digit its paper's level too: one pass here
    instead of cutting the frame out and asking numpy three times."""
    return _loops.frame(image)


# The columns of `digit_evidence`'s counts.
EVIDENCE_COUNTS = ("area", "changes", "width", "height", "ink")


def digit_evidence(
    digits: np.ndarray, ink: int, share: float, overlap: float
) -> tuple[np.ndarray, np.ndarray]:
    """The review's image evidence of uint8 [n, h, w] digits in one pass each: the counts of the
    pixels over `ink` (int64 [n, 5], `EVIDENCE_COUNTS`: how many, the changes between neighbours
    along rows and down columns, the width and height of their box, the sum of their values), and
    whether two 8-connected components of them, each holding `share` of the ink at least, stand
    side by side (columns overlapping by at most `overlap` of the narrower one's width).

    `review.shape_features` and `review.side_by_side_batch` made these with a dozen numpy passes
    and OpenCV's labelling of a stack of the images, for every chunk classify decodes; one pass
    here takes a quarter of their time (docs/benchmarks.md), and the tests hold the two to the
    same answers.
    """
    n, h, w = digits.shape
    counts = np.zeros((n, len(EVIDENCE_COUNTS)), np.int64)
    several = np.zeros(n, np.bool_)
    if n:
        stacked = np.ascontiguousarray(digits, dtype=np.uint8).reshape(n * h, w)
        _loops.digit_evidence(stacked, h, ink, share, overlap, counts, several)
    return counts, several


def resize(image: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """PIL's `Image.fromarray(image).resize(size, resample)` of an 8-bit image, the same pixels
    (BOX, BICUBIC or LANCZOS; `size` is (width, height), as PIL's): separable passes with weights
    rounded to 22-bit fixed point, 8 bits between the passes, and the passes in PIL's order (the
    vertical one first when the height shrinks by more than twice what the width does: Pillow
    13's rule, read from its machine code; tests hold it to the installed Pillow). A scan is
    resized three times, inside `paper_level` and `fit_and_centre`; this is the same C passes on
    their own, where the tests hold them to PIL."""
    width, height = size
    out = np.empty((height, width), np.uint8)
    _loops.resize(image, width, height, int(resample), out)
    return out
