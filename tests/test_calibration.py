"""Calibrated confidence: the ECE, temperature scaling on held-out images, folded into every artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import calibration, data, manifest, preprocess, runtime
from pipeline.errors import CalibrationError


def test_ece_is_zero_when_confidence_matches_accuracy_and_the_gap_otherwise() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    confidence = rng.uniform(0.1, 1.0, n)
    right = rng.uniform(size=n) < confidence  # right exactly as often as it says
    assert calibration.ece_of(calibration.binned(confidence, right)) < 0.01
    always_right = np.ones(n, dtype=bool)
    assert calibration.ece_of(calibration.binned(np.full(n, 0.9), always_right)) == pytest.approx(0.1)
    # from probabilities: a model that says 0.9 for its answer and is right 70% of the time
    probs = np.full((10, 10), 0.1 / 9)
    probs[np.arange(10), np.arange(10)] = 0.9
    labels = np.array([0, 1, 2, 3, 4, 5, 9, 9, 9, 9])
    assert calibration.ece(probs, labels) == pytest.approx(0.2)
    bins = calibration.reliability(probs, labels)
    assert [b.count for b in bins if b.count] == [10] and len(bins) == 15


def _member(out: Path, seed: int) -> Path:
    from pipeline.train import TrainConfig, train

    config = TrainConfig(
        model="flat", epochs=1, limit=5000, validation_split=0.5, seed=seed, split_seed=7, batch_size=64,
        backend="tensorflow",
    )  # fmt: skip
    return train(config, out=out / f"flat-s{seed}", show_progress=False).run_dir


@pytest.fixture(scope="module")
def calibrated_flat(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: Any) -> dict[str, Any]:
    """Two small softmax members holding out the same 2,500 images, averaged, calibrated; records
    which data splits were read before the temperature was fixed."""
    from pipeline.train import calibrate as calibrate_module
    from pipeline.train.ensemble import ensemble

    root = tmp_path_factory.mktemp("calibrate")
    members = [_member(root, seed) for seed in (1, 2)]
    ensemble([m / "model.keras" for m in members], root / "flat-x2")
    reads: list[str] = []
    real_load, real_fit = data.load, calibrate_module.fit_temperature

    def load(split: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(str(getattr(split, "value", split)))
        return real_load(split, *args, **kwargs)

    def fit(*args: Any, **kwargs: Any) -> float:
        reads.append("fitted")
        return real_fit(*args, **kwargs)

    monkeypatch_module.setattr(calibrate_module.data, "load", load)
    monkeypatch_module.setattr(calibrate_module, "fit_temperature", fit)
    result = calibrate_module.calibrate(root / "flat-x2" / "model.keras", root / "flat-x2-cal")
    monkeypatch_module.undo()
    return {"root": root, "members": members, "result": result, "reads": reads}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_calibration_never_reads_the_test_set_before_the_temperature_is_fixed(
    calibrated_flat: dict[str, Any],
) -> None:
    reads = calibrated_flat["reads"]
    assert reads.index("fitted") < reads.index("test"), reads
    assert "test" not in reads[: reads.index("fitted")]


def test_the_fit_uses_only_the_images_every_member_held_out(calibrated_flat: dict[str, Any]) -> None:
    from pipeline.train.calibrate import held_out_indices
    from pipeline.train.config import TrainConfig

    result = calibrated_flat["result"]
    assert result.held_out == 2500
    index, _ = held_out_indices(calibrated_flat["root"] / "flat-x2" / "model.keras", 60_000)
    config = json.loads((calibrated_flat["members"][0] / "config.json").read_text())
    trained_on = TrainConfig(**config).split_order(60_000)[:2500]  # what the members fit on
    assert len(np.intersect1d(index, trained_on)) == 0


def test_calibrated_model_records_the_fit_and_improves_held_out_likelihood(
    calibrated_flat: dict[str, Any],
) -> None:
    folder = calibrated_flat["root"] / "flat-x2-cal"
    record = json.loads((folder / "metrics.json").read_text())["calibration"]
    assert record["temperature"] == pytest.approx(calibrated_flat["result"].temperature, rel=1e-5)
    assert "every member held out" in record["fitted_on"]
    assert record["held_out_after"]["nll"] <= record["held_out_before"]["nll"]
    assert record["held_out_after"]["ece"] < record["held_out_before"]["ece"] + 0.005
    assert (folder / "reliability.png").stat().st_size > 1000
    # the temperature is in the weights: the calibrated .keras gives the calibrated probabilities
    x, y = data.load(data.Split.TRAIN)
    from pipeline.train.calibrate import held_out_indices

    index, _ = held_out_indices(calibrated_flat["root"] / "flat-x2" / "model.keras", len(x))
    probs = runtime.load(folder / "model.keras").predict(preprocess.scale(x[index]))
    assert calibration.ece(probs, y[index]) == pytest.approx(record["held_out_after"]["ece"], abs=1e-3)


def test_every_artifact_returns_the_calibrated_probabilities(
    calibrated_flat: dict[str, Any], tmp_path: Path
) -> None:
    """Exported to ONNX and TFLite, float32 and int8, the calibrated model passes verify, and each
    artifact's probabilities are Keras' calibrated ones within the parity limits."""
    from pipeline.export import Quantization, export
    from pipeline.formats import Format
    from pipeline.verify import verify

    source = calibrated_flat["root"] / "flat-x2-cal" / "model.keras"
    export(source, [Format.ONNX, Format.TFLITE], [Quantization.NONE, Quantization.INT8], out_dir=tmp_path,
           calibration_samples=200)  # fmt: skip
    report = verify(tmp_path / "manifest.json", limit=2000, latency_repeats=1, write=False)
    assert not report.failures
    x, _ = data.load(data.Split.TEST, limit=2000)
    keras_probs = runtime.load(source).predict(preprocess.scale(x))
    entries = manifest.read(tmp_path / "manifest.json").entries
    for entry in entries:
        probs = runtime.load(tmp_path / entry.path).predict(preprocess.scale(x))
        limit = 1e-4 if entry.quantization.value == "none" else 0.2
        assert np.abs(probs - keras_probs).max() < limit, entry.path
        assert entry.source.training["calibration"]["temperature"] > 0
    for result in report.results:
        assert result.ece is not None and result.keras_ece is not None


def test_a_model_without_held_out_images_or_with_sigmoid_outputs_is_refused(
    trained_conv2d: Path, tmp_path: Path
) -> None:
    from pipeline.train.calibrate import calibrate

    with pytest.raises(CalibrationError, match="not softmax"):
        calibrate(trained_conv2d / "model.keras", tmp_path / "a")
    with pytest.raises(CalibrationError, match="takes a Keras model"):
        calibrate(trained_conv2d / "model.onnx", tmp_path / "c")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CalibrationError, match="cannot create it"):
        calibrate(trained_conv2d / "model.keras", blocker / "d")
    release = manifest.release_dir()
    if release is not None:  # the release ensemble's members trained on all 60,000 images
        with pytest.raises(CalibrationError, match="member"):
            calibrate(release / "bncnn-x4.keras", tmp_path / "b")


def test_a_temperature_fitted_on_a_stand_in_is_folded_into_the_model(
    calibrated_flat: dict[str, Any], tmp_path: Path
) -> None:
    """--fit-on: the stand-in's held-out images fix T, which then goes into another model of the
    same recipe (for a model trained on every image)."""
    from pipeline.train.calibrate import calibrate

    stand_in = calibrated_flat["root"] / "flat-x2" / "model.keras"
    target = calibrated_flat["members"][0] / "model.keras"
    result = calibrate(target, tmp_path / "cal", fit_on=stand_in)
    assert result.temperature == pytest.approx(calibrated_flat["result"].temperature, rel=1e-6)
    record = json.loads((tmp_path / "cal" / "metrics.json").read_text())["calibration"]
    assert record["fit_on"] == str(stand_in) and "stand-in" in record["fitted_on"]
    x, _ = data.load(data.Split.TEST, limit=500)
    before = runtime.load(target).predict(preprocess.scale(x))
    after = runtime.load(result.model).predict(preprocess.scale(x))
    logits = np.log(np.maximum(before, 1e-30))  # a softmax member: its log-probabilities are its logits
    expected = np.exp(logits / result.temperature)
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.abs(after - expected).max() < 1e-4
