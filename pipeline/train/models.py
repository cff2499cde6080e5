"""Model architectures by name.

Every model takes `image` float32 [N, 28, 28, 1] in [0, 1] and ends in a layer named
`probabilities` with 10 outputs, so export, runtime and verify never need to know which one it is.
Only built-in Keras layers are used (no `Lambda`, no custom classes), so a `.keras` file saved
on one backend (JAX on a GPU machine) loads and converts on another (TensorFlow here).

Keras is imported inside the builders: listing names must not cost a TensorFlow import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import defaults
from pipeline.errors import ModelError

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: how to build it and which loss fits its output layer."""

    name: str
    description: str
    build: Callable[[], keras.Model]
    label_smoothing: float = 0.0
    # Training recipe defaults (overridable from the CLI): host-side augmentation and a
    # warm-up + cosine learning-rate schedule help the larger models and slow the seed ones.
    augment: bool = False
    cosine: bool = False
    weight_decay: float = 0.0

    def loss(self) -> Any:
        """Categorical cross-entropy for every model, the sigmoid seed CNN included.

        Keras' categorical cross-entropy divides the outputs by their sum before taking the log,
        so on the seed's sigmoid layer it trains the normalised scores. Measured on the seed CNN,
        one epoch on 2,000 images at batch 32: 92.2% test accuracy with it, 10-43% with binary
        cross-entropy (the unit-normalised features give small logits that BCE moves slowly).
        """
        import keras

        return keras.losses.CategoricalCrossentropy(label_smoothing=self.label_smoothing)


def _output(x: Any, activation: str) -> Any:
    """The 10-way output, in float32 even under a mixed-precision policy: the loss and the
    probabilities need float32's range and resolution."""
    from keras import layers

    return layers.Dense(10, activation=activation, name=defaults.OUTPUT_NAME, dtype="float32")(x)


def _input() -> Any:
    import keras

    size = defaults.FIELD_SIZE
    return keras.Input(shape=(size, size, 1), name=defaults.INPUT_NAME)


def build_conv2d() -> keras.Model:
    """The seed's CNN: four Conv2D -> MaxPooling2D pairs, two Dense(512), sigmoid output.

    The second Dense(512) is L2-normalised by `UnitNormalization`, which puts every value in
    [-1, +1] as the seed specified, with a built-in layer that serialises on every backend.
    Widths 32-64-128-128 and 'same' padding keep 28 -> 14 -> 7 -> 3 -> 1 spatially.
    """
    import keras
    from keras import layers

    inputs = _input()
    x = inputs
    for i, filters in enumerate((32, 64, 128, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="dense1")(x)
    x = layers.Dense(512, name="dense2")(x)
    x = layers.UnitNormalization(name="normalize")(x)
    outputs = _output(x, "sigmoid")
    return keras.Model(inputs, outputs, name="conv2d")


def build_flat() -> keras.Model:
    """The seed's MLP: 8 layers, 784 inputs -> six hidden Dense layers -> 10 outputs (softmax).

    The input layer takes the 28x28x1 image like every other model and flattens it, so the
    artifacts share one input signature.
    """
    import keras
    from keras import layers

    inputs = _input()
    x = layers.Flatten(name="flatten")(inputs)  # the 784-node input layer
    for i, units in enumerate((512, 512, 256, 256, 128, 64), start=1):
        x = layers.Dense(units, activation="relu", name=f"hidden{i}")(x)
    outputs = _output(x, "softmax")
    return keras.Model(inputs, outputs, name="flat")


def _conv_bn(
    x: Any, filters: int, kernel: int, strides: int = 1, padding: str = "same", name: str = ""
) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=name)(x)
    # momentum 0.9: the moving statistics settle within ~50 steps, so short runs validate too
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


# Channels of bncnn's two stages and head, and of its narrower distillation student (the fast
# loop, `train.fastfit`, builds the same widths).
BNCNN_WIDTHS: dict[str, tuple[int, int, int]] = {"bncnn": (32, 64, 128), "bncnn-s": (24, 48, 96)}


def build_bncnn(widths: tuple[int, int, int] = BNCNN_WIDTHS["bncnn"], name: str = "bncnn") -> keras.Model:
    """A stronger edge CNN (~330k parameters): BatchNorm, strided 5x5 convolutions instead of
    pooling, dropout. The shape of the best single Kaggle MNIST CNNs (about 99.7% with
    augmentation), small enough for a microcontroller once quantized (about 0.4 MB int8).
    `widths`: the channels of its two stages and its head (`build_bncnn_s` is narrower).
    """
    import keras
    from keras import layers

    inputs = _input()
    x = inputs
    for stage, filters in enumerate(widths[:2], start=1):
        x = _conv_bn(x, filters, 3, name=f"s{stage}c1")
        x = _conv_bn(x, filters, 3, name=f"s{stage}c2")
        x = _conv_bn(x, filters, 5, strides=2, name=f"s{stage}down")
        x = layers.Dropout(0.4, name=f"s{stage}drop")(x)
    x = _conv_bn(x, widths[2], 4, padding="valid", name="head")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.4, name="head_drop")(x)
    outputs = _output(x, "softmax")
    return keras.Model(inputs, outputs, name=name)


def build_bncnn_s() -> keras.Model:
    """bncnn with three quarters of its channels (24, 48, 96): about 56% of its multiply-adds, a
    student for distilling the release ensemble into one network cheap enough for classify's
    throughput (docs/training.md, "Distillation")."""
    return build_bncnn(BNCNN_WIDTHS["bncnn-s"], "bncnn-s")


def build_micro() -> keras.Model:
    """A microcontroller CNN (~50k parameters, ~4.5M multiply-accumulates): five 3x3 Conv-BN-ReLU
    blocks (16, 32, 32, 48, 48 channels; the second and fourth strided), global average pooling
    and the 10-way output.

    Sized for a Cortex-M4 class part once int8: the weights fit 64 KiB of flash with the model's
    own overhead, and the activations stay small enough for a ~20 KiB tensor arena: the largest
    map is the first, 28x28x16 bytes, and every later one is a quarter of that or less. The
    BatchNorms fold into the convolutions at conversion; no dropout, no Dense hidden layer (where a
    flatten of the last map would cost most of the flash).
    """
    import keras
    from keras import layers

    inputs = _input()
    x = inputs
    for name, filters, strides in (("c1", 16, 1), ("c2", 32, 2), ("c3", 32, 1), ("c4", 48, 2), ("c5", 48, 1)):
        x = _conv_bn(x, filters, 3, strides=strides, name=name)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _output(x, "softmax")
    return keras.Model(inputs, outputs, name="micro")


REGISTRY: dict[str, ModelSpec] = {
    "conv2d": ModelSpec(
        "conv2d", "seed CNN: 4x(Conv2D+MaxPool), 2xDense(512) normalised to [-1,1], sigmoid",
        build_conv2d,
    ),
    "flat": ModelSpec(
        "flat", "seed MLP: 784 -> 6 hidden Dense -> 10, softmax", build_flat
    ),
    "bncnn": ModelSpec(
        "bncnn", "edge CNN: BatchNorm, strided convs, dropout, augmentation, label smoothing",
        build_bncnn, label_smoothing=0.1, augment=True, cosine=True, weight_decay=1e-4,
    ),
    "bncnn-s": ModelSpec(
        "bncnn-s", "bncnn at three quarters of its channels: a distillation student",
        build_bncnn_s, label_smoothing=0.1, augment=True, cosine=True, weight_decay=1e-4,
    ),
    "micro": ModelSpec(
        "micro", "microcontroller CNN: 5 Conv-BN-ReLU, global average pooling, ~50k parameters",
        build_micro, label_smoothing=0.1, augment=True, cosine=True, weight_decay=1e-4,
    ),
}  # fmt: skip


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> ModelSpec:
    """Look a model up by name; an unknown name is a user error listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(names())}") from None
