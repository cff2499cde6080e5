"""The scan path's pixel loops (C, `_loops.c`): each on a case worked out by hand, on every layout
the form-line search passes them (transposed and sliced views), and refusing wrong arrays with an
error instead of reading past them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import one_clear_line
from PIL import Image

from pipeline import defaults
from pipeline.errors import BlankImageError
from pipeline.preprocess import _loops, kernels


@pytest.fixture(params=[True, False], ids=["widest", "sse2"])
def widest(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run a test with the AVX2 loops (where the processor has them) and with the loops every
    x86-64 runs: both must give the same pixels."""
    _loops.use_widest(request.param)
    try:
        yield request.param
    finally:
        _loops.use_widest(True)


def _level_line() -> np.ndarray:
    """A 40x60 mask with a level line two rows thick: rows 10-11, columns 5-54."""
    mask = np.zeros((40, 60), bool)
    mask[10:12, 5:55] = True
    return mask


def test_a_level_line_is_one_band_fitted_exactly() -> None:
    bands = kernels.long_bands(_level_line(), 20, 1, 8)
    assert bands.shape == (1, 8)
    lo, hi, start, end, intercept, slope, thickness, wobble = bands[0]
    assert (lo, hi) == (9, 13)  # the ink's rows and the reach (1) on each side
    assert (start, end) == (5, 55)
    assert (intercept, slope, thickness, wobble) == (10.5, 0.0, 2.0, 0.0)


def test_runs_too_short_or_bands_too_thick_are_not_lines() -> None:
    assert kernels.long_bands(_level_line(), 51, 1, 8).shape == (0, 8)  # the run is 50 long
    assert kernels.long_bands(_level_line(), 20, 1, 3).shape == (0, 8)  # the band is 4 rows
    block = np.zeros((40, 60), bool)
    block[5:30, 5:55] = True
    assert kernels.long_bands(block, 20, 1, 8).shape == (0, 8)


def test_transposed_and_sliced_views_read_as_their_arrays() -> None:
    """Vertical lines are searched in the transposed view, and the mask is a crop of the image."""
    mask = _level_line()
    upright = np.ascontiguousarray(mask.T)
    assert np.array_equal(kernels.long_bands(upright.T, 20, 1, 8), kernels.long_bands(mask, 20, 1, 8))
    framed = np.zeros((50, 80), bool)
    framed[3:43, 7:67] = mask
    view = framed[3:43, 7:67]
    assert not view.flags.c_contiguous
    assert np.array_equal(kernels.long_bands(view, 20, 1, 8), kernels.long_bands(mask, 20, 1, 8))


def test_bands_are_the_same_whatever_the_layout() -> None:
    """A mask's bands do not depend on how it lies in memory: contiguous, a transposed view, a
    crop, or bytes other than 0 and 1 for ink; on widths below, at and past the sixteen
    pixels the window moves by, with bars long and short, thick and thin, level and askew."""
    rng = np.random.default_rng(8)
    for i in range(300):
        h, w = int(rng.integers(3, 60)), int(rng.integers(1, 70))
        mask = rng.random((h, w)) < 0.03
        for _ in range(int(rng.integers(1, 4))):
            top, left = int(rng.integers(h)), int(rng.integers(w))
            mask[top : top + int(rng.integers(1, 4)), left : left + int(rng.integers(1, w + 1))] = True
        length, reach = max(1, int(rng.integers(1, w + 1)) // 2), int(rng.integers(0, 3))
        expected = kernels.long_bands(mask, length, reach, 8)
        framed = np.zeros((h + 4, w + 9), bool)
        framed[2 : 2 + h, 5 : 5 + w] = mask
        inked = np.where(mask, np.uint8(200), np.uint8(0))
        for view in (np.ascontiguousarray(mask.T).T, framed[2 : 2 + h, 5 : 5 + w], inked):
            assert np.array_equal(kernels.long_bands(view, length, reach, 8), expected), i


def test_a_tilted_line_is_fitted_through_its_centres() -> None:
    mask = np.zeros((40, 100), bool)
    for c in range(100):
        r = 10 + c // 25  # one row lower every 25 columns
        mask[r : r + 2, c] = True
    (band,) = kernels.long_bands(mask, 40, 2, 12)
    intercept, slope, wobble = band[kernels.INTERCEPT], band[kernels.SLOPE], band[kernels.WOBBLE]
    assert slope == pytest.approx(np.polyfit(np.arange(100), 10.5 + np.arange(100) // 25, 1)[0])
    assert intercept == pytest.approx(10.5 + 1.5 - slope * 49.5)
    assert 0.2 < wobble < 0.5  # the staircase about the straight fit


def test_strip_covers_the_line_and_a_pixel_of_blur() -> None:
    first, last = kernels.strip(10.5, 0.0, 2.0, 5, 55, 40)
    assert first.tolist() == [9] * 50 and last.tolist() == [13] * 50
    first, last = kernels.strip(0.5, 0.0, 2.0, 0, 3, 40)  # clipped at the top edge
    assert first.tolist() == [0] * 3 and last.tolist() == [3] * 3


def test_line_pixels_take_the_strip_and_a_tick_but_not_a_stem() -> None:
    mask = _level_line()
    mask[4:10, 20] = True  # a comb's tick: 6 px standing on the line, clear around
    mask[12:38, 40] = True  # a stroke leaving it: 26 px, longer than 40% of the extent
    (band,) = kernels.long_bands(mask, 20, 1, 8)
    out = np.zeros_like(mask)
    kernels.line_pixels(mask, band, 50, out)
    assert out[10:12, 5:55].all()  # the strip (the tick's column tilts the fit a little)
    assert out[3:8, 19:22].all()  # the tick, a pixel longer and wider each side: its blur
    assert not out[13:, :].any()  # the stem is the digit's
    assert not out[:3].any() and not out[3:8, :19].any() and not out[3:8, 22:].any()


def test_stretch_levels_read_the_strong_ink() -> None:
    ink = np.zeros((20, 30), np.uint8)
    ink.flat[:100] = 200
    ink.flat[100:110] = 250
    ink.flat[110:200] = 100  # under half the strongest level: not counted
    assert kernels.stretch_levels(ink) == (250, 200)  # 100 of 110 strong pixels are at 200
    assert kernels.stretch_levels(np.zeros((5, 7), np.uint8)) == (0, 1)
    assert kernels.stretch_levels(np.ascontiguousarray(ink.T).T) == (250, 200)


def _levels_by_numpy(ink: np.ndarray) -> tuple[int, int]:
    """`stretch_levels` from a full histogram: the rule it implements, counted the slow way."""
    counts = np.bincount(ink.ravel(), minlength=256)
    top = int(np.flatnonzero(counts).max()) if counts.any() else 0
    first = top // 2 + 1
    running, target = 0, 0.9 * float(counts[first:].sum())
    for level in range(first, 256):
        running += int(counts[level])
        if running >= target:
            return top, level
    return top, 256


def test_stretch_levels_count_only_the_strong_ink_the_same() -> None:
    """It counts only pixels above half the strongest, skipping 16-pixel blocks without any: the
    answer must be the full histogram's on sparse, faint, dense and empty ink, any width (blocks
    and their remainders), transposed and strided views."""
    rng = np.random.default_rng(5)
    for i in range(1200):
        h, w = (int(n) for n in rng.integers(1, 90, 2))
        ink = rng.integers(0, 256, (h, w), dtype=np.uint8)
        if i % 4 == 1:  # a few strokes on noise
            ink = np.where(rng.random((h, w)) < 0.04, ink, ink // 16).astype(np.uint8)
        elif i % 4 == 2:  # faint: every level under some top
            ink = rng.integers(0, int(rng.integers(1, 256)), (h, w), dtype=np.uint8)
        elif i % 4 == 3:
            ink = np.zeros((h, w), np.uint8)
        for view in (ink, ink.T, ink[:, ::2], ink[::-1, ::-1]):
            assert kernels.stretch_levels(view) == _levels_by_numpy(view), (i, view.shape)


def _opened_box_by_numpy(mask: np.ndarray, full: tuple[int, int, int, int]) -> tuple[tuple[int, ...], bool]:
    """`kernels.opened_box` as `normalize._ink_box` computed it step by step: OpenCV's 3x3
    erosion of the ink's box and two pixels around it, the eroded ink's box grown by a pixel,
    then grown over the ink it touches, round by round."""
    import cv2

    from pipeline.preprocess.masks import bbox

    h, w = mask.shape
    t, b, l_, r = max(0, full[0] - 2), min(h, full[1] + 2), max(0, full[2] - 2), min(w, full[3] + 2)
    window = np.ascontiguousarray(mask[t:b, l_:r]).view(np.uint8)
    eroded = bbox(cv2.erode(window, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE))
    if eroded is None:
        return full, True
    top, bottom = t + max(0, eroded[0] - 1), t + min(b - t, eroded[1] + 1)
    left, right = l_ + max(0, eroded[2] - 1), l_ + min(r - l_, eroded[3] + 1)
    for _ in range(8):
        pad = 2 + max(bottom - top, right - left) // 10
        t, b, l_, r = max(0, top - pad), min(h, bottom + pad), max(0, left - pad), min(w, right + pad)
        inner = bbox(mask[t:b, l_:r])
        assert inner is not None
        grown = (t + inner[0], t + inner[1], l_ + inner[2], l_ + inner[3])
        if grown == (top, bottom, left, right):
            break
        top, bottom, left, right = grown
    return (top, bottom, left, right), False


def test_opened_box_is_the_step_by_step_opening_and_growth() -> None:
    """The digit's box on a large page: the same box and thin flag as the opening and growth done
    step by step with OpenCV and numpy, on digits with specks around them, strokes under 3 px
    (nothing survives the opening), ink at the page's edges, transposed and strided masks."""
    from pipeline.preprocess.masks import bbox

    rng = np.random.default_rng(23)
    for i in range(600):
        h, w = (int(n) for n in rng.integers(8, 200, 2))
        mask = rng.random((h, w)) < (0.001, 0.01, 0.05)[i % 3]  # specks
        top, left = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        bottom, right = int(rng.integers(top + 1, h + 1)), int(rng.integers(left + 1, w + 1))
        stroke = int(rng.integers(1, 6))  # thinner than the opening, or not
        mask[top:bottom, left : min(w, left + stroke)] = True
        mask[top : min(h, top + stroke), left:right] = True
        for view in (mask, np.ascontiguousarray(mask.T).T, np.pad(mask, 3)[3:-3, 3:-3]):
            full = bbox(view)
            assert full is not None
            assert kernels.opened_box(view, full) == _opened_box_by_numpy(view, full), i
    with pytest.raises(ValueError):
        kernels.opened_box(np.ones((5, 5), bool), (0, 6, 0, 5))


def test_profile_is_numpys_count_of_the_ink() -> None:
    """A digit's profile across the lines (`forms._ends` reads it for every line): the ink above
    each row, its height, and the columns where 1% and 99% of the ink is reached, as numpy's
    cumulative sums, share and searches give them, on sparse and dense masks, contiguous,
    transposed, flipped and strided."""

    def by_numpy(d: np.ndarray) -> tuple[np.ndarray, int, int, int, int]:
        per_row, per_col = d.sum(axis=1), d.sum(axis=0)
        rows, cols = np.flatnonzero(per_row), np.flatnonzero(per_col)
        share = np.cumsum(per_col[cols]) / per_col[cols].sum()
        first, last = int(cols[np.searchsorted(share, 0.01)]), int(cols[np.searchsorted(share, 0.99)]) + 1
        above = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
        return above, int(rows[-1] - rows[0] + 1), first, last, int(per_col.sum())

    rng = np.random.default_rng(3)
    for i in range(800):
        h, w = (int(n) for n in rng.integers(1, 120, 2))
        mask = rng.random((h, w)) < (0.002, 0.02, 0.2, 0.7)[i % 4]
        mask[int(rng.integers(h)), int(rng.integers(w))] = True
        for view in (mask, mask.T, mask[::-1, ::-1], np.pad(mask, 2)[2:-2:2, 2:-2]):
            if not view.any():
                continue
            got, expected = kernels.profile(view), by_numpy(view)
            assert np.array_equal(got[0], expected[0]), i
            assert got[1:] == expected[1:], (i, got[1:], expected[1:])
    with pytest.raises(ValueError, match="without ink"):
        kernels.profile(np.zeros((4, 5), bool))


def test_ink_extents_are_numpys() -> None:
    """`forms._may_accept`'s bounds on the ink's extent down the rows and along the columns (the
    first position by which `enough` ink is reached, the last with `enough` after it, plus two;
    -1 for none), as numpy's counts and cumulative sums give them, on sparse and dense masks,
    contiguous, transposed, flipped and strided."""
    rng = np.random.default_rng(4)

    def bounds(along: np.ndarray, enough: float) -> tuple[int, int]:
        running = np.cumsum(along)
        reached, beyond = np.flatnonzero(running >= enough), np.flatnonzero(running[-1] - running >= enough)
        return (int(reached[0]) if len(reached) else -1), (int(beyond[-1]) + 2 if len(beyond) else -1)

    for i in range(600):
        h, w = (int(n) for n in rng.integers(1, 90, 2))
        mask = rng.random((h, w)) < (0.002, 0.03, 0.3, 0.8)[i % 4]
        for view in (mask, mask.T, mask[::-1, ::-1], np.pad(mask, 2)[2:-2:2, 2:-2]):
            per_row, per_col = np.count_nonzero(view, axis=1), np.count_nonzero(view, axis=0)
            enough = 0.01 * int(view.sum()) + float(rng.integers(0, 3))
            down, along = kernels.ink_extents(view, enough)
            assert down == bounds(per_row, enough) and along == bounds(per_col, enough), i


def test_erosion_counts_what_opencvs_erosion_leaves() -> None:
    """The stroke width's counts and the 3x3 opening's box: the ink above the threshold, what
    OpenCV's erosion (edges repeated) leaves of it and that box, on 8-bit images and bool masks,
    transposed and strided; and the opening's box (the dilation of that) is that box grown by a
    pixel within the image."""
    import cv2

    from pipeline.preprocess.masks import bbox

    square = np.ones((3, 3), np.uint8)
    rng = np.random.default_rng(7)
    for i in range(600):
        h, w = (int(n) for n in rng.integers(1, 50, 2))
        image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        if i % 3 == 0:  # mostly ink: the erosion leaves some
            image = ((rng.random((h, w)) < 0.8) * 255).astype(np.uint8)
        threshold = int(rng.integers(0, 255))
        for view in (image, image.T, image[::-1, ::-1]):
            ink = (view > threshold).astype(np.uint8)
            eroded = cv2.erode(ink, square, borderType=cv2.BORDER_REPLICATE)
            expected = (int(ink.sum()), int(eroded.sum()), bbox(eroded))
            assert kernels.erosion(view, threshold) == expected, i
            assert kernels.erosion(view > threshold) == expected, i
            opened = bbox(cv2.dilate(eroded, square, borderType=cv2.BORDER_REPLICATE))
            box, (height, width) = expected[2], view.shape
            grown = None if box is None else (
                max(0, box[0] - 1), min(height, box[1] + 1), max(0, box[2] - 1), min(width, box[3] + 1)
            )  # fmt: skip
            assert opened == grown, i


def test_absorbed_ink_is_opencvs_divide_and_stretch(widest: bool) -> None:
    """The absorbed ink must be the bytes OpenCV's divide and `_stretch`'s two convertScaleAbs
    made: for every (pixel, paper) pair of 8-bit levels, and on random pages (faint to dark ink,
    widths below, at and beyond the 16 pixels a vector step takes), blank pages refused. Both row
    loops: the widest this processor runs (AVX2 here) and the SSE2 one every x86-64 has."""
    import cv2

    from pipeline.preprocess.normalize import _stretch

    def by_opencv(gray: np.ndarray, paper: np.ndarray) -> np.ndarray | None:
        ink = cv2.subtract(paper, gray)
        values = cv2.divide(ink, cv2.max(paper, np.ones((1, 1), np.uint8)), scale=255.0, dtype=cv2.CV_32F)
        try:
            return _stretch(values)
        except BlankImageError:
            return None

    def absorbed(gray: np.ndarray, paper: np.ndarray, min_top: int) -> np.ndarray | None:
        """The ink (the paper at the page's size: enlarged to itself, unchanged), its mask and box
        checked against `locate`'s of it."""
        found = kernels.absorbed_ink(gray, paper, min_top, 30)
        if found is None:
            return None
        ink, mask, box = found
        expected_mask, expected_box = kernels.locate(ink, 30)
        assert np.array_equal(mask, expected_mask) and box == expected_box
        return ink

    levels = np.arange(256, dtype=np.uint8)
    gray, paper = np.repeat(levels, 256).reshape(256, 256), np.tile(levels, 256).reshape(256, 256)
    assert np.array_equal(absorbed(gray, paper, 0), by_opencv(gray, paper))
    rng = np.random.default_rng(11)
    scales = set()
    for i in range(1500):
        h, w = (int(n) for n in rng.integers(1, 120, 2))
        paper = rng.integers(100, 256, (h, w), dtype=np.uint8)
        strokes = rng.integers(0, int(rng.integers(1, 256)), (h, w)) * (rng.random((h, w)) < 0.3)
        gray = np.clip(paper.astype(int) - strokes, 0, 255).astype(np.uint8)
        if i % 5 == 0:  # anything: paper darker than the pixel, paper 0
            gray, paper = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
        expected = by_opencv(gray, paper)
        got = absorbed(gray, paper, defaults.BLANK_MAX_INK)
        assert (got is None) == (expected is None), i
        assert got is None or np.array_equal(got, expected), i
        empty = np.empty((h, w), np.uint8)
        scales.add(_loops.absorbed_ink(gray, paper, 0, empty, 30, np.empty((h, w), bool))[1])
    assert len(scales) > 200  # the stretch's scale, and so its rounding, took most of its values
    # Larger than the float ink kept between the passes (4 megapixels): divided again instead.
    paper = np.full((2100, 2100), 230, np.uint8)
    gray = paper - (rng.random(paper.shape) < 0.1).astype(np.uint8) * np.uint8(150)
    assert np.array_equal(absorbed(gray, paper, 0), by_opencv(gray, paper))


def _enlarged_by_numpy(level: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`kernels.enlarge` written out: OpenCV's INTER_LINEAR source positions and 11-bit weights
    (float32 as OpenCV computes them), both passes in exact integers, one rounding."""

    def weights(size: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        at = ((np.arange(out) + 0.5) * (1.0 / (out / size)) - 0.5).astype(np.float32)
        lo = np.floor(at).astype(np.int64)
        frac = (at - lo.astype(np.float32)).astype(np.float32)
        frac[(lo < 0) | (lo >= size - 1)] = 0
        lo = np.clip(lo, 0, size - 1)
        a0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int64)
        return lo, np.minimum(lo + 1, size - 1), a0, np.rint(frac * np.float32(2048)).astype(np.int64)

    x0, x1, a0, a1 = weights(level.shape[1], shape[1])
    y0, y1, b0, b1 = weights(level.shape[0], shape[0])
    pixels = level.astype(np.int64)
    across = pixels[:, x0] * a0 + pixels[:, x1] * a1
    return ((across[y0] * b0[:, None] + across[y1] * b1[:, None] + (1 << 21)) >> 22).astype(np.uint8)


def test_enlarge_is_the_exact_bilinear_and_near_opencvs(widest: bool) -> None:
    """The paper level's enlargement must be the integer bilinear written out in numpy, byte for
    byte, on any sizes (enlarging, shrinking a little, one pixel, sizes off the 8- and 32-pixel
    vector steps, a strided view), and within one level of OpenCV's INTER_LINEAR, which it
    stands in for (OpenCV rounds its vector and scalar paths differently)."""
    import cv2

    rng = np.random.default_rng(12)
    for i in range(400):
        sh, sw = (int(n) for n in rng.integers(1, 80, 2))
        h, w = (int(n) for n in rng.integers(1, 700, 2))
        level = rng.integers(0, 256, (sh, sw), dtype=np.uint8)
        if i % 4 == 0:  # hard edges: the largest steps between neighbours
            level = (level > 128).astype(np.uint8) * 255
        if i % 7 == 0:
            level = rng.integers(0, 256, (2 * sh, sw + 3), dtype=np.uint8)[::2, 3:]
        got = kernels.enlarge(level, (h, w))
        assert np.array_equal(got, _enlarged_by_numpy(level, (h, w))), i
        opencv = cv2.resize(np.ascontiguousarray(level), (w, h), interpolation=cv2.INTER_LINEAR)
        assert np.abs(opencv.astype(int) - got).max() <= 1, i
    level = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    assert np.array_equal(kernels.enlarge(level, level.shape), level)  # its own size: itself


def test_absorbed_ink_enlarges_the_level_as_enlarge_does(widest: bool) -> None:
    """Given the paper at a small size, the ink must be the one made from the level `enlarge`
    gives the page's size (OpenCV's divide and stretch of it), blanks refused the same way."""
    import cv2

    from pipeline.preprocess.normalize import _stretch

    rng = np.random.default_rng(13)
    for i in range(300):
        h, w = (int(n) for n in rng.integers(1, 300, 2))
        level = rng.integers(100, 256, (int(rng.integers(1, 65)), int(rng.integers(1, 65))), dtype=np.uint8)
        paper = kernels.enlarge(level, (h, w))
        strokes = rng.integers(0, int(rng.integers(1, 256)), (h, w)) * (rng.random((h, w)) < 0.3)
        gray = np.clip(paper.astype(int) - strokes, 0, 255).astype(np.uint8)
        values = cv2.divide(
            cv2.subtract(paper, gray),
            cv2.max(paper, np.ones((1, 1), np.uint8)),
            scale=255.0,
            dtype=cv2.CV_32F,
        )
        try:
            expected: np.ndarray | None = _stretch(values)
        except BlankImageError:
            expected = None
        found = kernels.absorbed_ink(gray, level, defaults.BLANK_MAX_INK, 30)
        assert (found is None) == (expected is None), i
        assert found is None or np.array_equal(found[0], expected), i


@pytest.mark.parametrize("light_paper", [True, False])
def test_paper_level_is_pils_three_steps(light_paper: bool, widest: bool) -> None:
    """The small paper level must be PIL's box reduction, MaxFilter (MinFilter on dark paper) and
    GaussianBlur of the page, to the pixel: on noise, on a page with strokes, on a strided view, on
    sizes smaller than the filter, and at the level's own size."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(14)
    pages = [
        rng.integers(0, 256, (int(h), int(w)), dtype=np.uint8) for h, w in rng.integers(56, 500, (20, 2))
    ]
    pages.append(rng.integers(0, 256, (300, 401), dtype=np.uint8)[::3, 1:])
    pages.append(np.where(rng.random((150, 220)) < 0.05, 20, 230).astype(np.uint8))
    for page in pages:
        for size in ((64, max(1, round(64 * page.shape[0] / page.shape[1]))), (5, 3), page.shape[::-1]):
            rank = ImageFilter.MaxFilter(9) if light_paper else ImageFilter.MinFilter(9)
            pil = Image.fromarray(np.ascontiguousarray(page)).resize(size, Image.Resampling.BOX)
            expected = np.asarray(pil.filter(rank).filter(ImageFilter.GaussianBlur(4)))
            assert np.array_equal(kernels.paper_level(page, size, light_paper, 9, 4.0), expected), size


def _fit_by_pil(digit: np.ndarray) -> np.ndarray | None:
    """`kernels.fit_and_centre` as the scan path computed it before, step by step (PIL's resizes
    through `kernels.resize`, OpenCV's dilation and moments, numpy's shift): the reference."""
    import cv2

    from pipeline.preprocess.masks import max_filter, stroke_width

    h, w = digit.shape
    scale = 80 / max(h, w)
    mode = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    mid = kernels.resize(digit, (max(1, round(w * scale)), max(1, round(h * scale))), mode)
    width = stroke_width(mid > max(int(mid.max()), 1) // 2)
    if 0 < width < 4.8:
        mid = max_filter(mid, max(3, 2 * round((7.3 - width) / 2) + 1))
    factor = 20 / max(h, w)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    out = np.zeros((28, 28), np.uint8)
    top, left = (28 - nh) // 2, (28 - nw) // 2
    out[top : top + nh, left : left + nw] = kernels.resize(mid, (nw, nh), Image.Resampling.LANCZOS)
    moments = cv2.moments(out)
    if moments["m00"] <= 0:
        return None
    dy, dx = round(14 - moments["m01"] / moments["m00"]), round(14 - moments["m10"] / moments["m00"])
    shifted = np.zeros_like(out)
    shifted[max(0, dy) : 28 - max(0, -dy), max(0, dx) : 28 - max(0, -dx)] = out[
        max(0, -dy) : 28 - max(0, dy), max(0, -dx) : 28 - max(0, dx)
    ]
    return shifted


def test_fit_and_centre_is_the_step_by_step_fit(widest: bool) -> None:
    """The digit's last steps in one call must give the 28x28 the separate steps gave: crops
    smaller and larger than the 80-pixel check (bicubic up, Lanczos down), thin strokes (the
    dilation), thick ones, a digit at an edge (the move clipped), a speck, a blank, views."""
    rng = np.random.default_rng(21)
    cases = [np.zeros((30, 20), np.uint8), np.full((5, 3), 255, np.uint8)]
    for i in range(400):
        h, w = (int(n) for n in rng.integers(3, 260, 2))
        crop = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 6))):  # strokes: lines of some width and strength
            y0, y1 = (int(n) for n in rng.integers(0, h, 2))
            x0, x1 = (int(n) for n in rng.integers(0, w, 2))
            thick = int(rng.integers(1, 1 + max(1, min(h, w) // (4 if i % 2 else 30))))
            ys = np.linspace(y0, y1, 200).round().astype(int)
            xs = np.linspace(x0, x1, 200).round().astype(int)
            level, half = int(rng.integers(60, 256)), thick // 2
            for y, x in zip(ys, xs, strict=True):
                crop[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1] = level
        if i % 7 == 0:
            crop = (rng.random((h, w)) < 0.05).astype(np.uint8) * int(rng.integers(1, 256))
        cases.append(crop)
    page = np.zeros((120, 140), np.uint8)
    page[30:90, 50:80] = 200
    cases += [page[20:100, 40:90], page.T[40:90, 20:100], page[::-1, ::-1][20:100, 40:90]]
    for i, crop in enumerate(cases):
        got = kernels.fit_and_centre(crop, 20, 28, 80, 4.8, 7.3)
        expected = _fit_by_pil(np.ascontiguousarray(crop))
        assert (got is None) == (expected is None), i
        assert got is None or np.array_equal(got, expected), (i, crop.shape)


def test_bbox_and_locate_find_opencvs_box() -> None:
    """The ink's box (and its mask, `values > level`) as OpenCV's boundingRect gives it: empty
    masks, one pixel at each edge and corner, widths below, at and beyond the 16 bytes a compare
    takes, transposed and strided views."""
    import cv2

    def by_opencv(mask: np.ndarray) -> tuple[int, int, int, int] | None:
        left, top, width, height = cv2.boundingRect(np.ascontiguousarray(mask).astype(np.uint8))
        return None if width == 0 else (top, top + height, left, left + width)

    rng = np.random.default_rng(17)
    masks = [np.zeros((5, 40), bool), np.zeros((1, 1), bool), np.ones((1, 1), bool)]
    for h, w in [(3, 16), (4, 17), (7, 33), (40, 1), (1, 40)]:
        for y, x in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)]:
            one = np.zeros((h, w), bool)
            one[y, x] = True
            masks.append(one)
    for _ in range(500):
        h, w = (int(n) for n in rng.integers(1, 70, 2))
        masks.append(rng.random((h, w)) < float(rng.choice([0.0005, 0.01, 0.3])))
    for i, mask in enumerate(masks):
        for view in (mask, mask.T, mask[::-1, ::2]):
            assert kernels.bbox(view) == by_opencv(view), i
            values = (view * rng.integers(40, 256)).astype(np.uint8) + rng.integers(
                0, 20, view.shape, dtype=np.uint8
            )
            found, box = kernels.locate(values, 30)
            assert np.array_equal(found, values > 30) and box == by_opencv(values > 30), i
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for level in (-1, 0, 1, 127, 254, 255, 256):  # the byte compare at its ends
        found, box = kernels.locate(levels, level)
        assert np.array_equal(found, levels.astype(int) > level) and box == by_opencv(found), level


def _jpeg_frame_by_python(data: bytes) -> tuple[int, int, bool] | None:
    """The marker walk as decode made it in Python before `kernels.jpeg_frame`: the reference."""
    import struct

    at, size = 2, len(data)
    frame: tuple[int, int] | None = None
    exif = False
    while at + 4 <= size:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:
            at += 1
            continue
        if marker in {0x01, *range(0xD0, 0xD8)}:
            at += 2
            continue
        if marker in (0xD8, 0xD9):
            return None
        (length,) = struct.unpack_from(">H", data, at + 2)
        if length < 2 or at + 2 + length > size:
            return None
        if marker == 0xDA:
            return None if frame is None else (*frame, exif)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in (0xC0, 0xC1, 0xC2) or frame is not None or length < 8:
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", data, at + 4)
            if precision != 8 or components not in (1, 3) or not width or not height:
                return None
            frame = (width, height)
        elif marker == 0xE1 and data[at + 4 : at + 10] == b"Exif\x00\x00":
            exif = True
        at += 2 + length
    return None


def test_jpeg_frame_reads_the_markers_as_the_python_walk_did() -> None:
    """Every JPEG the short way may take, and every way one can be odd: gray, colour, progressive,
    CMYK, with EXIF, each cut at every byte of its header, and with random bytes changed there."""
    import io

    rng = np.random.default_rng(8)
    files = []
    for mode, options in [("L", {}), ("RGB", {}), ("L", {"progressive": True}), ("CMYK", {})]:
        img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode)
        for exif in (False, True):
            buffer = io.BytesIO()
            tags = Image.Exif()
            tags[0x0112] = 6  # rotated: the short way leaves it to PIL, but reads that it is there
            img.save(buffer, "JPEG", **options, **({"exif": tags} if exif else {}))
            files.append(buffer.getvalue())
    cases = []
    for data in files:
        header = data.index(b"\xff\xda") + 4
        cases += [data, b"", data[:2], data[:3]]
        cases += [data[:cut] for cut in range(4, header)]
        for _ in range(200):
            changed = bytearray(data[:header])
            for at in rng.integers(2, header, int(rng.integers(1, 4))):
                changed[int(at)] = int(rng.integers(0, 256))
            cases.append(bytes(changed))
    for i, data in enumerate(cases):
        assert kernels.jpeg_frame(data) == _jpeg_frame_by_python(data), i


def _png_plain_by_python(data: bytes) -> tuple[int, int] | None:
    """decode._png_gray's test as it was written in Python: the reference."""
    import struct

    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    if depth != 8 or colour != 0:
        return None
    at = 8
    while True:
        if at + 8 > len(data):
            return None
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind in (b"tRNS", b"PLTE", b"eXIf"):
            return None
        if kind == b"IEND":
            return width, height
        at += 12 + length


def test_png_plain_gray_reads_the_chunks_as_the_python_walk_did() -> None:
    """Gray, gray with transparency, palette, colour, 16-bit and 1-bit PNGs, one with text chunks,
    each cut at every byte and with random bytes changed in its chunk headers."""
    import io

    from PIL import PngImagePlugin

    rng = np.random.default_rng(9)
    pixels = rng.integers(0, 256, (28, 31), dtype=np.uint8)
    files = []
    text = PngImagePlugin.PngInfo()
    text.add_text("note", "a scan")
    for img, options in [
        (Image.fromarray(pixels), {}),
        (Image.fromarray(pixels), {"transparency": 0}),
        (Image.fromarray(pixels).convert("P"), {}),
        (Image.fromarray(pixels).convert("RGB"), {}),
        (Image.fromarray(pixels.astype(np.uint16) * 200), {}),
        (Image.fromarray(pixels > 127), {}),
        (Image.fromarray(pixels), {"pnginfo": text}),
    ]:
        buffer = io.BytesIO()
        img.save(buffer, "PNG", **options)
        files.append(buffer.getvalue())
    cases = []
    for data in files:
        cases += [data[:cut] for cut in range(len(data) + 1)]
        for _ in range(100):
            changed = bytearray(data)
            for at in rng.integers(8, min(len(data), 80), int(rng.integers(1, 3))):
                changed[int(at)] = int(rng.integers(0, 256))
            cases.append(bytes(changed))
    for i, data in enumerate(cases):
        assert kernels.png_plain_gray(data) == _png_plain_by_python(data), i
    assert kernels.png_plain_gray(files[0]) == (31, 28)


def _read_only(shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    out.setflags(write=False)
    return out


@pytest.mark.parametrize(
    "call",
    [
        lambda: kernels.long_bands(np.zeros((4, 5, 6), bool), 3, 1, 4),  # not 2-D
        lambda: kernels.long_bands(np.zeros((4, 5), np.int32), 3, 1, 4),  # not one byte a pixel
        lambda: kernels.stretch_levels(np.zeros((4, 5), np.float32)),
        lambda: kernels.line_pixels(np.zeros((4, 5), bool), np.zeros(8), 10, np.zeros((5, 4), bool)),
        lambda: kernels.line_pixels(np.zeros((4, 5), bool), np.zeros(3), 10, np.zeros((4, 5), bool)),
        lambda: kernels.line_pixels(np.zeros((4, 5), bool), np.zeros(8), 10, _read_only((4, 5))),
        lambda: kernels.gaussian_blur(np.zeros((4, 5), np.uint8), -1.0),
        lambda: kernels.resize(np.zeros((4, 5), np.uint8), (0, 3), 1),  # no pixels to make
        lambda: kernels.resize(np.zeros((4, 5), np.uint8), (3, 3), 2),  # BILINEAR: not a scan's
        lambda: _loops.resize(np.zeros((4, 5), np.uint8), 3, 3, 1, np.zeros((4, 4), np.uint8)),
        lambda: _loops.gaussian_blur(np.zeros((4, 5), np.uint8), 4.0, np.zeros((5, 4), np.uint8)),
        lambda: kernels.enlarge(np.zeros((0, 5), np.uint8), (4, 4)),  # nothing to enlarge
        lambda: kernels.enlarge(np.zeros((4, 5), np.uint8), (0, 4)),
        lambda: kernels.paper_level(np.zeros((4, 5), np.uint8), (2, 2), True, 8, 4.0),  # an even rank
        lambda: kernels.paper_level(np.zeros((4, 5), np.uint8), (0, 2), True, 9, 4.0),
        lambda: kernels.paper_level(np.zeros((4, 5), np.uint8), (2, 2), True, 9, -1.0),
        lambda: kernels.absorbed_ink(
            np.zeros((4, 5), np.uint8), np.zeros((0, 2), np.uint8), 10, 30
        ),  # no level
        lambda: kernels.absorbed_ink(np.zeros((4, 5), np.uint8)[:, ::2], np.zeros((2, 2), np.uint8), 10, 30),
        lambda: _loops.absorbed_ink(  # the mask's shape is not the page's
            np.zeros((4, 5), np.uint8),
            np.zeros((2, 2), np.uint8),
            10,
            np.zeros((4, 5), np.uint8),
            30,
            np.zeros((5, 4), bool),
        ),
        lambda: _loops.digit_evidence(  # 28 rows are not stacks of 5
            np.zeros((28, 28), np.uint8), 5, 64, 0.2, 0.25, np.zeros((5, 5), np.int64), np.zeros(5, bool)
        ),
        lambda: _loops.digit_evidence(  # counts not int64
            np.zeros((28, 28), np.uint8), 28, 64, 0.2, 0.25, np.zeros((1, 5), np.int32), np.zeros(1, bool)
        ),
    ],
)
def test_wrong_arrays_are_refused(call: object) -> None:
    with pytest.raises((ValueError, BufferError)):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("radius", [0.0, 0.5, 1.0, 4.0, 7.3, 40.0])
def test_gaussian_blur_gives_pils_pixels(radius: float, widest: bool) -> None:
    """The paper level's blur must be PIL's to the level: on noise, on sparse ink (the edges and
    the fixed-point rounding matter there), on images narrower than the box, on a strided view."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(int(radius * 10))
    images = [
        rng.integers(0, 256, (64, 48), dtype=np.uint8),
        (rng.random((37, 64)) < 0.1).astype(np.uint8) * 255,
        rng.integers(0, 256, (3, 70), dtype=np.uint8),
        rng.integers(0, 256, (1, 1), dtype=np.uint8),
        rng.integers(0, 256, (50, 60), dtype=np.uint8)[::2, 5:],
    ]
    for image in images:
        expected = np.asarray(
            Image.fromarray(np.ascontiguousarray(image)).filter(ImageFilter.GaussianBlur(radius))
        )
        assert np.array_equal(kernels.gaussian_blur(image, radius), expected)


def test_frame_counts_the_border_as_normalize_cuts_it() -> None:
    from pipeline.preprocess.normalize import _border

    rng = np.random.default_rng(7)
    for shape in [(28, 28), (1, 1), (19, 45), (40, 41), (250, 180), (3, 600)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        for view in (image, np.ascontiguousarray(image.T).T):
            border = _border(view)
            expected = int(border.sum(dtype=np.int64)), int(np.count_nonzero(border > 127)), border.size
            assert kernels.frame(view) == expected


def test_resize_weights_survive_their_cache_filling_up() -> None:
    """Tall images shrunk to 40 rows have wide Lanczos weights (900 taps an output row): sixty
    of them fill the kept weights past their bound, which empties the table mid-resize while the
    other axis's weights are in use. Every result must still be PIL's."""
    from PIL import Image

    rng = np.random.default_rng(21)
    for i in range(70):
        image = rng.integers(0, 256, (6000 + 7 * i, 5), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((3, 40), Image.Resampling.LANCZOS))
        assert np.array_equal(kernels.resize(image, (3, 40), Image.Resampling.LANCZOS), expected), i


@pytest.mark.parametrize("resample", ["BOX", "BICUBIC", "LANCZOS"])
def test_resize_gives_pils_pixels(resample: str, widest: bool) -> None:
    """Scans are resized three times (the paper level, the 80-pixel stroke check, the 20-pixel
    box): the pixels must be PIL's to the level, passes in PIL's order included (vertical first
    when the height shrinks by more than twice what the width does: 200x90 -> 40x80 is, 200x150
    -> 90x40 is not), whether the image is contiguous, a transposed copy, a crop (read in place,
    rows further apart than its width) or upside down (rows at a negative stride)."""
    from PIL import Image

    mode = Image.Resampling[resample]
    rng = np.random.default_rng(len(resample))
    sizes = [((200, 90), (80, 40)), ((200, 150), (40, 90)), ((250, 248), (64, 64)), ((140, 100), (57, 80))]
    sizes += [
        ((60, 40), (53, 80)),
        ((80, 57), (14, 20)),
        ((31, 77), (31, 20)),
        ((31, 77), (90, 77)),
        ((1, 9), (3, 2)),
    ]
    for (h, w), (width, height) in sizes:
        for image in (
            rng.integers(0, 256, (h, w), dtype=np.uint8),
            (rng.random((h, w)) < 0.2).astype(np.uint8) * 255,
        ):
            page = np.zeros((h + 5, w + 9), np.uint8)  # a crop of a larger image: rows further apart
            page[2 : 2 + h, 3 : 3 + w] = image
            crop = page[2 : 2 + h, 3 : 3 + w]
            for view in (image, np.ascontiguousarray(image.T).T, crop, np.flipud(np.flipud(image).copy())):
                expected = np.asarray(
                    Image.fromarray(np.ascontiguousarray(view)).resize((width, height), mode)
                )
                assert np.array_equal(kernels.resize(view, (width, height), mode), expected), (
                    h,
                    w,
                    width,
                    height,
                )
    image = rng.integers(0, 256, (90, 200), dtype=np.uint8)
    into = np.zeros((64, 40), np.uint8).T  # an output whose pixels are not contiguous in its rows
    _loops.resize(image, 64, 40, int(mode), into)
    assert np.array_equal(into, np.asarray(Image.fromarray(image).resize((64, 40), mode)))
    for size in [(4, 5), (5, 4), (64, 64), (200, 90), (90, 200)]:  # the weights kept from earlier calls
        image = rng.integers(0, 256, (90, 200), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize(size, mode))
        assert np.array_equal(kernels.resize(image, size, mode), expected)


def test_an_unbuilt_checkout_says_so_in_one_line(tmp_path: Path) -> None:
    """Run from a checkout nobody installed, nothing compiled `_loops.c`: the command says how to
    build it, in one line, instead of a traceback about a circular import."""
    Image.fromarray(np.full((60, 60), 255, np.uint8)).save(tmp_path / "scan.png")
    code = (
        "import sys; sys.modules['pipeline.preprocess._loops'] = None\n"  # as if never built
        "from pipeline.cli import main\n"
        "sys.argv = ['pipeline', 'classify', sys.argv[1], '--out', sys.argv[2]]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(tmp_path / "out.csv")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    one_clear_line(result, "make setup")
    assert not (tmp_path / "out.csv").exists()


def _evidence_by_numpy_and_opencv(digits: np.ndarray, ink: int, share: float, overlap: float) -> tuple:
    """What `review` computed before `kernels.digit_evidence`: numpy's counts, and OpenCV's
    labelling of the digits stacked with an empty row between each two."""
    import cv2

    n, h, w = digits.shape
    mask = digits > ink
    area = np.count_nonzero(mask, axis=(1, 2))
    changes = np.count_nonzero(mask[:, :, 1:] != mask[:, :, :-1], axis=(1, 2)) + np.count_nonzero(
        mask[:, 1:] != mask[:, :-1], axis=(1, 2)
    )
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    height = np.where(area > 0, h - rows.argmax(axis=1) - rows[:, ::-1].argmax(axis=1), 0)
    width = np.where(area > 0, w - cols.argmax(axis=1) - cols[:, ::-1].argmax(axis=1), 0)
    ink_sum = (digits * mask).sum(axis=(1, 2), dtype=np.int64)
    stacked = np.zeros((n, h + 1, w), np.uint8)
    stacked[:, :h] = mask
    _, _, stats, _ = cv2.connectedComponentsWithStats(stacked.reshape(-1, w), connectivity=8)
    stats = stats[1:]
    image = stats[:, cv2.CC_STAT_TOP] // (h + 1)
    sizes = stats[:, cv2.CC_STAT_AREA]
    big = sizes >= share * np.bincount(image, weights=sizes, minlength=n)[image]
    several = np.zeros(n, bool)
    for i in np.flatnonzero(np.bincount(image[big], minlength=n) >= 2):
        parts = stats[big & (image == i)]
        left = parts[:, cv2.CC_STAT_LEFT]
        right = left + parts[:, cv2.CC_STAT_WIDTH]
        several[i] = any(
            min(right[a], right[b]) - max(left[a], left[b])
            <= overlap * min(right[a] - left[a], right[b] - left[b])
            for a in range(len(parts))
            for b in range(a + 1, len(parts))
        )
    return np.column_stack([area, changes, width, height, ink_sum]), several


def test_digit_evidence_is_what_numpy_and_opencv_computed(test_digits: tuple[np.ndarray, np.ndarray]) -> None:
    """`digit_evidence` on test digits, pairs of half digits side by side (most of them flagged),
    random specks at two densities (components of every shape, touching only at corners), empty
    and full images, and images that are not square: the counts and flags numpy and OpenCV's
    labelling gave."""
    rng = np.random.default_rng(5)
    digits = test_digits[0][:3000]
    halves = np.concatenate([digits[:1000, :, 7:21], digits[1000:2000, :, 7:21]], axis=2)
    specks = ((rng.random((1000, 28, 28)) < 0.3) * 200).astype(np.uint8)
    dense = ((rng.random((1000, 28, 28)) < 0.55) * rng.integers(0, 256, (1000, 28, 28))).astype(np.uint8)
    tall = ((rng.random((300, 19, 7)) < 0.4) * 255).astype(np.uint8)
    cases = [
        digits,
        halves,
        specks,
        dense,
        np.zeros((3, 28, 28), np.uint8),
        np.full((3, 28, 28), 255, np.uint8),
        tall,
    ]
    flagged = 0
    for case in cases:
        counts, several = kernels.digit_evidence(case, 64, 0.2, 0.25)
        expected_counts, expected_several = _evidence_by_numpy_and_opencv(case, 64, 0.2, 0.25)
        np.testing.assert_array_equal(counts, expected_counts)
        np.testing.assert_array_equal(several, expected_several)
        flagged += int(several.sum())
    assert flagged > 500  # the side-by-side rule was exercised, not only its "no"
    assert kernels.digit_evidence(np.zeros((0, 28, 28), np.uint8), 64, 0.2, 0.25)[0].shape == (0, 5)
