"""The Ray Data engine writes the same CSV as the local engine, row for row, bad files included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import manifest
from pipeline.classify import classify
from pipeline.classify import ray as ray_engine
from pipeline.errors import ClassifyError

pytestmark = pytest.mark.slow  # trains models (or starts Ray)

ray = pytest.importorskip(
    "ray", reason="Ray is not installed here (pip install '.[ray]'); engine tests skipped"
)


@pytest.fixture(scope="module")
def ray_local() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_and_local_engines_write_identical_csv(
    ray_local: object, exported: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "scans"
    for i in range(300):
        sub = folder / f"batch{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test_digits[0][i]).save(sub / f"{i:04d}.png")
    (folder / "batch0" / "broken.png").write_bytes(b"not a png")
    Image.new("L", (64, 64), 250).save(folder / "batch1" / "blank.png")
    (folder / "batch2" / "odd, name.png").write_bytes((folder / "batch2" / "0002.png").read_bytes())
    model = exported / "conv2d.int8.onnx"
    local = classify(
        folder, tmp_path / "local.csv", model=model, workers=2, chunk_size=64, probabilities=True
    )
    distributed = classify(
        folder, tmp_path / "ray.csv", model=model, workers=2, chunk_size=64, probabilities=True, engine="ray"
    )
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert distributed.errors == local.errors == 1 and distributed.blank == 1
    assert distributed.classified == local.classified == 301


@pytest.mark.skipif(manifest.release_dir() is None, reason="no release models in this checkout")
def test_ray_runs_the_screened_default_as_the_local_engine_does(
    ray_local: object, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """The release's default model behind its screen (pipeline.classify.screen): digits the
    screen answers, letters it sends on to the model, the same CSV from both engines."""
    from pipeline.samples import letter_ink, scanned

    rng = np.random.default_rng(9)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(100):
        Image.fromarray(test_digits[0][i]).save(folder / f"d{i:03d}.png")
    for i in range(20):
        Image.fromarray(scanned(letter_ink(rng), rng, quality=85)).save(folder / f"l{i:03d}.png")
    local = classify(folder, tmp_path / "local.csv", workers=2, chunk_size=32, probabilities=True)
    distributed = classify(
        folder, tmp_path / "ray.csv", workers=2, chunk_size=32, probabilities=True, engine="ray"
    )
    assert local.screen is not None and distributed.screen == local.screen
    assert distributed.screened == local.screened and 50 <= local.screened < 100  # letters: the model's
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert local.review.get("not_a_digit", 0) >= 12


def test_missing_ray_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ray_engine.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ClassifyError, match=r"pip install 'pipeline\[ray\]'"):
        classify(tmp_path, tmp_path / "out.csv", engine="ray")


def test_unknown_engine(tmp_path: Path) -> None:
    with pytest.raises(ClassifyError, match="unknown engine"):
        classify(tmp_path, tmp_path / "out.csv", engine="spark")
