"""The results CSV: its columns, the one writer per --out (a lock), the partial file and --resume.

The CSV is written to `<out>.partial`; after every flushed block its committed size and row count
go to `<out>.partial.json`. `--resume` truncates the partial file to that size (dropping a row
torn by `kill -9`), skips the files already written (checking they are the same files, in the
same order), and appends. Only a finished run is renamed to `<out>`. While a run writes, it holds
an exclusive lock on `<out>.lock`: a second run on the same --out refuses at once, and the kernel
releases the lock however the first one ends, `kill -9` included.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import defaults, review, runtime
from pipeline.classify.chunks import ChunkResult, Summary
from pipeline.errors import ClassifyBusyError, ClassifyError, OutputError
from pipeline.files import cannot_write

HEADER = ["path", "prediction", "confidence", "second", "second_confidence", "status", "reason", "error"]
PROB_COLUMNS = [f"p{d}" for d in range(10)]
# Paths are kept as str with undecodable bytes as surrogates (os.fsdecode); the CSV is written
# with the same error handler, so a file name that is not valid UTF-8 comes out as its own bytes.
ENCODING, ERRORS = "utf-8", "surrogateescape"


class Writer:
    """Append rows to the partial CSV and commit its size to the sidecar after each block."""

    def __init__(self, partial: Path, state: Path, header: list[str], resume_bytes: int | None) -> None:
        self.partial, self.state = partial, state
        if resume_bytes is None:
            self.file = open(partial, "w", encoding=ENCODING, errors=ERRORS, newline="")  # noqa: SIM115
            csv.writer(self.file).writerow(header)
            self.rows = 0
        else:
            with open(partial, "r+b") as raw:
                raw.truncate(resume_bytes)  # drop a row torn by a kill
            self.file = open(partial, "a", encoding=ENCODING, errors=ERRORS, newline="")  # noqa: SIM115
            self.rows = json.loads(state.read_text())["rows"]
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer)
        self.pending = 0
        self.failed = False
        self.commit()

    def write(self, row: list[Any]) -> None:
        self.writer.writerow(row)
        self._written()

    def write_line(self, line: str) -> None:
        """One row already in the CSV's form, its line ending included (`write_chunk`'s rows whose
        fields need no quoting)."""
        self.buffer.write(line)
        self._written()

    def write_lines(self, lines: list[str]) -> None:
        """Rows already in the CSV's form, line endings included (`write_line` for each), written a
        block at a time and committed after the same rows as one call a row would commit."""
        at = 0
        while at < len(lines):
            take = min(len(lines) - at, defaults.CLASSIFY_FLUSH_ROWS - self.pending)
            self.buffer.write("".join(lines[at : at + take]))
            self.pending += take
            at += take
            if self.pending >= defaults.CLASSIFY_FLUSH_ROWS:
                self.commit()

    def _written(self) -> None:
        self.pending += 1
        if self.pending >= defaults.CLASSIFY_FLUSH_ROWS:
            self.commit()

    def commit(self) -> None:
        """Write the buffered rows and record them as committed. A write that fails (a full disk,
        a quota) is an OutputError: the sidecar still holds the last committed size, so
        `--resume` drops whatever part of the block reached the file and goes on from there."""
        try:
            self.file.write(self.buffer.getvalue())
            self.buffer.seek(0)
            self.buffer.truncate()
            self.file.flush()
            os.fsync(self.file.fileno())
            tmp = self.state.with_name(self.state.name + ".tmp")
            tmp.write_text(json.dumps({"rows": self.rows + self.pending, "bytes": self.file.tell()}))
            os.replace(tmp, self.state)
        except OSError as exc:
            self.failed = True
            raise OutputError(
                f"{cannot_write(self.partial, exc)}; the rows committed so far are kept: make room "
                "and run again with --resume"
            ) from exc
        self.rows += self.pending
        self.pending = 0

    def close(self) -> None:
        """Commit the last rows and close the file; after a failed write, only close it (what
        the failed block left in the file's buffer may fail again, and is not needed)."""
        if self.failed:
            with suppress(OSError):
                self.file.close()
            return
        try:
            self.commit()
        finally:
            with suppress(OSError):
                self.file.close()


def done_paths(partial: Path, state: Path, header: list[str]) -> tuple[int, Iterator[str]]:
    """For --resume: committed byte size of the partial CSV and an iterator over its paths."""
    try:
        committed = json.loads(state.read_text())
        size, rows = int(committed["bytes"]), int(committed["rows"])
    except (OSError, ValueError, KeyError) as exc:
        raise ClassifyError(f"{state}: cannot resume, progress file unreadable ({exc})") from exc
    if partial.stat().st_size < size:
        raise ClassifyError(f"{partial}: shorter than its committed progress; start over without --resume")

    def paths() -> Iterator[str]:
        # Streamed, so resuming a run of millions of rows needs no memory for them; reading stops
        # after the committed rows, before any torn tail.
        with open(partial, encoding=ENCODING, errors=ERRORS, newline="") as f:
            reader = csv.reader(f)
            if next(reader, None) != header:
                raise ClassifyError(f"{partial}: written with other columns; start over without --resume")
            for count, row in enumerate(reader):
                if count >= rows:
                    return
                yield row[0]

    return size, paths()


def check_output(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ClassifyError(f"{out}: is a folder; --out takes a file name")
    if not parent.is_dir():
        raise ClassifyError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK):
        raise ClassifyError(f"{parent}: output folder is not writable")


def skip_done(paths: Iterator[str], done: Iterator[str], summary: Summary) -> Iterator[str]:
    """Drop the prefix of the walk that the interrupted run already wrote, checking it matches."""
    for previous in done:
        current = next(paths, None)
        if current != previous:
            raise ClassifyError(
                f"the folder changed since the interrupted run ({previous!r} vs {current!r}); "
                "start over without --resume"
            )
        summary.resumed += 1
    yield from paths


@dataclass(frozen=True)
class Review:
    """What sends a row to a person: the review model's evidence, and a confidence floor."""

    model: review.ReviewModel
    below: float = 0.0


# What makes csv.writer quote a field (QUOTE_MINIMAL in its default dialect): the delimiter, the
# quote character, or a line break.
_NEEDS_QUOTES = re.compile('[,"\r\n]')


def write_chunk(
    chunk: ChunkResult, writer: Writer, summary: Summary, probabilities: bool, check: Review | None = None
) -> None:
    """Turn one predicted chunk into CSV rows (shared by both engines, so their files match).

    A row a person should look at keeps its digit and probabilities, with status `review` and
    the reason (`pipeline.review`)."""
    probs = chunk.probs if chunk.probs is not None else np.zeros((0, 10), np.float32)
    # Python's ints and floats: formatting numpy's scalars one by one cost more than the rows.
    top = runtime.top2(probs)
    first, conf, second, second_conf = (column.tolist() for column in top)
    values = probs.tolist() if probabilities else []
    summary.screened += chunk.screened
    if chunk.reasons is not None:
        reasons = chunk.reasons
    elif check:
        reasons = check.model.reasons(chunk.digits, probs, check.below, chunk.evidence, chunk.features)
    else:
        reasons = [""] * len(probs)
    # Most chunks have no path that needs quoting: asked once of them all (no path holds NUL).
    plain = not _NEEDS_QUOTES.search("\0".join(chunk.paths))
    lines: list[str] = []  # rows in the CSV's form, written a block at a time
    k = 0
    for path, status, error in zip(chunk.paths, chunk.status, chunk.errors, strict=True):
        if status == "ok":
            reason = reasons[k]
            if plain or not _NEEDS_QUOTES.search(path):  # the line csv.writer would write, without its cost
                tail = "".join(f",{p:.6f}" for p in values[k]) if probabilities else ""
                lines.append(
                    f"{path},{first[k]},{conf[k]:.6f},{second[k]},{second_conf[k]:.6f},"
                    f"{'review' if reason else 'ok'},{reason},{tail}\r\n"
                )
            else:
                fields = [f"{p:.6f}" for p in values[k]] if probabilities else []
                row: list[Any] = [path, first[k], f"{conf[k]:.6f}", second[k], f"{second_conf[k]:.6f}"]
                writer.write_lines(lines)
                lines.clear()
                writer.write([*row, "review" if reason else "ok", reason, "", *fields])
            k += 1
        else:
            row = [path, "", "", "", "", status, "", error]
            if probabilities:
                row += [""] * 10
            if status == "blank":
                summary.blank += 1
            else:
                summary.errors += 1
            writer.write_lines(lines)
            lines.clear()
            writer.write(row)
    writer.write_lines(lines)
    summary.classified += k
    for digit, count in enumerate(np.bincount(top[0], minlength=10).tolist()):
        summary.per_digit[digit] += count
    for reason in reasons[:k]:
        if reason:
            summary.review[reason] = summary.review.get(reason, 0) + 1


_HELD: set[int] = set()  # lock descriptors this process holds


def _drop_held_locks() -> None:
    """In a forked child (the local engine's decoding workers): close the inherited lock
    descriptors, so that the lock lives exactly as long as the run's own process."""
    for fd in list(_HELD):
        with suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_held_locks)


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<out>.lock` for the block: one writer per --out.

    flock is tied to the open file, so the kernel releases it however the holder ends, `kill -9`
    included, and the next run goes ahead (with --resume, from where the killed one stopped). The
    lock file holds the holder's process id, for the message; it is removed when the run ends.
    """
    lock = out.with_name(out.name + ".lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ClassifyError(f"{lock}: cannot create the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise ClassifyError(f"{lock}: cannot lock it ({exc.strerror})") from None
            raise ClassifyBusyError(
                f"{out}: another classify run{_holder(lock)} is writing it; wait for it to end or "
                "choose another --out"
            ) from None
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the run before removed this file as we opened it: lock a fresh one
    _HELD.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)  # still ours: nobody else can hold it while we do
        _HELD.discard(fd)
        os.close(fd)


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""
