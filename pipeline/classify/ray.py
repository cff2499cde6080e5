"""classify as a Ray Data job: the same preprocessing and runtime, on one machine or a cluster.

The driver lists the files (the same sorted walk as the local engine, so the same rows in the
same order), Ray Data decodes and preprocesses them in `map_batches` tasks spread over the
cluster, and an actor pool, each actor holding one onnxruntime (or LiteRT) session, predicts.
Order is preserved end to end (`preserve_order`), and the driver turns each predicted block into
CSV rows with the very function the local engine uses, so both engines write identical files,
error rows included.

What must hold on a cluster: the folder is read by every node, so it must be at the same path
everywhere (a shared file system); the model is shipped to the actors as bytes through the object
store, so it need not be. Ray is an optional extra: `pip install 'pipeline[ray]'`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import defaults
from pipeline.classify import screen
from pipeline.classify.chunks import ChunkResult, decode_chunk, predict_digits, screened_rows
from pipeline.classify.screen import Source
from pipeline.errors import ClassifyError
from pipeline.review import FeatureGaussian


def require_ray() -> None:
    """One clear line when Ray is missing, before any work starts."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise ClassifyError("--engine ray needs Ray Data: pip install 'pipeline[ray]' (or 'ray[data]')")


def _decode(
    batch: dict[str, np.ndarray], root: bytes, deskew: bool, max_pixels: int
) -> dict[str, np.ndarray]:
    """Ray task: decode and preprocess one block of files (paths travel as bytes, any name)."""
    paths = [os.fsdecode(p) for p in batch["path"]]
    chunk = decode_chunk(os.fsdecode(root), paths, deskew, max_pixels)
    size = defaults.FIELD_SIZE
    digits = np.zeros((len(paths), size, size), np.uint8)
    ok = np.array([s == "ok" for s in chunk.status], dtype=bool)
    digits[ok] = chunk.digits
    return {
        "path": batch["path"],
        "digit": digits,
        "status": np.array(chunk.status, dtype=object),
        "error": np.array(chunk.errors, dtype=object),
    }


class _Predict:
    """Ray actor: one inference session per actor, created from the model's bytes."""

    def __init__(
        self, model_bytes: bytes, suffix: str, screen_bytes: bytes | None = None,
        gate: FeatureGaussian | None = None, width: int = 0,
    ) -> None:  # fmt: skip
        self._dir = tempfile.TemporaryDirectory(prefix="pipeline-model-")
        path = Path(self._dir.name) / f"model{suffix}"
        path.write_bytes(model_bytes)
        first = None
        if screen_bytes is not None:  # the screen in front of the model (pipeline.classify.screen)
            first = Path(self._dir.name) / "screen.onnx"
            first.write_bytes(screen_bytes)
        self.predictor = screen.load(Source(path, first, gate, width), threads=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([s == "ok" for s in batch["status"]], dtype=bool)
        probs = np.zeros((len(ok), 10), np.float32)
        probs[ok], features = predict_digits(self.predictor, batch["digit"][ok])
        out = {
            "path": batch["path"], "digit": batch["digit"], "status": batch["status"],
            "error": batch["error"], "probs": probs,
        }  # fmt: skip
        if features is not None:  # for the review's reasons, given by the driver as by the local engine
            out["features"] = np.zeros((len(ok), features.shape[1]), np.float32)
            out["features"][ok] = features
        return out


def _init(address: str | None) -> bool:
    """Join the cluster at `address`, or start a local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False,
            logging_level=logging.ERROR, configure_logging=True,
        )  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClassifyError(f"cannot start or join Ray at {address or 'local'}: {exc}") from exc
    return True


def predicted_chunks(
    folder: Path,
    paths: Iterator[str],
    source: Source,
    deskew: bool,
    max_pixels: int,
    chunk_size: int,
    address: str | None = None,
    num_workers: int | None = None,
) -> Iterator[ChunkResult]:
    """Yield predicted chunks in walk order from a Ray Data job over `paths`, with the model (and
    its screen) of `source`."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    items = [{"path": os.fsencode(p)} for p in paths]
    if not items:
        return
    started_here = _init(address)
    try:
        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows in walk order, like the local engine
        ctx.enable_progress_bars = False
        actors = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
        blocks = max(1, -(-len(items) // chunk_size))
        ds: Any = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(
            _decode, batch_size=chunk_size, batch_format="numpy",
            fn_kwargs={"root": os.fsencode(folder.resolve()), "deskew": deskew, "max_pixels": max_pixels},
        )  # fmt: skip
        ds = ds.map_batches(
            _Predict, batch_size=chunk_size, batch_format="numpy", num_cpus=1,
            compute=ActorPoolStrategy(min_size=1, max_size=actors),
            fn_constructor_kwargs={
                "model_bytes": source.model.read_bytes(), "suffix": source.model.suffix,
                "screen_bytes": source.screen.read_bytes() if source.screen else None,
                "gate": source.gate, "width": source.width,
            },
        )  # fmt: skip
        for batch in ds.iter_batches(batch_size=chunk_size, batch_format="numpy"):
            yield _to_chunk(batch)
    finally:
        if started_here:
            ray.shutdown()


def _to_chunk(batch: dict[str, Any]) -> ChunkResult:
    status = [str(s) for s in batch["status"]]
    ok = np.array([s == "ok" for s in status], dtype=bool)
    size = defaults.FIELD_SIZE
    features = np.asarray(batch["features"], np.float32)[ok] if "features" in batch else None
    return ChunkResult(
        paths=[os.fsdecode(bytes(p)) for p in batch["path"]],
        digits=np.asarray(batch["digit"], np.uint8).reshape(-1, size, size)[ok],
        status=status,
        errors=[str(e) for e in batch["error"]],
        probs=np.asarray(batch["probs"], np.float32)[ok],
        features=features,
        screened=screened_rows(features),
    )
