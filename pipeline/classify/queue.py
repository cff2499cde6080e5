"""The review queue: the rows of a results CSV a person should look at, as review.csv and review.html.

A back office works the queue from a browser on a file share, so the page is one self-contained
file: every image is embedded as a data URI, there is no script and nothing is fetched, and it
opens from disk. Per row it shows what the decision rests on: a thumbnail of the file as decoded,
the 28x28 the model saw (made again by `pipeline.preprocess.load_digit`, the code classify runs),
the prediction and the second choice with their probabilities, and the reason.

File names are strangers' data: every one goes through `html.escape` and is shown as text (quotes,
`<`, newlines and undecodable bytes included). The page is capped (`defaults.REVIEW_PAGE_ROWS`,
the least confident first) and says how many rows it leaves out; review.csv holds them all.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import defaults, files
from pipeline.classify.csvout import ENCODING, ERRORS, HEADER
from pipeline.errors import ClassifyError, ImageError
from pipeline.preprocess import load_digit, open_image, to_gray

QUEUE_HEADER = ["path", "prediction", "confidence", "second", "second_confidence", "reason"]
# The reason shown for a row sent to the queue only by `below` (its classify run did not flag it).
BELOW_REASON = "below_threshold"


@dataclass
class QueueRow:
    path: str
    prediction: int
    confidence: float
    second: int
    second_confidence: float
    reason: str

    def csv_row(self) -> list[str]:
        return [
            self.path, str(self.prediction), f"{self.confidence:.6f}", str(self.second),
            f"{self.second_confidence:.6f}", self.reason,
        ]  # fmt: skip


@dataclass
class Queue:
    """What `write_queue` wrote: the files, how many rows are queued, shown, and not readable."""

    csv: Path
    html: Path
    rows: int = 0
    shown: int = 0
    errors: int = 0  # rows of the results CSV with status error (not queued: they have no digit)
    reasons: dict[str, int] = field(default_factory=dict)


def read_queue(results: Path, below: float | None = None) -> tuple[list[QueueRow], int]:
    """The rows to review, least confident first, and the count of error rows.

    A row is queued if classify marked it `review`, or (with `below`) if its top probability is
    under `below`: a threshold can be tried on a finished run without classifying again."""
    if below is not None and not 0.0 <= below <= 1.0:
        raise ClassifyError("--below takes a probability, 0 to 1")
    rows: list[QueueRow] = []
    errors = 0
    try:
        with open(results, encoding=ENCODING, errors=ERRORS, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or header[: len(HEADER)] != HEADER:
                raise ClassifyError(f"{results}: not a results CSV of pipeline classify (its header differs)")
            status_at, reason_at = HEADER.index("status"), HEADER.index("reason")
            for line, row in enumerate(reader, start=2):
                if len(row) < len(HEADER):
                    raise ClassifyError(f"{results}: line {line} has {len(row)} columns, not {len(HEADER)}")
                status = row[status_at]
                if status == "error":
                    errors += 1
                if status not in ("ok", "review"):
                    continue
                confidence = float(row[2])
                if status == "review" or (below is not None and confidence < below):
                    reason = row[reason_at] if status == "review" else BELOW_REASON
                    rows.append(QueueRow(row[0], int(row[1]), confidence, int(row[3]), float(row[4]), reason))
    except FileNotFoundError:
        raise ClassifyError(f"{results}: no such file") from None
    except OSError as exc:
        raise ClassifyError(f"{results}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ClassifyError(f"{results}: unreadable row ({exc})") from None
    rows.sort(key=lambda r: (r.confidence, r.path))
    return rows, errors


def write_queue(
    results: Path,
    folder: Path,
    out_dir: Path,
    below: float | None = None,
    limit: int = defaults.REVIEW_PAGE_ROWS,
    deskew: bool = False,
    max_pixels: int = defaults.MAX_IMAGE_PIXELS,
) -> Queue:
    """Write `out_dir/review.csv` (every queued row) and `out_dir/review.html` (the first `limit`).

    `folder` is the folder classify ran on: the CSV's paths are relative to it. `deskew` must be
    what classify used (the model's own setting by default), so the page shows the same 28x28."""
    if not folder.is_dir():
        raise ClassifyError(f"{folder}: no such folder (the folder classify ran on)")
    if limit < 0:
        raise ClassifyError("--limit must be 0 or more")
    rows, errors = read_queue(results, below)
    prepare(out_dir)
    queue = Queue(csv=out_dir / "review.csv", html=out_dir / "review.html", rows=len(rows), errors=errors)
    for row in rows:
        queue.reasons[row.reason] = queue.reasons.get(row.reason, 0) + 1
    with files.atomic_open(queue.csv, "w", encoding=ENCODING, errors=ERRORS, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(QUEUE_HEADER)
        writer.writerows(row.csv_row() for row in rows)
    shown = rows[:limit]
    queue.shown = len(shown)
    cards = [_card(rank, row, folder, deskew, max_pixels) for rank, row in enumerate(shown, start=1)]
    page = _page(results, queue, cards)
    # Undecodable bytes of a file name cannot be written as UTF-8: they show as U+FFFD.
    with files.atomic_open(queue.html, "w", encoding="utf-8", errors="replace") as f:
        f.write(page)
    return queue


def prepare(out_dir: Path) -> None:
    """Create the queue's folder, or say in one line why it cannot be: classify calls this before
    its run, so a bad --review-queue fails before hours of work, not after."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClassifyError(
            f"{out_dir}: cannot create the review queue folder ({exc.strerror or exc})"
        ) from None
    if not os.access(out_dir, os.W_OK):
        raise ClassifyError(f"{out_dir}: the review queue folder is not writable")


def _data_uri(gray: np.ndarray, jpeg: bool = False) -> str:
    """An embedded image: the 28x28 as PNG (exactly the model's input), a thumbnail as JPEG (a
    third of a PNG's size on scans, which keeps a 500-row page a few MB)."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))
    if jpeg:
        image.save(buffer, format="JPEG", quality=defaults.REVIEW_THUMBNAIL_QUALITY)
    else:
        image.save(buffer, format="PNG", optimize=True)
    kind = "jpeg" if jpeg else "png"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnail(path: str, max_pixels: int) -> np.ndarray:
    """The file as classify decoded it (gray, EXIF-rotated), at most THUMBNAIL_SIDE pixels a side."""
    with open_image(path, max_pixels, reduce=True) as img:
        gray = Image.fromarray(to_gray(img))
    gray.thumbnail((defaults.REVIEW_THUMBNAIL_SIDE, defaults.REVIEW_THUMBNAIL_SIDE), Image.Resampling.BOX)
    return np.asarray(gray)


def _card(rank: int, row: QueueRow, folder: Path, deskew: bool, max_pixels: int) -> str:
    path = os.path.join(folder, row.path)
    try:
        original = (
            f'<img class="original" alt="file" src="{_data_uri(_thumbnail(path, max_pixels), jpeg=True)}">'
        )
        seen = load_digit(path, deskew_digit=deskew, max_pixels=max_pixels)
        digit = f'<img class="digit" alt="28x28 input" src="{_data_uri(seen)}">'
    except ImageError as exc:  # moved or changed since the run: say so in place of the images
        original = f'<span class="missing">{html.escape(str(exc))}</span>'
        digit = ""
    e = html.escape
    return (
        f'<tr><td class="rank">{rank}</td><td>{original}</td><td>{digit}</td>'
        f'<td class="pred">{row.prediction}<small>{row.confidence:.3f}</small></td>'
        f'<td class="second">{row.second}<small>{row.second_confidence:.3f}</small></td>'
        f'<td class="reason">{e(row.reason.replace("_", " "))}</td>'
        f'<td class="path">{e(row.path)}</td></tr>'
    )


# Nothing but the page itself and its data: URIs: no script, no fetch, even if a name slipped through.
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: middle; }
th { position: sticky; top: 0; background: #f4f4f4; }
img.original { max-width: 160px; max-height: 160px; min-height: 84px; image-rendering: pixelated;
  border: 1px solid #ccc; }
img.digit { width: 84px; height: 84px; image-rendering: pixelated; background: #000; }
td.pred, td.second { font-size: 22px; font-weight: 600; }
td small { display: block; font-size: 12px; font-weight: 400; color: #555; }
td.path { white-space: pre-wrap; word-break: break-all; font-family: monospace; max-width: 28em; }
.missing { color: #a00; }
"""


def _page(results: Path, queue: Queue, cards: list[str]) -> str:
    e = html.escape
    reasons = ", ".join(f"{e(k.replace('_', ' '))}: {v:,}" for k, v in sorted(queue.reasons.items()))
    left_out = queue.rows - queue.shown
    notes = [f"{queue.rows:,} rows to review" + (f" ({reasons})" if reasons else "") + "."]
    if left_out:
        notes.append(
            f'<span id="left-out">{left_out:,} more not shown here</span> (the least confident '
            f"{queue.shown:,} are); review.csv lists all {queue.rows:,}."
        )
    if queue.errors:
        files_ = "file" if queue.errors == 1 else "files"
        notes.append(f"{queue.errors:,} {files_} could not be read (status error in the results CSV).")
    body = "\n".join(cards) if cards else '<tr><td colspan="7">Nothing to review.</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_POLICY}">
<title>Review queue: {e(results.name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Review queue</h1>
<p id="summary">From <code>{e(str(results))}</code>: {" ".join(notes)}</p>
<table id="queue">
<thead><tr><th>#</th><th>file</th><th>model saw</th><th>prediction</th><th>second</th><th>reason</th>
<th>path</th></tr></thead>
<tbody>
{body}
</tbody>
</table>
</body>
</html>
"""
