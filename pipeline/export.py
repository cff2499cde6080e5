"""Conversion of a trained Keras model to ONNX and TFLite, with quantization, and the manifest.

`FORMATS` and `QUANTIZATIONS` below are the single table of what exists: file suffixes, the
quantizations each format supports, and which verify rule applies. Every artifact is written under
a temporary name and renamed only when complete, and its manifest entry is written after that, so
a failed export leaves neither a half-written file nor an entry pointing at one.

The manifest (`exported/manifest.json`) records, per artifact: path, format, quantization,
SHA-256, size, input/output names, dtypes, shapes and quantization parameters, the preprocessing it
expects, the source model with its SHA-256 and test accuracy, tool versions and the command.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__, data, defaults, preprocess, quiet
from pipeline.errors import ArtifactError, ExportError
from pipeline.files import sha256, sidecar_json, write_json


class Format(StrEnum):
    ONNX = "onnx"
    TFLITE = "tflite"


class Quantization(StrEnum):
    NONE = "none"  # float32, as trained
    DYNAMIC = "dynamic"  # int8 weights, float activations quantized on the fly
    INT8 = "int8"  # int8 weights and activations, calibrated on training images
    FLOAT16 = "float16"  # half-precision weights


# The one table of formats: suffix and the quantizations each supports (all four for both).
FORMATS: dict[Format, dict[str, Any]] = {
    Format.ONNX: {"suffix": ".onnx", "quantizations": tuple(Quantization)},
    Format.TFLITE: {"suffix": ".tflite", "quantizations": tuple(Quantization)},
}
# Quantizations that may lose accuracy beyond float rounding: verify applies the looser rule.
LOSSY = {Quantization.DYNAMIC, Quantization.INT8}


def parse_choices(value: str, enum: type[StrEnum], what: str) -> list[Any]:
    """'all', one value, or a comma-separated list -> enum members, in table order."""
    if value == "all":
        return list(enum)
    chosen = []
    for part in value.split(","):
        try:
            chosen.append(enum(part.strip()))
        except ValueError:
            known = ", ".join(m.value for m in enum)
            raise ExportError(f"unknown {what} {part.strip()!r}; choose all or {known}") from None
    return [m for m in enum if m in chosen]


def artifact_name(model_name: str, fmt: Format, quant: Quantization, integer_io: bool = False) -> str:
    """`conv2d.int8.onnx`: model and quantization readable from the file name."""
    label = "float32" if quant is Quantization.NONE else quant.value
    if integer_io and fmt is Format.TFLITE and quant is Quantization.INT8:
        label = "int8-io"
    return f"{model_name}.{label}{FORMATS[fmt]['suffix']}"


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
    from pipeline import runtime

    try:
        predictor = runtime.load(path)
    except ArtifactError as exc:
        raise ExportError(str(exc)) from exc
    model = predictor.model  # type: ignore[attr-defined]
    metrics, config = sidecar_json(path, "metrics.json"), sidecar_json(path, "config.json")
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
        )
        if key in metrics
    }
    return Source(
        path=path, model=model, name=str(metrics.get("model") or model.name), sha256=sha256(path),
        test_accuracy=metrics.get("test_accuracy"), parameters=int(model.count_params()),
        deskew=bool(config.get("deskew", metrics.get("deskew", False))), training=training,
    )  # fmt: skip


def calibration_images(count: int, seed: int, deskew: bool, data_dir: Path | None) -> np.ndarray:
    """`count` training images (never test images), seeded, preprocessed as for training."""
    x, _ = data.load(data.Split.TRAIN, data_dir=data_dir)
    idx = np.random.default_rng(seed).choice(len(x), size=min(count, len(x)), replace=False)
    picked = x[np.sort(idx)]
    return preprocess.model_input(picked, deskew)


def _serving_function(model: Any) -> Any:
    """A tf.function with a dynamic batch, named input `image` and output `probabilities`."""
    tf = quiet.load("tensorflow")
    size = defaults.FIELD_SIZE
    spec = (tf.TensorSpec((None, size, size, 1), tf.float32, name=defaults.INPUT_NAME),)

    @tf.function(input_signature=spec)  # type: ignore[misc]
    def serve(image: Any) -> dict[str, Any]:
        return {defaults.OUTPUT_NAME: model(image, training=False)}

    return serve


# --- ONNX ------------------------------------------------------------------------------------


def _onnx_float32(source: Source, out: Path) -> None:
    tf2onnx = quiet.load("tf2onnx")
    serve = _serving_function(source.model)
    with quiet.stderr_silenced():
        proto, _ = tf2onnx.convert.from_function(
            serve, input_signature=serve.input_signature, opset=defaults.ONNX_OPSET
        )
    import onnx

    onnx.save(canonical_names(proto), str(out))


_GENERATED = re.compile(r"__\d+")  # tf2onnx's make_name: "<base>__<process-wide counter>"


def canonical_names(proto: Any) -> Any:
    """Renumber the names tf2onnx generates, in the order the graph first uses them.

    tf2onnx numbers the nodes and tensors it adds with a process-wide counter, and its optimisers
    visit sets whose order follows Python's per-process hash seed, so the same model converted
    twice got, for example, `new_shape__63` once and `new_shape__64` the other time, and when it
    merges equal constants, which one's name survives (`const_starts__1` or `const_axes__3` for
    the same values) varies too: identical weights and graph, different bytes, checksums and git
    diffs for every ONNX artifact made from it. So generated names are renumbered by first use in
    node order, and generated constants are all called `const__<n>`: equal conversions become
    byte-identical. The graph's inputs and outputs are never renamed (they are the artifact's
    interface); a graph with subgraphs (If, Loop) is left as it is.
    """
    graph = proto.graph
    if any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute):
        return proto
    interface = {v.name for v in (*graph.input, *graph.output)}
    constants = {i.name for i in graph.initializer}
    order: list[str] = []
    for node in graph.node:
        order += [node.name, *node.input, *node.output]
    order += sorted(constants)  # any not used by a node
    mapping: dict[str, str] = {}
    for name in order:
        if name and name not in mapping and name not in interface and _GENERATED.search(name):
            base = "const" if name in constants else _GENERATED.sub("", name)
            mapping[name] = f"{base}__{len(mapping)}"
    for node in graph.node:
        node.name = mapping.get(node.name, node.name)
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for item in (*graph.initializer, *graph.value_info):
        item.name = mapping.get(item.name, item.name)
    ordered = sorted(graph.initializer, key=lambda i: i.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    return proto


class _Calibration:
    """onnxruntime CalibrationDataReader over an in-memory array, in batches of 50."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = iter(np.array_split(images, max(1, len(images) // 50)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {defaults.INPUT_NAME: batch}

    def rewind(self) -> None:  # onnxruntime calls this on some versions
        pass


def _onnx_quantized(
    float_path: Path, quant: Quantization, out: Path, calib: Callable[[], np.ndarray]
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant is Quantization.FLOAT16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
        onnx.save(model, str(out))
        return
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # onnxruntime's pre-processing: symbolic shape inference and graph optimisation, which
        # the quantizer needs to find every quantizable node.
        with quiet.stderr_silenced():
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=False)
        if quant is Quantization.DYNAMIC:
            # Conv with dynamically quantized int8 weights has no CPU kernel in onnxruntime
            # (ConvInteger is uint8 only), so dynamic quantization covers the dense layers, where
            # nearly all of the weights are.
            quantize_dynamic(
                str(prepared), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
            )
        else:
            import onnx

            model = static_reshapes(onnx.load(str(prepared)))
            onnx.save(model, str(prepared))
            last_layers, after = onnx_head(model.graph)
            quantize_static(
                str(prepared), str(out), _Calibration(calib()),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=after,
            )  # fmt: skip
            onnx.save(float_outputs(onnx.load(str(out)), set(last_layers)), str(out))


def _dims(value_info: Any) -> list[int | None]:
    """A tensor's dimensions from shape inference, None where not a fixed number."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def static_reshapes(model: Any) -> Any:
    """Give every batch-preserving Reshape a constant shape [-1, ...] and drop what computed it.

    Keras' Flatten reshapes to (batch, features), and tf2onnx computes that shape at run time
    from Shape -> Gather -> Concat of the layer's input. In the quantized graph that Shape reads
    the dequantized output of the convolution before it, and while it did, onnxruntime left that
    DequantizeLinear -> Conv -> QuantizeLinear group in float instead of fusing it into an
    integer QLinearConv: the last convolution of every bncnn member, 24% of the int8 bncnn-x4's
    inference time (its profiler). With a constant shape the Shape goes, the convolution is
    fused (tested), and the int8 bncnn-x4 takes 99 instead of 164 ms per 256 images (same
    outputs). A Reshape qualifies when shape inference gives its input and output fixed sizes
    past the first dimension, with the same number of values per image: -1 then stands for the
    batch, whatever it is.
    """
    from onnx import numpy_helper

    graph = model.graph
    info = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
    constants = {i.name for i in graph.initializer}
    changed = False
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] in constants:
            continue
        if node.input[0] not in info or node.output[0] not in info:
            continue
        src, dst = _dims(info[node.input[0]])[1:], _dims(info[node.output[0]])[1:]
        fixed_src, fixed_dst = [d for d in src if d], [d for d in dst if d]
        if not dst or len(fixed_src) != len(src) or len(fixed_dst) != len(dst):
            continue
        if math.prod(fixed_src) != math.prod(fixed_dst):
            continue
        name = f"{node.name}__static_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([-1, *fixed_dst], np.int64), name))
        node.input[1] = name
        changed = True
    return _without_dead_nodes(model) if changed else model


def _without_dead_nodes(model: Any) -> Any:
    """Drop nodes none of whose outputs is used, repeatedly, and initializers no node reads."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        live = [n for n in graph.node if any(out in used for out in n.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


@dataclass(frozen=True)
class _Op:
    """One operator of a converted graph, as `classifier_head` walks it."""

    key: str  # how the caller names it: node name (ONNX), output tensor name (TFLite)
    weighted: bool  # holds a layer's weights (Conv, Gemm, MatMul; CONV_2D, FULLY_CONNECTED...)
    inputs: tuple[Any, ...]


def classifier_head(outputs: list[Any], producer: dict[Any, _Op]) -> tuple[list[str], list[str]]:
    """(the last weighted layers before the outputs, the operators after them): the head that
    int8 exports keep in float (see `float_outputs` for why).

    Walks back from the graph's outputs, on every path, to the first weighted operator. For
    bncnn-x4 that is each member's Dense(10), then its softmax, and the adds and the multiply
    that average the members; for conv2d the last Dense and its sigmoid.
    """
    last: set[str] = set()
    after: set[str] = set()
    todo, seen = list(outputs), set()
    while todo:
        op = producer.get(todo.pop())
        if op is None or op.key in seen:
            continue
        seen.add(op.key)
        if op.weighted:
            last.add(op.key)
        else:
            after.add(op.key)
            todo += op.inputs
    return sorted(last), sorted(after)


# ONNX operators that hold a layer's weights: the int8 network ends at the last of them.
ONNX_WEIGHTED = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def onnx_head(graph: Any) -> tuple[list[str], list[str]]:
    """`classifier_head` of an ONNX graph, by node name."""
    producer = {
        out: _Op(node.name, node.op_type in ONNX_WEIGHTED, tuple(node.input))
        for node in graph.node
        for out in node.output
    }
    return classifier_head([o.name for o in graph.output], producer)


def float_outputs(model: Any, nodes: set[str]) -> Any:
    """Remove the QuantizeLinear -> DequantizeLinear pair on each of `nodes`' outputs.

    Why the head stays float: int8 probabilities come in steps of 1/255, so most of a confident
    prediction's nine other classes share one value. On the shipped bncnn-x4, int8 from end to end
    tied the second-best digit in 86.7% of the test images and matched Keras' second-best in only
    23.1%; `classify` reported "0" as the second choice for most scans. The last layers keep their
    int8 weights and int8 input (onnxruntime still runs them as integer matrix products) but
    return float logits, and the softmax, the ensemble's average and the sigmoid run in float:
    a few hundred values per image, no measurable latency, the file no larger.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    nodes_list = list(graph.node)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes_list):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in nodes_list:
        if node.name not in nodes:
            continue
        tensor = node.output[0]
        for q in consumers.get(tensor, []):
            if nodes_list[q].op_type != "QuantizeLinear":
                continue
            dropped.add(q)
            for dq in consumers.get(nodes_list[q].output[0], []):
                dropped.add(dq)
                dequantized = nodes_list[dq].output[0]
                if dequantized in outputs:  # the interface keeps its name: the layer takes it
                    rename[tensor] = node.output[0] = dequantized
                else:
                    rename[dequantized] = tensor
    kept = [n for i, n in enumerate(nodes_list) if i not in dropped]
    for node in kept:
        node.input[:] = [rename.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    return _without_dead_nodes(model)  # and the removed pairs' scales and zero points


def _metadata(source: Source, quant: Quantization) -> dict[str, str]:
    """What every artifact carries about itself: labels, preprocessing and provenance."""
    return {
        "labels": json.dumps(list(data.CLASS_NAMES[data.Dataset.MNIST])),
        "preprocessing": json.dumps({**preprocess.PREPROCESSING_DESCRIPTION, "deskew": source.deskew}),
        "source_model": source.name,
        "source_sha256": source.sha256,
        "quantization": quant.value,
        "pipeline_version": __version__,
    }


def _onnx_metadata(path: Path, source: Source, quant: Quantization) -> None:
    """Write the metadata into the ONNX file's metadata_props."""
    import onnx

    model = onnx.load(str(path))
    props = _metadata(source, quant)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.doc_string = "pipeline", f"{source.name} digit classifier ({quant.value})"
    onnx.save(model, str(path))


# --- TFLite ----------------------------------------------------------------------------------


def _saved_model(source: Source, folder: Path) -> Path:
    """Write the model as a SavedModel with one `serve` endpoint (`image` -> `probabilities`).

    LiteRT's converter reads weights as constants from a SavedModel; converting the concrete
    function of a live Keras 3 model instead leaves them as resource variables, which produces
    an 11 KB file without weights and makes int8 calibration fail (READ_VARIABLE).
    """
    if not (folder / "saved_model.pb").is_file():
        tf, keras = quiet.load("tensorflow"), quiet.load("keras")
        size = defaults.FIELD_SIZE
        archive = keras.export.ExportArchive()
        archive.track(source.model)
        archive.add_endpoint(
            "serve",
            lambda image: {defaults.OUTPUT_NAME: source.model(image, training=False)},
            input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32, name=defaults.INPUT_NAME)],
        )
        with quiet.stderr_silenced():
            archive.write_out(str(folder), verbose=False)
    return folder


def _tflite(
    saved_model: Path, quant: Quantization, out: Path, calib: Callable[[], np.ndarray], integer_io: bool
) -> None:
    tf = quiet.load("tensorflow")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quant is not Quantization.NONE:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant is Quantization.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    elif quant is Quantization.INT8:
        images = calib()

        def representative() -> Iterator[list[np.ndarray]]:
            for i in range(len(images)):
                yield [images[i : i + 1]]

        converter.representative_dataset = representative
        if not integer_io:
            # The classifier head stays float, as in the int8 ONNX (`float_outputs` says why):
            # LiteRT's selective quantization leaves the operators named here unquantized. It
            # runs TensorFlow's deprecated tf.lite.Interpreter inside; that notice is not ours.
            with quiet.stderr_silenced(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated")
                head = tflite_head(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=representative,
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=head),
                )  # fmt: skip
                out.write_bytes(debugger.get_nondebug_quantized_model())
            return
        # microcontrollers: no float anywhere, not even at the edges or in the head
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with quiet.stderr_silenced():
        out.write_bytes(converter.convert())


# LiteRT operators that hold a layer's weights.
TFLITE_WEIGHTED = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"})


def tflite_head(float_model: bytes) -> list[str]:
    """`classifier_head` of a float TFLite model: the output tensor names of its operators (the
    names LiteRT's selective quantization takes), the last weighted layers included."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(float_model))
    graph = model.subgraphs[0]
    builtin = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    producer = {}
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = builtin.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        name = graph.tensors[op.outputs[0]].name.decode()
        for out in op.outputs:
            producer[int(out)] = _Op(name, kind in TFLITE_WEIGHTED, tuple(int(i) for i in op.inputs))
    last, after = classifier_head([int(o) for o in graph.outputs], producer)
    return [*last, *after]


TFLITE_METADATA_NAME = "pipeline"


def _tflite_metadata(path: Path, source: Source, quant: Quantization) -> None:
    """Add the metadata as a JSON buffer named "pipeline" in the TFLite flatbuffer's metadata
    list, where interpreters ignore it and `read_tflite_metadata` finds it."""
    quiet.load("tensorflow")
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(_metadata(source, quant)).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def read_tflite_metadata(path: Path) -> dict[str, str]:
    """The "pipeline" metadata of a TFLite file written by this exporter ({} if none)."""
    quiet.load("tensorflow")
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == TFLITE_METADATA_NAME:
            return dict(json.loads(bytes(model.buffers[entry.buffer].data).decode()))
    return {}


# --- describing and recording ----------------------------------------------------------------


def _describe_io(path: Path, fmt: Format) -> tuple[dict[str, Any], dict[str, Any]]:
    """Names, dtypes, shapes and quantization parameters of the artifact's input and output."""
    if fmt is Format.ONNX:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        i, o = sess.get_inputs()[0], sess.get_outputs()[0]

        def onnx_io(t: Any) -> dict[str, Any]:
            dtype = t.type.replace("tensor(", "").replace(")", "").replace("float", "float32")
            shape = [d if isinstance(d, int) else None for d in t.shape]
            return {"name": t.name, "dtype": dtype, "shape": shape, "quantization": None}

        return onnx_io(i), onnx_io(o)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))

    def tfl_io(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d["quantization"]
        shape = [None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])]
        return {
            "name": d["name"], "dtype": np.dtype(d["dtype"]).name, "shape": shape,
            "quantization": {"scale": float(scale), "zero_point": int(zero)} if scale else None,
        }  # fmt: skip

    return tfl_io(it.get_input_details()[0]), tfl_io(it.get_output_details()[0])


def read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"pipeline_version": __version__, "artifacts": []}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("artifacts"), list):
            raise ValueError("no artifacts list")
    except (ValueError, AttributeError) as exc:
        raise ExportError(f"{path}: not a valid manifest ({exc})") from exc
    return manifest


def _record(manifest_path: Path, entry: dict[str, Any]) -> None:
    """Insert or replace the entry for entry['path'], then rewrite the manifest atomically."""
    manifest = read_manifest(manifest_path)
    kept = [a for a in manifest["artifacts"] if a.get("path") != entry["path"]]
    manifest["artifacts"] = [*kept, entry]
    manifest["pipeline_version"] = __version__
    write_json(manifest_path, manifest)


@dataclass(frozen=True)
class Exported:
    path: Path
    format: Format
    quantization: Quantization
    bytes: int
    seconds: float


def export(
    model_path: Path,
    formats: list[Format],
    quantizations: list[Quantization],
    out_dir: Path = defaults.EXPORT_DIR,
    calibration_samples: int = defaults.CALIBRATION_SAMPLES,
    integer_io: bool = False,
    data_dir: Path | None = None,
    seed: int = defaults.SEED,
    log: Callable[[Exported], None] | None = None,
) -> list[Exported]:
    """Export one Keras model to every requested format x quantization and record each artifact."""
    if calibration_samples < 10:
        raise ExportError("--calibration-samples must be at least 10")
    source = load_source(model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / defaults.MANIFEST_NAME
    read_manifest(manifest_path)  # refuse a corrupt manifest before doing any work
    if source.test_accuracy is None:
        from pipeline import runtime

        x, y = data.load(data.Split.TEST, data_dir=data_dir)
        predictor = runtime.KerasPredictor(model_path, source.model)
        probs = predictor.predict(preprocess.model_input(x, source.deskew))
        source.test_accuracy = float((probs.argmax(axis=1) == y).mean())
    calib_cache: list[np.ndarray] = []

    def calib() -> np.ndarray:
        if not calib_cache:
            calib_cache.append(calibration_images(calibration_samples, seed, source.deskew, data_dir))
        return calib_cache[0]

    results: list[Exported] = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as work_dir:
        work = Path(work_dir)
        onnx_float: Path | None = None
        for fmt in formats:
            for quant in quantizations:
                name = artifact_name(source.name, fmt, quant, integer_io)
                tmp, final = work / name, out_dir / name
                started = time.perf_counter()
                try:
                    if fmt is Format.ONNX:
                        if onnx_float is None:
                            onnx_float = work / "float32-base.onnx"
                            _onnx_float32(source, onnx_float)
                        if quant is Quantization.NONE:
                            tmp.write_bytes(onnx_float.read_bytes())
                        else:
                            _onnx_quantized(onnx_float, quant, tmp, calib)
                        _onnx_metadata(tmp, source, quant)
                    else:
                        _tflite(_saved_model(source, work / "saved_model"), quant, tmp, calib, integer_io)
                        _tflite_metadata(tmp, source, quant)
                    inp, outp = _describe_io(tmp, fmt)
                except ExportError:
                    raise
                except Exception as exc:  # converter failures come in every type; all are one error
                    raise ExportError(
                        f"{name}: {fmt.value} {quant.value} export failed: {type(exc).__name__}: {exc}"
                    ) from exc
                seconds = time.perf_counter() - started
                os.replace(tmp, final)
                entry = _entry(final, out_dir, fmt, quant, source, inp, outp, seconds, calibration_samples)
                _record(manifest_path, entry)
                result = Exported(final, fmt, quant, final.stat().st_size, seconds)
                results.append(result)
                if log:
                    log(result)
    return results


def _entry(
    path: Path, out_dir: Path, fmt: Format, quant: Quantization, source: Source,
    inp: dict[str, Any], outp: dict[str, Any], seconds: float, calibration_samples: int,
) -> dict[str, Any]:  # fmt: skip
    return {
        "path": path.name,
        "format": fmt.value,
        "quantization": quant.value,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "input": inp,
        "output": outp,
        "labels": list(data.CLASS_NAMES[data.Dataset.MNIST]),
        "preprocessing": {**preprocess.PREPROCESSING_DESCRIPTION, "deskew": source.deskew},
        "source": {
            "model": source.name,
            "path": os.path.relpath(source.path.resolve(), out_dir.resolve()),
            "sha256": source.sha256,
            "test_accuracy": source.test_accuracy,
            "parameters": source.parameters,
            "training": source.training,
        },
        "calibration": (
            {"samples": calibration_samples, "split": "train", "dataset": defaults.DATASET}
            if quant is Quantization.INT8 else None
        ),
        "opset": defaults.ONNX_OPSET if fmt is Format.ONNX else None,
        "tools": tool_versions(),
        "command": _command(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export_seconds": round(seconds, 2),
    }  # fmt: skip


def _command() -> str | None:
    """The command line that made the artifact, when it was the `pipeline` CLI."""
    if sys.argv and "pipeline" in sys.argv[0]:
        return shlex.join(["pipeline", *sys.argv[1:]])
    return None


def default_model() -> Path:
    """The newest runs/*/model.keras, for `pipeline export` without --model."""
    found = sorted(defaults.RUNS_DIR.glob("*/model.keras"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ExportError(f"no --model given and no {defaults.RUNS_DIR}/*/model.keras to export")
    return found[-1]
