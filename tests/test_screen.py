"""classify's screen: micro answers in front of the default model where it is sure."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from pipeline import defaults, formats, manifest, preprocess, review, runtime
from pipeline.classify import ENCODING, ERRORS, classify, review_model_path, screen
from pipeline.samples import letter_ink, scanned, scribble_ink


@dataclass
class _Fixed:
    """A stand-in predictor: fixed probabilities and features per image index (the images
    carry their index in pixel [0, 0]), recording which images it was asked about."""

    probs: np.ndarray
    features: np.ndarray
    path: Path = Path("fixed.onnx")
    format: formats.Format = formats.Format.ONNX
    asked: list[int] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)  # images per call
    scale: float = 1.0  # 255 where the images were scaled to [0, 1] (as classify gives them)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        rows = np.rint(images[:, 0, 0, 0] * self.scale).astype(int)
        self.asked.extend(rows.tolist())
        self.calls.append(len(rows))
        return self.probs[rows], self.features[rows]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[0]


def _onehot(classes: list[int], top: float) -> np.ndarray:
    probs = np.full((len(classes), 10), (1 - top) / 9, np.float32)
    probs[np.arange(len(classes)), classes] = top
    return probs


def test_the_screen_answers_where_sure_and_near_and_sends_the_rest_on() -> None:
    """Row 0: sure and near (the screen's answer stands); row 1: sure but its features far from
    that digit's (sent on); row 2: unsure (sent on). The model sees rows 1 and 2 only; the
    features are the model's on those rows (NaN on row 0) beside the screen's on all."""
    gate = review.FeatureGaussian(np.zeros((10, 2), np.float32), np.eye(2, dtype=np.float32), 1.0)
    first = _Fixed(
        np.concatenate([_onehot([3, 4], 0.999), _onehot([5], 0.9)]),
        np.array([[0.5, 0.5], [2.0, 0.0], [0.1, 0.1]], np.float32),
    )
    then = _Fixed(_onehot([7, 8, 9], 0.97), np.arange(9, dtype=np.float32).reshape(3, 3))
    screened = screen.Screened(Path("model.onnx"), first, then, gate, width=3, confidence=0.995)
    images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1) * np.ones((3, 28, 28, 1), np.float32)
    probs, features = screened.run(images)
    assert then.asked == [1, 2]
    assert probs.argmax(axis=1).tolist() == [3, 8, 9]
    assert features is not None and features.shape == (3, 5)
    assert np.isnan(features[0, :3]).all() and np.array_equal(features[1:, :3], then.features[1:])
    assert np.array_equal(features[:, 3:], first.features)
    assert np.array_equal(screened.predict(images), probs)


def test_the_model_sees_what_the_screen_sends_on_from_a_whole_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """classify hands a screened model the whole chunk (`predict_digits`): the screen runs in
    slices of CLASSIFY_INFERENCE_BATCH and the model on the rows sent on from all of it, in
    slices of that size too, not one small call per slice of the screen's."""
    from pipeline.classify.chunks import predict_digits

    monkeypatch.setattr(defaults, "CLASSIFY_INFERENCE_BATCH", 4)
    gate = review.FeatureGaussian(np.zeros((10, 2), np.float32), np.eye(2, dtype=np.float32), 1.0)
    sure = [i % 2 == 0 for i in range(11)]  # the odd rows are sent on
    screen_probs = np.concatenate([_onehot([3], 0.999 if s else 0.5) for s in sure])
    first = _Fixed(screen_probs, np.zeros((11, 2), np.float32), scale=255)
    then = _Fixed(_onehot([7] * 11, 0.97), np.ones((11, 3), np.float32), scale=255)
    screened = screen.Screened(Path("model.onnx"), first, then, gate, width=3, confidence=0.995)
    digits = np.zeros((11, 28, 28), np.uint8)
    digits[:, 0, 0] = np.arange(11)  # each image's index in pixel [0, 0]
    probs, features = predict_digits(screened, digits)
    assert first.calls == [4, 4, 3] and first.asked == list(range(11))
    assert then.calls == [4, 1] and then.asked == [1, 3, 5, 7, 9]
    assert probs.argmax(axis=1).tolist() == [3 if s else 7 for s in sure]
    assert features is not None and np.isnan(features[::2, :3]).all() and (features[1::2, :3] == 1).all()


def test_each_row_is_reviewed_by_the_network_that_answered_it() -> None:
    """A screened run's features: rows with the model's features are judged by the model's fit,
    rows without (NaN) by the screen's; the model's own features alone as before."""
    model_fit = review.FeatureGaussian(np.zeros((10, 3), np.float32), np.eye(3, dtype=np.float32), 4.0)
    screen_fit = review.FeatureGaussian(np.zeros((10, 2), np.float32), np.eye(2, dtype=np.float32), 1.0)
    base = review.load(review_model_path()) if manifest.release_dir() else None
    if base is None:
        pytest.skip("no release review model in this checkout")
    checker = review.ReviewModel(
        base.means, base.components, base.residual_limit, base.shape_mean, base.shape_inverse_covariance,
        base.shape_limit, {}, model_fit.means, model_fit.whitening, model_fit.limit, screen_fit,
    )  # fmt: skip
    nan = np.nan
    features = np.array([[nan, nan, nan, 2.0, 0.0], [1.0, 1.0, 1.0, 9.0, 9.0]], np.float32)
    classes = np.array([0, 0])
    assert checker.uses_features(features) and checker.uses_features(features[:, :3])
    assert checker.feature_ratios(features, classes) == pytest.approx([4.0, 0.75])
    assert checker.feature_ratios(features[1:, :3], classes[1:]) == pytest.approx([0.75])
    assert not checker.uses_features(features[:, :4])


def test_a_fitted_screen_survives_saving(tmp_path: Path) -> None:
    """fit_screen's Gaussian and limit come back from the file (float16 whitening: each distance
    within 0.2% of itself), with what it was fitted on."""
    if manifest.release_dir() is None:
        pytest.skip("no release review model in this checkout")
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, 3000)
    features = (rng.normal(0, 4, (10, 8))[labels] + rng.normal(0, 1, (3000, 8))).astype(np.float32)
    fitted = review.fit_screen(
        review.load(review_model_path()), features[:2000], labels[:2000], features[2000:], labels[2000:],
        0.9, {"artifact": "s.onnx"},
    )  # fmt: skip
    assert fitted.screen is not None
    assert fitted.fitted["screen"]["artifact"] == "s.onnx" and fitted.fitted["screen"]["dimensions"] == 8
    share = np.mean(fitted.screen.distances(features[2000:], labels[2000:]) > fitted.screen.limit)
    assert share == pytest.approx(0.1, abs=0.01)
    review.save(fitted, tmp_path / "r.npz")
    loaded = review.load(tmp_path / "r.npz")
    assert loaded.screen is not None and loaded.screen.limit == fitted.screen.limit
    before = fitted.screen.distances(features, labels)
    after = loaded.screen.distances(features, labels)
    assert after == pytest.approx(before, rel=2e-3)


release = pytest.mark.skipif(manifest.release_dir() is None, reason="no release models in this checkout")


def _release(name: str) -> Path:
    folder = manifest.release_dir()
    assert folder is not None
    return folder / name


def _checker() -> review.ReviewModel:
    return review.load(review_model_path()).for_model(manifest.source_sha256(_release("bncnn-x4.int8.onnx")))


@release
def test_the_release_screens_its_default_model_and_nothing_else(tmp_path: Path) -> None:
    """The review names micro.int8.onnx as the default model's screen; conv2d, a model without
    the review's features, runs alone, as does the default with no review or a screen file that
    is not the one fitted."""
    checker = _checker()
    default = _release("bncnn-x4.int8.onnx")
    source = screen.source_for(default, checker)
    assert source.screen == _release("micro.int8.onnx") and source.width == 512
    conv2d = _release("conv2d.int8.onnx")
    assert screen.source_for(conv2d, review.load(review_model_path()).for_model(None)).screen is None
    assert screen.source_for(default, None).screen is None
    copy = tmp_path / "release"
    copy.mkdir()
    shutil.copy(default, copy / default.name)
    shutil.copy(_release("conv2d.int8.onnx"), copy / "micro.int8.onnx")  # not the screen fitted
    assert screen.source_for(copy / default.name, checker).screen is None
    assert isinstance(screen.load(screen.Source(default)), runtime.OnnxPredictor)


@release
def test_the_screened_default_gives_the_models_answers_and_flags(
    test_digits: tuple[np.ndarray, np.ndarray],
) -> None:
    """On test digits (clean and as scans) the screen answers most and changes no answer (none
    of 10,000 test digits or 5,000 scans in docs/classify.md); letters and scribbles go to the
    model and come back `not_a_digit` about as often as from the model alone."""
    checker = _checker()
    screened = screen.load(screen.source_for(_release("bncnn-x4.int8.onnx"), checker))
    assert isinstance(screened, screen.Screened)
    alone = runtime.load(_release("bncnn-x4.int8.onnx"))
    rng = np.random.default_rng(11)
    x = test_digits[0]
    digits = np.concatenate([x[:1000], np.stack([scanned(d, rng, quality=85) for d in x[1000:1300]])])
    probs, features = screened.run(preprocess.scale(digits))
    model_probs, _ = alone.run(preprocess.scale(digits))
    assert np.mean(probs.argmax(axis=1) == model_probs.argmax(axis=1)) >= 0.998
    assert features is not None
    sent = ~np.isnan(features[:, 0])
    assert 0.01 <= sent.mean() <= 0.15, sent.mean()
    assert np.array_equal(probs[sent], model_probs[sent])
    for make in (letter_ink, scribble_ink):
        odd = np.stack([scanned(make(rng), rng, quality=85) for _ in range(80)])
        probs, features = screened.run(preprocess.scale(odd))
        model_probs, model_features = alone.run(preprocess.scale(odd))
        mine = np.mean(checker.reasons(odd, probs, features=features) == np.array(review.NOT_A_DIGIT))
        theirs = np.mean(
            checker.reasons(odd, model_probs, features=model_features) == np.array(review.NOT_A_DIGIT)
        )
        assert mine >= theirs - 0.05 and mine >= 0.75, (make.__name__, mine, theirs)


@release
def test_classify_screens_the_default_and_no_screen_runs_the_model_alone(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """The same digits from both runs, the second choice and confidence from the network that
    answered; the summary says which ran."""
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, digit in enumerate(test_digits[0][:60]):
        Image.fromarray(digit).save(folder / f"d{i:03d}.png")
    with_screen = classify(folder, tmp_path / "s.csv", workers=2, chunk_size=16)
    alone = classify(folder, tmp_path / "a.csv", workers=2, chunk_size=16, screened=False)
    assert with_screen.screen == _release("micro.int8.onnx") and alone.screen is None
    assert 30 <= with_screen.screened < 60 and alone.screened == 0  # the rest were the model's

    def rows(name: str) -> list[dict[str, str]]:
        with open(tmp_path / name, encoding=ENCODING, errors=ERRORS, newline="") as f:
            return list(csv.DictReader(f))

    assert [r["prediction"] for r in rows("s.csv")] == [r["prediction"] for r in rows("a.csv")]
    expected = runtime.load(_release("bncnn-x4.int8.onnx")).predict(preprocess.scale(test_digits[0][:60]))
    assert [float(r["confidence"]) for r in rows("a.csv")] == pytest.approx(expected.max(axis=1), abs=1e-6)
    changed = [
        s for s, a in zip(rows("s.csv"), rows("a.csv"), strict=True) if s["confidence"] != a["confidence"]
    ]
    assert len(changed) >= 30  # the screen answered most of them: its own confidence, over its threshold
    assert all(float(r["confidence"]) >= defaults.SCREEN_CONFIDENCE for r in changed)
    cli = run_cli("classify", str(folder), "--out", str(tmp_path / "c.csv"), "--workers", "1")
    assert cli.returncode == 0 and "screened by" in cli.stdout and "micro.int8.onnx" in cli.stdout
    assert f"answered {with_screen.screened} alone" in cli.stdout
    cli = run_cli("classify", str(folder), "--out", str(tmp_path / "n.csv"), "--no-screen")
    assert cli.returncode == 0 and "screened" not in cli.stdout
    assert (tmp_path / "n.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()
