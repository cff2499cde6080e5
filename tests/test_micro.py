"""The microcontroller target: a full-integer model, its C files, and its run in TensorFlow Lite Micro."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from pipeline import manifest, runtime
from pipeline.carray import c_array_bytes
from pipeline.errors import ExportError
from pipeline.export import Format, Quantization, export
from pipeline.export.micro import macs, model_operators
from pipeline.preprocess import scale

pytest.importorskip("tflite_micro", reason="tflite-micro is not installed (pip install '.[micro]')")
pytestmark = pytest.mark.slow  # trains and converts a model


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The microcontroller CNN after one epoch on 3,000 training images: small, real, trained."""
    from pipeline.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "micro"
    config = TrainConfig(
        model="micro", epochs=1, limit=3000, batch_size=32, backend="tensorflow", augment=False
    )
    return train(config, out=out, show_progress=False).run_dir


@pytest.fixture(scope="module")
def micro_export(micro_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("micro-export")
    result = run_cli("export", "--model", str(micro_run / "model.keras"), "--micro", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _entry(folder: Path) -> manifest.ArtifactEntry:
    (entry,) = manifest.read(folder / "manifest.json").entries
    assert entry.micro is not None
    return entry


def test_c_files_hold_the_model_and_what_firmware_needs(micro_export: Path) -> None:
    entry = _entry(micro_export)
    info = entry.micro or {}
    model = (micro_export / entry.path).read_bytes()
    assert entry.path == "micro.int8-io.tflite" and entry.format is Format.TFLITE
    assert c_array_bytes((micro_export / info["c_source"]).read_text()) == model
    header = (micro_export / info["header"]).read_text()
    assert f"#define MICRO_INT8_IO_MODEL_ARENA_BYTES {info['arena_bytes']}" in header
    assert f"#define MICRO_INT8_IO_MODEL_OPERATOR_COUNT {len(info['operators'])}" in header
    assert "MICRO_INT8_IO_MODEL_INPUT_ZERO_POINT (-128)" in header
    assert all(f"(resolver).{op}()" in header for op in info["operators"])
    assert info["flash_bytes"] == len(model) and info["macs"] > 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler here")
def test_c_source_compiles_to_the_same_aligned_bytes(micro_export: Path, tmp_path: Path) -> None:
    """What firmware links: the generated C compiles warning-free as C11, and the linked array is
    the model, byte for byte, 16-byte aligned."""
    entry = _entry(micro_export)
    info = entry.micro or {}
    for name in (info["c_source"], info["header"]):
        shutil.copy(micro_export / name, tmp_path / name)
    (tmp_path / "main.c").write_text(
        f'#include <stdint.h>\n#include <stdio.h>\n#include "{info["header"]}"\n'
        "int main(void) {\n"
        "  if ((uintptr_t)micro_int8_io_model % 16) return 3;\n"
        "  fwrite(micro_int8_io_model, 1, micro_int8_io_model_len, stdout);\n"
        "  return MICRO_INT8_IO_MODEL_ARENA_BYTES > 0 ? 0 : 4;\n}\n"
    )
    build = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "main.c", info["c_source"], "-o", "prog"]
    subprocess.run(build, cwd=tmp_path, check=True, capture_output=True)
    ran = subprocess.run([str(tmp_path / "prog")], capture_output=True, check=True)
    assert ran.stdout == (micro_export / entry.path).read_bytes()


def test_integer_end_to_end_and_the_smallest_arena(micro_export: Path) -> None:
    entry = _entry(micro_export)
    info = entry.micro or {}
    model = (micro_export / entry.path).read_bytes()
    ops, floats = model_operators(model)
    assert floats == [] and "DEQUANTIZE" not in ops and "QUANTIZE" not in ops
    arena = runtime.smallest_arena(model)
    assert arena == info["arena_bytes"]
    assert runtime._micro_interpreter(model, arena) is not None
    assert runtime._micro_interpreter(model, arena - 1) is None


def test_macs_of_the_architecture() -> None:
    """Counted by hand: 3x3 convolutions 1->16 at 28x28, 16->32 and 32->32 at 14x14, 32->48 and
    48->48 at 7x7, then Dense 48->10."""
    from pipeline.train import models

    expected = 28 * 28 * 16 * 9 + 14 * 14 * 32 * 9 * (16 + 32) + 7 * 7 * 48 * 9 * (32 + 48) + 48 * 10
    assert macs(models.get("micro").build()) == expected


def test_verify_runs_it_in_tflite_micro(
    micro_export: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    from pipeline.verify import Tolerances, verify

    # a one-epoch model: int8 may cost it more than the release limit; this is about the runtime
    loose = Tolerances(quant_max_delta=5.0)
    report = verify(micro_export / "manifest.json", loose, limit=300, latency_repeats=1, write=False)
    (result,) = report.results
    assert result.status == "ok" and result.runtime == "tflite-micro"
    assert result.arena_bytes == (_entry(micro_export).micro or {})["arena_bytes"]
    assert result.latency_ms_batch256 is None and result.agreement is not None
    # the phone runtime (LiteRT) and the microcontroller one compute the same int8 model
    x = scale(test_digits[0][:300])
    tflm = runtime.load_micro(micro_export / "micro.int8-io.tflite").predict(x)
    litert = runtime.load(micro_export / "micro.int8-io.tflite").predict(x)
    assert np.mean(tflm.argmax(axis=1) == litert.argmax(axis=1)) >= 0.99


def test_verify_notices_a_changed_c_array(micro_export: Path) -> None:
    from pipeline.errors import ParityError
    from pipeline.verify import verify

    folder = micro_export.parent / "changed-c-array"  # beside it: the source model's relative path holds
    shutil.copytree(micro_export, folder)
    source = folder / "micro.int8-io.c"
    source.write_text(source.read_text().replace("0x54, 0x46, 0x4c, 0x33", "0x00, 0x46, 0x4c, 0x33", 1))
    with pytest.raises(ParityError, match=re.escape("micro.int8-io.c: SHA-256 differs")):
        verify(folder / "manifest.json", limit=50, latency_repeats=1, write=False)


def test_classify_takes_the_integer_io_model(
    micro_export: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(64):
        Image.fromarray(test_digits[0][i]).save(folder / f"{i:03d}.png")
    model = micro_export / "micro.int8-io.tflite"
    result = run_cli("classify", str(folder), "--out", str(tmp_path / "r.csv"), "--model", str(model))
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "r.csv").read_text().splitlines()[1:]
    expected = runtime.load(model).predict(scale(test_digits[0][:64])).argmax(axis=1)
    assert [int(r.split(",")[1]) for r in rows] == expected.tolist()


def test_micro_writes_the_int8_tflite_only(micro_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--micro writes the int8 TFLite only"):
        export(micro_run / "model.keras", [Format.ONNX], [Quantization.INT8], tmp_path, micro=True)
    assert not (tmp_path / "manifest.json").exists()


def test_missing_tflite_micro_is_one_line(
    micro_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tflite_micro" else real(name, *a)
    )
    result = CliRunner().invoke(
        app, ["export", "--model", str(micro_run / "model.keras"), "--micro", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 7 and "pip install 'pipeline[micro]'" in result.output
    assert not (tmp_path / "x" / "manifest.json").exists()
