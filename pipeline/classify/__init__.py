"""Bulk classification of folders of digit images to a CSV: the job users run most.

Shape of a run, chosen for throughput with bounded memory on any folder size:

    walk (main, streaming, sorted)  ->  chunks of paths  ->  decode + preprocess (workers)
    -> one inference call per chunk -> rows, in walk order -> CSV (partial file, renamed)

It owns the walk (`walk`), the chunk both engines share (`chunks`), the CSV with its lock and
resume (`csvout`), and the two engines: worker processes on this machine (`local`) and a Ray Data
job (`ray`). The engines do not import each other; `classify` below picks one. A file that cannot
be classified becomes a row with status `error` (or `blank`) and a one-line reason; the run goes on.
A row a person should look at keeps its digit, with status `review` and a reason (`pipeline.review`).

It may import `preprocess`, `runtime`, `review`, `manifest`, `formats`, `files`, `defaults` and `errors`,
and never imports TensorFlow: it runs artifacts through `pipeline.runtime`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline import defaults, manifest, review, runtime
from pipeline.choices import Engine
from pipeline.classify import screen
from pipeline.classify.chunks import ChunkResult, Summary, decode_chunk, predict_digits
from pipeline.classify.csvout import (
    ENCODING,
    ERRORS,
    HEADER,
    PROB_COLUMNS,
    Review,
    Writer,
    check_output,
    done_paths,
    exclusive,
    skip_done,
    write_chunk,
)
from pipeline.classify.local import inference_threads, local_chunks
from pipeline.classify.walk import walk
from pipeline.errors import ClassifyError

# The review model's file in the release folder (scripts/fit_review.py writes it).
REVIEW_MODEL = "review.npz"

__all__ = [
    "ENCODING",
    "ERRORS",
    "HEADER",
    "PROB_COLUMNS",
    "ChunkResult",
    "Engine",
    "Summary",
    "classify",
    "decode_chunk",
    "inference_threads",
    "predict_digits",
    "walk",
]


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
    engine: Engine | str = Engine.LOCAL,
    address: str | None = None,
    review_rows: bool = True,
    review_below: float = defaults.REVIEW_BELOW,
    review_queue: Path | None = None,
    screened: bool = True,
) -> Summary:
    """Classify every image under `folder` into the CSV `out`; see the module docstring.

    `engine="ray"` runs decoding and inference as a Ray Data job (`pipeline.classify.ray`), on a
    local Ray or the cluster at `address`; the CSV is the same, row for row. With `review_rows`,
    rows that are not one digit, or whose top probability is under `review_below`, get status
    `review` and a reason (`pipeline.review`; the model ships with the release). With
    `review_queue`, the finished CSV's review rows also go to review.csv and review.html there
    (`pipeline.classify.queue`). `progress(done, total)` is called after each chunk; with it the
    folder is walked once more first, to count its files. With `screened`, the release's screen
    answers in front of its default model where it is sure (`pipeline.classify.screen`).
    """
    try:
        engine = Engine(engine)
    except ValueError:
        raise ClassifyError(f"unknown engine {engine!r}; choose local or ray") from None
    if engine is Engine.RAY:
        from pipeline.classify import ray

        ray.require_ray()
    if not folder.is_dir():
        raise ClassifyError(f"{folder}: no such folder")
    check_output(out)
    if review_queue is not None:  # imported only when asked for: a run without it skips html
        from pipeline.classify import queue

        queue.prepare(review_queue)
    if chunk_size < 1:
        raise ClassifyError("--chunk-size must be at least 1")
    choice = manifest.choose_model(model)
    use_deskew = choice.deskew if deskew is None else deskew
    cores = os.cpu_count() or 1
    n_workers = workers or cores
    # Decoding is the bulk of the work and has its own processes; inference gets the cores left
    # over, at least one. Measured on 2 cores, 50k PNGs: 15.1k images/s with one inference
    # thread against 11.3k with onnxruntime's default (one per core), which fights the decoders.
    if not 0.0 <= review_below <= 1.0:
        raise ClassifyError("--review-below takes a probability, 0 to 1")
    # the review also holds the screen's gate: loaded for either (a missing one is an error only
    # where rows are to be reviewed)
    released = review_for(choice.path) if review_rows else _release_review(choice.path) if screened else None
    source = screen.source_for(choice.path, released if screened else None)
    predictor = screen.load(source, threads=max(1, cores - n_workers))  # fails before any work
    check = Review(released, review_below) if released is not None and review_rows else None
    from threadpoolctl import threadpool_limits

    # numpy's OpenBLAS (the review model's products) on one thread: its idle threads spin, and
    # took the decoding workers' cores (classify of 20,000 PNGs 1.46x slower with them).
    with threadpool_limits(limits=1, user_api="blas"), exclusive(out):
        summary = _run(
            folder, out, source, predictor, resume, probabilities, recursive, extensions, n_workers,
            workers, chunk_size, use_deskew, max_pixels, progress, engine, address, check,
        )  # fmt: skip
    if review_queue is not None:
        from pipeline.classify import queue

        summary.queue = queue.write_queue(out, folder, review_queue, deskew=use_deskew, max_pixels=max_pixels)
    return summary


def review_model_path() -> Path:
    """The review model shipped with the release."""
    release = manifest.release_dir()
    if release is None:
        raise review.ReviewError(f"no release folder with {REVIEW_MODEL}; run with --no-review")
    return release / REVIEW_MODEL


def review_for(model: Path) -> review.ReviewModel:
    """The release's review model as it applies to `model`: with its feature evidence only for
    the model that evidence was fitted on (`review.ReviewModel.for_model`)."""
    return review.load(review_model_path()).for_model(manifest.source_sha256(model))


def _release_review(model: Path) -> review.ReviewModel | None:
    """`review_for(model)`, or None where the release has no review model (the screen's gate is
    fitted there: without it the model runs alone)."""
    try:
        return review_for(model)
    except review.ReviewError:
        return None


def _run(
    folder: Path, out: Path, source: screen.Source, predictor: runtime.Predictor, resume: bool,
    probabilities: bool,
    recursive: bool, extensions: tuple[str, ...], n_workers: int, workers: int | None, chunk_size: int,
    deskew: bool, max_pixels: int, progress: Callable[[int, int], None] | None, engine: Engine,
    address: str | None, check: Review | None,
) -> Summary:  # fmt: skip
    """The run itself, while this process holds the lock on `out`."""
    header = HEADER + (PROB_COLUMNS if probabilities else [])
    partial = out.with_name(out.name + ".partial")
    state = out.with_name(out.name + ".partial.json")
    done: Iterator[str] = iter(())
    resume_bytes: int | None = None
    if resume and partial.is_file() and state.is_file():
        resume_bytes, done = done_paths(partial, state, header)
    # The progress display needs the count up front: a walk of its own. Without one (a batch job,
    # no terminal) the files are counted as they are written, and the work starts at once.
    total = sum(1 for _ in walk(folder, extensions, recursive)) if progress else None
    summary = Summary(out=out, model=source.model, screen=source.screen, files=total or 0)
    started = time.perf_counter()
    writer = Writer(partial, state, header, resume_bytes)
    try:
        todo = skip_done(walk(folder, extensions, recursive), done, summary)
        if progress and total is not None:
            progress(summary.resumed, total)
        chunks: Iterator[ChunkResult]
        if engine is Engine.RAY:
            from pipeline.classify import ray

            chunks = ray.predicted_chunks(
                folder, todo, source, deskew, max_pixels, chunk_size, address, workers
            )
        else:
            chunks = local_chunks(
                folder, todo, predictor, n_workers, chunk_size, deskew, max_pixels, summary, check, source
            )
        del predictor  # the local engine may swap in a session with more threads: free this one then
        for chunk in chunks:
            write_chunk(chunk, writer, summary, probabilities, check)
            if progress and total is not None:
                progress(len(chunk.paths), total)
    finally:
        writer.close()
    if total is None:
        summary.files = summary.resumed + summary.classified + summary.blank + summary.errors
    summary.seconds = time.perf_counter() - started
    os.replace(partial, out)
    state.unlink(missing_ok=True)
    return summary
