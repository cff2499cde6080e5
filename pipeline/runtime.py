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
    "format_of", "load", "require", "run_sliced",
]  # fmt: skip


class Predictor(Protocol):
    """What every loaded artifact offers."""

    path: Path
    format: Format

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, 28, 28, 1] in [0, 1] -> float32 [N, 10]."""
        ...

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The probabilities and, from one pass, the features where the artifact has them
        (`defaults.FEATURES_NAME`; None where it has not)."""
        ...


def run_sliced(predictor: Predictor, images: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray | None]:
    """`predictor.run` of `images` in slices of `step` (no images: one call, as unsliced): a
    session's memory grows with its batch, and past a few dozen images its speed falls
    (defaults.CLASSIFY_INFERENCE_BATCH)."""
    parts = [predictor.run(images[i : i + step]) for i in range(0, max(len(images), 1), step)]
    probs = np.concatenate([p for p, _ in parts])
    features = [f for _, f in parts if f is not None]
    return probs, (np.concatenate(features) if len(features) == len(parts) else None)


def feature_view(model: Any) -> Any | None:
    """A Keras model with the features as a second output, or None where it has neither
    FEATURE_LAYER nor POOLED_FEATURE_LAYER.

    A single network (bncnn) gets its last block (FEATURE_LAYER, where its `flatten` layer takes
    it) averaged over positions, or (micro) the global average pooling it already has
    (POOLED_FEATURE_LAYER); an ensemble (an `Average` named OUTPUT_NAME over nested members,
    `pipeline.train.ensemble`) is rebuilt from the same members and the same averaging layer, each
    member also giving its features, side by side: the probabilities are the model's own.
    """
    keras = _keras()

    def tapped(net: Any) -> Any | None:
        try:
            block, flat = net.get_layer(defaults.FEATURE_LAYER), net.get_layer("flatten")
        except ValueError:
            return pooled(net)
        if tuple(flat.input.shape) != tuple(block.output.shape):
            return None
        # The mean over positions taken from the flattened block, so the block's convolution
        # keeps one consumer: a second one (pooling its output directly) left that convolution
        # out of onnxruntime's integer fusion, 24% slower int8 inference.
        height, width, channels = flat.input.shape[1:]
        positions = keras.layers.Reshape((height * width, channels))(flat.output)
        feats = keras.layers.GlobalAveragePooling1D(name=f"{net.name}_features")(positions)
        return keras.Model(net.inputs[0], [net.outputs[0], feats])

    def pooled(net: Any) -> Any | None:
        try:
            pool = net.get_layer(defaults.POOLED_FEATURE_LAYER)
        except ValueError:
            return None
        if len(pool.output.shape) != 2:
            return None
        return keras.Model(net.inputs[0], [net.outputs[0], pool.output])

    single = tapped(model)
    if single is not None:
        probs, feats = single.outputs
        return keras.Model(single.inputs[0], {defaults.OUTPUT_NAME: probs, defaults.FEATURES_NAME: feats})
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    try:
        average = model.get_layer(defaults.OUTPUT_NAME)
    except ValueError:
        return None
    views = [view for view in (tapped(m) for m in members) if view is not None]
    if not members or len(views) != len(members) or not isinstance(average, keras.layers.Average):
        return None
    image = keras.Input(shape=model.inputs[0].shape[1:], name=defaults.INPUT_NAME)
    outs = [view(image) for view in views]
    probs = average([o[0] for o in outs])
    feats = keras.layers.Concatenate(name=defaults.FEATURES_NAME)([o[1] for o in outs])
    return keras.Model(image, {defaults.OUTPUT_NAME: probs, defaults.FEATURES_NAME: feats})


def _keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from pipeline import quiet

    return quiet.load("keras")


@dataclass
class KerasPredictor:
    path: Path
    model: Any
    format: Format = Format.KERAS
    batch_size: int = 1024
    view: Any = None  # `feature_view(model)`, made on first use of `run`
    _viewed: bool = False

    def predict(self, images: np.ndarray) -> np.ndarray:
        outs = [
            np.asarray(self.model(images[i : i + self.batch_size], training=False))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 10), np.float32)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self._viewed:
            self.view, self._viewed = feature_view(self.model), True
        if self.view is None:
            return self.predict(images), None
        probs, feats = [], []
        for i in range(0, len(images), self.batch_size):
            out = self.view(images[i : i + self.batch_size], training=False)
            probs.append(np.asarray(out[defaults.OUTPUT_NAME], np.float32))
            feats.append(np.asarray(out[defaults.FEATURES_NAME], np.float32))
        if not probs:
            return np.zeros((0, 10), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(probs), np.concatenate(feats)


@dataclass
class OnnxPredictor:
    path: Path
    session: Any
    input_name: str
    output_name: str
    format: Format = Format.ONNX
    threads: int | None = None  # intra-op threads asked for (None: onnxruntime's default)
    features_name: str | None = None  # the features output, where the file has one

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], np.float32)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.features_name is None:
            return self.predict(images), None
        x = np.ascontiguousarray(images, dtype=np.float32)
        probs, feats = self.session.run([self.output_name, self.features_name], {self.input_name: x})
        return np.asarray(probs, np.float32), np.asarray(feats, np.float32)


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
    output_index: int | None = None  # the probabilities tensor (None: the first output)
    features_index: int | None = None  # the features tensor, where the file has one
    _batch: int = -1

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._invoke(images, features=False)[0]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._invoke(images, features=self.features_index is not None)

    def _invoke(self, images: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        it = self.interpreter
        inp = it.get_input_details()[0]
        n = len(images)
        if n == 0:
            return np.zeros((0, 10), np.float32), (np.zeros((0, 0), np.float32) if features else None)
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
        details = {d["index"]: d for d in it.get_output_details()}
        first = next(iter(details.values()))
        probs = self._output(details[self.output_index] if self.output_index is not None else first)
        if not features:
            return probs, None
        assert self.features_index is not None
        return probs, self._output(details[self.features_index])

    def _output(self, out: dict[str, Any]) -> np.ndarray:
        y = self.interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, dtype=np.float32)


@dataclass
class MicroPredictor:
    """A full-integer TFLite model in the TensorFlow Lite Micro interpreter (`tflite-micro`): the
    runtime a microcontroller runs, with its reference kernels, one image per invoke, in a tensor
    arena of `arena_bytes`. Input is quantized and output dequantized with the file's parameters."""

    path: Path
    interpreter: Any
    arena_bytes: int
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    format: Format = Format.TFLITE

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.predict(images), None  # a microcontroller artifact has one output

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        q = np.clip(np.rint(x / self.input_scale + self.input_zero_point), -128, 127).astype(np.int8)
        out = np.zeros((len(q), 10), np.float32)
        it = self.interpreter
        for i in range(len(q)):
            it.set_input(q[i : i + 1], 0)
            it.invoke()
            out[i] = (it.get_output(0)[0].astype(np.float32) - self.output_zero_point) * self.output_scale
        return out


MICRO_MODULE = "tflite_micro"


def require_micro() -> None:
    """One clear line when the TensorFlow Lite Micro interpreter is not installed."""
    if importlib.util.find_spec(MICRO_MODULE) is None:
        raise ArtifactError(
            "running on TensorFlow Lite Micro needs tflite-micro: pip install 'pipeline[micro]'"
        )


def _micro_interpreter(model: bytes, arena_bytes: int) -> Any:
    """A TFLM interpreter that has run once in `arena_bytes`, or None if it cannot (TFLM explains
    why on stderr, which is dropped: too small an arena is the expected answer of a search)."""
    from tflite_micro.python.tflite_micro import runtime as tflm

    from pipeline.quiet import stderr_silenced

    with stderr_silenced():
        try:
            it = tflm.Interpreter.from_bytes(model, arena_size=arena_bytes)
            details = it.get_input_details(0)
            it.set_input(np.zeros(details["shape"], details["dtype"]), 0)
            it.invoke()
        except (RuntimeError, ValueError):
            return None
    return it


def smallest_arena(model: bytes, upper: int = 1 << 22) -> int:
    """The smallest tensor arena (bytes) in which the TFLM interpreter prepares and runs `model`,
    found by bisection on the real interpreter, not estimated."""
    require_micro()
    if _micro_interpreter(model, upper) is None:
        raise ArtifactError(f"TensorFlow Lite Micro cannot run this model even in {upper} bytes")
    low, high = 1, upper
    while low < high:
        middle = (low + high) // 2
        if _micro_interpreter(model, middle) is None:
            low = middle + 1
        else:
            high = middle
    return low


def micro_io(model: bytes) -> dict[str, Any]:
    """Scale and zero point of the model's int8 input and output, as TFLM reads them."""
    require_micro()
    it = _micro_interpreter(model, 1 << 22)
    if it is None:
        raise ArtifactError("TensorFlow Lite Micro cannot run this model")
    inp, out = it.get_input_details(0), it.get_output_details(0)
    if inp["dtype"] != np.int8 or out["dtype"] != np.int8:
        raise ArtifactError("not a model with int8 input and output (export it with --micro)")
    qi, qo = inp["quantization_parameters"], out["quantization_parameters"]
    return {
        "input_scale": float(qi["scales"][0]), "input_zero_point": int(qi["zero_points"][0]),
        "output_scale": float(qo["scales"][0]), "output_zero_point": int(qo["zero_points"][0]),
    }  # fmt: skip


def load_micro(path: Path | str, arena_bytes: int | None = None) -> MicroPredictor:
    """Load an int8-input, int8-output `.tflite` into the TFLM interpreter, in its smallest arena
    unless `arena_bytes` is given."""
    path = Path(path)
    require_micro()
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    model = path.read_bytes()
    io = micro_io(model)
    arena = arena_bytes if arena_bytes is not None else smallest_arena(model)
    it = _micro_interpreter(model, arena)
    if it is None:
        raise ArtifactError(f"{path}: TensorFlow Lite Micro cannot run it in {arena} bytes")
    return MicroPredictor(path, it, arena, **io)


def _load_keras(path: Path, threads: int | None = None) -> KerasPredictor:
    try:
        keras = _keras()
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
    features = defaults.FEATURES_NAME if defaults.FEATURES_NAME in outputs else None
    return OnnxPredictor(path, session, input_name, output_name, threads=threads, features_name=features)


def _load_tflite(path: Path, threads: int | None) -> LiteRTPredictor:
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.quiet import stderr_silenced

    try:
        with stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
    except Exception as exc:
        raise ArtifactError(f"{path}: LiteRT cannot load it ({exc})") from exc
    output_index, features_index = tflite_outputs(it)
    return LiteRTPredictor(
        path, it, threads=threads, output_index=output_index, features_index=features_index
    )


def tflite_outputs(it: Any) -> tuple[int | None, int | None]:
    """Which output tensors hold the probabilities and the features, by the names of the file's
    signature (the converter orders outputs by name: "features" comes first)."""
    signatures = it.get_signature_list()
    if not signatures:
        return None, None
    named = it.get_signature_runner(next(iter(signatures))).get_output_details()
    index = {name: int(detail["index"]) for name, detail in named.items()}
    return index.get(defaults.OUTPUT_NAME), index.get(defaults.FEATURES_NAME)


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
