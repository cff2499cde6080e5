"""Averaging ensembles: the saved model is the mean of its members, exports, and refuses bad mixes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_clear_line, run_cli

from pipeline import preprocess, runtime
from pipeline.errors import EnsembleError
from pipeline.train import TrainConfig, train
from pipeline.train.ensemble import ensemble

pytestmark = pytest.mark.slow  # trains models (or starts Ray)


@pytest.fixture(scope="module")
def two_flat_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two softmax MLPs, one epoch on 2,000 images each, with different seeds (so different splits)."""
    root = tmp_path_factory.mktemp("members")
    return [
        train(
            TrainConfig(model="flat", epochs=1, limit=2000, batch_size=64, seed=seed, backend="tensorflow"),
            out=root / f"flat-{seed}", show_progress=False,
        ).run_dir
        for seed in (1, 2)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def averaged(two_flat_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ensemble") / "flat-x2"
    ensemble(two_flat_runs, out)
    return out


def test_output_is_the_mean_of_the_members(
    averaged: Path, two_flat_runs: list[Path], test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x = preprocess.scale(test_digits[0][:300])
    members = [runtime.load(run / "model.keras").predict(x) for run in two_flat_runs]
    combined = runtime.load(averaged / "model.keras").predict(x)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # the members really differ
    np.testing.assert_allclose(combined, (members[0] + members[1]) / 2, atol=1e-6)


def test_run_folder_records_members_and_test_accuracy(
    averaged: Path, two_flat_runs: list[Path], test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    metrics = json.loads((averaged / "metrics.json").read_text())
    member_metrics = [json.loads((run / "metrics.json").read_text()) for run in two_flat_runs]
    assert metrics["model"] == "flat-x2" and metrics["kind"] == "ensemble"
    assert metrics["parameters"] == sum(m["parameters"] for m in member_metrics)
    seconds = sum(m["train_seconds"] for m in member_metrics)
    assert metrics["train_seconds"] == pytest.approx(seconds, abs=0.02)
    assert [m["seed"] for m in metrics["members"]] == [1, 2] and metrics["epochs"] == [1, 1]
    assert metrics["best_val_accuracy"] is None  # no split is unseen by every member
    images, labels = test_digits
    pred = runtime.load(averaged / "model.keras").predict(preprocess.scale(images)).argmax(axis=1)
    assert metrics["test_accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert (averaged / "curves.png").stat().st_size > 10_000
    assert json.loads((averaged / "config.json").read_text())["deskew"] is False


def test_ensemble_exports_to_onnx_with_the_same_predictions(
    averaged: Path, tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    from pipeline.export import Format, Quantization, export

    done = export(averaged / "model.keras", [Format.ONNX], [Quantization.NONE], out_dir=tmp_path)
    x = preprocess.scale(test_digits[0][:500])
    onnx = runtime.load(done[0].path).predict(x)
    np.testing.assert_allclose(onnx, runtime.load(averaged / "model.keras").predict(x), atol=1e-5)
    entry = json.loads((tmp_path / "manifest.json").read_text())["artifacts"][0]
    assert entry["source"]["training"]["kind"] == "ensemble"
    assert len(entry["source"]["training"]["members"]) == 2


def test_sigmoid_members_are_refused(trained_conv2d: Path, two_flat_runs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(EnsembleError, match="not softmax"):
        ensemble([trained_conv2d, two_flat_runs[0]], tmp_path / "mixed")
    assert not (tmp_path / "mixed" / "model.keras").exists()


def test_members_must_share_preprocessing(two_flat_runs: list[Path], tmp_path: Path) -> None:
    skewed = tmp_path / "skewed"
    shutil.copytree(two_flat_runs[1], skewed)
    config = json.loads((skewed / "config.json").read_text())
    (skewed / "config.json").write_text(json.dumps({**config, "deskew": True}))
    with pytest.raises(EnsembleError, match="disagree on deskew"):
        ensemble([two_flat_runs[0], skewed], tmp_path / "out")


@pytest.mark.parametrize(
    ("members", "expect"),
    [(1, "at least two"), (0, "listed twice")],
)
def test_bad_member_lists(two_flat_runs: list[Path], tmp_path: Path, members: int, expect: str) -> None:
    paths = two_flat_runs[:1] if members == 1 else [two_flat_runs[0], two_flat_runs[0]]
    with pytest.raises(EnsembleError, match=expect):
        ensemble(paths, tmp_path / "out")


def test_cli_errors_are_one_line(tmp_path: Path, two_flat_runs: list[Path]) -> None:
    one_clear_line(run_cli("ensemble", str(tmp_path), str(tmp_path / "b"), "--out", "x"), "not a run folder")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip")
    result = run_cli("ensemble", str(corrupt), str(two_flat_runs[0]), "--out", str(tmp_path / "out"))
    one_clear_line(result, "not a loadable Keras model")


def test_members_without_validation_still_draw_curves(tmp_path: Path) -> None:
    """A member trained on all training images has no validation history: its training curves
    are drawn instead of nothing (matplotlib warns about an empty legend otherwise)."""
    import warnings

    from pipeline import report

    histories = {
        "member 1": {
            "loss": [0.5, 0.3],
            "accuracy": [0.9, 0.95],
            "val_loss": [0.4, 0.2],
            "val_accuracy": [0.9, 0.97],
        },
        "member 2": {"loss": [0.6, 0.4], "accuracy": [0.88, 0.94]},
    }
    for subset in (histories, {"member 2": histories["member 2"]}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            path = report.plot_members(subset, tmp_path / f"curves{len(subset)}.png", title="x2")
        assert path.stat().st_size > 5_000
