"""Keras' fit loop: per-epoch checkpoint and history callbacks, the optimizer, host-side augmented
batches, and the float32 copy of a mixed-precision model that is saved and shipped."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import defaults, quiet
from pipeline.files import write_json
from pipeline.train import augment, models
from pipeline.train.backend import process_start_time
from pipeline.train.config import TrainConfig
from pipeline.train.rundir import save_model_file


def float32_copy(model: Any, spec: models.ModelSpec) -> Any:
    """The trained weights in a float32 model: what is saved, evaluated, exported and shipped.

    A mixed-precision model computes in 16 bits but keeps float32 weights (variables), so the copy
    loses nothing; saving the mixed model would carry its 16-bit compute policy into every later
    load, ONNX and TFLite conversion included.
    """
    return keras_float32(spec, lambda copy: copy.set_weights(model.get_weights()))


def keras_float32(spec: models.ModelSpec, set_weights: Any) -> Any:
    """A float32 Keras model of `spec`, its weights set by `set_weights(model)`, compiled for
    evaluation (loss and accuracy)."""
    keras = quiet.load("keras")
    keras.config.set_dtype_policy("float32")
    model = spec.build()
    set_weights(model)
    model.compile(loss=spec.loss(), metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return model


def callbacks(run_dir: Path, state: dict[str, Any], config: TrainConfig, show_progress: bool) -> list[Any]:
    import keras

    class Checkpoint(keras.callbacks.Callback):  # type: ignore[misc]
        """After every epoch: record history, keep the best weights, save a resumable checkpoint."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            hist = state["history"]
            for key, value in logs.items():
                if key == "learning_rate":
                    continue
                hist.setdefault(key, []).append(float(value))
            # With a validation split, validation picks the epoch. Without one (a final run on all
            # training images) the last epoch is the model: accuracy on augmented, label-smoothed
            # training batches says nothing about generalisation, so it must not pick an epoch.
            validated = "val_accuracy" in logs
            score = logs["val_accuracy"] if validated else logs.get("accuracy", 0.0)
            if score > state["best_score"] or not validated:
                state["best_score"], state["best_epoch"] = float(score), epoch + 1
                tmp = run_dir / ".best.tmp.weights.h5"
                self.model.save_weights(tmp)
                os.replace(tmp, run_dir / "best.weights.h5")
            state["epochs_done"] = epoch + 1
            state["train_seconds"] = state["train_seconds_before"] + time.time() - state["fit_start"]
            # When each epoch ended, from process start: where the time to an accuracy goes
            # (start-up and compilation before the first epoch, then each epoch's cost).
            state.setdefault("epoch_end_seconds", []).append(round(time.time() - process_start_time(), 3))
            save_model_file(self.model, run_dir / "checkpoint.keras", include_optimizer=True)
            write_json(run_dir / "state.json", state)

    class TargetAccuracy(keras.callbacks.Callback):  # type: ignore[misc]
        """Stop once validation accuracy reaches the target; time it from process start."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            target = config.target_accuracy
            if target is None or (logs or {}).get("val_accuracy", 0.0) < target:
                return
            if "target_reached" not in state:
                state["target_reached"] = {
                    "epoch": epoch + 1,
                    "val_accuracy": float((logs or {})["val_accuracy"]),
                    "seconds_from_process_start": time.time() - process_start_time(),
                }
            self.model.stop_training = True

    class Progress(keras.callbacks.Callback):  # type: ignore[misc]
        """A rich progress bar per epoch, with the epoch's metrics when it ends."""

        def __init__(self) -> None:
            super().__init__()
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self.bar = Progress(
                "[bold]epoch {task.fields[epoch]}", BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), "{task.fields[info]}", transient=False,
            )  # fmt: skip
            self.task: Any = None

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.bar.start()
            self.task = self.bar.add_task(
                "", total=self.params.get("steps"), epoch=f"{epoch + 1}/{config.epochs}", info=""
            )

        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            self.bar.update(self.task, completed=batch + 1)

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            info = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
            self.bar.update(self.task, info=info)
            self.bar.stop()

    cbs: list[Any] = [Checkpoint(), TargetAccuracy()]
    if show_progress:
        cbs.append(Progress())
    return cbs


def optimizer(spec: models.ModelSpec, config: TrainConfig, n_train: int) -> Any:
    """Adam, or AdamW with one epoch of linear warm-up and cosine decay when the recipe asks."""
    import keras

    rate: Any = config.learning_rate
    if spec.cosine:
        steps = -(-n_train // config.batch_size)
        total = steps * config.epochs
        warmup = min(steps, total // 2)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate / 10, decay_steps=max(1, total - warmup),
            alpha=0.01, warmup_target=config.learning_rate, warmup_steps=warmup,
        )  # fmt: skip
    if spec.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=spec.weight_decay)
    return keras.optimizers.Adam(rate)


def augmented_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, first_epoch: int,
    workers: int = defaults.AUGMENT_WORKERS,
) -> Any:  # fmt: skip
    """Batches augmented on the host by `preprocess.augment`, reshuffled every epoch.

    Every batch draws from its own generator, seeded by (seed, epoch, batch index), so batches
    can be made by several threads in any order and a resumed run sees exactly the batches an
    uninterrupted one would have seen.
    """
    keras = quiet.load("keras")

    class Augmented(keras.utils.PyDataset):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4 * workers)
            self.epoch = first_epoch
            self.order = self._permutation()

        def _permutation(self) -> np.ndarray:
            return np.random.default_rng((seed, self.epoch)).permutation(len(x))

        def __len__(self) -> int:
            return -(-len(x) // batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            rng = np.random.default_rng((seed, self.epoch, i))
            return augment.augment(x[idx], rng), y[idx]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._permutation()

    return Augmented()
