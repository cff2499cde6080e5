"""Training: backend choice, the fit loop, per-epoch checkpoints, resume, and the run folder.

A run folder holds everything needed to trust and reuse a model:

    config.json      the options that made it (a checkpoint stores the config that made it)
    model.keras      best epoch by validation accuracy, saved without optimizer state
    checkpoint.keras last finished epoch with optimizer state, for --resume
    state.json       epochs done, history so far, best epoch
    history.csv/json per-epoch loss and accuracy, training and validation
    metrics.json     test accuracy and loss, per-class accuracy, wall time, backend, device, versions
    curves.png       training curves

Keras 3 is multi-backend; the backend must be chosen before `keras` is first imported, which is
why every Keras import here sits inside a function called after `activate_backend`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__, data, defaults, models, preprocess, quiet
from pipeline.errors import TrainError
from pipeline.files import atomic_open, write_json


class Backend(StrEnum):
    AUTO = "auto"
    TENSORFLOW = "tensorflow"
    JAX = "jax"
    TORCH = "torch"


def process_start_time() -> float:
    """Wall-clock time at which this process started (for time-to-accuracy from process start)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / ticks
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME


_IMPORT_TIME = time.time()


def _jax_has_gpu() -> bool:
    if importlib.util.find_spec("jax") is None:
        return False
    try:
        import jax

        return bool(jax.devices("gpu"))
    except Exception:  # jax raises RuntimeError (or others) when no GPU platform exists
        return False


def _torch_has_gpu() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def select_backend(choice: Backend | str) -> Backend:
    """`auto` prefers a backend that sees a GPU (JAX, then PyTorch), else TensorFlow on the CPU.

    The CPU build of TensorFlow is what this project installs; the GPU machine has JAX instead.
    """
    try:
        choice = Backend(choice)
    except ValueError:
        raise TrainError(f"unknown backend {choice!r}; choose auto, tensorflow, jax or torch") from None
    if choice is not Backend.AUTO:
        return choice
    if _jax_has_gpu():
        return Backend.JAX
    if _torch_has_gpu():
        return Backend.TORCH
    return Backend.TENSORFLOW


def activate_backend(backend: Backend) -> None:
    """Point Keras at `backend`; refuse if Keras was already imported with another one."""
    module = {Backend.TENSORFLOW: "tensorflow", Backend.JAX: "jax", Backend.TORCH: "torch"}[backend]
    if importlib.util.find_spec(module) is None:
        raise TrainError(f"backend {backend.value} is not installed (no module {module!r})")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != backend.value:
            raise TrainError(
                f"Keras is already loaded with backend {current}; run {backend.value} in a new process"
            )
    os.environ["KERAS_BACKEND"] = backend.value


def describe_device(backend: Backend) -> str:
    if backend is Backend.JAX:
        import jax

        dev = jax.devices()[0]
        return f"{dev.platform.upper()} {getattr(dev, 'device_kind', '')}".strip()
    if backend is Backend.TORCH:
        import torch

        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name(0)}"
    if backend is Backend.TENSORFLOW:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return f"GPU {gpus[0].name}"
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def library_versions(backend: Backend | None = None) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "pipeline": __version__}
    names = ["keras", "numpy", "tensorflow-cpu", "tensorflow", "jax", "torch"]
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    if backend is not None:
        out["backend"] = backend.value
    return out


# Keras dtype policies `--precision` accepts; `auto` resolves per device (resolve_precision).
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def resolve_precision(choice: str, device: str) -> str:
    """`auto` is mixed bfloat16 on a GPU (tensor cores, float32's range, no loss scaling) and
    float32 on a CPU, where bfloat16 kernels are emulated or slower in TensorFlow's CPU build."""
    if choice != "auto":
        return choice
    return "mixed_bfloat16" if device.startswith("GPU") else "float32"


def _float32_copy(model: Any, spec: models.ModelSpec) -> Any:
    """The trained weights in a float32 model: what is saved, evaluated, exported and shipped.

    A mixed-precision model computes in 16 bits but keeps float32 weights (variables), so the copy
    loses nothing; saving the mixed model would carry its 16-bit compute policy into every later
    load, ONNX and TFLite conversion included.
    """
    return _keras_float32(spec, lambda copy: copy.set_weights(model.get_weights()))


def _keras_float32(spec: models.ModelSpec, set_weights: Any) -> Any:
    """A float32 Keras model of `spec`, its weights set by `set_weights(model)`, compiled for
    evaluation (loss and accuracy)."""
    keras = quiet.load("keras")
    keras.config.set_dtype_policy("float32")
    model = spec.build()
    set_weights(model)
    model.compile(loss=spec.loss(), metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return model


@dataclass
class TrainConfig:
    """Everything that determines a run; stored as config.json in the run folder."""

    model: str = defaults.MODEL
    epochs: int = defaults.EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    learning_rate: float = defaults.LEARNING_RATE
    seed: int = defaults.SEED
    limit: int | None = None
    validation_split: float = defaults.VALIDATION_SPLIT
    dataset: str = defaults.DATASET
    backend: str = Backend.AUTO.value
    deskew: bool = False
    target_accuracy: float | None = None
    augment: bool | None = None  # None: the model's recipe decides (models.ModelSpec.augment)
    precision: str = defaults.PRECISION  # auto: mixed bfloat16 on a GPU, float32 on a CPU
    fast: bool = False  # the lean JAX loop (pipeline.fastfit) instead of Keras' fit

    def augments(self) -> bool:
        """Whether this run augments: --augment/--no-augment, else the model's recipe."""
        return models.get(self.model).augment if self.augment is None else self.augment

    def check(self) -> None:
        models.get(self.model)
        data.parse_dataset(self.dataset)
        if self.backend not in {b.value for b in Backend}:
            raise TrainError(f"unknown backend {self.backend!r}; choose auto, tensorflow, jax or torch")
        if self.precision not in PRECISIONS:
            raise TrainError(f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}")
        if self.epochs < 1:
            raise TrainError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise TrainError("--batch-size must be at least 1")
        if not 0 < self.learning_rate < 10:
            raise TrainError("--learning-rate must be in (0, 10)")
        if not 0 <= self.validation_split < 1:
            raise TrainError("--validation-split must be in [0, 1)")
        if self.limit is not None and self.limit < 20:
            raise TrainError("--limit must be at least 20 images")
        if self.target_accuracy is not None:
            if not 0 < self.target_accuracy <= 1:
                raise TrainError("--target-accuracy is a fraction in (0, 1], e.g. 0.99")
            if self.validation_split == 0:
                raise TrainError("--target-accuracy needs a validation split to measure against")
        if self.fast:
            from pipeline import fastfit

            fastfit.check(self.model, self.precision)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    checksum: str


def prepare_data(config: TrainConfig, data_dir: Path | None) -> Splits:
    """Load, shuffle with the run's seed, split off validation, deskew if asked, scale to [0, 1]."""
    loc = data.locate(config.dataset, data_dir)
    x, y = data.load(data.Split.TRAIN, location=loc)
    x_test, y_test = data.load(data.Split.TEST, location=loc)
    order = np.random.default_rng(config.seed).permutation(len(x))
    x, y = x[order], y[order]
    if config.limit is not None:
        x, y = x[: config.limit], y[: config.limit]
    n_val = round(len(x) * config.validation_split)
    x_val, y_val = x[len(x) - n_val :], y[len(x) - n_val :]
    x, y = x[: len(x) - n_val], y[: len(x) - n_val]
    x, x_val, x_test = (preprocess.model_input(a, config.deskew) for a in (x, x_val, x_test))
    return Splits(x, y, x_val, y_val, x_test, y_test, data.checksum_of(loc))


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[labels.astype(np.int64)]


def save_model_file(model: Any, path: Path, include_optimizer: bool) -> None:
    """Save a `.keras` file atomically; without optimizer state unless asked.

    Keras 3 always stores a compiled model's optimizer (and `clone_model` copies the compile
    state too), so the optimizer-free file is saved from a copy rebuilt from the architecture
    alone, with the same weights: a third of the size for Adam.
    """
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    if include_optimizer:
        model.save(tmp)
    else:
        clone = type(model).from_config(model.get_config())
        clone.set_weights(model.get_weights())
        clone.save(tmp)
    os.replace(tmp, path)


def _history_rows(history: dict[str, list[float]]) -> list[dict[str, float]]:
    keys = list(history)
    n = len(history[keys[0]]) if keys else 0
    return [{"epoch": i + 1, **{k: history[k][i] for k in keys}} for i in range(n)]


def _write_history(run_dir: Path, history: dict[str, list[float]]) -> None:
    write_json(run_dir / "history.json", history)
    rows = _history_rows(history)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_open(run_dir / "history.csv", "w", newline="") as f:
        f.write(buf.getvalue())


def _callbacks(run_dir: Path, state: dict[str, Any], config: TrainConfig, show_progress: bool) -> list[Any]:
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


def _optimizer(spec: models.ModelSpec, config: TrainConfig, n_train: int) -> Any:
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
            return preprocess.augment(x[idx], rng), y[idx]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._permutation()

    return Augmented()


def _new_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return defaults.RUNS_DIR / f"{config.model}-{stamp}"


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
        run_dir = Path(out) if out is not None else _new_run_dir(config)
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
            optimizer=_optimizer(spec, config, len(splits.x_train)),
            loss=spec.loss(),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    y_train, y_val = _one_hot(splits.y_train), _one_hot(splits.y_val)
    validation = (splits.x_val, y_val) if len(splits.x_val) else None
    state["fit_start"] = time.time()
    state["fit_start_seconds"] = round(state["fit_start"] - process_start_time(), 3)  # import, data, build
    state["epoch_end_seconds"] = []  # this process's epochs: times from another process's start mislead
    state["train_seconds_before"] = state.get("train_seconds", 0.0)
    state["augment"] = augment
    callbacks = _callbacks(run_dir, state, config, show_progress)
    if augment:
        batches = augmented_batches(
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
        model = _float32_copy(model, spec)
    state["precision"] = precision
    metrics = _finish(model, config, splits, run_dir, state, backend, device, started)
    return TrainResult(run_dir, metrics)


def _train_fast(
    config: TrainConfig, splits: Splits, run_dir: Path, state: dict[str, Any], started: float
) -> TrainResult:
    """Train with pipeline.fastfit (JAX, no Keras until it stops), then save the run like any other."""
    from pipeline import fastfit

    if importlib.util.find_spec("jax") is None:
        raise TrainError("--fast needs JAX (pip install jax; on a GPU machine jax[cuda])")
    fastfit.steps_per_epoch(len(splits.x_train), config.batch_size)  # fail before the run folder
    device = describe_device(Backend.JAX)
    precision = resolve_precision(config.precision, device)
    spec = models.get(config.model)
    augment = config.augments()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**asdict(config), "backend": Backend.JAX.value})
    fit_start = time.time()
    state["fit_start_seconds"] = round(fit_start - process_start_time(), 3)
    result = fastfit.fit(
        splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=config.epochs,
        batch_size=config.batch_size, peak_lr=config.learning_rate, seed=config.seed,
        target=config.target_accuracy, bfloat16=precision == "mixed_bfloat16",
        clock=lambda: time.time() - process_start_time(), augment=augment,
    )  # fmt: skip
    state.update(
        history=result.history, epochs_done=result.epochs_done, best_epoch=result.best_epoch,
        best_score=result.best_score, epoch_end_seconds=result.epoch_end_times,
        train_seconds=time.time() - fit_start, augment=augment, precision=precision,
        timeline_extra=result.timeline,
    )  # fmt: skip
    if result.target_reached:
        state["target_reached"] = result.target_reached
    model = _keras_float32(spec, lambda m: [m.get_layer(n).set_weights(w) for n, w in result.weights.items()])
    metrics = _finish(model, config, splits, run_dir, state, Backend.JAX, device, started)
    return TrainResult(run_dir, metrics)


def _finish(
    model: Any, config: TrainConfig, splits: Splits, run_dir: Path, state: dict[str, Any],
    backend: Backend, device: str, started: float,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate on the test set once, then write model, history, metrics and curves."""
    from pipeline import report

    evaluated = model.evaluate(
        splits.x_test, _one_hot(splits.y_test), batch_size=1024, verbose=0, return_dict=True
    )
    probs = np.concatenate(
        [
            np.asarray(model(splits.x_test[i : i + 1024], training=False))
            for i in range(0, len(splits.x_test), 1024)
        ]
    )
    pred = probs.argmax(axis=1)
    per_class = [
        float((pred[splits.y_test == d] == d).mean()) if (splits.y_test == d).any() else None
        for d in range(10)
    ]
    save_model_file(model, run_dir / "model.keras", include_optimizer=False)
    history = state["history"]
    _write_history(run_dir, history)
    report.plot_history(history, run_dir / "curves.png", title=f"{config.model} ({backend.value}, {device})")
    metrics: dict[str, Any] = {
        "model": config.model,
        "parameters": int(model.count_params()),
        "test_accuracy": float((pred == splits.y_test).mean()),
        "test_loss": float(evaluated["loss"]),
        "per_class_accuracy": per_class,
        "epochs": int(state["epochs_done"]),
        "best_epoch": int(state["best_epoch"]),
        "best_val_accuracy": float(state["best_score"]) if len(splits.x_val) else None,
        "train_images": len(splits.x_train),
        "validation_images": len(splits.x_val),
        "test_images": len(splits.x_test),
        "train_seconds": round(float(state["train_seconds"]), 2),
        "wall_seconds": round(time.time() - started, 2),
        "backend": backend.value,
        "device": device,
        "versions": library_versions(backend),
        "seed": config.seed,
        "dataset": config.dataset,
        "data_sha256": splits.checksum,
        "deskew": config.deskew,
        "augment": bool(state.get("augment", False)),
        "precision": state.get("precision", "float32"),
        "target": state.get("target_reached"),
        # Seconds from process start to the fit loop and to each epoch's end (this process's
        # epochs only after a --resume): the breakdown behind a time-to-accuracy figure.
        "timeline": {
            "fit_start_seconds": state.get("fit_start_seconds"),
            "epoch_end_seconds": state.get("epoch_end_seconds", []),
            # --fast only: when the data reached the device, and what compiling took
            **state.get("timeline_extra", {}),
        },
        "config": asdict(config),
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics
