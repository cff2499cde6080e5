"""TFLite: LiteRT's converter from a SavedModel, its quantizations (int8 with a float head, or integer
end to end for microcontrollers), and the metadata buffer written into the file."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import defaults, quiet, runtime
from pipeline.export.head import Op, classifier_head
from pipeline.export.source import Source, metadata
from pipeline.formats import Quantization


def _saved_model(source: Source, folder: Path, features: bool) -> Path:
    """Write the model as a SavedModel with one `serve` endpoint (`image` -> `probabilities`, and
    `features` where asked and the model has them: `runtime.feature_view`).

    LiteRT's converter reads weights as constants from a SavedModel; converting the concrete
    function of a live Keras 3 model instead leaves them as resource variables, which produces
    an 11 KB file without weights and makes int8 calibration fail (READ_VARIABLE).
    """
    if not (folder / "saved_model.pb").is_file():
        tf, keras = quiet.load("tensorflow"), quiet.load("keras")
        size = defaults.FIELD_SIZE
        view = runtime.feature_view(source.model) if features else None
        archive = keras.export.ExportArchive()
        archive.track(source.model if view is None else view)
        archive.add_endpoint(
            "serve",
            (lambda image: {defaults.OUTPUT_NAME: source.model(image, training=False)})
            if view is None
            else (lambda image: dict(view(image, training=False))),
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
    # behind the probabilities only, by the signature's name for them (as `onnx_head`)
    named = {
        (t.name.decode() if isinstance(t.name, bytes) else t.name): int(t.tensorIndex)
        for sig in (model.signatureDefs or [])
        for t in sig.outputs
    }
    outputs = (
        [named[defaults.OUTPUT_NAME]] if defaults.OUTPUT_NAME in named else [int(o) for o in graph.outputs]
    )
    builtin = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    producer = {}
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = builtin.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        name = graph.tensors[op.outputs[0]].name.decode()
        for out in op.outputs:
            producer[int(out)] = Op(name, kind in TFLITE_WEIGHTED, tuple(int(i) for i in op.inputs))
    last, after = classifier_head(outputs, producer)
    return [*last, *after]


TFLITE_METADATA_NAME = "pipeline"


def _tflite_metadata(path: Path, source: Source, quant: Quantization) -> None:
    """Add the metadata as a JSON buffer named "pipeline" in the TFLite flatbuffer's metadata
    list, where interpreters ignore it and `pipeline.manifest.artifact_metadata` finds it."""
    quiet.load("tensorflow")
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata(source, quant)).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def describe_io(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Names, dtypes, shapes and quantization parameters of the file's input and probabilities output."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    output_index, _ = runtime.tflite_outputs(it)
    outputs = it.get_output_details()
    out = next((d for d in outputs if d["index"] == output_index), outputs[0])

    def tfl_io(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d["quantization"]
        shape = [None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])]
        return {
            "name": d["name"], "dtype": np.dtype(d["dtype"]).name, "shape": shape,
            "quantization": {"scale": float(scale), "zero_point": int(zero)} if scale else None,
        }  # fmt: skip

    return tfl_io(it.get_input_details()[0]), tfl_io(out)


def write(
    source: Source, quant: Quantization, out: Path, work: Path, calib: Callable[[], np.ndarray],
    integer_io: bool = False,
) -> None:  # fmt: skip
    """Write `source` as TFLite with `quant` to `out`, through one SavedModel per export in `work`
    (a microcontroller's integer file has the probabilities only: its interpreter reads output 0)."""
    folder = work / ("saved_model_probabilities" if integer_io else "saved_model")
    _tflite(_saved_model(source, folder, features=not integer_io), quant, out, calib, integer_io)
    _tflite_metadata(out, source, quant)
