"""Compiled pixel loops of scan preprocessing (numba): form-line search and tracing, ink stretch.

Why compiled: on a scan of a few hundred pixels each step touches only a few thousand pixels, so
the time went into the dozens of numpy calls per image and their Python overhead, not into the
pixels; one loop per step does the same work in one call. The rules that decide what the lines
mean stay in `forms` in Python; what is here is mechanical (runs, bands, fits, strips, ticks, a
histogram). Steps whose cost is in the pixels stay with OpenCV's vectorised code and PIL's
resampling, which scalar loops do not beat.

Imported only when a scan needs it (`masks.kernels`): numba's import and LLVM's library cost a
process a few tenths of a second and over 100 MiB, which a run of 28x28 PNGs never pays. The
machine code is cached beside this file (or in numba's user cache where that folder is
read-only), so only the first run after an install compiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np


def _compiled(fn: Callable[..., Any]) -> Any:
    """`fn` compiled, its machine code cached on disk where numba finds a writable place."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # no cache locator: a read-only install with no writable user cache
        return numba.njit(cache=False, nogil=True)(fn)


# One row of `long_bands`' result: a band's rows lo:hi and columns start:end, its fitted centre
# line (row at column 0, slope), thickness and wobble.
LO, HI, START, END, INTERCEPT, SLOPE, THICKNESS, WOBBLE = range(8)


def _fit(m: np.ndarray, lo: int, hi: int, start: int, end: int, row: np.ndarray) -> None:
    """Fit a straight line to the ink of rows lo:hi, columns start:end: `row[INTERCEPT:]`.

    Each column's centre is the mean row of its ink; columns a stroke crosses (more ink than the
    line's median thickness plus one) are left out. A printed line's centres lie within a
    fraction of a pixel of the fit, a digit's long flat curve wanders further (the wobble).
    Least squares in closed form about the mean column: an exactly level line gets slope 0 and
    its centre row exactly, so `strip` rounds it the same way at every column."""
    n = end - start
    counts = np.zeros(n, np.int64)
    sums = np.zeros(n, np.int64)
    for j in range(n):
        c = 0
        s = 0
        for r in range(lo, hi):
            if m[r, start + j]:
                c += 1
                s += r
        counts[j] = c
        sums[j] = s
    inked = counts[counts > 0]
    if inked.size:
        ordered = np.sort(inked)
        k = ordered.size
        thickness = float(ordered[(k - 1) // 2] + ordered[k // 2]) / 2
    else:
        thickness = float(hi - lo)
    xs = np.empty(n, np.float64)
    ys = np.empty(n, np.float64)
    used = 0
    for j in range(n):
        if counts[j] > 0 and counts[j] <= thickness + 1:
            xs[used] = start + j
            ys[used] = sums[j] / counts[j]
            used += 1
    if used >= 3:
        x, y = xs[:used], ys[:used]
        x_mean = x.sum() / used
        y_mean = y.sum() / used
        sxy = 0.0
        sxx = 0.0
        for i in range(used):
            dx = x[i] - x_mean
            sxy += dx * (y[i] - y_mean)
            sxx += dx * dx
        slope = sxy / sxx
        intercept = y_mean - slope * x_mean
        sq = 0.0
        for i in range(used):
            res = y[i] - (intercept + slope * x[i])
            sq += res * res
        wobble = math.sqrt(sq / used)
    else:
        slope, intercept, wobble = 0.0, (lo + hi - 1) / 2, 0.0
    row[INTERCEPT] = intercept
    row[SLOPE] = slope
    row[THICKNESS] = thickness
    row[WOBBLE] = wobble


def _long_bands(m: np.ndarray, length: int, reach: int, thickest: int) -> np.ndarray:
    """The bands of `m` (oriented so the lines run along its rows) that may be straight lines.

    A row qualifies when, with each pixel ORed with the `reach` rows on each side of it (a tilted
    line drifts across rows), it holds a run of ink at least `length` long. Adjacent qualifying
    rows form a band, which is kept if it is at most `thickest` rows tall; its columns span its
    long runs, and its ink is fitted (`_fit`). One float64 row per band (see LO ... WOBBLE)."""
    h, w = m.shape
    # Column prefix counts: row r grown is any ink in rows r-reach .. r+reach.
    prefix = np.zeros((h + 1, w), np.int32)
    for r in range(h):
        for c in range(w):
            prefix[r + 1, c] = prefix[r, c] + (1 if m[r, c] else 0)
    run_rows = []
    run_starts = []
    run_ends = []
    for r in range(h):
        top, bottom = max(0, r - reach), min(h, r + reach + 1)
        c = 0
        while c < w:
            if prefix[bottom, c] - prefix[top, c] > 0:
                s = c
                while c < w and prefix[bottom, c] - prefix[top, c] > 0:
                    c += 1
                if c - s >= length:
                    run_rows.append(r)
                    run_starts.append(s)
                    run_ends.append(c)
            else:
                c += 1
    out = np.zeros((len(run_rows), 8), np.float64)
    found = 0
    i = 0
    while i < len(run_rows):
        j = i
        while j + 1 < len(run_rows) and run_rows[j + 1] - run_rows[j] <= 1:
            j += 1
        lo, hi = run_rows[i], run_rows[j] + 1
        if hi - lo <= thickest:
            start, end = run_starts[i], run_ends[i]
            for k in range(i + 1, j + 1):
                start = min(start, run_starts[k])
                end = max(end, run_ends[k])
            row = out[found]
            row[LO], row[HI], row[START], row[END] = lo, hi, start, end
            _fit(m, lo, hi, start, end, row)
            found += 1
        i = j + 1
    return out[:found]


def _strip(
    intercept: float, slope: float, thickness: float, start: int, end: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """`forms._strip`: first and last-plus-one rows of the line in each of its columns."""
    n = end - start
    first = np.empty(n, np.int64)
    last = np.empty(n, np.int64)
    half = thickness / 2 + 1.0
    for j in range(n):
        centre = intercept + slope * (start + j)
        f = min(max(math.floor(centre - half + 0.5), 0), height)
        e = min(max(math.floor(centre + half + 0.5), 0), height)
        first[j] = f
        last[j] = max(e, f + 1)
    return first, last


def _line_pixels(m: np.ndarray, line: np.ndarray, extent: int, out: np.ndarray) -> None:
    """`forms._line_pixels` into `out` (oriented as `m`): the line's strip and its ticks."""
    h = m.shape[0]
    lo, hi, start, end = int(line[LO]), int(line[HI]), int(line[START]), int(line[END])
    first, last = strip(line[INTERCEPT], line[SLOPE], line[THICKNESS], start, end, h)
    n = end - start
    for j in range(n):
        for r in range(first[j], min(last[j], h)):
            out[r, start + j] = True
    widest, longest = max(3, hi - lo), int(0.4 * extent)
    reach = longest + 3
    run = np.empty(n, np.int64)
    for direction in (-1, 1):
        origin = first - 1 if direction < 0 else last
        for j in range(n):  # how many ink pixels leave the strip in a row, at most `reach`
            k = 0
            while k < reach:
                r = origin[j] + direction * k
                if r < 0 or r >= h or not m[r, start + j]:
                    break
                k += 1
            run[j] = k
        j = 0
        while j < n:
            if run[j] == 0:
                j += 1
                continue
            a = j
            height = 0
            while j < n and run[j] > 0:
                height = max(height, run[j])
                j += 1
            b = j
            width = b - a
            if width > widest or height < 2 * width or height > longest:
                continue
            # A clear ring 2 px wide around the tick's rectangle.
            clear = True
            for x in range(max(0, a - 2), min(n, b + 2)):
                for k in range(height + 2):
                    if k < height and a <= x < b:
                        continue
                    r = origin[x] + direction * k
                    if 0 <= r < h and m[r, start + x]:
                        clear = False
                        break
                if not clear:
                    break
            if not clear:
                continue
            for x in range(max(0, a - 1), min(n, b + 1)):  # one pixel wider: its blurred edges
                for k in range(height + 1):
                    r = origin[x] + direction * k
                    if 0 <= r < h:
                        out[r, start + x] = True


def _stretch_levels(rounded: np.ndarray) -> tuple[int, int]:
    """`normalize._stretch`'s levels of an 8-bit ink image: the strongest level present, and the
    scale (the 90th percentile of the levels above half the strongest)."""
    # Four histograms filled in turn, summed: one would make every pixel wait for the previous
    # pixel's count when neighbours share a level, as paper and strokes mostly do.
    partial = np.zeros((4, 256), np.int64)
    h, w = rounded.shape
    for r in range(h):
        c = 0
        while c + 4 <= w:
            partial[0, rounded[r, c]] += 1
            partial[1, rounded[r, c + 1]] += 1
            partial[2, rounded[r, c + 2]] += 1
            partial[3, rounded[r, c + 3]] += 1
            c += 4
        while c < w:
            partial[0, rounded[r, c]] += 1
            c += 1
    counts = partial.sum(axis=0)
    top = 255
    while top > 0 and counts[top] == 0:
        top -= 1
    first = top // 2 + 1
    total = 0
    for v in range(first, 256):
        total += counts[v]
    target = 0.9 * total
    running = 0
    for v in range(first, 256):
        running += counts[v]
        if running >= target:
            return top, v
    return top, 256


_fit = _compiled(_fit)
long_bands = _compiled(_long_bands)
strip = _compiled(_strip)
line_pixels = _compiled(_line_pixels)
stretch_levels = _compiled(_stretch_levels)
