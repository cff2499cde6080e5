"""The Keras model being exported: loaded once, with what the manifest and the artifacts say about it."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__, data, manifest, preprocess, runtime
from pipeline.errors import ArtifactError, ExportError
from pipeline.files import sha256, sidecar_json
from pipeline.formats import Quantization


@dataclass
class Source:
    """The Keras model being exported, with what the manifest says about it."""

    path: Path
    model: Any
    name: str
    sha256: str
    test_accuracy: float | None
    parameters: int
    deskew: bool
    training: dict[str, Any]  # epochs, train_seconds, device, ... from the run's metrics.json


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"pipeline": __version__, "python": sys.version.split()[0]}
    for name in ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def load_source(path: Path) -> Source:
    """Load the .keras file; its metrics.json and config.json supply accuracy, training facts and
    preprocessing when present."""
    if not path.is_file():
        raise ExportError(f"{path}: no such model file")
    try:
        predictor = runtime.load(path)
    except ArtifactError as exc:
        raise ExportError(str(exc)) from exc
    model = predictor.model  # type: ignore[attr-defined]
    metrics = sidecar_json(path, "metrics.json")
    training: dict[str, Any] = {
        key: metrics.get(key)
        for key in (
            "epochs",
            "best_epoch",
            "train_seconds",
            "backend",
            "device",
            "augment",
            "precision",
            "seed",
            "dataset",
            "kind",
            "members",
            "calibration",  # how the temperature in the weights was fitted (pipeline calibrate)
        )
        if key in metrics
    }
    return Source(
        path=path, model=model, name=str(metrics.get("model") or model.name), sha256=sha256(path),
        test_accuracy=metrics.get("test_accuracy"), parameters=int(model.count_params()),
        deskew=manifest.expected_deskew(path), training=training,
    )  # fmt: skip


def calibration_images(count: int, seed: int, deskew: bool, data_dir: Path | None) -> np.ndarray:
    """`count` training images (never test images), seeded, preprocessed as for training."""
    x, _ = data.load(data.Split.TRAIN, data_dir=data_dir)
    idx = np.random.default_rng(seed).choice(len(x), size=min(count, len(x)), replace=False)
    picked = x[np.sort(idx)]
    return preprocess.model_input(picked, deskew)


def metadata(source: Source, quant: Quantization) -> dict[str, str]:
    """What every artifact carries about itself: labels, preprocessing and provenance."""
    return {
        "labels": json.dumps(list(data.CLASS_NAMES[data.Dataset.MNIST])),
        "preprocessing": json.dumps({**preprocess.PREPROCESSING_DESCRIPTION, "deskew": source.deskew}),
        "source_model": source.name,
        "source_sha256": source.sha256,
        "quantization": quant.value,
        "pipeline_version": __version__,
    }
