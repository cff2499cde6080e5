"""Accuracy parity between each Keras model and every artifact exported from it.

Verification is separate from export (as in Hugging Face optimum): it reads only the manifest
and the files, so it proves what was shipped, not what the exporter believed it wrote. It checks
integrity first (every file present, SHA-256 as recorded, source model unchanged), then runs every
artifact over the whole test set beside its Keras model, collects every failure, writes
`parity.json` and `parity.md` beside the manifest, and raises one ParityError listing them all.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data, defaults, preprocess, runtime
from pipeline.errors import ArtifactError, ParityError
from pipeline.files import atomic_open, sha256, write_json

LOSSY = {"dynamic", "int8"}


@dataclass(frozen=True)
class Tolerances:
    """Verify's limits; defaults in pipeline.defaults."""

    float_min_agreement: float = defaults.FLOAT_MIN_AGREEMENT
    float_max_delta: float = defaults.FLOAT_MAX_ACCURACY_DELTA  # percentage points
    quant_max_delta: float = defaults.QUANT_MAX_ACCURACY_DELTA  # percentage points


@dataclass
class ArtifactResult:
    path: str
    format: str
    quantization: str
    source: str
    bytes: int
    status: str = "ok"  # ok, failed, missing, modified, error
    accuracy: float | None = None
    keras_accuracy: float | None = None
    delta_points: float | None = None
    agreement: float | None = None
    # the same second-best digit as Keras (what classify's `second` column reports); reported,
    # not a limit: with label smoothing Keras' own second and third choices are often 1e-4 apart
    second_agreement: float | None = None
    max_abs_diff: float | None = None
    latency_ms_batch1: float | None = None
    latency_ms_batch256: float | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    manifest: Path
    images: int
    results: list[ArtifactResult]
    tolerances: Tolerances
    json_path: Path | None = None
    md_path: Path | None = None

    @property
    def failures(self) -> list[str]:
        return [f"{r.path}: {p}" for r in self.results for p in r.problems]


def measure_latency(predictor: runtime.Predictor, images: np.ndarray, batch: int, repeats: int) -> float:
    """Median milliseconds per call of `batch` images, after one warm-up call."""
    x = np.ascontiguousarray(images[:batch])
    predictor.predict(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _check(result: ArtifactResult, kind: str, tol: Tolerances) -> None:
    assert result.delta_points is not None and result.agreement is not None
    if kind in LOSSY:
        if abs(result.delta_points) > tol.quant_max_delta:
            result.problems.append(
                f"accuracy delta {result.delta_points:+.3f} points exceeds ±{tol.quant_max_delta}"
            )
        return
    if result.agreement < tol.float_min_agreement:
        result.problems.append(f"top-1 agreement {result.agreement:.4%} below {tol.float_min_agreement:.2%}")
    if abs(result.delta_points) > tol.float_max_delta:
        result.problems.append(
            f"accuracy delta {result.delta_points:+.3f} points exceeds ±{tol.float_max_delta}"
        )


def _load_manifest(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ParityError(f"{path}: manifest not found; run `pipeline export` first")
    try:
        artifacts = json.loads(path.read_text())["artifacts"]
        if not isinstance(artifacts, list):
            raise TypeError("artifacts is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise ParityError(f"{path}: not a valid manifest ({exc})") from exc
    if not artifacts:
        raise ParityError(f"{path}: the manifest lists no artifacts")
    return artifacts


def verify(
    manifest: Path = defaults.EXPORT_DIR / defaults.MANIFEST_NAME,
    tolerances: Tolerances | None = None,
    data_dir: Path | None = None,
    limit: int | None = None,
    latency_repeats: int = defaults.LATENCY_REPEATS,
    write: bool = True,
) -> ParityReport:
    """Verify every artifact of `manifest`; raises ParityError (report attached) on any failure."""
    tol = tolerances or Tolerances()
    entries = _load_manifest(manifest)
    base = manifest.parent
    images, labels = data.load(data.Split.TEST, data_dir=data_dir, limit=limit)
    results: list[ArtifactResult] = []
    keras_cache: dict[str, tuple[np.ndarray, float] | str] = {}
    inputs: dict[bool, np.ndarray] = {}
    for entry in entries:
        src = entry.get("source", {})
        res = ArtifactResult(
            entry.get("path", "?"), entry.get("format", "?"), entry.get("quantization", "?"),
            src.get("path", "?"), int(entry.get("bytes", 0)),
        )  # fmt: skip
        results.append(res)
        path = base / res.path
        if not path.is_file():
            res.status = "missing"
            res.problems.append("file is missing")
            continue
        if sha256(path) != entry.get("sha256"):
            res.status = "modified"
            res.problems.append("SHA-256 differs from the manifest: the file changed after export")
            continue
        deskew = bool(entry.get("preprocessing", {}).get("deskew", False))
        if deskew not in inputs:  # once per preprocessing, not once per artifact
            inputs[deskew] = preprocess.model_input(images, deskew)
        x = inputs[deskew]
        ref = _keras_reference(base / src.get("path", ""), src.get("sha256"), x, labels, keras_cache, deskew)
        if isinstance(ref, str):
            res.status = "error"
            res.problems.append(ref)
            continue
        keras_probs, keras_acc = ref
        try:
            predictor = runtime.load(path)
            probs = predictor.predict(x)
        except ArtifactError as exc:
            res.status = "error"
            res.problems.append(str(exc))
            continue
        res.keras_accuracy = keras_acc
        first, _, second, _ = runtime.top2(probs)
        keras_first, _, keras_second, _ = runtime.top2(keras_probs)
        res.accuracy = float((first == labels).mean())
        res.delta_points = round(100 * (res.accuracy - keras_acc), 4)
        res.agreement = float((first == keras_first).mean())
        res.second_agreement = float((second == keras_second).mean())
        res.max_abs_diff = float(np.abs(probs - keras_probs).max())
        b1, b256 = defaults.LATENCY_BATCH_SIZES
        res.latency_ms_batch1 = measure_latency(predictor, x, b1, latency_repeats * 5)
        res.latency_ms_batch256 = measure_latency(predictor, x, b256, latency_repeats)
        _check(res, res.quantization, tol)
        if res.problems:
            res.status = "failed"
    report = ParityReport(manifest, len(labels), results, tol)
    if write:
        report.json_path, report.md_path = _write(report)
    if report.failures:
        raise ParityError(
            f"{len(report.failures)} parity failure(s): " + "; ".join(report.failures),
            report.failures,
            report,
        )
    return report


def _keras_reference(
    path: Path, expected_sha: str | None, x: np.ndarray, labels: np.ndarray,
    cache: dict[str, tuple[np.ndarray, float] | str], deskew: bool,
) -> tuple[np.ndarray, float] | str:  # fmt: skip
    """Keras probabilities and accuracy for a source model, once per model; a str is a problem."""
    key = f"{path.resolve()}|{deskew}"
    if key not in cache:
        if not path.is_file():
            cache[key] = f"source model {path} is missing"
        elif expected_sha and sha256(path) != expected_sha:
            cache[key] = f"source model {path} changed after export (SHA-256 differs)"
        else:
            try:
                probs = runtime.load(path).predict(x)
                cache[key] = (probs, float((probs.argmax(axis=1) == labels).mean()))
            except ArtifactError as exc:
                cache[key] = str(exc)
    return cache[key]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(report: ParityReport) -> list[list[str]]:
    """One row per artifact, shared by the CLI table and parity.md."""
    return [
        [
            r.path, r.quantization, f"{r.bytes / 1024:.0f} KiB",
            _fmt(r.accuracy, ".2%"), _fmt(r.delta_points, "+.2f"), _fmt(r.agreement, ".2%"),
            _fmt(r.second_agreement, ".2%"), _fmt(r.max_abs_diff, ".4f"),
            _fmt(r.latency_ms_batch1, ".3f"), _fmt(r.latency_ms_batch256, ".2f"),
            r.status,
        ]
        for r in report.results
    ]  # fmt: skip


HEADERS = [
    "artifact",
    "quant",
    "size",
    "accuracy",
    "Δ points",
    "agreement",
    "2nd agreement",
    "max |Δp|",
    "ms @1",
    "ms @256",
    "status",
]


def _write(report: ParityReport) -> tuple[Path, Path]:
    base = report.manifest.parent
    json_path, md_path = base / "parity.json", base / "parity.md"
    write_json(
        json_path,
        {
            "manifest": report.manifest.name,
            "test_images": report.images,
            "tolerances": asdict(report.tolerances),
            "passed": not report.failures,
            "results": [asdict(r) for r in report.results],
        },
    )
    lines = [
        f"# Parity report ({report.images} test images)",
        "",
        f"Limits: float32/float16 agreement >= {report.tolerances.float_min_agreement:.2%} and "
        f"|Δ| <= {report.tolerances.float_max_delta} points; dynamic/int8 |Δ| <= "
        f"{report.tolerances.quant_max_delta} points. Latency: median ms per call on this machine.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(row) + " |" for row in table_rows(report)),
        "",
        "Result: " + ("**passed**" if not report.failures else "**failed**"),
        *(f"- {f}" for f in report.failures),
        "",
    ]
    with atomic_open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return json_path, md_path
