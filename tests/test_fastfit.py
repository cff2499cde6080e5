"""`pipeline train --fast`: the lean JAX loop trains the same bncnn as Keras and saves a normal run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import TrainError
from pipeline.train import TrainConfig, augment, fastfit, models, train

pytestmark = pytest.mark.slow  # trains models (or starts Ray)


def _keras_bncnn(weights: dict[str, list[np.ndarray]], name: str = "bncnn") -> object:
    model = models.get(name).build()
    for name, w in weights.items():
        model.get_layer(name).set_weights(w)
    return model


@pytest.mark.parametrize(("name", "parameters"), [("bncnn", 346_026), ("bncnn-s", 198_850)])
def test_layers_match_the_keras_model(name: str, parameters: int) -> None:
    """Same layer names, weight shapes and order as models.build_bncnn: the weights transfer."""
    params, stats = fastfit.init_params(seed=0, model=name)
    weights = fastfit.keras_weights(params, stats)
    model = models.get(name).build()
    with_weights = {
        layer.name: [w.shape for w in layer.get_weights()] for layer in model.layers if layer.weights
    }
    assert {name: [w.shape for w in ws] for name, ws in weights.items()} == with_weights
    assert sum(w.size for ws in weights.values() for w in ws) == model.count_params() == parameters


@pytest.mark.parametrize("name", ["bncnn", "bncnn-s"])
def test_keras_model_computes_what_the_loop_computes(name: str) -> None:
    """Inference through the transferred Keras model equals the loop's own forward pass: padding,
    strides, BatchNorm statistics and flattening order all agree."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    params, stats = fastfit.init_params(seed=1, model=name)
    for bn in stats:  # BatchNorm away from identity, so its conventions are tested too
        width = len(stats[bn]["mean"])
        stats[bn] = {"mean": rng.normal(0, 0.1, width).astype(np.float32),
                     "var": rng.uniform(0.5, 2, width).astype(np.float32)}  # fmt: skip
        params[bn] = {"gamma": rng.uniform(0.5, 1.5, width).astype(np.float32),
                      "beta": rng.normal(0, 0.1, width).astype(np.float32)}  # fmt: skip
    x = rng.random((16, 28, 28, 1), dtype=np.float32)
    logits, _ = fastfit.forward(params, stats, jnp.asarray(x), False, None, jnp.float32)
    ours = np.asarray(jax.nn.softmax(logits))
    keras_probs = np.asarray(_keras_bncnn(fastfit.keras_weights(params, stats), name)(x, training=False))  # type: ignore[operator]
    np.testing.assert_allclose(keras_probs, ours, atol=1e-5)


def _tiny_run(seed: int, **changes: object) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """48 random images with random labels, and `fit`'s options for a few steps of 16 on them."""
    rng = np.random.default_rng(seed)
    x, y = rng.random((48, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 48)
    options = dict(
        epochs=1, batch_size=16, peak_lr=1e-3, seed=3, target=None, bfloat16=False, clock=lambda: 0.0
    )  # fmt: skip
    return x, y, {**options, **changes}


@pytest.mark.parametrize("augment", [False, True])
def test_scan_and_step_loop_train_the_same(augment: bool) -> None:
    """The GPU's one-program-per-epoch path and the CPU's step loop give the same weights and the
    same validation figures (20 validation images: one full batch and a padded one)."""
    x, y, options = _tiny_run(2, augment=augment)
    runs = [fastfit.fit(x, y, x[:20], y[:20], scan=scan, **options) for scan in (True, False)]  # type: ignore[arg-type]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert runs[0].history[metric] == pytest.approx(runs[1].history[metric], rel=1e-4), metric
    for name, ws in runs[0].weights.items():
        for a, b in zip(ws, runs[1].weights[name], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
    assert runs[0].timeline["compile_seconds"] >= 0 and "data_on_device_seconds" in runs[0].timeline


def test_padded_validation_batches_count_each_image_once() -> None:
    """Validation in training-sized batches: the padding's images are masked out of every sum, so
    the accuracy and loss equal those of the whole set at once."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(4)
    params, stats = fastfit.init_params(seed=4)
    x, y = rng.random((37, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 37)
    images, labels, mask = fastfit.validation_batches(x, y, 16)
    assert images.shape == (3, 16, 28, 28, 1) and mask.sum() == 37 and not images[2, 5:].any()
    logits = np.asarray(fastfit.forward(params, stats, jnp.asarray(x), False, None, jnp.float32)[0])
    whole = (logits.argmax(-1) == y).mean()
    batched = sum(
        float(((np.asarray(fastfit.forward(params, stats, jnp.asarray(xb), False, None, jnp.float32)[0])
                .argmax(-1) == yb) * mb).sum())
        for xb, yb, mb in zip(images, labels, mask, strict=True)
    ) / 37  # fmt: skip
    assert batched == pytest.approx(whole)
    assert jax.numpy.asarray(fastfit.validation_batches(x[:0], y[:0], 16)[2]).sum() == 0


def test_device_augmentation_is_the_host_augmentation() -> None:
    """preprocess.warp under jax.jit gives the host's images for the same drawn distortion: the
    device and the host augment with one recipe and one piece of arithmetic."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    x = np.random.default_rng(6).random((8, 28, 28, 1), dtype=np.float32)
    drawn = augment.Augmentation().draw(np.random.default_rng(7).uniform, 8, 28, 28)
    host = augment.warp(np, x, drawn)
    arrays = {f.name: jnp.asarray(getattr(drawn, f.name)) for f in dataclasses.fields(drawn)
              if isinstance(getattr(drawn, f.name), np.ndarray)}  # fmt: skip
    on_device = jax.jit(lambda x, a: augment.warp(jnp, x, dataclasses.replace(drawn, **a)))
    device = on_device(jnp.asarray(x), arrays)
    np.testing.assert_allclose(np.asarray(device), host, atol=1e-4)
    assert np.abs(host - x).mean() > 0.02  # it did distort


def test_fast_run_learns_and_saves_a_normal_run_folder(tmp_path: Path) -> None:
    config = TrainConfig(model="bncnn", epochs=3, limit=3000, batch_size=64, fast=True)
    metrics = train(config, out=tmp_path / "run", show_progress=False).metrics
    assert metrics["test_accuracy"] > 0.85 and metrics["parameters"] == 346_026
    assert metrics["backend"] == "jax" and metrics["augment"] is True and metrics["epochs"] == 3
    ends = metrics["timeline"]["epoch_end_seconds"]
    assert len(ends) == 3 and ends == sorted(ends) and metrics["timeline"]["fit_start_seconds"] < ends[0]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["val_accuracy"][-1] > history["val_accuracy"][0]
    assert (tmp_path / "run" / "model.keras").is_file() and (tmp_path / "run" / "curves.png").is_file()


def test_fast_run_stops_at_the_target(tmp_path: Path) -> None:
    config = TrainConfig(
        model="bncnn", epochs=5, limit=3000, batch_size=64, fast=True, target_accuracy=0.3, augment=False
    )
    metrics = train(config, out=tmp_path / "run", show_progress=False).metrics
    assert metrics["epochs"] == 1 and metrics["target"]["epoch"] == 1
    assert metrics["target"]["seconds_from_process_start"] >= metrics["timeline"]["epoch_end_seconds"][0]
    with pytest.raises(TrainError, match="no checkpoint to resume"):  # it keeps none
        train(TrainConfig(fast=True, model="bncnn"), out=tmp_path / "run", resume=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "conv2d"}, "bncnn and bncnn-s only"),
        ({"precision": "mixed_float16"}, "bfloat16"),
    ],
)
def test_what_the_fast_loop_does_not_do_is_refused(change: dict[str, object], message: str) -> None:
    config = TrainConfig(**{"model": "bncnn", "fast": True, **change})  # type: ignore[arg-type]
    with pytest.raises(TrainError, match=message):
        config.check()


def _teacher_of_one_digit(digit: int) -> list[tuple[dict[str, object], dict[str, object]]]:
    """A bncnn that answers `digit` for every image (its output bias far above the rest)."""
    params, stats = fastfit.init_params(seed=9)
    params["probabilities"]["bias"] = np.where(np.arange(10) == digit, 20.0, 0.0).astype(np.float32)
    return [(params, stats)]


def test_the_release_ensembles_members_are_the_teacher() -> None:
    """`teacher_weights` reads every bncnn member of an ensemble file; their averaged softmax is the
    ensemble's own output. A model with no bncnn in it cannot teach."""
    import jax.numpy as jnp

    from pipeline import manifest, runtime

    release = manifest.release_dir()
    assert release is not None
    ensemble = runtime.load(release / "bncnn-x4.keras").model  # type: ignore[attr-defined]
    teacher = fastfit.teacher_weights(ensemble)
    x = np.random.default_rng(8).random((32, 28, 28, 1), dtype=np.float32)
    ours = np.asarray(fastfit.teacher_probs(teacher, jnp.asarray(x), jnp.float32))
    assert len(teacher) == 4
    np.testing.assert_allclose(ours, np.asarray(ensemble(x, training=False)), atol=1e-5)
    with pytest.raises(TrainError, match="no bncnn"):
        fastfit.teacher_weights(runtime.load(release / "conv2d.keras").model)  # type: ignore[attr-defined]


def test_a_narrower_bncnn_teaches_and_a_broken_one_is_refused() -> None:
    """`teacher_weights` takes a bncnn of any width (its layers chained), and refuses one whose
    layers do not follow each other."""
    student = models.get("bncnn-s").build()
    ((params, stats),) = fastfit.teacher_weights(student)
    assert params["head"]["kernel"].shape == (4, 4, 48, 96) and stats["head_bn"]["mean"].shape == (96,)
    params["s2c1"]["kernel"] = params["s2c1"]["kernel"][:, :, :8]
    assert not fastfit._chained(params)


def test_a_student_learns_what_its_teacher_says() -> None:
    """Distilling from a teacher that answers 3 for everything makes the student answer 3, whatever
    the labels say; with the teacher's weight at 0 the run is exactly a run without a teacher."""
    x, y, options = _tiny_run(10, epochs=4, peak_lr=1e-2, scan=False)
    one_digit = _teacher_of_one_digit(3)
    taught = fastfit.fit(x, y, x[:0], y[:0], teacher=one_digit, teacher_weight=1.0, **options)  # type: ignore[arg-type]
    answers = np.asarray(_keras_bncnn(taught.weights)(x, training=False)).argmax(-1)  # type: ignore[operator]
    assert (answers == 3).mean() > 0.9, answers
    plain = fastfit.fit(x, y, x[:0], y[:0], **options)  # type: ignore[arg-type]
    ignored = fastfit.fit(x, y, x[:0], y[:0], teacher=one_digit, teacher_weight=0.0, **options)  # type: ignore[arg-type]
    for name, ws in plain.weights.items():
        for a, b in zip(ws, ignored.weights[name], strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_distilled_run_records_its_teacher(tmp_path: Path) -> None:
    from pipeline import manifest
    from pipeline.files import sha256

    release = manifest.release_dir()
    assert release is not None
    teacher = release / "bncnn-x4.keras"
    config = TrainConfig(
        model="bncnn", epochs=1, limit=640, batch_size=64, fast=True, augment=False, teacher=str(teacher)
    )
    metrics = train(config, out=tmp_path / "run", show_progress=False).metrics
    assert metrics["teacher"] == {"path": str(teacher), "sha256": sha256(teacher), "members": 4}
    assert metrics["config"]["distil_temperature"] == 4.0 and metrics["config"]["distil_weight"] == 0.9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fast": False}, "add --fast"),
        ({"teacher": "no/such.keras"}, "no such .keras file"),
        ({"teacher": "__onnx__"}, "not a .keras file"),
        ({"distil_weight": 1.5}, "weight in"),
    ],
)
def test_what_distillation_needs_is_checked(change: dict[str, object], message: str) -> None:
    from pipeline import manifest

    release = manifest.release_dir()
    assert release is not None
    base = {"model": "bncnn", "fast": True, "teacher": str(release / "bncnn-x4.keras")}
    if change.get("teacher") == "__onnx__":  # a release file that exists, in another format
        change = {"teacher": str(release / "bncnn-x4.int8.onnx")}
    with pytest.raises(TrainError, match=message):
        TrainConfig(**{**base, **change}).check()  # type: ignore[arg-type]


def test_the_loop_stops_after_the_epoch_it_is_asked_to() -> None:
    x, y, options = _tiny_run(11, epochs=5, scan=False)
    asked: list[int] = []

    def second_time() -> bool:
        asked.append(1)
        return len(asked) >= 2

    result = fastfit.fit(x, y, x[:16], y[:16], should_stop=second_time, **options)  # type: ignore[arg-type]
    assert result.epochs_done == 2 and len(result.history["loss"]) == 2 and result.weights


def test_a_terminated_fast_run_saves_what_it_has(tmp_path: Path) -> None:
    """A SIGTERM (the GPU scripts' time limit) ends a --fast run after its epoch in progress, and
    the run folder is written as for any run, saying it stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "--model", "bncnn-s", "--fast", "--epochs", "200",
         "--limit", "640", "--batch-size", "64", "--no-augment", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "config.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # config.json is written after the handler is set, before the first epoch
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        1 <= metrics["epochs"] < 200
        and metrics["stopped"] == f"SIGTERM after epoch {metrics['epochs']} of 200"
    )
    assert (out / "model.keras").is_file() and metrics["model"] == "bncnn-s"
