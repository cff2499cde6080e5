"""One way to run any artifact: `load(path).predict(images) -> probabilities`.

verify, evaluate, classify and the benchmarks all go through here, so integer input/output
scaling, batch resizing and session options are decided once. Each backend is imported only when
an artifact of its format is loaded: classify on an ONNX file never imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline import defaults
from pipeline.errors import ArtifactError
from pipeline.formats import FORMATS, Format, format_of

__all__ = [
    "Format", "KerasPredictor", "LiteRTPredictor", "OnnxPredictor", "Predictor",
    "format_of", "load", "require",
]  # fmt: skip


class Predictor(Protocol):
    """What every loaded artifact offers."""

    path: Path
    format: Format

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, 28, 28, 1] in [0, 1] -> float32 [N, 10]."""
        ...


@dataclass
class KerasPredictor:
    path: Path
    model: Any
    format: Format = Format.KERAS
    batch_size: int = 1024

    def predict(self, images: np.ndarray) -> np.ndarray:
        outs = [
            np.asarray(self.model(images[i : i + self.batch_size], training=False))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 10), np.float32)


@dataclass
class OnnxPredictor:
    path: Path
    session: Any
    input_name: str
    output_name: str
    format: Format = Format.ONNX
    threads: int | None = None  # intra-op threads asked for (None: onnxruntime's default)

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], np.float32)


@dataclass
class LiteRTPredictor:
    """LiteRT interpreter behind the common interface.

    TFLite fixes the batch size at conversion; the input is resized to each batch's size (and
    kept while sizes repeat). Integer-only models get their input quantized and their output
    dequantized here, with the scale and zero point stored in the file.
    """

    path: Path
    interpreter: Any
    format: Format = Format.TFLITE
    threads: int | None = None  # interpreter threads asked for (None: LiteRT's default)
    _batch: int = -1

    def predict(self, images: np.ndarray) -> np.ndarray:
        it = self.interpreter
        inp = it.get_input_details()[0]
        n = len(images)
        if n == 0:
            return np.zeros((0, 10), np.float32)
        if n != self._batch:
            it.resize_tensor_input(inp["index"], [n, *inp["shape"][1:]], strict=False)
            it.allocate_tensors()
            self._batch = n
            inp = it.get_input_details()[0]
        x = np.asarray(images, dtype=np.float32)
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.rint(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        out = it.get_output_details()[0]
        y = it.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, dtype=np.float32)


def _load_keras(path: Path, threads: int | None = None) -> KerasPredictor:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        from pipeline import quiet

        keras = quiet.load("keras")
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # corrupt zips, wrong contents, unknown layers: all one user error
        raise ArtifactError(f"{path}: not a loadable Keras model ({type(exc).__name__}: {exc})") from exc
    return KerasPredictor(path, model)


def _load_onnx(path: Path, threads: int | None) -> OnnxPredictor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"{path}: onnxruntime cannot load it ({exc})") from exc
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    input_name = defaults.INPUT_NAME if defaults.INPUT_NAME in names else names[0]
    output_name = defaults.OUTPUT_NAME if defaults.OUTPUT_NAME in outputs else outputs[0]
    return OnnxPredictor(path, session, input_name, output_name, threads=threads)


def _load_tflite(path: Path, threads: int | None) -> LiteRTPredictor:
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.quiet import stderr_silenced

    try:
        with stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
    except Exception as exc:
        raise ArtifactError(f"{path}: LiteRT cannot load it ({exc})") from exc
    return LiteRTPredictor(path, it, threads=threads)


def load(path: Path | str, threads: int | None = None) -> Predictor:
    """Load a `.keras`, `.onnx` or `.tflite` file; `threads` caps intra-op threads (ONNX/TFLite)."""
    path = Path(path)
    fmt = format_of(path)
    spec = FORMATS[fmt]
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    require(fmt)
    loader = getattr(sys.modules[__name__], spec.loader)
    predictor: Predictor = loader(path, threads)
    return predictor


def require(fmt: Format) -> None:
    """One clear line, naming what to install, when the library that runs `fmt` is missing: the
    core install runs ONNX only, and Keras and LiteRT come with the [export] extra."""
    spec = FORMATS[fmt]
    if importlib.util.find_spec(spec.module) is None:
        raise ArtifactError(f"running {spec.suffix} files needs {spec.module}: {spec.install}")


def top2(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Prediction, confidence, second-best class and its confidence, as the seed reported them."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(probs))
    first, second = order[:, 0], order[:, 1]
    return first, probs[rows, first], second, probs[rows, second]
