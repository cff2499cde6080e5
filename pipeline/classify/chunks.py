"""A chunk of files decoded and predicted: the unit of work both engines share, and the run's counts.

A worker decodes and preprocesses a chunk of paths (`decode_chunk`), the engine predicts its good
digits (`predict_digits`), and the CSV writer turns it into rows; the local engine and the Ray
engine differ only in where these run, so their files are identical.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import defaults, preprocess, review, runtime
from pipeline.errors import BlankImageError, ImageError

if TYPE_CHECKING:
    from pipeline.classify.queue import Queue


@dataclass
class ChunkResult:
    """What a worker sends back for one chunk: digits for the good files, a status for each."""

    paths: list[str]
    digits: np.ndarray  # uint8 [n_ok, 28, 28] (empty once a worker that predicted sends it back)
    status: list[str]  # "ok", "blank" or "error", one per path
    errors: list[str]
    probs: np.ndarray | None = None  # float32 [n_ok, 10], filled in by the engine's inference
    decode_seconds: float = 0.0  # CPU time the worker spent decoding and preprocessing the chunk
    evidence: review.Evidence | None = None  # what the good digits' images say, for review
    reasons: list[str] | None = None  # each good digit's review reason, where a worker gave them
    features: np.ndarray | None = None  # the model's features of the good digits, where it has them
    screened: int = 0  # good digits the screen answered alone (pipeline.classify.screen)


def decode_chunk(
    root: str, paths: list[str], deskew: bool, max_pixels: int, evidence: bool = False
) -> ChunkResult:
    """Decode and preprocess a chunk of files; runs in a worker process. With `evidence`, the
    review's image evidence is made here too, beside the decoding, off the inference process."""
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
    found = review.image_evidence(array) if evidence else None
    return ChunkResult(
        paths, array, status, errors, decode_seconds=time.process_time() - started, evidence=found
    )


def predict_digits(predictor: runtime.Predictor, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities, and the model's features where it has them (for the review), for a uint8
    [n, 28, 28] batch (n may be 0): the one inference call of both engines, made in slices of
    CLASSIFY_INFERENCE_BATCH (`runtime.run_sliced`). A predictor that slices what it is given
    itself (`slices`: a screen and the model behind it, `screen.Screened`) gets the whole chunk,
    so that the model sees every row the screen sends on from it in one batch."""
    if not len(digits):
        return np.zeros((0, 10), np.float32), None
    if getattr(predictor, "slices", False):
        return predictor.run(preprocess.scale(digits))
    return runtime.run_sliced(predictor, preprocess.scale(digits), defaults.CLASSIFY_INFERENCE_BATCH)


def screened_rows(features: np.ndarray | None) -> int:
    """How many rows of a predicted batch the screen answered alone: theirs carry no model
    features (NaN; `screen.Screened.run`). 0 for a model run alone."""
    return 0 if features is None or not len(features) else int(np.isnan(features[:, 0]).sum())


@dataclass
class Summary:
    out: Path
    model: Path
    screen: Path | None = None  # the screen in front of the model, if any (pipeline.classify.screen)
    screened: int = 0  # digits it answered alone (the rest of `classified`: the model's)
    files: int = 0
    classified: int = 0
    blank: int = 0
    errors: int = 0
    resumed: int = 0
    per_digit: list[int] = field(default_factory=lambda: [0] * 10)
    review: dict[str, int] = field(default_factory=dict)  # rows for a person, by reason
    seconds: float = 0.0
    inference_threads: int = 1  # what the local engine settled on (see inference_threads)
    inference_workers: int = 0  # the local engine's workers that predicted (0: this process did)
    queue: Queue | None = None  # the review queue written after the run, if asked for

    @property
    def images_per_second(self) -> float:
        done = self.files - self.resumed
        return done / self.seconds if self.seconds > 0 else 0.0
