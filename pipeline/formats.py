"""The one table of artifact formats: suffix, quantizations, the verify rule, and what runs them.

Export decides what it can write from here, the runtime decides how to load a file from here, and
verify decides which parity rule applies from here; none of them keeps a list of its own (after
Ultralytics' exporter, whose format table is the single source of truth for suffixes and
arguments). Nothing here imports a heavy library.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline.errors import ArtifactError


class Format(StrEnum):
    KERAS = "keras"
    ONNX = "onnx"
    TFLITE = "tflite"


class Quantization(StrEnum):
    NONE = "none"  # float32, as trained
    DYNAMIC = "dynamic"  # int8 weights, float activations quantized on the fly
    INT8 = "int8"  # int8 weights and activations, calibrated on training images
    FLOAT16 = "float16"  # half-precision weights


# Quantizations that may lose accuracy beyond float rounding: verify applies the looser rule.
LOSSY = frozenset({Quantization.DYNAMIC, Quantization.INT8})


@dataclass(frozen=True)
class FormatSpec:
    """One row of the table."""

    suffix: str
    quantizations: tuple[Quantization, ...]  # what `pipeline export` can write ("none" = float32)
    exportable: bool  # a target of `pipeline export` (Keras is the source, not a target)
    loader: str  # the function of pipeline.runtime that loads it
    module: str  # the library that runs it: its absence is one line naming `install`
    install: str  # what a user installs to run it
    exporter: str | None  # the module of pipeline.export that writes it (write, describe_io)
    runtime: str  # what verify's report names as the runtime that ran it


FORMATS: dict[Format, FormatSpec] = {
    Format.KERAS: FormatSpec(
        suffix=".keras", quantizations=(Quantization.NONE,), exportable=False, loader="_load_keras",
        module="keras", install="pip install 'pipeline[export]'", exporter=None, runtime="keras",
    ),
    Format.ONNX: FormatSpec(
        suffix=".onnx", quantizations=tuple(Quantization), exportable=True, loader="_load_onnx",
        module="onnxruntime", install="pip install onnxruntime", exporter="pipeline.export.onnx",
        runtime="onnxruntime",
    ),
    Format.TFLITE: FormatSpec(
        suffix=".tflite", quantizations=tuple(Quantization), exportable=True, loader="_load_tflite",
        module="ai_edge_litert", install="pip install ai-edge-litert", exporter="pipeline.export.tflite",
        runtime="litert",
    ),
}  # fmt: skip

EXPORT_FORMATS: tuple[Format, ...] = tuple(f for f, spec in FORMATS.items() if spec.exportable)


def format_of(path: Path) -> Format:
    """The format of a file, from its suffix; anything else is one clear error."""
    suffix = path.suffix.lower()
    for fmt, spec in FORMATS.items():
        if spec.suffix == suffix:
            return fmt
    known = ", ".join(spec.suffix for spec in FORMATS.values())
    raise ArtifactError(f"{path}: unknown artifact type (expected one of {known})")


def is_lossy(quantization: Quantization | str) -> bool:
    """Whether verify judges this quantization by the accuracy rule alone (not agreement)."""
    return quantization in {q.value for q in LOSSY}


def artifact_name(model_name: str, fmt: Format, quant: Quantization, integer_io: bool = False) -> str:
    """`conv2d.int8.onnx`: model and quantization readable from the file name."""
    label = "float32" if quant is Quantization.NONE else quant.value
    if integer_io and fmt is Format.TFLITE and quant is Quantization.INT8:
        label = "int8-io"
    return f"{model_name}.{label}{FORMATS[fmt].suffix}"
