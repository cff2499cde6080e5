"""The choices users make by name on the command line, as `str` enums.

They live in this light module (no numpy, no PIL) so that the CLI can show them in `--help` and
refuse an unknown value before any work or heavy import; the stages that act on them import them
from here.
"""

from __future__ import annotations

from enum import StrEnum


class Style(StrEnum):
    """How `data samples` and `bench scans` render test digits."""

    MNIST = "mnist"  # 28x28 PNG exactly as in the dataset
    SCAN = "scan"  # dark ink on light paper, larger, margins, blur, noise, JPEG
    FORM = "form"  # a scan of a form field: the digit in a box, on an underline or in a comb


class Engine(StrEnum):
    """Where `classify` decodes and predicts."""

    LOCAL = "local"  # worker processes on this machine (pipeline.classify.local)
    RAY = "ray"  # a Ray Data job, local or on a cluster (pipeline.classify.ray)


class Backend(StrEnum):
    """The Keras backend `train` uses; `auto` prefers one that sees a GPU."""

    AUTO = "auto"
    TENSORFLOW = "tensorflow"
    JAX = "jax"
    TORCH = "torch"


class Precision(StrEnum):
    """Keras dtype policies `train --precision` accepts; `auto` resolves per device."""

    AUTO = "auto"
    FLOAT32 = "float32"
    MIXED_BFLOAT16 = "mixed_bfloat16"
    MIXED_FLOAT16 = "mixed_float16"
