"""The package as users get it: a wheel that carries the release models and classifies anywhere, a
data search path of the user's machine, and choices refused before any work."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import one_clear_line, run_cli
from PIL import Image

from pipeline import data, manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(manifest.release_dir() is None, reason="no release models in this checkout")
def test_wheel_carries_the_release_and_classifies_outside_the_checkout(
    tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    wheels = tmp_path / "wheels"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
    ]
    subprocess.run([*build, str(ROOT)], check=True, capture_output=True)
    wheel = next(wheels.glob("pipeline-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    release = manifest.read(manifest.release_dir() / "manifest.json")  # type: ignore[operator]
    assert {f"pipeline/release/{e.path}" for e in release.entries} <= names
    micro = [e.micro for e in release.entries if e.micro]
    assert {f"pipeline/release/{m[key]}" for m in micro for key in ("c_source", "header")} <= names
    assert "pipeline/release/manifest.json" in names and "pipeline/release/parity.json" in names
    assert "pipeline/release/review.npz" in names  # classify marks rows for review out of the box
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    (work / "digits").mkdir(parents=True)
    for i in range(50):
        Image.fromarray(test_digits[0][i]).save(work / "digits" / f"{i:03d}.png")
    env = {"PYTHONPATH": str(site)}  # the installed copy, not this checkout's
    where = run_cli("--version", cwd=work, env=env)
    assert where.returncode == 0
    found = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
        capture_output=True, text=True, cwd=work, env={**os.environ, **env},
    )  # fmt: skip
    assert found.stdout.strip().startswith(str(site))
    result = run_cli("classify", "digits", "--out", "r.csv", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    assert str(site / "pipeline" / "release" / "bncnn-x4.int8.onnx") in result.stdout.replace("\n", "")
    rows = (work / "r.csv").read_text().splitlines()[1:]
    predicted = np.array([int(r.split(",")[1]) for r in rows])
    assert np.mean(predicted == test_digits[1][:50]) >= 0.96
    # Scans take the scan loops, which the wheel carries compiled: nothing to build or compile
    # where it is installed.
    assert any(n.startswith("pipeline/preprocess/_loops.") and n.endswith(".so") for n in names)
    from pipeline.samples import render_scan

    (work / "scans").mkdir()
    rng = np.random.default_rng(3)
    for i in range(20):
        render_scan(test_digits[0][i], rng).save(work / "scans" / f"{i:03d}.jpg", quality=90)
    result = run_cli("classify", "scans", "--out", "s.csv", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    rows = (work / "s.csv").read_text().splitlines()[1:]
    predicted = np.array([int(r.split(",")[1]) for r in rows])
    assert np.mean(predicted == test_digits[1][:20]) >= 0.9


def test_data_is_searched_on_the_users_machine_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--data-dir, $PIPELINE_DATA_DIR, ./data, the system's folders, Keras' cache: no repository folder."""
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "env"))
    places = [str(p) for p in data.search_paths(data.Dataset.MNIST, tmp_path / "given")]
    assert places[:4] == [
        str(tmp_path / "given" / "mnist"), str(tmp_path / "given"),
        str(tmp_path / "env" / "mnist"), str(tmp_path / "env"),
    ]  # fmt: skip
    assert places[4:6] == ["data/mnist", "data"]
    assert "/usr/share/datasets" in places and places[-1].endswith(".keras/datasets/mnist")
    assert not any("shared" in p for p in places)


@pytest.mark.parametrize(
    "args, option",
    [
        (["classify", ".", "--engine", "spark"], "--engine"),
        (["data", "samples", "out", "--style", "photo"], "--style"),
        (["train", "--backend", "mxnet"], "--backend"),
        (["train", "--precision", "int4"], "--precision"),
        (["bench", "scans", "--style", "photo"], "--style"),
    ],
)
def test_choices_are_refused_before_any_work(args: list[str], option: str, tmp_path: Path) -> None:
    result = run_cli(*args, cwd=tmp_path)
    one_clear_line(result, option)
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_choices() -> None:
    result = run_cli("classify", "--help")
    assert result.returncode == 0 and "local" in result.stdout and "ray" in result.stdout


@pytest.mark.skipif(manifest.release_dir() is None, reason="no release models in this checkout")
def test_readme_python_api_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's Python snippet, run as written on sample scans (its file name included)."""
    import re

    from pipeline.samples import write_samples

    block = re.search(r"## Python API.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    write_samples(tmp_path / "scans", 3, "scan")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:2] == ["3", "0"]  # classified, errors
    assert printed[-1] == "[7]"  # test digit 0 is a 7
    assert (tmp_path / "results.csv").is_file()
