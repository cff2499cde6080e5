"""Export: a trained Keras model to ONNX and TFLite files, quantized, each recorded in the manifest.

It owns the conversions (`onnx`, `tflite`), the float classifier head int8 files keep (`head`) and
the loaded source model with the metadata every artifact carries (`source`); which formats and
quantizations exist is `pipeline.formats`' table, and the manifest is written by
`pipeline.manifest`. Every artifact is written under a temporary name and renamed only when
complete, and its manifest entry is written after that, so a failed export leaves neither a
half-written file nor an entry pointing at one.

The manifest records, per artifact: path, format, quantization, SHA-256, size, input/output names,
dtypes, shapes and quantization parameters, the preprocessing it expects, the source model with its
SHA-256 and test accuracy, tool versions and the command.

It may import `data`, `preprocess`, `runtime`, `manifest`, `formats`, `files`, `quiet`, `defaults`
and `errors`; TensorFlow, tf2onnx and onnx are imported inside the functions that convert.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline import data, defaults, manifest, preprocess, runtime
from pipeline.errors import ExportError
from pipeline.export import micro as to_micro
from pipeline.export.source import Source, calibration_images, load_source, tool_versions
from pipeline.files import sha256
from pipeline.formats import EXPORT_FORMATS, FORMATS, Format, Quantization, artifact_name

E = TypeVar("E", bound=StrEnum)


def parse_choices(value: str, choices: Sequence[E], what: str) -> list[E]:
    """'all', one value, or a comma-separated list -> members of `choices`, in table order."""
    if value == "all":
        return list(choices)
    by_value = {m.value: m for m in choices}
    chosen = []
    for part in value.split(","):
        if part.strip() not in by_value:
            known = ", ".join(by_value)
            raise ExportError(f"unknown {what} {part.strip()!r}; choose all or {known}")
        chosen.append(by_value[part.strip()])
    return [m for m in choices if m in chosen]


def parse_formats(value: str) -> list[Format]:
    """`--format`: what `pipeline export` can write, from the formats table."""
    return parse_choices(value, EXPORT_FORMATS, "format")


def parse_quantizations(value: str) -> list[Quantization]:
    return parse_choices(value, tuple(Quantization), "quantization")


@dataclass(frozen=True)
class Exported:
    path: Path
    format: Format
    quantization: Quantization
    bytes: int
    seconds: float
    micro: to_micro.MicroInfo | None = None


def export(
    model_path: Path,
    formats: list[Format],
    quantizations: list[Quantization],
    out_dir: Path = defaults.EXPORT_DIR,
    calibration_samples: int = defaults.CALIBRATION_SAMPLES,
    integer_io: bool = False,
    data_dir: Path | None = None,
    seed: int = defaults.SEED,
    log: Callable[[Exported], None] | None = None,
    micro: bool = False,
) -> list[Exported]:
    """Export one Keras model to every requested format x quantization and record each artifact.

    `micro` is the microcontroller target: the int8 TFLite with int8 input and output, plus its C
    source and header (`export.micro`), recorded with its arena, operators and MACs.
    """
    if calibration_samples < 10:
        raise ExportError("--calibration-samples must be at least 10")
    if micro:
        if formats != [Format.TFLITE] or quantizations != [Quantization.INT8]:
            raise ExportError("--micro writes the int8 TFLite only (use --format tflite --quantize int8)")
        integer_io = True
        runtime.require_micro()  # the arena is measured in the real interpreter: before any work
    source = load_source(model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if manifest.is_installed_release(out_dir):
        raise ExportError(f"{out_dir}: is the installed release; export into another folder (--out)")
    for fmt in formats:
        for quant in quantizations:
            if not FORMATS[fmt].exportable or quant not in FORMATS[fmt].quantizations:
                raise ExportError(f"{fmt.value} {quant.value}: not a format and quantization export writes")
    manifest_path = out_dir / defaults.MANIFEST_NAME
    manifest.read(manifest_path, missing_ok=True)  # refuse a corrupt manifest before doing any work
    if source.test_accuracy is None:
        x, y = data.load(data.Split.TEST, data_dir=data_dir)
        predictor = runtime.KerasPredictor(model_path, source.model)
        probs = predictor.predict(preprocess.model_input(x, source.deskew))
        source.test_accuracy = float((probs.argmax(axis=1) == y).mean())
    calib_cache: list[np.ndarray] = []

    def calib() -> np.ndarray:
        if not calib_cache:
            calib_cache.append(calibration_images(calibration_samples, seed, source.deskew, data_dir))
        return calib_cache[0]

    results: list[Exported] = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as work_dir:
        work = Path(work_dir)
        for fmt in formats:
            writer = importlib.import_module(str(FORMATS[fmt].exporter))
            for quant in quantizations:
                name = artifact_name(source.name, fmt, quant, integer_io)
                tmp, final = work / name, out_dir / name
                started = time.perf_counter()
                try:
                    writer.write(source, quant, tmp, work, calib, integer_io)
                    inp, outp = writer.describe_io(tmp)
                    info = to_micro.write_c_files(tmp, to_micro.macs(source.model)) if micro else None
                except ExportError:
                    raise
                except Exception as exc:  # converter failures come in every type; all are one error
                    raise ExportError(
                        f"{name}: {fmt.value} {quant.value} export failed: {type(exc).__name__}: {exc}"
                    ) from exc
                seconds = time.perf_counter() - started
                if info is not None:  # the C files first: the model's name in the folder means complete
                    for name in (info.c_source, info.header):
                        os.replace(work / name, out_dir / name)
                os.replace(tmp, final)
                entry = _entry(final, out_dir, fmt, quant, source, inp, outp, seconds, calibration_samples)
                if info is not None:
                    entry["micro"] = info.to_dict()
                manifest.record(manifest_path, entry)
                result = Exported(final, fmt, quant, final.stat().st_size, seconds, info)
                results.append(result)
                if log:
                    log(result)
    return results


def _entry(
    path: Path, out_dir: Path, fmt: Format, quant: Quantization, source: Source,
    inp: dict[str, Any], outp: dict[str, Any], seconds: float, calibration_samples: int,
) -> dict[str, Any]:  # fmt: skip
    return {
        "path": path.name,
        "format": fmt.value,
        "quantization": quant.value,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "input": inp,
        "output": outp,
        "labels": list(data.CLASS_NAMES[data.Dataset.MNIST]),
        "preprocessing": {**preprocess.PREPROCESSING_DESCRIPTION, "deskew": source.deskew},
        "source": {
            "model": source.name,
            "path": os.path.relpath(source.path.resolve(), out_dir.resolve()),
            "sha256": source.sha256,
            "test_accuracy": source.test_accuracy,
            "parameters": source.parameters,
            "training": source.training,
        },
        "calibration": (
            {"samples": calibration_samples, "split": "train", "dataset": defaults.DATASET}
            if quant is Quantization.INT8 else None
        ),
        "opset": defaults.ONNX_OPSET if fmt is Format.ONNX else None,
        "tools": tool_versions(),
        "command": _command(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export_seconds": round(seconds, 2),
    }  # fmt: skip


def _command() -> str | None:
    """The command line that made the artifact, when it was the `pipeline` CLI."""
    if sys.argv and "pipeline" in sys.argv[0]:
        return shlex.join(["pipeline", *sys.argv[1:]])
    return None


def default_model() -> Path:
    """The newest runs/*/model.keras, for `pipeline export` without --model."""
    found = sorted(defaults.RUNS_DIR.glob("*/model.keras"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ExportError(f"no --model given and no {defaults.RUNS_DIR}/*/model.keras to export")
    return found[-1]
