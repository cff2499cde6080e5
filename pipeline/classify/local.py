"""The local engine: worker processes decode (and, for ONNX and TFLite models, predict), chunks
come back in walk order.

- At most `2 x workers` chunks are in flight, so memory does not grow with the folder.
- Rows come out in the deterministic walk order whatever the worker timing, so two runs over the
  same folder write identical files, and a resumed run continues exactly where the first stopped.
- Each worker runs its own one-thread session of an ONNX or TFLite model on the chunk it decoded,
  and the review's reasons beside it: this process only writes rows, so no serial step bounds a
  run whose files are quick to decode. A Keras model (TensorFlow in every worker would cost a
  process's worth of memory each) and `--workers 1` predict here instead.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pipeline import defaults, runtime
from pipeline.classify import screen
from pipeline.classify.chunks import ChunkResult, Summary, decode_chunk, predict_digits, screened_rows
from pipeline.classify.csvout import Review
from pipeline.classify.screen import Source
from pipeline.errors import ClassifyError
from pipeline.formats import Format


def _chunks(paths: Iterator[str], size: int, workers: int = 1) -> Iterator[list[str]]:
    """The paths in walk order, in chunks of `size`. With several workers the last ones shrink:
    the paths are read `workers` chunks ahead, and once the walk ends, what is left goes out in
    chunks of a `2 * workers`-th of it (CLASSIFY_TAIL_CHUNK_MIN at least), so the workers finish
    within a small chunk of each other instead of one waiting out another's whole last chunk."""
    pending: list[str] = []
    ahead = size * (workers if workers > 1 else 0)
    for path in paths:
        pending.append(path)
        if len(pending) >= size + ahead:
            yield pending[:size]
            del pending[:size]
    while pending:
        share = -(-len(pending) // (2 * workers))
        step = min(size, max(defaults.CLASSIFY_TAIL_CHUNK_MIN, share)) if ahead else size
        yield pending[:step]
        del pending[:step]


def decoded_chunks(
    folder: Path, paths: Iterator[str], workers: int, chunk_size: int, deskew: bool, max_pixels: int,
    evidence: bool = False, predict: tuple[Source, Review | None] | None = None,
) -> Iterator[ChunkResult]:  # fmt: skip
    """Decode chunks in a process pool, yielding them in walk order with a bounded window. With
    `predict` (a model and the review check), each worker also predicts its chunk and gives its
    rows their reasons (`_predicted_chunk`)."""
    root = os.fsdecode(folder)
    chunks = _chunks(paths, chunk_size, workers)
    if workers <= 1:
        for chunk in chunks:
            yield decode_chunk(root, chunk, deskew, max_pixels, evidence)
        return
    # fork: workers start instantly and inherit the imported modules (and the review model). PIL
    # is not among them: a worker imports it with the first file that needs it, most never do.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    task: Any = decode_chunk if predict is None else _predicted_chunk
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (the OOM killer, a crash
    # in a decoder) breaks the pool and ends the run with an error, where Pool waits for its task
    # forever; and leaving early waits for the chunks in flight, where Pool.terminate kills workers
    # that may hold the result queue's lock and can then hang its own task thread.
    # Everything this process holds now (the imported modules, the review model) lives for the
    # whole run: frozen, the workers' garbage collections skip it instead of walking all of it
    # again and again (docs/benchmarks.md), and do not write to the pages the workers share with
    # this process. Thawed when the run ends, for a caller that goes on.
    gc.freeze()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=(predict,))
    window: deque[Future[ChunkResult]] = deque()
    try:
        for chunk in chunks:
            window.append(pool.submit(task, root, chunk, deskew, max_pixels, evidence))
            if len(window) >= 2 * workers:
                yield _result(window.popleft())
        while window:
            yield _result(window.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()


def _result(future: Future[ChunkResult]) -> ChunkResult:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise ClassifyError(
            "a worker process died (killed, or out of memory); the rows written so far are kept: "
            "run again with --resume to go on"
        ) from exc


# What a worker process predicts with: its own session of the model, and the review check.
_WORKER: dict[str, Any] = {}


def _start_worker(predict: tuple[Source, Review | None] | None) -> None:
    """Pool initializer: load the model (and its screen) once per worker, on one thread (a worker
    per core)."""
    if predict is not None:
        source, check = predict
        _WORKER["check"] = check
        try:
            _WORKER["predictor"] = screen.load(source, threads=1)
        except Exception as exc:  # raised by the worker's first task, with its message: a pool
            _WORKER["failed"] = exc  # whose initializer fails only says that a worker died


def _predicted_chunk(
    root: str, paths: list[str], deskew: bool, max_pixels: int, evidence: bool
) -> ChunkResult:
    """A worker's task when it predicts too: decode, predict, and give each row its reason."""
    if "failed" in _WORKER:
        raise _WORKER["failed"]
    chunk = decode_chunk(root, paths, deskew, max_pixels, evidence)
    chunk.probs, features = predict_digits(_WORKER["predictor"], chunk.digits)
    chunk.screened = screened_rows(features)
    check: Review | None = _WORKER["check"]
    if check is not None:
        chunk.reasons = check.model.reasons(chunk.digits, chunk.probs, check.below, chunk.evidence, features)
    # Sent back without the digits, their evidence and the features: the writer needs the
    # probabilities and reasons only, and the digits were most of what crossed the pipe.
    chunk.digits, chunk.evidence = chunk.digits[:0], None
    return chunk


def predicts_in_workers(model: Path, workers: int) -> bool:
    """Whether the workers predict (see the module docstring): ONNX and TFLite, two workers or more."""
    return workers > 1 and runtime.format_of(model) in (Format.ONNX, Format.TFLITE)


def local_chunks(
    folder: Path, paths: Iterator[str], predictor: runtime.Predictor, workers: int, chunk_size: int,
    deskew: bool, max_pixels: int, summary: Summary, check: Review | None = None,
    source: Source | None = None,
) -> Iterator[ChunkResult]:  # fmt: skip
    """The local engine: chunks decoded by the process pool and predicted there (ONNX, TFLite) or
    here, in walk order (with `check`, the workers also make the review's image evidence).

    Predicting here, inference starts on one thread. When it has one thread and the machine more
    than one core, the first chunks are timed (inference here, decoding in the workers, CPU
    seconds per image) and `inference_threads` decides whether a session with more threads takes
    over. `source`: what `predictor` was loaded from (`screen.source_for`), for the workers and
    that session; the predictor's file alone where not given.
    """
    source = source or Source(predictor.path)
    if predicts_in_workers(predictor.path, workers):
        summary.inference_workers = workers
        yield from decoded_chunks(
            folder, paths, workers, chunk_size, deskew, max_pixels, check is not None, (source, check)
        )
        return
    cores = os.cpu_count() or 1
    probing = cores > 1 and _threads_of(predictor) == 1
    decode = infer = 0.0
    timed = images = 0
    evidence = check is not None
    for chunk in decoded_chunks(folder, paths, workers, chunk_size, deskew, max_pixels, evidence):
        started = time.perf_counter()
        chunk.probs, chunk.features = predict_digits(predictor, chunk.digits)
        chunk.screened = screened_rows(chunk.features)
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
                    predictor = screen.load(source, threads=threads)
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
