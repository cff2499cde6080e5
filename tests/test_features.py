"""The default model's own evidence: a features output in every file, and the review's use of it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import defaults, manifest, preprocess, review, runtime
from pipeline.classify import ENCODING, ERRORS, classify, review_model_path
from pipeline.samples import letter_ink, pair_ink, scanned, scribble_ink

pytestmark = pytest.mark.skipif(manifest.release_dir() is None, reason="no release models in this checkout")

DEFAULT_FILES = (
    "bncnn-x4.float32.onnx",
    "bncnn-x4.int8.onnx",
    "bncnn-x4.float32.tflite",
    "bncnn-x4.int8.tflite",
)


def _release(name: str) -> Path:
    folder = manifest.release_dir()
    assert folder is not None
    return folder / name


@pytest.fixture(scope="module")
def images(test_digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return preprocess.scale(test_digits[0][:300])


@pytest.fixture(scope="module")
def keras_outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, features = runtime.load(_release("bncnn-x4.keras")).run(images)
    assert features is not None
    return probs, features


@pytest.mark.parametrize("name", DEFAULT_FILES)
def test_every_file_of_the_default_model_returns_its_features(
    name: str, images: np.ndarray, keras_outputs: tuple[np.ndarray, np.ndarray]
) -> None:
    """One pass gives the probabilities `predict` gives and the features Keras computes (int8
    files within a few percent: their activations are 8-bit)."""
    predictor = runtime.load(_release(name))
    probs, features = predictor.run(images)
    assert np.array_equal(probs, predictor.predict(images))
    assert features is not None and features.shape == keras_outputs[1].shape == (len(images), 512)
    relative = np.abs(features - keras_outputs[1]).mean() / np.abs(keras_outputs[1]).mean()
    assert relative < (0.03 if "int8" in name else 1e-5), relative


def test_the_keras_view_keeps_the_models_probabilities(
    images: np.ndarray, keras_outputs: tuple[np.ndarray, np.ndarray]
) -> None:
    assert np.array_equal(keras_outputs[0], runtime.load(_release("bncnn-x4.keras")).predict(images))


@pytest.mark.parametrize(
    "name", ["conv2d.int8.onnx", "conv2d.int8.tflite", "conv2d.keras", "micro.int8-io.tflite"]
)
def test_models_without_the_block_have_no_features(name: str, images: np.ndarray) -> None:
    predictor = runtime.load_micro(_release(name)) if "int8-io" in name else runtime.load(_release(name))
    probs, features = predictor.run(images[:20])
    assert features is None and probs.shape == (20, 10)


@pytest.mark.slow
def test_export_writes_the_features_output_and_keeps_the_head_block_integer(tmp_path: Path) -> None:
    """A bncnn exported to every format carries `features` beside `probabilities`; the int8
    ONNX still runs each block's convolution as an integer QLinearConv (a second consumer of the
    last block's output once kept its convolution float: 24% slower), all but the first, which
    reads the one-channel image and stays float by design (`export.onnx.image_convolutions`)."""
    import onnx
    import onnxruntime as ort

    from pipeline.export import export
    from pipeline.formats import EXPORT_FORMATS, Quantization
    from pipeline.train.models import build_bncnn

    model = build_bncnn()
    model.save(tmp_path / "bncnn.keras")
    x = preprocess.scale(np.random.default_rng(0).integers(0, 256, (32, 28, 28), dtype=np.uint8))
    reference = runtime.load(tmp_path / "bncnn.keras").run(x)[1]
    assert reference is not None
    done = export(
        tmp_path / "bncnn.keras",
        list(EXPORT_FORMATS),
        [Quantization.NONE, Quantization.INT8],
        tmp_path / "out",
    )
    assert len(done) == 4
    for item in done:
        _, features = runtime.load(item.path).run(x)
        assert features is not None and features.shape == (32, 128), item.path
        relative = np.abs(features - reference).mean() / np.abs(reference).mean()
        assert relative < (0.1 if "int8" in item.path.name else 1e-4), (item.path, relative)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(
        str(tmp_path / "out" / "bncnn.int8.onnx"), options, providers=["CPUExecutionProvider"]
    )
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 6  # every convolution after the first integer
    assert sum(op in ("Conv", "FusedConv") for op in ops) == 1


def _scans(make: object, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([scanned(make(), rng, quality=85) for _ in range(count)])  # type: ignore[operator]


def test_the_default_model_sends_letters_and_scribbles_to_review_and_not_digits(
    test_digits: tuple[np.ndarray, np.ndarray],
) -> None:
    """With the default model's features, printed letters and scribbles are `not_a_digit` (93.5%
    and 96.0% in `bench review`; pinned lower here, on fewer images), clean digits rarely."""
    checker = review.load(review_model_path()).for_model(
        manifest.source_sha256(_release("bncnn-x4.int8.onnx"))
    )
    assert checker.feature_means is not None
    model = runtime.load(_release("bncnn-x4.int8.onnx"))
    rng = np.random.default_rng(3)
    x = test_digits[0]
    pairs = _scans(lambda: pair_ink(x[int(rng.integers(9000))], x[int(rng.integers(9000))], rng), 60, rng)
    kinds = {  # images, the reasons that count, the least and the most share given one of them
        "digits": (x[7000:7600], set(review.REASONS), 0.0, 0.06),
        "letters": (_scans(lambda: letter_ink(rng), 80, rng), {review.NOT_A_DIGIT}, 0.8, 1.0),
        "scribbles": (_scans(lambda: scribble_ink(rng), 80, rng), {review.NOT_A_DIGIT}, 0.85, 1.0),
        "pairs": (pairs, {review.SEVERAL_DIGITS, review.NOT_A_DIGIT}, 0.95, 1.0),
    }
    for kind, (digits, reasons, least, most) in kinds.items():
        probs, features = model.run(preprocess.scale(digits))
        given = checker.reasons(digits, probs, defaults.REVIEW_BELOW, features=features)
        share = np.mean([r in reasons for r in given])
        assert least <= share <= most, (kind, share)


def test_another_models_features_are_not_judged_by_this_fit() -> None:
    """The feature limit was fitted on one model's features: any other model (another Keras file,
    even of the same shape) gets the image evidence alone."""
    checker = review.load(review_model_path())
    fitted_on = checker.fitted["features"]["source_sha256"]
    assert checker.for_model(fitted_on) is checker
    other = checker.for_model("0" * 64)
    assert other.feature_means is None and not other.uses_features(np.zeros((1, 512), np.float32))
    assert checker.for_model(None).feature_means is None


def test_the_feature_limit_is_a_quantile_of_digits_the_fit_did_not_see(tmp_path: Path) -> None:
    """On Gaussian stand-ins for features: about 1 - quantile of new draws pass the limit, and
    the saved model (float16 whitening) gives the same distances within 1e-3."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 6000)
    centres = rng.normal(0, 5, (10, 16))
    features = (centres[labels] + rng.normal(0, 1, (6000, 16))).astype(np.float32)
    base = review.load(review_model_path())
    fitted = review.fit_features(
        base, features[:4000], labels[:4000], features[4000:5000], labels[4000:5000], 0.95, {}
    )
    assert fitted.fitted["features"]["dimensions"] == 16
    fresh = fitted.feature_distances(features[5000:], labels[5000:]) > fitted.feature_limit
    assert 0.02 <= fresh.mean() <= 0.09
    review.save(fitted, tmp_path / "r.npz")
    loaded = review.load(tmp_path / "r.npz")
    before = fitted.feature_distances(features[5000:], labels[5000:])
    after = loaded.feature_distances(features[5000:], labels[5000:])
    assert np.abs(after - before).max() <= 1e-3 * np.median(before)
    assert loaded.feature_limit == fitted.feature_limit


def test_workers_and_the_main_process_give_the_same_reasons(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """classify with the default model: workers that predict (and judge the features there) and
    `--workers 1` (features judged by the writer) write the same file, letters marked."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, digit in enumerate(test_digits[0][:40]):
        Image.fromarray(digit).save(folder / f"d{i:03d}.png")
    for i in range(20):
        Image.fromarray(scanned(letter_ink(rng), rng, quality=85)).save(folder / f"l{i:03d}.png")
    model = _release("bncnn-x4.int8.onnx")
    classify(folder, tmp_path / "w2.csv", model=model, workers=2, chunk_size=16)
    classify(folder, tmp_path / "w1.csv", model=model, workers=1, chunk_size=16)
    assert (tmp_path / "w2.csv").read_bytes() == (tmp_path / "w1.csv").read_bytes()
    with open(tmp_path / "w1.csv", encoding=ENCODING, errors=ERRORS, newline="") as f:
        rows = list(csv.DictReader(f))
    letters = [r for r in rows if r["path"].startswith("l")]
    assert np.mean([r["reason"] == review.NOT_A_DIGIT for r in letters]) >= 0.75
    assert all(r["prediction"] != "" for r in letters)  # flagged rows keep their digit
