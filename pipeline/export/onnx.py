"""ONNX: tf2onnx conversion, reproducible names, quantization (dynamic, static int8 with a float head,
float16) and the metadata written into the file."""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import defaults, quiet, runtime
from pipeline.export.head import Op, classifier_head
from pipeline.export.source import Source, metadata
from pipeline.formats import Quantization


def _serving_function(model: Any) -> Any:
    """A tf.function with a dynamic batch, named input `image` and output `probabilities`, and
    `features` where the model has them (`runtime.feature_view`)."""
    tf = quiet.load("tensorflow")
    size = defaults.FIELD_SIZE
    spec = (tf.TensorSpec((None, size, size, 1), tf.float32, name=defaults.INPUT_NAME),)
    view = runtime.feature_view(model)

    @tf.function(input_signature=spec)  # type: ignore[misc]
    def serve(image: Any) -> dict[str, Any]:
        if view is not None:
            return dict(view(image, training=False))
        return {defaults.OUTPUT_NAME: model(image, training=False)}

    return serve


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
            kept_float = image_convolutions(model.graph)
            model = pool_before_activation(model, kept_float)
            onnx.save(model, str(prepared))
            last_layers, after = onnx_head(model.graph)
            quantize_static(
                str(prepared), str(out), _Calibration(calib()),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=after + kept_float,
            )  # fmt: skip
            quantized = onnx.load(str(out))
            float_layers = set(last_layers) | shared_products(quantized.graph)
            onnx.save(float_outputs(quantized, float_layers), str(out))


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


# ONNX operators that hold a layer's weights: the int8 network ends at the last of them.
ONNX_WEIGHTED = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def onnx_head(graph: Any) -> tuple[list[str], list[str]]:
    """`classifier_head` of an ONNX graph, by node name: behind the probabilities only (the
    features output is the last block's activations, which stay integer up to it)."""
    producer = {
        out: Op(node.name, node.op_type in ONNX_WEIGHTED, tuple(node.input))
        for node in graph.node
        for out in node.output
    }
    names = [o.name for o in graph.output]
    return classifier_head([defaults.OUTPUT_NAME] if defaults.OUTPUT_NAME in names else names, producer)


def _attr(node: Any, name: str, default: Any) -> Any:
    """A node's attribute as ONNX gives it (an int, a float, bytes, a list of ints), or `default`."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def image_convolutions(graph: Any) -> list[str]:
    """The convolutions that read the one-channel image itself: quantization leaves them float.

    Why: onnxruntime's integer convolution costs about the same per output pixel whatever the
    input channels, so with one input channel it does nine multiply-adds in the time float does
    them many times over: micro's first convolution (1 to 16 channels at 28x28) took 19 us an
    image as a QLinearConv and 9 as a float Conv with the quantization of its output, of 47 for
    the whole int8 network. The 8-bit input of the next layer is what it was. Where a pooling
    follows, `pool_before_activation` keeps it float too.
    """
    weights = {init.name: init for init in graph.initializer}
    images = {i.name for i in graph.input}
    for node in graph.node:  # the image after reshapes and transposes is still the image
        if node.op_type in ("Reshape", "Transpose") and node.input and node.input[0] in images:
            images.add(node.output[0])
    found = []
    for node in graph.node:
        if node.op_type != "Conv" or node.input[0] not in images or node.input[1] not in weights:
            continue
        group = _attr(node, "group", 1)
        if group == 1 and weights[node.input[1]].dims[1] == 1:
            found.append(node.name)
    return found


def _readers(graph: Any) -> dict[str, list[Any]]:
    """Tensor name -> the nodes reading it, once per input that names it."""
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


# Activations that never decrease (max(f(a), f(b)) == f(max(a, b))): a max pooling may come first.
# (LeakyRelu too, where its slope below zero is not negative: `_never_decreases`.)
_MONOTONE = frozenset({"Relu", "Clip", "Sigmoid", "Tanh"})


def _never_decreases(node: Any) -> bool:
    if node.op_type == "LeakyRelu":
        alpha = _attr(node, "alpha", 0.01)
        return alpha >= 0
    return node.op_type in _MONOTONE


def pool_before_activation(model: Any, convolutions: list[str]) -> Any:
    """Where one of the float `convolutions` goes through an activation into a max pooling
    (Conv -> ReLU -> MaxPool, the seed CNN's first block), pool first: Conv -> MaxPool -> ReLU.

    Why: the same values (the activation never decreases, so it commutes with a maximum), but
    onnxruntime moves a quantization that directly follows a max pooling above it, and the
    pooling then ran on 8-bit values in its slow generic layout: with its first convolution in
    float the seed CNN was slower than with all four integer. After an activation the
    quantization stays where it is (onnxruntime folds the ReLU into it), and the convolution and
    the pooling run in float in its blocked layout: faster than either (docs/export.md has the
    figures; a test reads onnxruntime's optimised graph).
    """
    graph = model.graph
    readers = _readers(graph)
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    changed = False
    for conv in (n for n in nodes if n.name in convolutions):
        after = readers.get(conv.output[0], [])
        if len(after) != 1 or not _never_decreases(after[0]) or conv.output[0] in outputs:
            continue
        act = after[0]
        pools = readers.get(act.output[0], [])
        if len(pools) != 1 or pools[0].op_type != "MaxPool" or len(pools[0].output) != 1:
            continue  # (a pooling that also gives indices would give them for other values)
        if act.output[0] in outputs:
            continue
        pool = pools[0]
        pooled = pool.output[0]  # its readers keep reading this name, now the activation's
        pool.input[0], pool.output[0] = conv.output[0], f"{pooled}__before_activation"
        act.input[0], act.output[0] = pool.output[0], pooled
        nodes.remove(act)
        nodes.insert(nodes.index(pool) + 1, act)
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        produced = {name for node in nodes for name in node.output}
        for info in [v for v in graph.value_info if v.name not in produced]:
            graph.value_info.remove(info)  # the activation's old, full-size output
    return model


# Operators that act on each value alone, their other inputs one constant per tensor or per
# channel: a convolution's output may lose rows and columns through them, every value left as it was.
_PER_VALUE = frozenset(
    {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Elu", "HardSigmoid", "Softplus", "Identity",
     "QuantizeLinear", "DequantizeLinear"}
)  # fmt: skip


def _per_value(node: Any) -> bool:
    """Whether `node` maps each value of its first input to one output value, whatever the
    spatial size: a quantization per tensor or per channel (axis 1), or a `_PER_VALUE` operator."""
    if node.op_type not in _PER_VALUE or len(node.output) != 1:
        return False
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return _attr(node, "axis", 1) == 1
    return True


def _pooled_through(
    conv: Any, readers: dict[str, list[Any]], outputs: set[str]
) -> tuple[Any, list[str]] | None:
    """The pooling that alone reads `conv`'s output, through per-value operators each read once,
    and the tensors on the way (the convolution's output first); None where there is none."""
    tensors = [conv.output[0]]
    while True:
        if tensors[-1] in outputs:
            return None
        after = readers.get(tensors[-1], [])
        if len(after) != 1:
            return None
        node = after[0]
        if node.op_type in ("MaxPool", "AveragePool"):
            return node, tensors
        if not _per_value(node):
            return None
        tensors.append(node.output[0])


def _floor_pooling(pool: Any, spatial: int) -> tuple[list[int], list[int]] | None:
    """A pooling's window and strides where it pools whole windows from the first value on (no
    padding, no dilation, floor mode, no indices); None for any other."""
    window = _attr(pool, "kernel_shape", [])
    auto_pad = _attr(pool, "auto_pad", b"NOTSET")
    if (
        len(window) != spatial or len(pool.output) != 1 or auto_pad not in (b"NOTSET", b"VALID")
        or any(_attr(pool, "pads", [0] * 2 * spatial)) or any(d != 1 for d in _attr(pool, "dilations", []))
        or _attr(pool, "ceil_mode", 0)
    ):  # fmt: skip
        return None
    return window, _attr(pool, "strides", [1] * spatial)


def _weight_window(graph: Any, info: dict[str, Any], weights: str) -> list[int]:
    """A convolution's window from its weights (an initializer, or a tensor of inferred shape)."""
    init = next((i for i in graph.initializer if i.name == weights), None)
    dims = list(init.dims) if init is not None else _dims(info[weights]) if weights in info else []
    return [d for d in dims[2:] if d]


def trim_unpooled_outputs(model: Any) -> Any:
    """Where a pooling never reads a convolution's last rows or columns, the convolution stops
    computing them: its padding at the end shrinks until its output just covers what is pooled.

    Why: a 2x2 pooling in floor mode drops the last row and column of an odd-sized map, so the
    seed CNN's third and fourth convolutions (7x7 and 3x3 outputs) computed 13 of 49 and 5 of 9
    positions for nothing: a fifth of the network's multiply-adds. Every value that is pooled is
    computed from the same inputs as before (the padding dropped is only ever read by the rows
    that go), so the pooled values are the same ones. Run on the finished file, so a static
    quantization's calibration saw the network as it was and the int8 file differs only in the
    padding (tested: identical outputs). Shapes come from ONNX's shape inference; a convolution
    whose output anything else reads, or that reaches the pooling through an operator that is not
    per value (`_per_value`), is left alone.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    info = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    graph = model.graph
    readers = _readers(graph)
    outputs = {o.name for o in graph.output}
    resized: set[str] = set()
    for conv in graph.node:
        found = _pooled_through(conv, readers, outputs) if conv.op_type == "Conv" else None
        if found is None or conv.input[0] not in info or conv.output[0] not in info:
            continue
        pool, tensors = found
        sizes, out_sizes = _dims(info[conv.input[0]])[2:], _dims(info[conv.output[0]])[2:]
        spatial = len(out_sizes)
        pooling = _floor_pooling(pool, spatial)
        auto_pad = _attr(conv, "auto_pad", b"NOTSET")
        if pooling is None or auto_pad != b"NOTSET" or None in sizes or None in out_sizes or not spatial:
            continue
        window, pool_strides = pooling
        kernel = _attr(conv, "kernel_shape", []) or _weight_window(graph, info, conv.input[1])
        strides = _attr(conv, "strides", [1] * spatial)
        dilations = _attr(conv, "dilations", [1] * spatial)
        pads = _attr(conv, "pads", [0] * 2 * spatial)
        if len(kernel) != spatial:
            continue
        trimmed = list(pads)
        for i, (size, out_size) in enumerate(zip(sizes, out_sizes, strict=True)):
            assert size is not None and out_size is not None
            used = (out_size - window[i]) // pool_strides[i] * pool_strides[i] + window[i]
            span = dilations[i] * (kernel[i] - 1) + 1  # the input one output reads, padding included
            # one end pad less, while the outputs still reach the last pooled one
            while trimmed[spatial + i] > 0:
                if (size + pads[i] + trimmed[spatial + i] - 1 - span) // strides[i] + 1 < used:
                    break
                trimmed[spatial + i] -= 1
        if trimmed != pads:
            for attribute in conv.attribute:
                if attribute.name == "pads":
                    attribute.ints[:] = trimmed
            resized.update(tensors)
    for stale in [v for v in graph.value_info if v.name in resized]:
        graph.value_info.remove(stale)  # their old sizes
    return model


def shared_products(graph: Any) -> set[str]:
    """The quantized matrix products (Gemm, MatMul) whose quantized output more than one operator
    input reads: `float_outputs` gives them float outputs.

    Why: onnxruntime gives each reader of a dequantized tensor its own DequantizeLinear, and on
    x86 it then turns int8 QuantizeLinear -> DequantizeLinear pairs into uint8 ones only where
    the QuantizeLinear has a single reader. A product behind such a shared pair reads uint8 and
    would write int8, which its integer kernel (QGemm) does not take, so onnxruntime ran it in
    float and dequantized its int8 weights at every call. In the seed CNN that is the second
    Dense(512), read twice by the normalization after it (its square and its product): 15 us an
    image at batch 64, one sixth of the whole network. With a float output the product is
    fused (QGemm with a float result, as the head's), and the normalization, which onnxruntime
    runs in float anyway, reads the unrounded values.
    """
    readers = _readers(graph)
    shared = set()
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul"):
            continue
        quantizers = [q for q in readers.get(node.output[0], []) if q.op_type == "QuantizeLinear"]
        dequantized = [
            dq.output[0]
            for q in quantizers
            for dq in readers.get(q.output[0], [])
            if dq.op_type == "DequantizeLinear"
        ]
        if sum(len(readers.get(name, [])) for name in dequantized) > 1:
            shared.add(node.name)
    return shared


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


def _onnx_finished(path: Path, source: Source, quant: Quantization) -> None:
    """The last pass over every ONNX file: the convolutions trimmed to what is pooled
    (`trim_unpooled_outputs`), and the metadata written into its metadata_props."""
    import onnx

    model = trim_unpooled_outputs(onnx.load(str(path)))
    props = metadata(source, quant)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.doc_string = "pipeline", f"{source.name} digit classifier ({quant.value})"
    onnx.save(model, str(path))


def describe_io(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Names, dtypes and shapes of the file's input and probabilities output, as onnxruntime sees them."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = sess.get_outputs()
    i, o = sess.get_inputs()[0], next((o for o in outputs if o.name == defaults.OUTPUT_NAME), outputs[0])

    def onnx_io(t: Any) -> dict[str, Any]:
        dtype = t.type.replace("tensor(", "").replace(")", "").replace("float", "float32")
        shape = [d if isinstance(d, int) else None for d in t.shape]
        return {"name": t.name, "dtype": dtype, "shape": shape, "quantization": None}

    return onnx_io(i), onnx_io(o)


def write(
    source: Source, quant: Quantization, out: Path, work: Path, calib: Callable[[], np.ndarray],
    integer_io: bool = False,
) -> None:  # fmt: skip
    """Write `source` as ONNX with `quant` to `out`; the float32 conversion is made once per export
    in `work` and every quantization starts from it. `integer_io` is a TFLite option."""
    base = work / "float32-base.onnx"
    if not base.is_file():
        _onnx_float32(source, base)
    if quant is Quantization.NONE:
        out.write_bytes(base.read_bytes())
    else:
        _onnx_quantized(base, quant, out, calib)
    _onnx_finished(out, source, quant)
