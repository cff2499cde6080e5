"""Named errors.

Library code raises these; only ``pipeline.cli`` turns them into an exit code and one line on
stderr. Anything else that escapes is a bug and is allowed to show a traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every user-facing error: the message is the one line the user sees."""

    exit_code = 1


class DataError(PipelineError):
    """A dataset could not be found, downloaded, parsed or verified."""

    exit_code = 3


class ModelError(PipelineError):
    """A model name is unknown, or a model file is missing or unreadable."""

    exit_code = 4


class TrainError(PipelineError):
    """Training cannot start or resume (bad options, missing checkpoint, backend unavailable)."""

    exit_code = 5


class ExportError(PipelineError):
    """A conversion or quantization failed; nothing was written for it."""

    exit_code = 6


class ArtifactError(PipelineError):
    """An exported artifact cannot be loaded or run by ``pipeline.runtime``."""

    exit_code = 7


class ParityError(PipelineError):
    """One or more artifacts failed verification; ``failures`` lists every one."""

    exit_code = 8

    def __init__(self, message: str, failures: list[str] | None = None, report: object = None) -> None:
        super().__init__(message)
        self.failures = failures or []
        self.report = report  # the ParityReport, when verification ran


class ClassifyError(PipelineError):
    """classify cannot start (bad folder, unwritable output, unusable resume file)."""

    exit_code = 9


class ManifestError(PipelineError):
    """A manifest or parity report is missing, unreadable or not one of ours, or names no usable model."""

    exit_code = 11


class OutputError(PipelineError):
    """An output could not be written: the disk or the quota is full, the folder is read-only or
    missing. Nothing half-written is left under the output's name (`pipeline.files`)."""

    exit_code = 13


class ClassifyBusyError(ClassifyError):
    """Another classify run holds the lock on the same --out."""


class ImageError(PipelineError):
    """One image could not be turned into a model input; classify records it and goes on."""


class BlankImageError(ImageError):
    """The image holds no ink: reported as blank rather than guessed."""


class EnsembleError(TrainError):
    """Models cannot be combined (too few, missing, or disagreeing on data or output)."""


class CalibrationError(TrainError):
    """A model cannot be calibrated: no held-out images, or an output calibration cannot fold into."""
