"""Training: everything between the data set arrays and a finished run folder.

It owns the model architectures (`models`), the backend, device and precision choice
(`backend`), the run's options and data splits (`config`), Keras' fit loop with its checkpoints
(`keras_fit`), the lean JAX loop for time to accuracy (`fastfit`), training augmentation
(`augment`), the run folder (`rundir`), the orchestration of one run (`run`) and averaging runs
into an ensemble (`ensemble`).

It may import `data`, `preprocess`, `report`, `runtime`, `files`, `quiet`, `defaults` and
`errors`; nothing outside `pipeline.cli` imports it except the augmentation benchmark.
"""

from pipeline.train.backend import (
    PRECISIONS,
    Backend,
    Precision,
    library_versions,
    resolve_precision,
    select_backend,
)
from pipeline.train.config import TrainConfig, TrainResult
from pipeline.train.keras_fit import augmented_batches
from pipeline.train.run import train
from pipeline.train.rundir import save_model_file

__all__ = [
    "PRECISIONS",
    "Backend",
    "Precision",
    "TrainConfig",
    "TrainResult",
    "augmented_batches",
    "library_versions",
    "resolve_precision",
    "save_model_file",
    "select_backend",
    "train",
]
