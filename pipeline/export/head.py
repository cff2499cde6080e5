"""The classifier head of a converted graph: the last weighted layers and what follows them.

int8 exports keep this head in float (`onnx.float_outputs` says why); both converters walk their
own graphs into the same `Op` records, and `classifier_head` finds the head the same way for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Op:
    """One operator of a converted graph, as `classifier_head` walks it."""

    key: str  # how the caller names it: node name (ONNX), output tensor name (TFLite)
    weighted: bool  # holds a layer's weights (Conv, Gemm, MatMul; CONV_2D, FULLY_CONNECTED...)
    inputs: tuple[Any, ...]


def classifier_head(outputs: list[Any], producer: dict[Any, Op]) -> tuple[list[str], list[str]]:
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
