"""`pipeline train`: one run, from options to a finished run folder, with Keras' fit or the fast loop."""

from __future__ import annotations

import importlib.util
import json
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline import quiet, runtime
from pipeline.errors import ArtifactError, TrainError
from pipeline.files import sha256, write_json
from pipeline.train import keras_fit, models
from pipeline.train.backend import (
    Backend,
    activate_backend,
    describe_device,
    process_start_time,
    resolve_precision,
    select_backend,
)
from pipeline.train.config import Splits, TrainConfig, TrainResult, one_hot, prepare_data
from pipeline.train.rundir import finish, new_run_dir


def train(
    config: TrainConfig,
    out: Path | None = None,
    data_dir: Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
) -> TrainResult:
    """Train (or resume) one model and write its run folder; returns the folder and metrics."""
    started = time.time()
    if resume:
        if out is None:
            raise TrainError("--resume needs --out pointing at the interrupted run folder")
        run_dir = Path(out)
        state_path, ckpt = run_dir / "state.json", run_dir / "checkpoint.keras"
        if not state_path.is_file() or not ckpt.is_file():
            raise TrainError(f"{run_dir}: no checkpoint to resume from (state.json, checkpoint.keras)")
        saved = json.loads((run_dir / "config.json").read_text())
        saved["epochs"] = max(config.epochs, saved["epochs"]) if config.epochs else saved["epochs"]
        config = TrainConfig(**saved)
        state = json.loads(state_path.read_text())
        if state["epochs_done"] >= config.epochs and (run_dir / "metrics.json").is_file():
            raise TrainError(f"{run_dir}: already complete ({state['epochs_done']} epochs)")
    else:
        run_dir = Path(out) if out is not None else new_run_dir(config)
        if (run_dir / "state.json").exists():
            raise TrainError(f"{run_dir} already holds a run; use --resume or another --out")
        state = {
            "epochs_done": 0, "history": {}, "best_epoch": 0, "best_score": -1.0,
            "train_seconds": 0.0,
        }  # fmt: skip
    config.check()
    spec = models.get(config.model)
    backend = select_backend(config.backend)
    activate_backend(backend)
    splits = prepare_data(config, data_dir)  # before Keras: a data problem fails in a second
    if config.fast:
        return _train_fast(config, splits, run_dir, state, started)

    keras = quiet.load("keras")
    keras.utils.set_random_seed(config.seed)
    device = describe_device(backend)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**asdict(config), "backend": backend.value})

    augment = config.augments()
    precision = resolve_precision(config.precision, device)
    keras.config.set_dtype_policy(precision)
    if resume:
        model = keras.saving.load_model(run_dir / "checkpoint.keras")
    else:
        model = spec.build()
        model.compile(
            optimizer=keras_fit.optimizer(spec, config, len(splits.x_train)),
            loss=spec.loss(),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    y_train, y_val = one_hot(splits.y_train), one_hot(splits.y_val)
    validation = (splits.x_val, y_val) if len(splits.x_val) else None
    state["fit_start"] = time.time()
    state["fit_start_seconds"] = round(state["fit_start"] - process_start_time(), 3)  # import, data, build
    state["epoch_end_seconds"] = []  # this process's epochs: times from another process's start mislead
    state["train_seconds_before"] = state.get("train_seconds", 0.0)
    state["augment"] = augment
    callbacks = keras_fit.callbacks(run_dir, state, config, show_progress)
    if augment:
        batches = keras_fit.augmented_batches(
            splits.x_train, y_train, config.batch_size, config.seed, state["epochs_done"]
        )
        model.fit(
            batches, epochs=config.epochs, initial_epoch=state["epochs_done"],
            validation_data=validation, verbose=0, callbacks=callbacks,
        )  # fmt: skip
    else:
        model.fit(
            splits.x_train, y_train, batch_size=config.batch_size, epochs=config.epochs,
            initial_epoch=state["epochs_done"], validation_data=validation, shuffle=True,
            verbose=0, callbacks=callbacks,
        )  # fmt: skip
    if (run_dir / "best.weights.h5").is_file():
        model.load_weights(run_dir / "best.weights.h5")  # validation chose this epoch
    if precision != "float32":
        model = keras_fit.float32_copy(model, spec)
    state["precision"] = precision
    metrics = finish(model, config, splits, run_dir, state, backend, device, started)
    return TrainResult(run_dir, metrics)


def _train_fast(
    config: TrainConfig, splits: Splits, run_dir: Path, state: dict[str, Any], started: float
) -> TrainResult:
    """Train with pipeline.fastfit (JAX, no Keras until it stops), then save the run like any other.

    A SIGTERM (a time limit: the GPU scripts send one before the device's own deadline) ends the
    run after the epoch in progress and saves what it has, since the loop keeps no checkpoints;
    `metrics.json` then says so (`stopped`)."""
    stop = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if on_main else None
    try:
        return _fast_run(config, splits, run_dir, state, started, stop)
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)


def _fast_run(
    config: TrainConfig, splits: Splits, run_dir: Path, state: dict[str, Any], started: float,
    stop: threading.Event,
) -> TrainResult:  # fmt: skip
    """`_train_fast`'s run, `stop` set by its signal handler."""
    from pipeline.train import fastfit

    if importlib.util.find_spec("jax") is None:
        raise TrainError("--fast needs JAX (pip install jax; on a GPU machine jax[cuda])")
    fastfit.steps_per_epoch(len(splits.x_train), config.batch_size)  # fail before the run folder
    device = describe_device(Backend.JAX)
    precision = resolve_precision(config.precision, device)
    spec = models.get(config.model)
    augment = config.augments()
    teacher = None
    if config.teacher is not None:  # read before the run folder: a bad teacher fails first
        teacher_path = Path(config.teacher)
        try:
            teacher = fastfit.teacher_weights(runtime.load(teacher_path).model)  # type: ignore[attr-defined]
        except ArtifactError as exc:
            raise TrainError(str(exc)) from exc
        state["teacher"] = {
            "path": str(teacher_path),
            "sha256": sha256(teacher_path),
            "members": len(teacher),
        }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**asdict(config), "backend": Backend.JAX.value})
    fit_start = time.time()
    state["fit_start_seconds"] = round(fit_start - process_start_time(), 3)
    result = fastfit.fit(
        splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=config.epochs,
        batch_size=config.batch_size, peak_lr=config.learning_rate, seed=config.seed,
        target=config.target_accuracy, bfloat16=precision == "mixed_bfloat16",
        clock=lambda: time.time() - process_start_time(), augment=augment, teacher=teacher,
        temperature=config.distil_temperature, teacher_weight=config.distil_weight, model=config.model,
        should_stop=stop.is_set,
    )  # fmt: skip
    if stop.is_set():
        state["stopped"] = f"SIGTERM after epoch {result.epochs_done} of {config.epochs}"
    state.update(
        history=result.history, epochs_done=result.epochs_done, best_epoch=result.best_epoch,
        best_score=result.best_score, epoch_end_seconds=result.epoch_end_times,
        train_seconds=time.time() - fit_start, augment=augment, precision=precision,
        timeline_extra=result.timeline,
    )  # fmt: skip
    if result.target_reached:
        state["target_reached"] = result.target_reached
    model = keras_fit.keras_float32(
        spec, lambda m: [m.get_layer(n).set_weights(w) for n, w in result.weights.items()]
    )
    metrics = finish(model, config, splits, run_dir, state, Backend.JAX, device, started)
    return TrainResult(run_dir, metrics)
