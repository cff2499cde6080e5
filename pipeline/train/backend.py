"""Which Keras backend and device a run uses, at what precision, and the clock it is timed by.

Keras 3 is multi-backend; the backend must be chosen before `keras` is first imported, which is
why every Keras import in `pipeline.train` sits inside a function called after `activate_backend`.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time

from pipeline import __version__
from pipeline.choices import Backend, Precision
from pipeline.errors import TrainError


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
        hint = "pip install 'pipeline[train]'" if backend is Backend.TENSORFLOW else f"pip install {module}"
        raise TrainError(f"backend {backend.value} is not installed (no module {module!r}): {hint}")
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


PRECISIONS = tuple(p.value for p in Precision)


def resolve_precision(choice: str, device: str) -> str:
    """`auto` is mixed bfloat16 on a GPU (tensor cores, float32's range, no loss scaling) and
    float32 on a CPU, where bfloat16 kernels are emulated or slower in TensorFlow's CPU build."""
    if choice != "auto":
        return choice
    return "mixed_bfloat16" if device.startswith("GPU") else "float32"
