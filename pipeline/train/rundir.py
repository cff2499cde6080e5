"""The run folder: what a finished or interrupted run leaves on disk.

config.json      the options that made it (a checkpoint stores the config that made it)
model.keras      best epoch by validation accuracy, saved without optimizer state
checkpoint.keras last finished epoch with optimizer state, for --resume
state.json       epochs done, history so far, best epoch
history.csv/json per-epoch loss and accuracy, training and validation
metrics.json     test accuracy and loss, per-class accuracy, wall time, backend, device, versions
curves.png       training curves
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import defaults
from pipeline.files import atomic_open, atomic_path, write_json
from pipeline.train.backend import Backend, library_versions
from pipeline.train.config import Splits, TrainConfig, one_hot


def save_model_file(model: Any, path: Path, include_optimizer: bool) -> None:
    """Save a `.keras` file atomically; without optimizer state unless asked.

    Keras 3 always stores a compiled model's optimizer (and `clone_model` copies the compile
    state too), so the optimizer-free file is saved from a copy rebuilt from the architecture
    alone, with the same weights: a third of the size for Adam.
    """
    with atomic_path(path, suffix=".keras") as tmp:
        if include_optimizer:
            model.save(tmp)
        else:
            clone = type(model).from_config(model.get_config())
            clone.set_weights(model.get_weights())
            clone.save(tmp)


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


def new_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return defaults.RUNS_DIR / f"{config.model}-{stamp}"


def finish(
    model: Any, config: TrainConfig, splits: Splits, run_dir: Path, state: dict[str, Any],
    backend: Backend, device: str, started: float,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate on the test set once, then write model, history, metrics and curves."""
    from pipeline import report

    evaluated = model.evaluate(
        splits.x_test, one_hot(splits.y_test), batch_size=1024, verbose=0, return_dict=True
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
        "teacher": state.get("teacher"),  # --teacher: the file distilled from (path, sha256, members)
        "stopped": state.get("stopped"),  # --fast: a SIGTERM ended the run early (which epoch)
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
