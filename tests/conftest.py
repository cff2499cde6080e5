"""Shared fixtures: the real MNIST data (found as users find it) and small trained models."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["PIPELINE_NO_DOWNLOAD"] = "1"  # never wait on a network in tests

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import data


@pytest.fixture(scope="session")
def mnist() -> data.Location:
    return data.locate("mnist")


@pytest.fixture(scope="session")
def test_digits(mnist: data.Location) -> tuple[np.ndarray, np.ndarray]:
    return data.load("test", location=mnist)


@pytest.fixture(scope="session")
def trained_conv2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed CNN after one epoch on 2,000 training images: a real, small, trained model."""
    from pipeline.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "conv2d"
    config = TrainConfig(model="conv2d", epochs=1, limit=2000, batch_size=32, backend="tensorflow")
    return train(config, out=out, show_progress=False).run_dir


@pytest.fixture(scope="session")
def exported(trained_conv2d: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every format x quantization of the small trained CNN, with its manifest (read-only use)."""
    from pipeline.export import Quantization, export
    from pipeline.formats import EXPORT_FORMATS

    out = tmp_path_factory.mktemp("exported")
    export(
        trained_conv2d / "model.keras",
        list(EXPORT_FORMATS),
        list(Quantization),
        out_dir=out,
        calibration_samples=200,
    )
    return out


def kill_when(
    cmd: list[str], state: Path, ready: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> None:
    """Start `cmd`, wait until its JSON progress file `state` satisfies `ready`, then kill -9 it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and ready(json.loads(state.read_text())):
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"{cmd[3]} finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd, env=full_env
    )


def one_clear_line(result: subprocess.CompletedProcess[str], expect: str) -> None:
    """A user error: non-zero exit, no traceback, exactly one `error:` line naming `expect`."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and expect in lines[0], lines[0]


# Fixtures that train or convert a model: a test using one is `slow` (left out by `make test-fast`).
TRAINING_FIXTURES = frozenset({"trained_conv2d", "exported", "int8_onnx", "calibrated_flat"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that train or convert through a fixture `slow`, and run the tests that load
    JAX in this process (tests/test_fastfit.py) last: JAX starts threads, and tests after it that
    fork worker processes (classify's local engine, Ray) would fork a multithreaded process, which
    can deadlock the child."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.path.name == "test_fastfit.py")
