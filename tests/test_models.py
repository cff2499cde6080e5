"""Both seed architectures have the documented structure and output ranges."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.train import models


@pytest.fixture(scope="module")
def batch(test_digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    from pipeline.preprocess import scale

    return scale(test_digits[0][:64])


def test_conv2d_structure_and_ranges(batch: np.ndarray) -> None:
    import keras

    model = models.get("conv2d").build()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 4 and kinds.count("MaxPooling2D") == 4
    # each Conv2D is directly followed by its MaxPooling2D
    for i, kind in enumerate(kinds):
        if kind == "Conv2D":
            assert kinds[i + 1] == "MaxPooling2D"
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [512, 512, 10]
    assert dense[-1].activation.__name__ == "sigmoid"
    assert "Lambda" not in kinds
    normalized = keras.Model(model.input, model.get_layer("normalize").output)(batch)
    values = np.asarray(normalized)
    assert values.min() >= -1.0 and values.max() <= 1.0 and values.min() < 0 < values.max()
    out = np.asarray(model(batch))
    assert out.shape == (64, 10) and out.min() >= 0.0 and out.max() <= 1.0
    assert model.input.name == "image" and model.layers[-1].name == "probabilities"


def test_flat_is_eight_layers_784_to_10(batch: np.ndarray) -> None:
    import keras

    model = models.get("flat").build()
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    # input layer (784 nodes, the flattened image) + 6 hidden Dense + 1 output Dense = 8 layers
    assert len(dense) == 7
    assert model.get_layer("flatten").output.shape[-1] == 784
    assert dense[-1].units == 10
    out = np.asarray(model(batch))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ModelError, match="conv2d, flat"):
        models.get("resnet")


def test_bncnn_fits_the_edge_budget(batch: np.ndarray) -> None:
    model = models.get("bncnn").build()
    assert model.count_params() <= 1_500_000
    out = np.asarray(model(batch, training=False))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert models.get("bncnn").augment and models.get("bncnn").label_smoothing > 0
