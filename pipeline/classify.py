"""Bulk classification of folders of digit images to a CSV: the job users run most.

Shape of a run, chosen for throughput with bounded memory on any folder size:

    walk (main, streaming, sorted)  ->  chunks of paths  ->  worker processes: decode + preprocess
    -> main: one onnxruntime call per chunk -> rows, in walk order -> CSV (partial file, renamed)

- At most `2 x workers` chunks are in flight, so memory does not grow with the folder.
- Rows come out in the deterministic walk order whatever the worker timing, so two runs over the
  same folder write identical files, and a resumed run continues exactly where the first stopped.
- The CSV is written to `<out>.partial`; after every flushed block its committed size and row count
  go to `<out>.partial.json`. `--resume` truncates the partial file to that size (dropping a row
  torn by `kill -9`), skips the files already written (checking they are the same files, in the
  same order), and appends. Only a finished run is renamed to `<out>`.
- A file that cannot be classified becomes a row with status `error` (or `blank`) and a one-line
  reason; the run goes on.

This module never imports TensorFlow: it runs artifacts through `pipeline.runtime`.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import defaults, preprocess, runtime
from pipeline.errors import BlankImageError, ClassifyError, ImageError


class Engine(StrEnum):
    LOCAL = "local"  # worker processes on this machine
    RAY = "ray"  # a Ray Data job, local or on a cluster (pipeline.ray_engine)


HEADER = ["path", "prediction", "confidence", "second", "second_confidence", "status", "error"]
PROB_COLUMNS = [f"p{d}" for d in range(10)]
# Paths are kept as str with undecodable bytes as surrogates (os.fsdecode); the CSV is written
# with the same error handler, so a file name that is not valid UTF-8 comes out as its own bytes.
ENCODING, ERRORS = "utf-8", "surrogateescape"


# --- walking ---------------------------------------------------------------------------------


def walk(root: Path, extensions: tuple[str, ...], recursive: bool = True) -> Iterator[str]:
    """Yield image paths relative to `root`, sorted, depth-first, following links without loops.

    Sorting each folder's entries by name gives one deterministic order on every machine. Folders
    are identified by (device, inode), so a symbolic link back to an ancestor is visited once.
    """
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    seen: set[tuple[int, int]] = set()

    def visit(folder: str, rel: str) -> Iterator[str]:
        try:
            info = os.stat(folder)
        except OSError:
            return
        key = (info.st_dev, info.st_ino)
        if key in seen:
            return
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            rel_path = f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    yield from visit(entry.path, rel_path + "/")
            elif os.path.splitext(entry.name)[1].lower() in exts:
                yield rel_path

    yield from visit(os.fsdecode(root), "")


# --- workers ---------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    """What a worker sends back for one chunk: digits for the good files, a status for each."""

    paths: list[str]
    digits: np.ndarray  # uint8 [n_ok, 28, 28]
    status: list[str]  # "ok", "blank" or "error", one per path
    errors: list[str]
    probs: np.ndarray | None = None  # float32 [n_ok, 10], filled in by the engine's inference
    decode_seconds: float = 0.0  # CPU time the worker spent decoding and preprocessing the chunk


def decode_chunk(root: str, paths: list[str], deskew: bool, max_pixels: int) -> ChunkResult:
    """Decode and preprocess a chunk of files; runs in a worker process."""
    started = time.process_time()
    digits, status, errors = [], [], []
    for rel in paths:
        try:
            digits.append(
                preprocess.load_digit(os.path.join(root, rel), deskew_digit=deskew, max_pixels=max_pixels)
            )
            status.append("ok")
            errors.append("")
        except BlankImageError as exc:
            status.append("blank")
            errors.append(str(exc))
        except ImageError as exc:
            status.append("error")
            errors.append(str(exc))
        except Exception as exc:  # a decoder bug on one hostile file must not end the run
            status.append("error")
            errors.append(f"{type(exc).__name__}: {exc}".replace("\n", " "))
    size = defaults.FIELD_SIZE
    array = np.stack(digits) if digits else np.zeros((0, size, size), np.uint8)
    return ChunkResult(paths, array, status, errors, decode_seconds=time.process_time() - started)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Summary:
    out: Path
    model: Path
    files: int = 0
    classified: int = 0
    blank: int = 0
    errors: int = 0
    resumed: int = 0
    per_digit: list[int] = field(default_factory=lambda: [0] * 10)
    seconds: float = 0.0
    inference_threads: int = 1  # what the local engine settled on (see inference_threads)

    @property
    def images_per_second(self) -> float:
        done = self.files - self.resumed
        return done / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    deskew: bool


def find_manifests() -> list[Path]:
    """Manifests where shipped or exported models live: ./exported, then the project's own."""
    here = defaults.EXPORT_DIR / defaults.MANIFEST_NAME
    shipped = Path(__file__).resolve().parent.parent / defaults.EXPORT_DIR / defaults.MANIFEST_NAME
    return [m for m in dict.fromkeys([here, shipped]) if m.is_file()]


def _accuracy(entry: dict[str, Any], parity: dict[str, float]) -> float:
    return parity.get(entry["path"], entry.get("source", {}).get("test_accuracy") or 0.0)


def choose_model(model: Path | None) -> ModelChoice:
    """`--model` as given, else the most accurate int8 ONNX of the first manifest that lists one
    (./exported/manifest.json, then the one shipped with the project).

    Accuracy comes from parity.json (measured on the artifact itself) when verify has run, else
    from the source model's test accuracy. The deskew setting comes from the artifact's entry.
    """
    if model is not None:
        if not model.is_file():
            raise ClassifyError(f"{model}: no such model file")
        runtime.format_of(model)
        deskew = False
        manifest = model.parent / defaults.MANIFEST_NAME
        if manifest.is_file():
            for entry in json.loads(manifest.read_text()).get("artifacts", []):
                if entry.get("path") == model.name:
                    deskew = bool(entry.get("preprocessing", {}).get("deskew", False))
        return ModelChoice(model, deskew)
    candidates: list[tuple[float, Path, bool]] = []
    for manifest in find_manifests():  # ./exported first: a user's own exports win over shipped ones
        parity_path = manifest.parent / "parity.json"
        parity = {}
        if parity_path.is_file():
            results = json.loads(parity_path.read_text()).get("results", [])
            parity = {r["path"]: r["accuracy"] for r in results if r.get("accuracy") is not None}
        for entry in json.loads(manifest.read_text()).get("artifacts", []):
            if entry.get("format") == "onnx" and entry.get("quantization") == "int8":
                path = manifest.parent / entry["path"]
                if path.is_file():
                    deskew = bool(entry.get("preprocessing", {}).get("deskew", False))
                    candidates.append((_accuracy(entry, parity), path, deskew))
        if candidates:
            break
    if not candidates:
        raise ClassifyError("no --model given and no int8 ONNX model in exported/manifest.json")
    _, path, deskew = max(candidates, key=lambda c: c[0])
    return ModelChoice(path, deskew)


class _Writer:
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
        self.commit()

    def write(self, row: list[Any]) -> None:
        self.writer.writerow(row)
        self.pending += 1
        if self.pending >= defaults.CLASSIFY_FLUSH_ROWS:
            self.commit()

    def commit(self) -> None:
        self.file.write(self.buffer.getvalue())
        self.buffer.seek(0)
        self.buffer.truncate()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.rows += self.pending
        self.pending = 0
        tmp = self.state.with_name(self.state.name + ".tmp")
        tmp.write_text(json.dumps({"rows": self.rows, "bytes": self.file.tell()}))
        os.replace(tmp, self.state)

    def close(self) -> None:
        self.commit()
        self.file.close()


def _done_paths(partial: Path, state: Path, header: list[str]) -> tuple[int, Iterator[str]]:
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


def _check_output(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ClassifyError(f"{out}: is a folder; --out takes a file name")
    if not parent.is_dir():
        raise ClassifyError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK):
        raise ClassifyError(f"{parent}: output folder is not writable")


def classify(
    folder: Path,
    out: Path,
    model: Path | None = None,
    resume: bool = False,
    probabilities: bool = False,
    recursive: bool = True,
    extensions: tuple[str, ...] = defaults.IMAGE_EXTENSIONS,
    workers: int | None = None,
    chunk_size: int = defaults.CLASSIFY_CHUNK_SIZE,
    deskew: bool | None = None,
    max_pixels: int = defaults.MAX_IMAGE_PIXELS,
    progress: Callable[[int, int], None] | None = None,
    engine: Engine | str = "local",
    address: str | None = None,
) -> Summary:
    """Classify every image under `folder` into the CSV `out`; see the module docstring.

    `engine="ray"` runs decoding and inference as a Ray Data job (`pipeline.ray_engine`), on a
    local Ray or the cluster at `address`; the CSV is the same, row for row.
    """
    try:
        engine = Engine(engine)
    except ValueError:
        raise ClassifyError(f"unknown engine {engine!r}; choose local or ray") from None
    if engine is Engine.RAY:
        from pipeline import ray_engine

        ray_engine.require_ray()
    if not folder.is_dir():
        raise ClassifyError(f"{folder}: no such folder")
    _check_output(out)
    if chunk_size < 1:
        raise ClassifyError("--chunk-size must be at least 1")
    choice = choose_model(model)
    use_deskew = choice.deskew if deskew is None else deskew
    header = HEADER + (PROB_COLUMNS if probabilities else [])
    partial = out.with_name(out.name + ".partial")
    state = out.with_name(out.name + ".partial.json")
    done: Iterator[str] = iter(())
    resume_bytes: int | None = None
    if resume and partial.is_file() and state.is_file():
        resume_bytes, done = _done_paths(partial, state, header)
    cores = os.cpu_count() or 1
    n_workers = workers or cores
    # Decoding is the bulk of the work and has its own processes; inference gets the cores left
    # over, at least one. Measured on 2 cores, 50k PNGs: 15.1k images/s with one inference
    # thread against 11.3k with onnxruntime's default (one per core), which fights the decoders.
    predictor = runtime.load(choice.path, threads=max(1, cores - n_workers))  # fails before any work
    total = sum(1 for _ in walk(folder, extensions, recursive))
    summary = Summary(out=out, model=choice.path, files=total)
    started = time.perf_counter()
    writer = _Writer(partial, state, header, resume_bytes)
    try:
        todo = _skip_done(walk(folder, extensions, recursive), done, summary)
        if progress:
            progress(summary.resumed, total)
        if engine is Engine.RAY:
            from pipeline import ray_engine

            chunks = ray_engine.predicted_chunks(
                folder, todo, choice.path, use_deskew, max_pixels, chunk_size, address, workers
            )
        else:
            chunks = _local_chunks(
                folder, todo, predictor, n_workers, chunk_size, use_deskew, max_pixels, summary
            )  # fmt: skip
            del predictor  # the engine may swap in a session with more threads: free this one then
        for chunk in chunks:
            _write_chunk(chunk, writer, summary, probabilities)
            if progress:
                progress(len(chunk.paths), total)
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - started
    os.replace(partial, out)
    state.unlink(missing_ok=True)
    return summary


def _skip_done(paths: Iterator[str], done: Iterator[str], summary: Summary) -> Iterator[str]:
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


def _chunks(paths: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for path in paths:
        chunk.append(path)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _decoded_chunks(
    folder: Path, paths: Iterator[str], workers: int, chunk_size: int, deskew: bool, max_pixels: int
) -> Iterator[ChunkResult]:
    """Decode chunks in a process pool, yielding them in walk order with a bounded window."""
    root = os.fsdecode(folder)
    chunks = _chunks(paths, chunk_size)
    if workers <= 1:
        for chunk in chunks:
            yield decode_chunk(root, chunk, deskew, max_pixels)
        return
    # fork: workers start instantly and inherit the imported modules; they only use PIL and numpy.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ctx.Pool(workers) as pool:
        window: deque[Any] = deque()
        for chunk in chunks:
            window.append(pool.apply_async(decode_chunk, (root, chunk, deskew, max_pixels)))
            if len(window) >= 2 * workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()


def _local_chunks(
    folder: Path, paths: Iterator[str], predictor: runtime.Predictor, workers: int, chunk_size: int,
    deskew: bool, max_pixels: int, summary: Summary,
) -> Iterator[ChunkResult]:  # fmt: skip
    """The local engine: chunks decoded by the process pool, predicted here, in walk order.

    Inference starts on one thread. When it has one thread and the machine more than one core,
    the first chunks are timed (inference here, decoding in the workers, CPU seconds per image)
    and `inference_threads` decides whether a session with more threads takes over.
    """
    cores = os.cpu_count() or 1
    probing = cores > 1 and _threads_of(predictor) == 1
    decode = infer = 0.0
    timed = images = 0
    for chunk in _decoded_chunks(folder, paths, workers, chunk_size, deskew, max_pixels):
        started = time.perf_counter()
        chunk.probs = predict_digits(predictor, chunk.digits)
        if probing and len(chunk.digits):
            if timed:  # the first call pays for the session's warm-up
                decode += chunk.decode_seconds
                infer += time.perf_counter() - started
                images += len(chunk.digits)
            timed += 1
            if timed > defaults.CLASSIFY_PROBE_CHUNKS:
                probing = False
                threads = inference_threads(cores, decode / images, infer / images)
                if threads > 1:
                    predictor = runtime.load(predictor.path, threads=threads)
                    summary.inference_threads = threads
        yield chunk


def _threads_of(predictor: runtime.Predictor) -> int | None:
    """The intra-op threads of an ONNX or LiteRT predictor; None for Keras (not resized)."""
    return getattr(predictor, "threads", None)


def inference_threads(cores: int, decode_seconds: float, inference_seconds: float) -> int:
    """Inference threads for the rest of a run, from CPU seconds per image measured on one thread.

    With t inference threads running at t times one thread's rate, the decoders need
    t * decode / inference cores beside them, so t = cores / (1 + decode / inference), rounded:
    a small remainder is left to the operating system to share. Measured on 2 cores, 50,000 PNG
    digits: the default bncnn-x4 (625 us of inference and 141 us of decoding per image: 2
    threads) went from 1,258 to 2,160 images/s with 2 threads, while the light conv2d (82 and 104
    us: 1 thread) fell from 6,348 to 5,726 with 2, its decoders losing the core; large scans, slow
    to decode, keep one.
    """
    if inference_seconds <= 0:
        return 1
    return max(1, min(cores, round(cores / (1 + decode_seconds / inference_seconds))))


def predict_digits(predictor: runtime.Predictor, digits: np.ndarray) -> np.ndarray:
    """Probabilities for a uint8 [n, 28, 28] batch (n may be 0): the one inference call of both
    engines."""
    if not len(digits):
        return np.zeros((0, 10), np.float32)
    return predictor.predict(preprocess.scale(digits))


def _write_chunk(chunk: ChunkResult, writer: _Writer, summary: Summary, probabilities: bool) -> None:
    """Turn one predicted chunk into CSV rows (shared by both engines, so their files match)."""
    probs = chunk.probs if chunk.probs is not None else np.zeros((0, 10), np.float32)
    first, conf, second, second_conf = runtime.top2(probs)
    k = 0
    for path, status, error in zip(chunk.paths, chunk.status, chunk.errors, strict=True):
        if status == "ok":
            row: list[Any] = [
                path,
                int(first[k]),
                f"{conf[k]:.6f}",
                int(second[k]),
                f"{second_conf[k]:.6f}",
                "ok",
                "",
            ]
            if probabilities:
                row += [f"{p:.6f}" for p in probs[k]]
            summary.classified += 1
            summary.per_digit[int(first[k])] += 1
            k += 1
        else:
            row = [path, "", "", "", "", status, error]
            if probabilities:
                row += [""] * 10
            if status == "blank":
                summary.blank += 1
            else:
                summary.errors += 1
        writer.write(row)
