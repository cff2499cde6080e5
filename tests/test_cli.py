"""Every command's --help, and user errors as one clear line with a non-zero exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_clear_line, run_cli
from typer.testing import CliRunner

from pipeline import defaults, manifest
from pipeline.cli import app

runner = CliRunner()
COMMANDS = [[], ["data"], ["data", "samples"], ["train"], ["ensemble"], ["evaluate"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "pipeline")
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_pipeline_help_does_not_import_tensorflow() -> None:
    code = "import sys; from pipeline.cli import app; print('tensorflow' in sys.modules, 'onnxruntime' in sys.modules)"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["train", "--model", "resnet"], "unknown model"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--backend", "theano"], "Invalid value for '--backend'"),
        (["train", "--no-such-option"], "No such option"),
        (["data", "--dataset", "cifar"], "unknown dataset"),
        (["evaluate", "missing.keras"], "no such file"),
        (["evaluate", "model.h5"], "unknown artifact type"),
        (["data", "samples", "out", "--style", "photo"], "Invalid value for '--style'"),
    ],
)
def test_user_errors_are_one_line(args: list[str], expect: str, tmp_path: Path) -> None:
    one_clear_line(run_cli(*args, cwd=tmp_path), expect)


def test_missing_data_is_one_line(tmp_path: Path) -> None:
    env = {
        "KERAS_HOME": str(tmp_path / "keras"),
        "PIPELINE_NO_DOWNLOAD": "1",
        "PIPELINE_DATA_DIR": str(tmp_path / "nothing"),
    }
    result = run_cli("train", "--epochs", "1", "--data-dir", str(tmp_path / "empty"), cwd=tmp_path, env=env)
    if Path("/usr/share/datasets/mnist").exists():
        pytest.skip("this machine has MNIST in /usr/share/datasets")
    one_clear_line(result, "not found")
    assert "empty" in result.stderr and "nothing" in result.stderr


def test_failed_download_is_one_line(tmp_path: Path) -> None:
    """Downloading allowed but impossible (a proxy that refuses at once): one line, no notices."""
    if Path("/usr/share/datasets/mnist").exists():
        pytest.skip("this machine has MNIST in /usr/share/datasets")
    refuse = "http://127.0.0.1:9"
    env = {
        "KERAS_HOME": str(tmp_path / "keras"), "PIPELINE_NO_DOWNLOAD": "0",
        "PIPELINE_DATA_DIR": str(tmp_path / "nothing"), "https_proxy": refuse, "HTTPS_PROXY": refuse,
        "no_proxy": "", "NO_PROXY": "",
    }  # fmt: skip
    result = run_cli("train", "--epochs", "1", "--data-dir", str(tmp_path / "empty"), cwd=tmp_path, env=env)
    one_clear_line(result, "download failed")


def test_the_command_flushes_its_output_and_keeps_its_exit_code() -> None:
    """`run` ends the process without the interpreter's teardown: what was printed into a pipe
    must still arrive, and the exit code must be the command's."""
    ok = run_cli("--version")
    assert ok.returncode == 0 and ok.stdout.strip().startswith("pipeline "), ok
    usage = run_cli("classify")  # a usage error: click's exit code 2, one line
    assert usage.returncode == 2
    one_clear_line(usage, "folder")


@pytest.mark.parametrize(
    ("exit_with", "code", "stderr"), [(None, 0, ""), (3, 3, ""), ("stopped", 1, "stopped\n")]
)
def test_run_exits_as_python_would(
    exit_with: object, code: int, stderr: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`sys.exit(None | int | message)` from a command ends `run` with the status Python gives it,
    after the exit handlers ran."""
    import atexit

    from pipeline import cli

    class Exited(Exception):
        pass

    def fake_exit(status: int) -> None:
        raise Exited(status)

    handled: list[bool] = []
    monkeypatch.setattr(cli, "main", lambda: sys.exit(exit_with))
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(cli.threading, "active_count", lambda: 1)  # whatever threads pytest runs
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: handled.append(True))
    with pytest.raises(Exited) as exited:
        cli.run()
    assert exited.value.args == (code,) and handled == [True]
    assert capsys.readouterr().err == stderr


def test_run_leaves_the_ordinary_exit_to_a_process_with_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread still running (a library's) is waited for by Python's own exit, not cut off."""
    from pipeline import cli

    def fail(status: int) -> None:
        raise AssertionError("os._exit with a thread running")

    monkeypatch.setattr(cli, "main", lambda: sys.exit(4))
    monkeypatch.setattr(cli.os, "_exit", fail)
    monkeypatch.setattr(cli.threading, "active_count", lambda: 2)
    with pytest.raises(SystemExit) as exited:
        cli.run()
    assert exited.value.code == 4


def test_a_profiled_run_still_writes_its_profile(tmp_path: Path) -> None:
    """cProfile writes its figures after the command returns: a run under it exits the ordinary
    way, so `python -m cProfile -o FILE -m pipeline ...` still works for whoever measures."""
    out = tmp_path / "run.prof"
    result = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "pipeline", "--version"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "pipeline " in result.stdout, result.stderr
    assert out.stat().st_size > 0


@pytest.mark.parametrize(("user", "seen"), [(None, "1"), ("4", "4")])
def test_commands_keep_numpys_blas_on_one_thread_unless_the_user_says(
    user: str | None, seen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenBLAS's idle threads spin at numpy's import: every command runs with one, before any
    imports numpy, and a user's own setting wins."""
    from pipeline import cli

    if user is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", user)
    found: list[str | None] = []
    monkeypatch.setattr(cli, "app", lambda **_: found.append(os.environ.get("OPENBLAS_NUM_THREADS")) or 0)
    with pytest.raises(SystemExit):
        cli.main()
    assert found == [seen]


def test_data_prints_location_and_counts() -> None:
    result = runner.invoke(app, ["data"])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "5923" in result.output and "1135" in result.output


def test_evaluate_writes_both_figures(trained_conv2d: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(trained_conv2d / "model.keras"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model_keras.confusion.png").stat().st_size > 10_000
    assert (tmp_path / "model_keras.examples.png").stat().st_size > 10_000
    assert "manual review of low-confidence rows" in result.output
    saved = json.loads((tmp_path / "model_keras.evaluation.json").read_text())
    review = saved["review_thresholds"]
    assert [r["threshold"] for r in review] == list(defaults.REVIEW_THRESHOLDS)
    errors = round((1 - saved["accuracy"]) * saved["images"])
    assert all(r["errors"] == errors and r["errors_flagged"] <= errors for r in review)
    assert [r["flagged"] for r in review] == sorted(r["flagged"] for r in review)


def test_review_rows_count_what_a_threshold_flags() -> None:
    """Four images: two sure and right, one unsure and wrong, one unsure and right."""
    from pipeline.evaluate import review_rows

    probs = np.full((4, 10), 0.01, np.float32)
    for row, (digit, conf) in enumerate([(0, 0.91), (1, 0.91), (2, 0.6), (3, 0.8)]):
        probs[row, digit] = conf
    labels = np.array([0, 1, 7, 3])
    low, mid, high = review_rows(probs, labels, (0.5, 0.7, 0.95))
    assert (low.flagged, low.errors_flagged, low.errors, low.accuracy_kept) == (0.0, 0, 1, 0.75)
    assert (mid.flagged, mid.errors_flagged, mid.accuracy_kept) == (0.25, 1, 1.0)
    assert (high.flagged, high.errors_flagged, high.accuracy_kept) == (1.0, 1, None)


def test_bench_augment_prints_a_rate_per_thread_count() -> None:
    result = run_cli("bench", "augment", "--count", "512", "--workers", "1", "--workers", "2")
    assert result.returncode == 0, result.stderr
    rows = [line.split("│") for line in result.stdout.splitlines() if line.startswith("│")]
    assert [r[1].strip() for r in rows] == ["1", "2"]
    assert all(r[2].strip() == "512" and float(r[4].replace(",", "")) > 0 for r in rows)


def test_bench_classify_prints_the_ceiling_ratio_accuracy_and_memory(exported: Path, tmp_path: Path) -> None:
    """One folder: rounds of the decode-only ceiling then classify; the row is the round with the
    median share of the ceiling just before it (of two: the lower), with its accuracy (read from
    the labelled file names), ECE and the peak memory of any round."""
    int8_onnx = exported / "conv2d.int8.onnx"
    result = run_cli(
        "bench", "classify", "--count", "300", "--no-naive", "--model", str(int8_onnx),
        "--folder", str(tmp_path / "pngs"), "--rounds", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    ]
    assert [r[0] for r in rows] == ["decode only (ceiling)", f"classify {int8_onnx.name}"]
    ceiling, run = rows
    assert ceiling[4] == "100%" and ceiling[5] == "-" and ceiling[6] == "-" and ceiling[8] == "-"
    shares = [float(s.rstrip("%")) for s in run[8].split()]
    assert len(shares) == 2 and shares == sorted(shares) and run[4] == run[8].split()[0]
    assert float(run[3].replace(",", "")) > 0 and float(run[5].rstrip("%")) > 80
    assert 0 <= float(run[6]) <= 1 and run[7].endswith("MiB")  # ECE of the confidence column, memory
    assert "the row is the round with the median share" in result.stdout


def test_bench_photo_compares_preprocessing_with_the_decode() -> None:
    result = run_cli("bench", "photo", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "4000x3000 photo: decode " in result.stdout and "its decode time" in result.stdout


def test_bench_review_prints_what_goes_to_review() -> None:
    release = manifest.release_dir()
    if release is None:
        pytest.skip("no release models in this checkout")
    result = run_cli("bench", "review", "--count", "30", "--model", str(release / "conv2d.int8.onnx"))
    assert result.returncode == 0, result.stderr
    names = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")]
    assert names[:5] == [
        "MNIST test digits (28x28)", "MNIST test digits as scans", "two digits side by side",
        "printed letters", "scribbles",
    ]  # fmt: skip
    assert "AUROC" in result.stdout or "Fashion-MNIST test images not found" in result.stdout
