"""Form lines: boxes, underlines and comb ticks printed around a handwritten digit, found and erased.

`erase_form_lines` is called by `normalize.to_mnist` on every image that is not already 28x28; the
rules and the measurements behind their thresholds are in `pipeline.defaults` (FORM_LINE_*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline import defaults
from pipeline.errors import BlankImageError
from pipeline.preprocess import kernels
from pipeline.preprocess.masks import Located, erode3, locate, stroke_width


@dataclass(frozen=True, eq=False)
class FormLine:
    """A straight band of ink: rows `lo:hi` and columns `start:end` (transposed if vertical).

    Compared and hashed by identity (each line is found once, and two bands of one orientation
    never share their rows): the rules keep lines in dicts and sets, and a generated hash of all
    eight fields was computed tens of thousands of times a run."""

    vertical: bool
    lo: int
    hi: int
    start: int
    end: int
    centre: tuple[float, float]  # the line's row at column 0 and its slope, fitted to its ink
    thickness: float  # median ink per column, in pixels
    wobble: float  # RMS distance of its ink's centres from the fitted line, in pixels


def _count(mask: np.ndarray) -> int:
    """The ink pixels of a bool mask: numpy's sum() converts the bools to int64 first, which costs
    more than the count on the small masks and slices counted here (docs/benchmarks.md)."""
    return int(np.count_nonzero(mask))


def _union(pixels: dict[FormLine, np.ndarray], lines: list[FormLine]) -> np.ndarray:
    """The pixels of any of `lines` (at least one), or-ed into one copy: numpy's
    `logical_or.reduce` of the list first stacked every mask into a new array."""
    union = pixels[lines[0]].copy()
    for line in lines[1:]:
        union |= pixels[line]
    return union


def _oriented(array: np.ndarray, vertical: bool) -> np.ndarray:
    """A view in which `line`'s band is rows lo:hi (writes go through to `array`)."""
    return array.T if vertical else array


def _find_lines(
    mask: np.ndarray, extent: int, orientations: tuple[bool, ...] = (False, True), thickest: int = 0
) -> list[FormLine]:
    """Horizontal and vertical (`orientations`: whether vertical) bands of ink holding one run at
    least FORM_LINE_MIN_LENGTH long, the horizontal ones first.

    Rows are merged over the tilt tolerance first (a 3-degree line drifts across rows), so a band
    is the line's rows plus that reach on each side; bands thicker than a printed line, and ink
    that wobbles about its fitted line like handwriting, are dropped. The fit (`kernels.long_bands`)
    leaves out the columns where a stroke crosses (thicker than the line): a printed line's
    centres lie within a fraction of a pixel of it, a digit's long flat curve (a 0's side, a 2's
    base) wanders further. `thickest`: the thickest band kept, if not a printed line's (for a
    window that holds one line and what merged with it: `_closing_sides`).
    """
    length = max(16, math.ceil(defaults.FORM_LINE_MIN_LENGTH * extent))
    reach = max(1, math.ceil(length * _TILT / 2))
    thickest = thickest or 2 * reach + max(6, round(0.1 * extent))
    lines = []
    for vertical in orientations:
        for band in kernels.long_bands(_oriented(mask, vertical), length, reach, thickest).tolist():
            lo, hi, start, end, intercept, slope, thickness, wobble = band
            if wobble <= defaults.FORM_LINE_MAX_WOBBLE:
                rows_and_columns = int(lo), int(hi), int(start), int(end)
                lines.append(FormLine(vertical, *rows_and_columns, (intercept, slope), thickness, wobble))
    return lines


# How far a line of the steepest tilt allowed drifts across rows, per pixel along it.
_TILT = math.tan(math.radians(defaults.FORM_LINE_MAX_TILT_DEGREES))


def _closing_sides(mask: np.ndarray, lines: list[FormLine], extent: int) -> list[FormLine]:
    """A box's missing side: where two parallel sides, joined at one end by a third, end together.

    A digit written onto a box's side merges with it over many columns, and the band there is
    then thicker and less straight than a printed line, so `_find_lines` drops it and the box is
    left in. Where two parallel lines (a box's two sides) are joined at one end by a line meeting
    both, the fourth side must run where they both end: it is looked for only there, in a window
    a side's thickness deep, where the merged stroke is a small part of the band. It must be as
    long and as straight as any line and meet both sides; its thickness is taken as theirs (the
    band's is the merged stroke's too), so erasing it leaves the stroke, as the crossing rule
    in `erase_form_lines` leaves what touches it.
    """

    def joins(c: FormLine, a: FormLine, b: FormLine, at: int, slack: int) -> bool:
        """Whether `c` runs from `a` to `b` at position `at` along them."""
        return (
            _meets(c, c.start, a, slack)
            and _meets(c, c.end - 1, b, slack)
            and c.lo - slack <= at <= c.hi + slack
        )

    found: list[FormLine] = []
    if len(lines) < 3:  # two parallel sides and a line joining them, at the least
        return found
    for vertical in (False, True):  # the orientation of the side looked for
        sides = [line for line in lines if line.vertical != vertical]
        across = [line for line in lines if line.vertical == vertical]
        oriented = _oriented(mask, vertical)
        for a, b in ((a, b) for a in sides for b in sides if a.hi <= b.lo):
            thick = max(a.thickness, b.thickness)
            slack = max(2, round(2 * thick))
            for at_end in (False, True):
                edge, far = (
                    (min(a.end, b.end), max(a.end, b.end))
                    if at_end
                    else (max(a.start, b.start), min(a.start, b.start))
                )
                other = max(a.start, b.start) if at_end else min(a.end, b.end)
                if abs(far - edge) > slack or not any(joins(c, a, b, other, slack) for c in across):
                    continue  # the two sides do not end together, or nothing joins them
                if any(joins(c, a, b, edge, slack) for c in across):
                    continue  # the side is there
                inside, outside = math.ceil(thick) + 3, 3
                lo, hi = (edge - inside, edge + outside) if at_end else (edge - outside, edge + inside)
                lo, hi = max(0, lo), min(oriented.shape[0], hi)
                window = oriented[lo:hi].T if vertical else oriented[lo:hi]
                for line in _find_lines(window, extent, (vertical,), thickest=hi - lo):
                    intercept, slope = line.centre
                    side = FormLine(
                        vertical, line.lo + lo, line.hi + lo, line.start, line.end,
                        (intercept + lo, slope), min(line.thickness, thick), line.wobble,
                    )  # fmt: skip
                    if joins(side, a, b, edge, slack):
                        found.append(side)
    return found


def _strip(line: FormLine, height: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last-plus-one rows of the line in each of its columns, blur included.

    The band only holds the rows where most of the line runs; a tilted line leaves it towards
    its ends. The fitted line follows it to both ends, with its thickness and a pixel of blur on
    each side.
    """
    intercept, slope = line.centre
    return kernels.strip(intercept, slope, line.thickness, line.start, line.end, height)


def _line_pixels(mask: np.ndarray, line: FormLine, extent: int) -> np.ndarray:
    """The ink of `line`: its strip, and the ticks standing on it (comb fields mark each box so).

    A tick is a run of ink leaving the strip, at most a band thick, at least twice as long as it
    is wide, shorter than 40% of the ink's extent, and with a clear ring around it: a digit
    written on the line continues (a 1's stem is long, a 7's tail and a 0's bowl run sideways),
    a tick ends.
    """
    pixels = np.zeros(mask.shape, np.bool_)  # numpy's zeros_like costs several times more
    row = np.array(
        [line.lo, line.hi, line.start, line.end, *line.centre, line.thickness, line.wobble], np.float64
    )
    kernels.line_pixels(_oriented(mask, line.vertical), row, extent, _oriented(pixels, line.vertical))
    return pixels


@dataclass(frozen=True)
class _Ends:
    """How a line lies against the digit: whether each end passes it freely, and by how much."""

    start: bool
    end: bool
    overhang: int
    digit_after: bool  # the digit lies beyond `hi` (below a horizontal line, right of an upright)
    through: bool = False  # the digit lies on both sides: a stroke written through the line


@dataclass(frozen=True)
class _Profile:
    """The digit's ink counted along one orientation (rows across the lines, columns along them):
    what `_ends` reads for every line of that orientation, counted once per digit."""

    digit: np.ndarray  # the digit, oriented so that the lines run along its rows
    above: np.ndarray  # `kernels.profile`: [r] holds the ink of rows < r
    height: int  # first to last inked row
    first: int  # the ink's extent along the rows, 1% of it at either end (specks) left out
    last: int
    total: int


def _profile(digit: np.ndarray, vertical: bool, profiles: dict[bool, _Profile]) -> _Profile:
    """`digit`'s profile for lines of this orientation, from `profiles` (one digit's) if there."""
    if vertical not in profiles:  # specks at the edges (1% of the ink each side) do not count
        oriented = _oriented(digit, vertical)
        profiles[vertical] = _Profile(oriented, *kernels.profile(oriented))
    return profiles[vertical]


def _ends(line: FormLine, digit: np.ndarray, stroke: float, profiles: dict[bool, _Profile]) -> _Ends | None:
    """For each end: whether the line passes the digit's extent along it by the overhang, with no
    digit ink within the last tenth of the line (a 7's bar ends at its stem). `profiles` holds
    `digit`'s counts for the lines already asked about (`_profile`).

    None when the digit lies on both sides of the line (a 4's crossbar), unless it was written
    through a flat line: a descender (a 7's or 9's tail below an underline) leaves a small share of
    the digit beyond it (FORM_LINE_THROUGH_INK) and the line passes the digit at both ends. Such a
    line is `through`: not a box's side, whose sides have the digit on one side only.
    """
    p = _profile(digit, line.vertical, profiles)
    rows = p.digit.shape[0]
    crossing = max(2, round(defaults.FORM_LINE_CROSSING * p.height))
    top, bottom = max(0, line.lo - crossing), min(rows, line.hi + crossing)  # near the line
    before = p.above.item(top)
    after = p.total - p.above.item(bottom)
    far = min(before, after)
    through = far > defaults.FORM_LINE_FAR_INK * (before + after)
    if through and (line.vertical or far > defaults.FORM_LINE_THROUGH_INK * (before + after)):
        return None  # the digit's own stroke, wherever its ends lie
    overhang = max(
        2,
        round(defaults.FORM_LINE_OVERHANG * (p.last - p.first)),
        round(defaults.FORM_LINE_OVERHANG_STROKES * stroke),
    )
    tip, allowed = max(2, (line.end - line.start) // 10), max(2, int(0.002 * p.total))
    near = p.digit[top:bottom]  # the tips' ink is counted only where a tip passes the digit
    start = line.start <= p.first - overhang and _count(near[:, line.start : line.start + tip]) <= allowed
    end = line.end >= p.last + overhang and _count(near[:, line.end - tip : line.end]) <= allowed
    if through and not (start and end):
        return None
    return _Ends(start, end, overhang, after >= before, through)


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
        if (e := ends[line]) is not None and not e.through:
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
    near = ~erode3(erode3(~on_lines))  # the lines and two pixels around: their blurred edges
    return _count(mask & ~near) <= max(4, int(0.002 * mask.size))


def _corners_empty(digit: np.ndarray, inside: tuple[int, int, int, int]) -> bool:
    """Whether at least two corners (an eighth of each side) of a box's inside hold no digit ink.

    A digit in a box reaches one corner or two (a 4's stem, a 7's bar); a 0 or an 8 drawn
    square, whose four sides look like a box, turns its strokes in all four.
    """
    top, bottom, left, right = inside
    dy, dx = max(1, (bottom - top) // 8), max(1, (right - left) // 8)
    allowed = max(2, int(0.002 * _count(digit)))
    empty = [
        _count(digit[rows, cols]) <= allowed
        for rows in (slice(top, top + dy), slice(bottom - dy, bottom))
        for cols in (slice(left, left + dx), slice(right - dx, right))
    ]
    return sum(empty) >= 2


def _may_accept(lines: list[FormLine], digit: np.ndarray, total: int) -> bool:
    """Whether `_accept` could accept any of `lines`, told cheaply where it cannot: most plain
    scans offer a straight stroke or two (a 7's bar, a 4's upright), which `_accept` would weigh
    at the cost of a digit's profiles, only to keep them all.

    Without two flat and two upright lines no box can close (`_frame`), and a line is then first
    accepted only if it passes the digit at both ends by the overhang (`_ends`). `digit` is the
    ink of no line (`mask` less every line's pixels): every digit `_ends` weighs holds it and at
    most the `total` ink. Over 1% of such a digit's ink (`_SPECKS`, and a pixel to spare for
    rounding) lies up to the first position `kernels.ink_extents` gives and after the one before
    its last, so the digit's extent (`kernels.profile`: from its first to its last 1% of ink)
    begins no later and ends no sooner, and its overhang is at least that extent's. A line that
    cannot pass those bounds at both ends, `_accept` keeps too.
    """
    flat = sum(not line.vertical for line in lines)
    if flat >= 2 and len(lines) - flat >= 2:
        return True  # a box may close: its sides are weighed together
    down, along = kernels.ink_extents(digit, _SPECKS * total + 1)
    if min(*down, *along) < 0:
        return True  # too little ink left to tell
    least = max(2, round(defaults.FORM_LINE_OVERHANG_STROKES * stroke_width(digit)))  # as `_accept` has it
    for line in lines:
        first, last = down if line.vertical else along  # the line's own orientation
        overhang = max(least, round(defaults.FORM_LINE_OVERHANG * (last - first)))
        if line.start <= first - overhang and line.end >= last + overhang:
            return True
    return False


# The share of the ink at either end that a digit's extent leaves out as specks (the 1% and 99%
# of `kernels.profile`).
_SPECKS = 0.01


def _accept(lines: list[FormLine], pixels: dict[FormLine, np.ndarray], mask: np.ndarray) -> list[FormLine]:
    """The lines that are the form's: each end passes the digit freely or meets an accepted line.

    The digit is first the ink of no line. Lines that pass it at neither end (a 5's upright, a
    2's curve) are then given back to it, so a stroke joined to one of them (the 5's bar) does not
    look free where they meet. Repeated until nothing changes, so a box whose digit touches one
    side is still found: its other sides pass the digit, and the touched side's ends meet them.
    An upright line must also meet an accepted line or face another upright across the digit:
    alone it is more likely a 1.
    """
    digit = mask & ~_union(pixels, lines)
    stroke = stroke_width(digit)
    profiles: dict[bool, _Profile] = {}
    ends = {line: _ends(line, digit, stroke, profiles) for line in lines}
    accepted = _frame(lines, ends, digit)
    passing = [line for line in lines if (e := ends[line]) is not None and (e.start or e.end)]
    if len(passing) < len(lines):
        digit = mask.copy()
        for line in passing + accepted:
            digit &= ~pixels[line]
        profiles = {}  # another digit
        for line in passing:
            ends[line] = _ends(line, digit, stroke, profiles)
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


def _stays_alone(line: FormLine, mask: np.ndarray, total: int) -> bool:
    """Whether the only line found is certainly left alone, so its pixels need not be traced.

    Most plain scans hold one straight stroke that `_find_lines` offers as a line (a 1's stem, a
    7's bar). An upright alone is never erased: `_accept` wants it to meet an accepted line or
    face another upright, and when it holds nearly all the ink it is taken for a 1. A flat line's
    pixels lie within its columns, so ink beyond either end is the digit's; if there are
    FORM_LINE_MIN_DIGIT of the ink there (3%, over the 1% `_ends` leaves out as specks), the
    digit reaches past that end and `_accept` keeps the line.
    """
    if line.vertical:
        return True
    left = kernels.profile(mask.T)[0]  # [c]: the ink left of column c
    beyond = max(left.item(line.start), total - left.item(line.end))
    return beyond >= defaults.FORM_LINE_MIN_DIGIT * total


def erase_form_lines(values: np.ndarray, located: Located | None = None) -> np.ndarray | None:
    """Which pixels of a located-ink map are printed form lines, or None if there are none.

    Forms put boxes, underlines and comb ticks around the handwriting. Left in, they are the
    biggest thing in the crop and the digit shrinks to a corner of the 20x20 box: the default
    model read 45% of rendered form fields right with them, 96.6% with them erased (`pipeline
    bench scans --style form`). A line is straight, thin and long; it is the form's, not the
    digit's, when all of the digit lies on one side of it and it runs past the digit at both
    ends (`_accept`). Where a stroke crosses a line, the crossing stays. Lines that leave too
    little ink are the digit itself, and nothing is erased, unless they can only be an empty
    field (`_empty_field`): then BlankImageError, as for a blank page. `located`: the ink's mask
    and box where the caller has them (`masks.locate(values)`).
    """
    full, box = located or locate(values)
    if box is None:
        return None
    extent = max(box[1] - box[0], box[3] - box[2])
    # Every line is ink, so it lies in the ink's box; one pixel more keeps the paper around it.
    top, left = max(0, box[0] - 1), max(0, box[2] - 1)
    bottom, right = min(full.shape[0], box[1] + 1), min(full.shape[1], box[3] + 1)
    mask = full[top:bottom, left:right]
    lines = _find_lines(mask, extent)
    lines += _closing_sides(mask, lines, extent)
    if not lines:
        return None
    total = _count(mask)
    if len(lines) == 1 and _stays_alone(lines[0], mask, total):
        return None
    pixels = {line: _line_pixels(mask, line, extent) for line in lines}  # each line's, once
    while lines:
        on_lines = _union(pixels, lines)
        digit = mask & ~on_lines
        if _count(digit) >= defaults.FORM_LINE_MIN_DIGIT * total:
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
    accepted = _accept(lines, pixels, mask) if _may_accept(lines, digit, total) else []
    if not accepted:
        return None
    digit = mask & ~_union(pixels, accepted)
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
