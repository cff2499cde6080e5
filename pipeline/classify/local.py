"""The local engine: worker processes decode, this process predicts, chunks come back in walk order.

- At most `2 x workers` chunks are in flight, so memory does not grow with the folder.
- Rows come out in the deterministic walk order whatever the worker timing, so two runs over the
  same folder write identical files, and a resumed run continues exactly where the first stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import defaults, runtime
from pipeline.classify.chunks import ChunkResult, Summary, decode_chunk, predict_digits


def _chunks(paths: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for path in paths:
        chunk.append(path)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def decoded_chunks(
    folder: Path, paths: Iterator[str], workers: int, chunk_size: int, deskew: bool, max_pixels: int,
    evidence: bool = False,
) -> Iterator[ChunkResult]:  # fmt: skip
    """Decode chunks in a process pool, yielding them in walk order with a bounded window."""
    root = os.fsdecode(folder)
    chunks = _chunks(paths, chunk_size)
    if workers <= 1:
        for chunk in chunks:
            yield decode_chunk(root, chunk, deskew, max_pixels, evidence)
        return
    # fork: workers start instantly and inherit the imported modules; they only use PIL and numpy.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ctx.Pool(workers) as pool:
        window: deque[Any] = deque()
        for chunk in chunks:
            window.append(pool.apply_async(decode_chunk, (root, chunk, deskew, max_pixels, evidence)))
            if len(window) >= 2 * workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()


def local_chunks(
    folder: Path, paths: Iterator[str], predictor: runtime.Predictor, workers: int, chunk_size: int,
    deskew: bool, max_pixels: int, summary: Summary, evidence: bool = False,
) -> Iterator[ChunkResult]:  # fmt: skip
    """The local engine: chunks decoded by the process pool, predicted here, in walk order (with
    `evidence`, the workers also make the review's image evidence).

    Inference starts on one thread. When it has one thread and the machine more than one core,
    the first chunks are timed (inference here, decoding in the workers, CPU seconds per image)
    and `inference_threads` decides whether a session with more threads takes over.
    """
    cores = os.cpu_count() or 1
    probing = cores > 1 and _threads_of(predictor) == 1
    decode = infer = 0.0
    timed = images = 0
    for chunk in decoded_chunks(folder, paths, workers, chunk_size, deskew, max_pixels, evidence):
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
