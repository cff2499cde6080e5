"""What determines a run (TrainConfig, stored as config.json) and the data splits it trains on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data, defaults, preprocess
from pipeline.errors import TrainError
from pipeline.train import models
from pipeline.train.backend import PRECISIONS, Backend


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
    # Which images are held out for validation (None: `seed`). Runs that share it hold out the same
    # images, so an ensemble of them has a held-out set to be calibrated on (pipeline calibrate).
    split_seed: int | None = None
    # Distillation (--teacher, with --fast): a .keras bncnn or ensemble of them whose probabilities
    # the student learns from, with the temperature and weight it learns them at.
    teacher: str | None = None
    distil_temperature: float = defaults.DISTIL_TEMPERATURE
    distil_weight: float = defaults.DISTIL_WEIGHT

    def split_order(self, n_images: int) -> np.ndarray:
        """The training split's images in this run's order (at most `limit`); the last
        `validation_split` of them are held out."""
        seed = self.seed if self.split_seed is None else self.split_seed
        order = np.random.default_rng(seed).permutation(n_images)
        return order if self.limit is None else order[: self.limit]

    def held_out(self, n_images: int) -> np.ndarray:
        """Indices (into the training split) of the images this run held out for validation."""
        order = self.split_order(n_images)
        return np.sort(order[len(order) - round(len(order) * self.validation_split) :])

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
            from pipeline.train import fastfit

            fastfit.check(self.model, self.precision)
        if self.teacher is not None:
            if not self.fast:
                raise TrainError("--teacher distils in the fast loop: add --fast")
            if not Path(self.teacher).is_file():
                raise TrainError(f"--teacher {self.teacher}: no such .keras file")
            if Path(self.teacher).suffix != ".keras":
                raise TrainError(f"--teacher {self.teacher}: not a .keras file (the teacher runs in JAX)")
            if not self.distil_temperature > 0 or not 0 <= self.distil_weight <= 1:
                raise TrainError("distillation needs a temperature above 0 and a weight in [0, 1]")


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
    """Load, shuffle with the split seed (default: the run's seed), split off validation, deskew if asked,
    scale to [0, 1]."""
    loc = data.locate(config.dataset, data_dir)
    x, y = data.load(data.Split.TRAIN, location=loc)
    x_test, y_test = data.load(data.Split.TEST, location=loc)
    order = config.split_order(len(x))
    x, y = x[order], y[order]
    n_val = round(len(x) * config.validation_split)
    x_val, y_val = x[len(x) - n_val :], y[len(x) - n_val :]
    x, y = x[: len(x) - n_val], y[: len(x) - n_val]
    x, x_val, x_test = (preprocess.model_input(a, config.deskew) for a in (x, x_val, x_test))
    return Splits(x, y, x_val, y_val, x_test, y_test, data.checksum_of(loc))


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[labels.astype(np.int64)]
