"""The microcontroller target: a full-integer TFLite model as C source and header for firmware.

Firmware built on TensorFlow Lite Micro links the model as a byte array, reserves a tensor arena and
registers the model's operators with a `MicroMutableOpResolver`; all three are written here, from
the model itself: the bytes (16-byte aligned, as TFLM requires of the flatbuffer), the smallest arena
that runs it (found by running it in the real TFLM interpreter, `runtime.smallest_arena`), the input
and output scale and zero point, and the operators the graph uses. The multiply-accumulate count is
taken from the Keras model. A model that still holds a float tensor is refused: a Cortex-M4 without
an FPU would emulate every float operation.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import runtime
from pipeline.carray import c_array_bytes, c_array_rows
from pipeline.errors import ExportError
from pipeline.files import atomic_open, sha256


@dataclass(frozen=True)
class MicroInfo:
    """What the manifest records about a microcontroller artifact (its `micro` field)."""

    c_source: str  # file names, beside the .tflite
    header: str
    c_source_sha256: str
    header_sha256: str
    flash_bytes: int  # the model's size, which is what it takes of flash
    arena_bytes: int  # the smallest tensor arena the TFLM interpreter runs it in
    operators: list[str]  # MicroMutableOpResolver methods to call, e.g. AddConv2D
    macs: int  # multiply-accumulates per inference
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolver_name(builtin: str) -> str:
    """TFLite's builtin operator name as MicroMutableOpResolver's method: CONV_2D -> AddConv2D."""
    return "Add" + "".join(p.upper() if p[:1].isdigit() else p.capitalize() for p in builtin.split("_"))


def model_operators(model: bytes) -> tuple[list[str], list[str]]:
    """(the builtin operators the model uses, in first-use order; the types of its non-integer
    tensors), read with TFLM's own flatbuffer schema."""
    from tflite_micro.python.tflite_micro import runtime as tflm

    parsed = tflm.convert_bytearray_to_object(bytearray(model))
    builtin = {v: k for k, v in vars(tflm.schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(tflm.schema_fb.TensorType).items() if not k.startswith("_")}
    ops: list[str] = []
    floats: list[str] = []
    for graph in parsed.subgraphs:
        for op in graph.operators or []:
            name = builtin[tflm.get_builtin_code_from_operator_code(parsed.operatorCodes[op.opcodeIndex])]
            if name not in ops:
                ops.append(name)
        for tensor in graph.tensors or []:
            kind = types.get(tensor.type, str(tensor.type))
            if kind not in ("INT8", "INT32") and kind not in floats:
                floats.append(kind)
    return ops, floats


def macs(model: Any) -> int:
    """Multiply-accumulates per image of a Keras model: convolutions and dense layers (BatchNorm
    folds into the convolution before it; pooling and activations are additions or compares)."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D"):
            out_h, out_w, out_c = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            in_c = layer.input.shape[-1]
            per_output = kh * kw * (1 if kind == "DepthwiseConv2D" else in_c // layer.groups)
            total += int(out_h * out_w * out_c * per_output)
        elif kind == "Dense":
            total += int(layer.input.shape[-1] * layer.units)
    return total


_ALIGN = 16  # TFLM reads the flatbuffer in place: its tables need the buffer 16-byte aligned


def c_symbol(stem: str) -> str:
    """A C identifier from a file stem: micro.int8-io -> micro_int8_io_model."""
    name = re.sub(r"\W", "_", stem)
    return (name if not name[0].isdigit() else f"m_{name}") + "_model"


def write_c_files(tflite: Path, model_macs: int) -> MicroInfo:
    """Write `<stem>.c` and `<stem>.h` beside the full-integer `tflite`, each atomically."""
    data = tflite.read_bytes()
    ops, floats = model_operators(data)
    if floats:
        raise ExportError(f"{tflite.name}: not integer-only (tensors of type {', '.join(floats)})")
    details = runtime.micro_io(data)
    arena = runtime.smallest_arena(data)
    symbol = c_symbol(tflite.stem)
    guard = symbol.upper() + "_H_"
    resolver = [resolver_name(op) for op in ops]
    header = "\n".join(
        [
            f"/* {tflite.name} for TensorFlow Lite Micro, written by `pipeline export --micro`. */",
            f"#ifndef {guard}",
            f"#define {guard}",
            "",
            "#ifdef __cplusplus",
            'extern "C" {',
            "#endif",
            "",
            f"/* The model: {len(data)} bytes of flash, {model_macs} multiply-accumulates per image. */",
            f"extern const unsigned char {symbol}[];",
            f"extern const unsigned int {symbol}_len;",
            "",
            "/* The smallest tensor arena the TFLM interpreter ran it in (bytes); align it to 16. */",
            f"#define {symbol.upper()}_ARENA_BYTES {arena}",
            "",
            "/* int8 input: q = round(pixel / 255 / scale) + zero_point, pixel 0..255 white ink on black. */",
            f"#define {symbol.upper()}_INPUT_SCALE {details['input_scale']!r}f",
            f"#define {symbol.upper()}_INPUT_ZERO_POINT ({details['input_zero_point']})",
            "/* int8 output: probability = (q - zero_point) * scale, one per digit 0..9. */",
            f"#define {symbol.upper()}_OUTPUT_SCALE {details['output_scale']!r}f",
            f"#define {symbol.upper()}_OUTPUT_ZERO_POINT ({details['output_zero_point']})",
            "",
            f"/* Operators to register: tflite::MicroMutableOpResolver<{len(resolver)}> resolver; then",
            *(f" *   resolver.{name}();" for name in resolver),
            " */",
            f"#define {symbol.upper()}_OPERATOR_COUNT {len(resolver)}",
            f"#define {symbol.upper()}_REGISTER_OPERATORS(resolver) \\",
            *(f"  (resolver).{name}(); \\" for name in resolver[:-1]),
            f"  (resolver).{resolver[-1]}()",
            "",
            "#ifdef __cplusplus",
            "}",
            "#endif",
            "",
            f"#endif /* {guard} */",
            "",
        ]
    )
    source = "\n".join(
        [
            f"/* {tflite.name}: {len(data)} bytes, sha256 {sha256(tflite)}. */",
            f'#include "{tflite.stem}.h"',
            "",
            "#if defined(__cplusplus)",
            f"#define PIPELINE_ALIGNED alignas({_ALIGN})",
            "#elif defined(__GNUC__) || defined(__clang__)",
            f"#define PIPELINE_ALIGNED __attribute__((aligned({_ALIGN})))",
            "#else",
            "#include <stdalign.h>",
            f"#define PIPELINE_ALIGNED alignas({_ALIGN})",
            "#endif",
            "",
            f"PIPELINE_ALIGNED const unsigned char {symbol}[] = {{",
            *(f"  {row}" for row in c_array_rows(data)),
            "};",
            f"const unsigned int {symbol}_len = {len(data)};",
            "",
        ]
    )
    c_path, h_path = tflite.with_suffix(".c"), tflite.with_suffix(".h")
    with atomic_open(h_path, "w", encoding="ascii") as f:
        f.write(header)
    with atomic_open(c_path, "w", encoding="ascii") as f:
        f.write(source)
    if c_array_bytes(c_path.read_text()) != data:  # what firmware links is what was verified
        raise ExportError(f"{c_path.name}: the C array does not hold the model's bytes")
    return MicroInfo(
        c_source=c_path.name, header=h_path.name,
        c_source_sha256=sha256(c_path), header_sha256=sha256(h_path),
        flash_bytes=len(data), arena_bytes=arena, operators=resolver, macs=model_macs,
        input_scale=details["input_scale"], input_zero_point=details["input_zero_point"],
        output_scale=details["output_scale"], output_zero_point=details["output_zero_point"],
    )  # fmt: skip
