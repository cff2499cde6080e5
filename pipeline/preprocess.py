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
import math
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
    return _stretch(np.clip(values, 0, None))


def _stretch(values: np.ndarray) -> np.ndarray:
    """Scale ink (0 = paper) so that the strong strokes reach 255, as MNIST's do."""
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


@dataclass(frozen=True)
class FormLine:
    """A straight band of ink: rows `lo:hi` and columns `start:end` (transposed if vertical)."""

    vertical: bool
    lo: int
    hi: int
    start: int
    end: int
    centre: tuple[float, float]  # the line's row at column 0 and its slope, fitted to its ink
    thickness: float  # median ink per column, in pixels
    wobble: float  # RMS distance of its ink's centres from the fitted line, in pixels


def _oriented(array: np.ndarray, vertical: bool) -> np.ndarray:
    """A view in which `line`'s band is rows lo:hi (writes go through to `array`)."""
    return array.T if vertical else array


def _find_lines(mask: np.ndarray, vertical: bool, extent: int) -> list[FormLine]:
    """Horizontal (or vertical) bands of ink holding one run at least FORM_LINE_MIN_LENGTH long.

    Rows are merged over the tilt tolerance first (a 3-degree line drifts across rows), so a band
    is the line's rows plus that reach on each side; bands thicker than a printed line, and ink
    that wobbles about its fitted line like handwriting (`_fit`), are dropped.
    """
    m = _oriented(mask, vertical)
    h, w = m.shape
    length = max(16, math.ceil(defaults.FORM_LINE_MIN_LENGTH * extent))
    reach = max(1, math.ceil(length * math.tan(math.radians(defaults.FORM_LINE_MAX_TILT_DEGREES)) / 2))
    grown = m.copy()
    for k in range(1, reach + 1):
        grown[k:] |= m[:-k]
        grown[:-k] |= m[k:]
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = grown
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    ends = np.nonzero(step == -1)[1]  # row-major order: the i-th end closes the i-th start
    long = ends - starts >= length
    rows, starts, ends = rows[long], starts[long], ends[long]
    thickest = 2 * reach + max(6, round(0.1 * extent))
    lines = []
    for band in np.split(np.arange(rows.size), np.flatnonzero(np.diff(rows) > 1) + 1):
        if band.size and rows[band[-1]] + 1 - rows[band[0]] <= thickest:
            lo, hi = int(rows[band[0]]), int(rows[band[-1]]) + 1
            line = _fit(m, lo, hi, int(starts[band].min()), int(ends[band].max()), vertical)
            if line.wobble <= defaults.FORM_LINE_MAX_WOBBLE:
                lines.append(line)
    return lines


def _fit(m: np.ndarray, lo: int, hi: int, start: int, end: int, vertical: bool) -> FormLine:
    """Fit a straight line to the ink of a band, column by column (`m` oriented to it).

    Columns where a stroke crosses (thicker than the line) are left out of the fit. A printed
    line's centres lie within a fraction of a pixel of the fit; a digit's curved stroke that
    happens to be long and flat (a 0's side, a 2's base) wanders further.
    """
    band = m[lo:hi, start:end]
    counts = band.sum(axis=0)
    columns = np.arange(start, end)
    inked = counts > 0
    thickness = float(np.median(counts[inked])) if inked.any() else float(hi - lo)
    clean = inked & (counts <= thickness + 1)
    centres = (band * np.arange(lo, hi)[:, None]).sum(axis=0) / np.maximum(counts, 1)
    if clean.sum() >= 3:
        slope, intercept = np.polyfit(columns[clean], centres[clean], 1)
        wobble = float(np.sqrt(np.mean((centres[clean] - (intercept + slope * columns[clean])) ** 2)))
    else:
        slope, intercept, wobble = 0.0, (lo + hi - 1) / 2, 0.0
    return FormLine(vertical, lo, hi, start, end, (float(intercept), float(slope)), thickness, wobble)


def _strip(line: FormLine, height: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last-plus-one rows of the line in each of its columns, blur included.

    The band only holds the rows where most of the line runs; a tilted line leaves it towards
    its ends. The fitted line follows it to both ends, with its thickness and a pixel of blur on
    each side.
    """
    intercept, slope = line.centre
    centre = intercept + slope * np.arange(line.start, line.end)
    half = line.thickness / 2 + 1.0
    first = np.clip(np.floor(centre - half + 0.5), 0, height).astype(int)
    last = np.clip(np.floor(centre + half + 0.5), 0, height).astype(int)
    return first, np.maximum(last, first + 1)


def _line_pixels(mask: np.ndarray, line: FormLine, extent: int) -> np.ndarray:
    """The ink of `line`: its strip, and the ticks standing on it (comb fields mark each box so).

    A tick is a run of ink leaving the strip, at most a band thick, at least twice as long as it
    is wide, shorter than 40% of the ink's extent, and with a clear ring around it: a digit
    written on the line continues (a 1's stem is long, a 7's tail and a 0's bowl run sideways),
    a tick ends.
    """
    pixels = np.zeros_like(mask)
    m, out = _oriented(mask, line.vertical), _oriented(pixels, line.vertical)
    first, last = _strip(line, m.shape[0])
    rows = np.arange(m.shape[0])[:, None]
    out[:, line.start : line.end] = (rows >= first) & (rows < last)
    widest, longest = max(3, line.hi - line.lo), int(0.4 * extent)
    columns = np.arange(line.start, line.end)
    steps = np.arange(longest + 3)[:, None]
    for origin, direction in ((first - 1, -1), (last, 1)):
        # side[k, x]: the pixel k steps away from the strip in column x (False off the image)
        at = origin[None, :] + direction * steps
        inside = (at >= 0) & (at < m.shape[0])
        side = np.where(inside, m[np.clip(at, 0, m.shape[0] - 1), columns[None, :]], False)
        run = np.where(side.all(axis=0), side.shape[0], side.argmin(axis=0))
        standing = np.flatnonzero(run > 0)
        for seg in np.split(standing, np.flatnonzero(np.diff(standing) > 1) + 1):
            if seg.size == 0:
                continue
            a, b, height = int(seg[0]), int(seg[-1]) + 1, int(run[seg].max())
            if b - a > widest or height < 2 * (b - a) or height > longest:
                continue
            # A clear ring 2 px wide around its rectangle: ink further off may be the digit beside it.
            ring = side[: height + 2, max(0, a - 2) : b + 2].copy()
            ring[:height, a - max(0, a - 2) : b - max(0, a - 2)] = False
            if ring.any():
                continue
            # The tick, one pixel wider on each side for its blurred edges.
            block = (slice(0, height + 1), slice(max(0, a - 1), min(len(columns), b + 1)))
            on = inside[block]
            out[at[block][on], np.broadcast_to(columns[block[1]], on.shape)[on]] = True
    return pixels


@dataclass(frozen=True)
class _Ends:
    """How a line lies against the digit: whether each end passes it freely, and by how much."""

    start: bool
    end: bool
    overhang: int
    digit_after: bool  # the digit lies beyond `hi` (below a horizontal line, right of an upright)


def _ends(line: FormLine, digit: np.ndarray, stroke: float) -> _Ends | None:
    """None when the digit lies on both sides of the line (a stroke through it, a 4's crossbar).

    Otherwise, for each end: whether the line passes the digit's extent along it by the overhang,
    with no digit ink within the last tenth of the line (a 7's bar ends at its stem).
    """
    d = _oriented(digit, line.vertical)
    per_row, per_col = d.sum(axis=1), d.sum(axis=0)
    rows, cols = np.flatnonzero(per_row), np.flatnonzero(per_col)
    height = int(rows[-1] - rows[0] + 1)
    crossing = max(2, round(defaults.FORM_LINE_CROSSING * height))
    before = int(per_row[: max(0, line.lo - crossing)].sum())
    after = int(per_row[line.hi + crossing :].sum())
    if min(before, after) > defaults.FORM_LINE_FAR_INK * (before + after):
        return None
    share = np.cumsum(per_col[cols]) / per_col[cols].sum()  # specks at the edges do not count
    first, last = int(cols[np.searchsorted(share, 0.01)]), int(cols[np.searchsorted(share, 0.99)]) + 1
    overhang = max(
        2,
        round(defaults.FORM_LINE_OVERHANG * (last - first)),
        round(defaults.FORM_LINE_OVERHANG_STROKES * stroke),
    )
    near = d[max(0, line.lo - crossing) : line.hi + crossing]
    tip, allowed = max(2, (line.end - line.start) // 10), max(2, int(0.002 * per_col.sum()))
    return _Ends(
        line.start <= first - overhang and int(near[:, line.start : line.start + tip].sum()) <= allowed,
        line.end >= last + overhang and int(near[:, line.end - tip : line.end].sum()) <= allowed,
        overhang,
        after >= before,
    )


def _meets(line: FormLine, at: int, other: FormLine, slack: int) -> bool:
    """Whether perpendicular `other` runs through `line`'s band at position `at` (a corner)."""
    return (
        other.vertical != line.vertical
        and other.lo - slack <= at <= other.hi + slack
        and other.start - slack <= line.lo
        and line.hi <= other.end + slack
    )


def _frame(lines: list[FormLine], ends: dict[FormLine, _Ends | None], digit: np.ndarray) -> list[FormLine]:
    """Four lines meeting at four corners with the digit inside: a box, however close the digit.

    A digit that nearly fills its box leaves no side passing it by the overhang at both ends; the
    closed rectangle around it is the evidence instead, with two corners empty, and two sides
    passing the digit at one end or all four ruler-straight: a 0 or an 8 drawn square has four
    sides too, but they pass nothing, wobble like handwriting, and its strokes fill the corners.
    """
    sides: dict[tuple[bool, bool], list[tuple[FormLine, _Ends]]] = {}
    for line in lines:
        if (e := ends[line]) is not None:
            sides.setdefault((line.vertical, e.digit_after), []).append((line, e))
    for top, et in sides.get((False, True), []):
        for bottom, eb in sides.get((False, False), []):
            for left, el in sides.get((True, True), []):
                for right, er in sides.get((True, False), []):
                    slack = max(et.overhang, eb.overhang, el.overhang, er.overhang)
                    if (
                        _closes(top, bottom, left, right, slack)
                        and _corners_empty(digit, (top.hi, bottom.lo, left.hi, right.lo))
                        and (
                            sum(e.start or e.end for e in (et, eb, el, er)) >= 2
                            or max(s.wobble for s in (top, bottom, left, right))
                            <= defaults.FORM_BOX_MAX_WOBBLE
                        )
                    ):
                        return [top, bottom, left, right]
    return []


def _closes(top: FormLine, bottom: FormLine, left: FormLine, right: FormLine, slack: int) -> bool:
    """Whether two horizontal and two upright lines meet at four corners, in this order."""
    return (
        top.hi <= bottom.lo
        and left.hi <= right.lo
        and _meets(top, top.start, left, slack)
        and _meets(top, top.end - 1, right, slack)
        and _meets(bottom, bottom.start, left, slack)
        and _meets(bottom, bottom.end - 1, right, slack)
    )


def _empty_field(lines: list[FormLine], on_lines: np.ndarray, mask: np.ndarray, extent: int) -> bool:
    """Whether the ink is a form field's lines and nothing else: an empty box, underline or comb.

    Only when no upright line could be a 1 (the lines are all horizontal, or four ruler-straight
    ones close a box) and no ink but specks lies away from them. A digit written four times
    fainter than the printed lines falls under the ink threshold and is reported blank too.
    """
    uprights = [line for line in lines if line.vertical]
    flat = [line for line in lines if not line.vertical]
    if uprights:
        slack = max(2, round(defaults.FORM_LINE_OVERHANG * extent))
        straight = [line for line in lines if line.wobble <= defaults.FORM_BOX_MAX_WOBBLE]
        if len(uprights) != 2 or not any(
            _closes(top, bottom, left, right, slack)
            for top in flat
            for bottom in flat
            for left, right in (uprights, uprights[::-1])
            if {top, bottom, left, right} <= set(straight)
        ):
            return False
    near = ~_erode3(_erode3(~on_lines))  # the lines and two pixels around: their blurred edges
    return int((mask & ~near).sum()) <= max(4, int(0.002 * mask.size))


def _corners_empty(digit: np.ndarray, inside: tuple[int, int, int, int]) -> bool:
    """Whether at least two corners (an eighth of each side) of a box's inside hold no digit ink.

    A digit in a box reaches one corner or two (a 4's stem, a 7's bar); a 0 or an 8 drawn
    square, whose four sides look like a box, turns its strokes in all four.
    """
    top, bottom, left, right = inside
    dy, dx = max(1, (bottom - top) // 8), max(1, (right - left) // 8)
    allowed = max(2, int(0.002 * digit.sum()))
    empty = [
        int(digit[rows, cols].sum()) <= allowed
        for rows in (slice(top, top + dy), slice(bottom - dy, bottom))
        for cols in (slice(left, left + dx), slice(right - dx, right))
    ]
    return sum(empty) >= 2


def _accept(lines: list[FormLine], pixels: dict[FormLine, np.ndarray], mask: np.ndarray) -> list[FormLine]:
    """The lines that are the form's: each end passes the digit freely or meets an accepted line.

    The digit is first the ink of no line. Lines that pass it at neither end (a 5's upright, a
    2's curve) are then given back to it, so a stroke joined to one of them (the 5's bar) does not
    look free where they meet. Repeated until nothing changes, so a box whose digit touches one
    side is still found: its other sides pass the digit, and the touched side's ends meet them.
    An upright line must also meet an accepted line or face another upright across the digit:
    alone it is more likely a 1.
    """
    digit = mask & ~np.logical_or.reduce([pixels[line] for line in lines])
    stroke = stroke_width(digit)
    ends = {line: _ends(line, digit, stroke) for line in lines}
    accepted = _frame(lines, ends, digit)
    passing = [line for line in lines if (e := ends[line]) is not None and (e.start or e.end)]
    if len(passing) < len(lines):
        digit = mask.copy()
        for line in passing + accepted:
            digit &= ~pixels[line]
        ends = {line: (_ends(line, digit, stroke) if line in passing else ends[line]) for line in lines}
    changed = True
    while changed:
        changed = False
        for line in lines:
            e = ends[line]
            if e is None or line in accepted:
                continue
            at_start = any(_meets(line, line.start, r, e.overhang) for r in accepted)
            at_end = any(_meets(line, line.end - 1, r, e.overhang) for r in accepted)
            if not ((e.start or at_start) and (e.end or at_end)):
                continue
            facing = any(
                o.vertical
                and (o.hi <= line.lo or o.lo >= line.hi)
                and (f := ends[o]) is not None
                and f.start
                and f.end
                for o in lines
            )
            if line.vertical and not (at_start or at_end or facing):
                continue
            accepted.append(line)
            changed = True
    return accepted


def erase_form_lines(values: np.ndarray) -> np.ndarray | None:
    """Which pixels of a located-ink map are printed form lines, or None if there are none.

    Forms put boxes, underlines and comb ticks around the handwriting. Left in, they are the
    biggest thing in the crop and the digit shrinks to a corner of the 20x20 box: the default
    model read 45% of rendered form fields right with them, 96.6% with them erased (`pipeline
    bench scans --style form`). A line is straight, thin and long; it is the form's, not the
    digit's, when all of the digit lies on one side of it and it runs past the digit at both
    ends (`_accept`). Where a stroke crosses a line, the crossing stays. Lines that leave too
    little ink are the digit itself, and nothing is erased, unless they can only be an empty
    field (`_empty_field`): then BlankImageError, as for a blank page.
    """
    full = values > defaults.INK_THRESHOLD * 255
    box = _bbox(full)
    if box is None:
        return None
    extent = max(box[1] - box[0], box[3] - box[2])
    # Every line is ink, so it lies in the ink's box; one pixel more keeps the paper around it.
    top, left = max(0, box[0] - 1), max(0, box[2] - 1)
    bottom, right = min(full.shape[0], box[1] + 1), min(full.shape[1], box[3] + 1)
    mask = full[top:bottom, left:right]
    lines = _find_lines(mask, False, extent) + _find_lines(mask, True, extent)
    total = int(mask.sum())
    pixels = {line: _line_pixels(mask, line, extent) for line in lines}  # each line's, once
    while lines:
        on_lines = np.logical_or.reduce([pixels[line] for line in lines])
        digit = mask & ~on_lines
        if digit.sum() >= defaults.FORM_LINE_MIN_DIGIT * total:
            break
        # The lines hold nearly all the ink, so one of them is the digit: a 1 alone or inside a
        # box, the innermost upright. Otherwise (a 4 or 7 made of straight strokes) erase nothing.
        uprights = [line for line in lines if line.vertical]
        inner = [
            line for line in uprights
            if any(o.hi <= line.lo for o in uprights) and any(o.lo >= line.hi for o in uprights)
        ]  # fmt: skip
        if len(uprights) != 1 and not inner and _empty_field(lines, on_lines, mask, extent):
            raise BlankImageError("blank: only form lines, no digit")
        if len(uprights) == 1:
            lines.remove(uprights[0])
        elif inner:
            middle = mask.shape[1] / 2
            lines.remove(min(inner, key=lambda line: abs((line.lo + line.hi) / 2 - middle)))
        else:
            return None
    else:
        return None
    accepted = _accept(lines, pixels, mask)
    if not accepted:
        return None
    digit = mask & ~np.logical_or.reduce([pixels[line] for line in accepted])
    erase = np.zeros_like(mask)
    for line in accepted:
        line_ink = _oriented(pixels[line], line.vertical).copy()
        d = _oriented(digit, line.vertical)
        # A stroke that reaches the line from either side crosses or touches it there: keep it.
        first, last = _strip(line, d.shape[0])
        columns = np.arange(line.start, line.end)
        touched = d[np.maximum(first - 1, 0), columns] | d[np.minimum(last, d.shape[0] - 1), columns]
        line_ink[:, columns[touched]] = False
        _oriented(erase, line.vertical)[...] |= line_ink
    out = np.zeros_like(full)
    out[top:bottom, left:right] = erase
    return out


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
    boundary = int((mask & ~_erode3(mask)).sum())
    return 2.0 * area / max(boundary, 1)


def _erode3(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion with the edges repeated: PIL's MinFilter(3), 25 times faster in numpy."""
    h, w = mask.shape
    padded = np.pad(mask, 1, mode="edge")
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


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


def to_mnist(img: Image.Image, *, deskew_digit: bool = False, erase_lines: bool = True) -> np.ndarray:
    """Turn one decoded image into an MNIST-style 28x28 uint8 digit (white on black).

    Printed form lines around the digit are erased first (`erase_form_lines`); `erase_lines=False`
    is for measuring what that step is worth. Raises BlankImageError when there is no ink: a
    blank form field must be reported, not guessed.
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
        lines = erase_form_lines(values) if erase_lines else None
        if lines is not None:
            values = _stretch(np.where(lines, 0.0, values))
        top, bottom, left, right = _ink_box(values)
        digit = _fit_and_centre(values[top:bottom, left:right])
    return deskew(digit) if deskew_digit else digit


def load_digit(
    path: Path | str,
    *,
    deskew_digit: bool = False,
    max_pixels: int = defaults.MAX_IMAGE_PIXELS,
    erase_lines: bool = True,
) -> np.ndarray:
    """Open, decode and preprocess one file: what each classify worker does per image."""
    with open_image(path, max_pixels) as img:
        return to_mnist(img, deskew_digit=deskew_digit, erase_lines=erase_lines)


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
