"""Training writes a complete run folder, learns, and resumes after a hard kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import kill_when

from pipeline.errors import TrainError
from pipeline.train import Backend, TrainConfig, select_backend, train

pytestmark = pytest.mark.slow  # trains models (or starts Ray)


def test_one_epoch_on_2000_images_beats_85_percent(trained_conv2d: Path) -> None:
    metrics = json.loads((trained_conv2d / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85
    assert metrics["train_images"] == 1800 and metrics["validation_images"] == 200
    assert metrics["test_images"] == 10000
    for name in (
        "model.keras",
        "history.csv",
        "history.json",
        "curves.png",
        "config.json",
        "checkpoint.keras",
    ):
        assert (trained_conv2d / name).stat().st_size > 0, name
    assert metrics["backend"] == "tensorflow" and metrics["device"].startswith("CPU")
    assert len(metrics["per_class_accuracy"]) == 10 and metrics["data_sha256"]
    assert "keras" in metrics["versions"] and metrics["seed"] == TrainConfig().seed
    header = (trained_conv2d / "history.csv").read_text().splitlines()[0]
    assert header.split(",")[:1] == ["epoch"] and "val_accuracy" in header


def test_model_file_has_no_optimizer_state(trained_conv2d: Path) -> None:
    assert (trained_conv2d / "model.keras").stat().st_size < (
        trained_conv2d / "checkpoint.keras"
    ).stat().st_size / 2


def test_auto_backend_is_tensorflow_without_gpu() -> None:
    assert select_backend("auto") is Backend.TENSORFLOW


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"model": "nope"}, "unknown model"),
        ({"backend": "theano"}, "unknown backend"),
        ({"target_accuracy": 99.0}, "fraction"),
        ({"validation_split": 1.5}, "validation-split"),
    ],
)
def test_bad_config_is_a_named_error(change: dict[str, object], message: str) -> None:
    with pytest.raises(Exception, match=message) as err:
        TrainConfig(**change).check()  # type: ignore[arg-type]
    assert err.type.__name__ in ("TrainError", "ModelError")


def test_resume_refuses_a_folder_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="no checkpoint"):
        train(TrainConfig(epochs=2), out=tmp_path, resume=True)


def _pipeline(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def test_resume_after_kill_continues_from_checkpoint(tmp_path: Path) -> None:
    """Kill -9 a real training process after its first checkpoint, then --resume it."""
    run = tmp_path / "run"
    args = [
        "train",
        "--model",
        "flat",
        "--epochs",
        "4",
        "--limit",
        "3000",
        "--out",
        str(run),
        "--backend",
        "tensorflow",
    ]
    state = run / "state.json"
    kill_when(_pipeline(*args), state, lambda s: int(s["epochs_done"]) >= 1)
    done_before = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done_before < 4 and not (run / "metrics.json").exists()
    first_epochs = json.loads(state.read_text())["history"]["loss"][:done_before]

    resumed = subprocess.run(
        _pipeline("train", "--resume", "--out", str(run), "--epochs", "4"), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 4  # no epoch lost, none repeated
    assert history["loss"][:done_before] == first_epochs
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["test_accuracy"] > 0.85


def test_target_accuracy_stops_early_and_reports_time(tmp_path: Path) -> None:
    config = TrainConfig(model="flat", epochs=5, limit=3000, target_accuracy=0.5, backend="tensorflow")
    metrics = train(config, out=tmp_path / "run", show_progress=False).metrics
    assert metrics["epochs"] == 1 and metrics["target"]["epoch"] == 1
    assert metrics["target"]["val_accuracy"] >= 0.5
    assert 0 < metrics["target"]["seconds_from_process_start"] < 600
    # The breakdown: start-up before the fit loop, then the epoch that reached the target.
    timeline = metrics["timeline"]
    assert len(timeline["epoch_end_seconds"]) == 1
    assert 0 < timeline["fit_start_seconds"] < timeline["epoch_end_seconds"][0]
    assert timeline["epoch_end_seconds"][0] <= metrics["target"]["seconds_from_process_start"]


def test_augmented_training_runs(tmp_path: Path) -> None:
    config = TrainConfig(model="bncnn", epochs=2, limit=3000, batch_size=64, backend="tensorflow")
    metrics = train(config, out=tmp_path / "run", show_progress=False).metrics
    assert metrics["augment"] is True and metrics["parameters"] < 1_500_000
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["accuracy"][1] > history["accuracy"][0]  # it learns through the augmentation
    ends = metrics["timeline"]["epoch_end_seconds"]
    assert len(ends) == 2 and ends[0] < ends[1]
    assert metrics["test_accuracy"] > 0.5


@pytest.mark.parametrize(
    ("key", "expected_best"),
    [("val_accuracy", 1), ("accuracy", 2)],  # validated: the better epoch; unvalidated: the last
)
def test_epoch_choice_without_validation_is_the_last(tmp_path: Path, key: str, expected_best: int) -> None:
    import time

    from pipeline.train import models
    from pipeline.train.keras_fit import callbacks

    state: dict[str, object] = {
        "history": {}, "best_epoch": 0, "best_score": -1.0, "epochs_done": 0,
        "train_seconds_before": 0.0, "fit_start": time.time(),
    }  # fmt: skip
    checkpoint = callbacks(tmp_path, state, TrainConfig(model="flat"), show_progress=False)[0]
    checkpoint.set_model(models.get("flat").build())
    checkpoint.on_epoch_end(0, {"loss": 0.3, key: 0.95})
    checkpoint.on_epoch_end(1, {"loss": 0.4, key: 0.90})  # a worse score in the last epoch
    assert state["best_epoch"] == expected_best
    assert (tmp_path / "best.weights.h5").is_file()


def test_augmented_batches_do_not_depend_on_threads_or_resume(
    test_digits: tuple[np.ndarray, np.ndarray],
) -> None:
    """Batches made by 3 threads through Keras equal the serial ones, a run resumed at epoch 1
    sees the batches of an uninterrupted run's epoch 1, and epochs differ."""
    import keras

    from pipeline import preprocess
    from pipeline.train import augmented_batches

    x = preprocess.scale(test_digits[0][:200])
    y = np.eye(10, dtype=np.float32)[test_digits[1][:200]]
    serial = augmented_batches(x, y, 64, seed=7, first_epoch=0, workers=1)
    epoch0 = np.concatenate([serial[i][0] for i in range(len(serial))])
    threaded = augmented_batches(x, y, 64, seed=7, first_epoch=0, workers=3)
    identity = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Identity()])
    np.testing.assert_array_equal(identity.predict(threaded, verbose=0), epoch0)
    serial.on_epoch_end()
    resumed = augmented_batches(x, y, 64, seed=7, first_epoch=1, workers=1)
    for i in reversed(range(len(serial))):  # any order: each batch has its own generator
        np.testing.assert_array_equal(resumed[i][0], serial[i][0])
        np.testing.assert_array_equal(resumed[i][1], serial[i][1])
    assert not np.allclose(np.concatenate([serial[i][0] for i in range(len(serial))]), epoch0)


def test_mixed_precision_run_saves_a_float32_model(tmp_path: Path) -> None:
    """bfloat16 compute while training; the saved model is float32 (what export converts) with the
    trained weights, and agrees with the mixed-precision checkpoint."""
    import keras

    from pipeline import data, preprocess

    config = TrainConfig(
        model="conv2d", epochs=1, limit=2000, batch_size=32, precision="mixed_bfloat16", backend="tensorflow"
    )
    metrics = train(config, out=tmp_path / "run", show_progress=False).metrics
    assert metrics["precision"] == "mixed_bfloat16" and metrics["test_accuracy"] > 0.8
    saved = keras.saving.load_model(tmp_path / "run" / "model.keras")
    mixed = keras.saving.load_model(tmp_path / "run" / "checkpoint.keras")
    assert {layer.compute_dtype for layer in saved.layers} == {"float32"}
    assert "bfloat16" in {layer.compute_dtype for layer in mixed.layers}
    assert mixed.get_layer("probabilities").compute_dtype == "float32"
    images, _ = data.load(data.Split.TEST, limit=500)
    x = preprocess.scale(images)
    agree = (saved.predict(x, verbose=0).argmax(1) == mixed.predict(x, verbose=0).argmax(1)).mean()
    assert agree > 0.97
    keras.config.set_dtype_policy("float32")


def test_precision_auto_is_float32_on_a_cpu() -> None:
    from pipeline.train import resolve_precision

    assert resolve_precision("auto", "CPU x86_64 (2 cores)") == "float32"
    assert resolve_precision("auto", "GPU NVIDIA H100 80GB HBM3") == "mixed_bfloat16"
    assert resolve_precision("mixed_float16", "CPU") == "mixed_float16"
    with pytest.raises(TrainError, match="precision"):
        TrainConfig(precision="half").check()


def test_augment_workers_follow_the_environment() -> None:
    """Runs that share a machine (the device scripts) set their thread count from outside."""
    code = "from pipeline import defaults; print(defaults.AUGMENT_WORKERS)"
    env = {**os.environ, "PIPELINE_AUGMENT_WORKERS": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "3"
