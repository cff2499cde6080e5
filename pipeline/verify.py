"""Accuracy parity between each Keras model and every artifact exported from it.

Verification is separate from export (as in Hugging Face optimum): it reads only the manifest
and the files, so it proves what was shipped, not what the exporter believed it wrote. It checks
integrity first (every file present, SHA-256 as recorded, source model unchanged), then runs every
artifact over the whole test set beside its Keras model, collects every failure, writes
`parity.json` and `parity.md` (beside the manifest, or for the shipped release into
./release-reports, never over shipped files), and raises one ParityError listing them all.
Which rule applies to an artifact is the formats table's (`formats.is_lossy`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import calibration, data, defaults, manifest, preprocess, review, runtime
from pipeline.carray import c_array_bytes
from pipeline.classify import screen
from pipeline.errors import ArtifactError, ParityError
from pipeline.files import sha256
from pipeline.formats import FORMATS, Format, is_lossy


@dataclass(frozen=True)
class Tolerances:
    """Verify's limits; defaults in pipeline.defaults."""

    float_min_agreement: float = defaults.FLOAT_MIN_AGREEMENT
    float_max_delta: float = defaults.FLOAT_MAX_ACCURACY_DELTA  # percentage points
    quant_max_delta: float = defaults.QUANT_MAX_ACCURACY_DELTA  # percentage points
    review_min_agreement: float = defaults.REVIEW_MIN_AGREEMENT  # "not a digit": artifact vs Keras


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
    # for an artifact with a features output that the release's review was fitted on: the share
    # of test images given the same "not a digit" flag as from Keras' features (a limit), and
    # the features' mean relative difference from Keras'
    review_agreement: float | None = None
    features_rel_diff: float | None = None
    # expected calibration error of the top-1 confidence (reported beside Keras', not a limit)
    ece: float | None = None
    keras_ece: float | None = None
    latency_ms_batch1: float | None = None
    latency_ms_batch256: float | None = None
    # the runtime it ran in: LiteRT or onnxruntime (or Keras), and TensorFlow Lite Micro for a
    # microcontroller artifact, with the smallest tensor arena that interpreter ran it in
    runtime: str = ""
    arena_bytes: int | None = None
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
    if result.review_agreement is not None and result.review_agreement < tol.review_min_agreement:
        result.problems.append(
            f"'not a digit' flag agreement {result.review_agreement:.4%} below {tol.review_min_agreement:.2%}"
        )
    if is_lossy(kind):
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


def verify(
    manifest_path: Path | None = None,
    tolerances: Tolerances | None = None,
    data_dir: Path | None = None,
    limit: int | None = None,
    latency_repeats: int = defaults.LATENCY_REPEATS,
    write: bool = True,
    report_dir: Path | None = None,
) -> ParityReport:
    """Verify every artifact of the manifest (default: the user's exports, else the release);
    raises ParityError (report attached) on any failure."""
    tol = tolerances or Tolerances()
    path = manifest_path if manifest_path is not None else manifest.default_manifest()
    recorded = manifest.read(path)
    if not recorded.entries:
        raise ParityError(f"{path}: the manifest lists no artifacts")
    for fmt in sorted({Format.KERAS, *(e.format for e in recorded.entries)}):
        runtime.require(fmt)  # before any work: the whole report needs every runtime
    if any(e.micro for e in recorded.entries):
        runtime.require_micro()
    base = recorded.folder
    images, labels = data.load(data.Split.TEST, data_dir=data_dir, limit=limit)
    results: list[ArtifactResult] = []
    keras_cache: dict[str, _Reference | str] = {}
    checker = _release_review()
    inputs: dict[bool, np.ndarray] = {}
    screened: list[tuple[ArtifactResult, screen.Source, np.ndarray, _Reference, str | None]] = []
    for entry in recorded.entries:
        res = ArtifactResult(
            entry.path, entry.format.value, entry.quantization.value, entry.source.path or "?", entry.bytes
        )
        results.append(res)
        file = recorded.file(entry)
        if not file.is_file():
            res.status = "missing"
            res.problems.append("file is missing")
            continue
        if sha256(file) != entry.sha256:
            res.status = "modified"
            res.problems.append("SHA-256 differs from the manifest: the file changed after export")
            continue
        deskew = manifest.expected_deskew(file)
        if deskew not in inputs:  # once per preprocessing, not once per artifact
            inputs[deskew] = preprocess.model_input(images, deskew)
        x = inputs[deskew]
        ref = _keras_reference(base / entry.source.path, entry.source.sha256, x, labels, keras_cache, deskew)
        if isinstance(ref, str):
            res.status = "error"
            res.problems.append(ref)
            continue
        try:
            if entry.micro:
                _check_c_files(res, recorded.folder, file, entry.micro)
                micro = runtime.load_micro(file)
                res.runtime, res.arena_bytes = "tflite-micro", micro.arena_bytes
                predictor: runtime.Predictor = micro
            else:
                predictor = runtime.load(file)
                res.runtime = FORMATS[entry.format].runtime
        except ArtifactError as exc:
            res.status = "error"
            res.problems.append(str(exc))
            continue
        batched = not entry.micro  # a microcontroller classifies one image at a time
        _measure(res, predictor, x, labels, ref, checker, entry.source.sha256, tol, latency_repeats, batched)
        source = screen.source_for(file, checker.for_model(entry.source.sha256) if checker else None)
        if source.screen is not None and batched:
            row = ArtifactResult(
                f"{entry.path} screened by {source.screen.name}", entry.format.value,
                entry.quantization.value, res.source, entry.bytes + source.screen.stat().st_size,
                runtime=f"{res.runtime}, screened",
            )  # fmt: skip
            screened.append((row, source, x, ref, entry.source.sha256))
    for row, source, x, ref, source_sha in screened:  # after the files they are made of
        results.append(row)
        try:
            predictor = screen.load(source)
        except ArtifactError as exc:
            row.status = "error"
            row.problems.append(str(exc))
            continue
        _measure(row, predictor, x, labels, ref, checker, source_sha, tol, latency_repeats, True)
    report = ParityReport(path, len(labels), results, tol)
    if write:
        report.json_path, report.md_path = _write(report, manifest.report_dir(path, report_dir))
    if report.failures:
        raise ParityError(
            f"{len(report.failures)} parity failure(s): " + "; ".join(report.failures),
            report.failures,
            report,
        )
    return report


def _measure(
    res: ArtifactResult, predictor: runtime.Predictor, x: np.ndarray, labels: np.ndarray, ref: _Reference,
    checker: review.ReviewModel | None, source_sha: str | None, tol: Tolerances, latency_repeats: int,
    batched: bool,
) -> None:  # fmt: skip
    """Run `predictor` over the test set beside its Keras model's answers (`ref`) and fill `res`:
    accuracy, agreement, calibration, the review's flag, latency; then the limits. `batched`:
    also time batches of 256."""
    keras_probs, keras_features, keras_acc = ref
    try:
        probs, features = predictor.run(x)
    except ArtifactError as exc:
        res.status = "error"
        res.problems.append(str(exc))
        return
    res.keras_accuracy = keras_acc
    first, _, second, _ = runtime.top2(probs)
    keras_first, _, keras_second, _ = runtime.top2(keras_probs)
    res.accuracy = float((first == labels).mean())
    res.delta_points = round(100 * (res.accuracy - keras_acc), 4)
    res.agreement = float((first == keras_first).mean())
    res.second_agreement = float((second == keras_second).mean())
    res.max_abs_diff = float(np.abs(probs - keras_probs).max())
    res.ece = round(calibration.ece(probs, labels), 5)
    _review_parity(res, checker, source_sha, probs, features, keras_probs, keras_features)
    res.keras_ece = round(calibration.ece(keras_probs, labels), 5)
    b1, b256 = defaults.LATENCY_BATCH_SIZES
    res.latency_ms_batch1 = measure_latency(predictor, x, b1, latency_repeats * 5)
    if batched:
        res.latency_ms_batch256 = measure_latency(predictor, x, b256, latency_repeats)
    _check(res, res.quantization, tol)
    if res.problems:
        res.status = "failed"


def _release_review() -> review.ReviewModel | None:
    """The review model shipped with the release, if there is one (its feature evidence is
    checked on the artifacts of the model it was fitted on)."""
    from pipeline.classify import review_model_path

    try:
        return review.load(review_model_path())
    except review.ReviewError:  # no release, or no review model in it
        return None


def _check_c_files(res: ArtifactResult, folder: Path, model: Path, micro: dict[str, Any]) -> None:
    """The C source and header are as exported, and the array in the source is the model's bytes:
    what firmware links is what this report measured."""
    for key in ("c_source", "header"):
        name = str(micro.get(key, ""))
        if not (folder / name).is_file():
            res.problems.append(f"{name or key}: file is missing")
        elif sha256(folder / name) != micro.get(f"{key}_sha256"):
            res.problems.append(f"{name}: SHA-256 differs from the manifest")
    source = folder / str(micro.get("c_source", ""))
    if source.is_file() and c_array_bytes(source.read_text()) != model.read_bytes():
        res.problems.append(f"{source.name}: its array is not the model's bytes")


def _keras_reference(
    path: Path, expected_sha: str | None, x: np.ndarray, labels: np.ndarray,
    cache: dict[str, _Reference | str], deskew: bool,
) -> _Reference | str:  # fmt: skip
    """Keras probabilities, features and accuracy for a source model, once per model; a str is
    a problem."""
    key = f"{path.resolve()}|{deskew}"
    if key not in cache:
        if not path.is_file():
            cache[key] = f"source model {path} is missing"
        elif expected_sha and sha256(path) != expected_sha:
            cache[key] = f"source model {path} changed after export (SHA-256 differs)"
        else:
            try:
                probs, features = runtime.load(path).run(x)
                cache[key] = (probs, features, float((probs.argmax(axis=1) == labels).mean()))
            except ArtifactError as exc:
                cache[key] = str(exc)
    return cache[key]


_Reference = tuple[np.ndarray, np.ndarray | None, float]


def _review_parity(
    res: ArtifactResult, checker: review.ReviewModel | None, source_sha: str | None, probs: np.ndarray,
    features: np.ndarray | None, keras_probs: np.ndarray, keras_features: np.ndarray | None,
) -> None:  # fmt: skip
    """The "not a digit" flag from the artifact's features against the flag from Keras', where
    the release's review was fitted on this model's features (`review.ReviewModel.for_model`)."""
    if checker is None or features is None or keras_features is None:
        return
    fitted = checker.for_model(source_sha)
    if not fitted.uses_features(features):
        return
    mine = fitted.feature_ratios(features, probs.argmax(axis=1)) > 1
    theirs = fitted.feature_ratios(keras_features, keras_probs.argmax(axis=1)) > 1
    res.review_agreement = float((mine == theirs).mean())
    # a screened run's features: the model's (NaN where the screen answered alone), then the screen's
    own = features[:, : keras_features.shape[1]]
    seen = ~np.isnan(own[:, 0])
    if seen.any():
        diff = np.abs(own[seen] - keras_features[seen]).mean()
        res.features_rel_diff = float(diff / np.abs(keras_features[seen]).mean())


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(report: ParityReport) -> list[list[str]]:
    """One row per artifact, shared by the CLI table and parity.md."""
    return [
        [
            r.path, r.quantization, f"{r.bytes / 1024:.0f} KiB",
            _fmt(r.accuracy, ".2%"), _fmt(r.delta_points, "+.2f"), _fmt(r.agreement, ".2%"),
            _fmt(r.second_agreement, ".2%"), _fmt(r.max_abs_diff, ".4f"), _fmt(r.ece, ".4f"),
            _fmt(r.review_agreement, ".2%"),
            _fmt(r.latency_ms_batch1, ".3f"), _fmt(r.latency_ms_batch256, ".2f"),
            r.runtime + ("" if r.arena_bytes is None else f", arena {r.arena_bytes:,} B"), r.status,
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
    "ECE",
    "not-a-digit agreement",
    "ms @1",
    "ms @256",
    "runtime",
    "status",
]


def _write(report: ParityReport, folder: Path) -> tuple[Path, Path]:
    payload = {
        "manifest": str(report.manifest.resolve()) if folder.resolve() != report.manifest.parent.resolve()
        else report.manifest.name,
        "test_images": report.images,
        "tolerances": asdict(report.tolerances),
        "passed": not report.failures,
        "results": [asdict(r) for r in report.results],
    }  # fmt: skip
    lines = [
        f"# Parity report ({report.images} test images)",
        "",
        f"Limits: float32/float16 agreement >= {report.tolerances.float_min_agreement:.2%} and "
        f"|Δ| <= {report.tolerances.float_max_delta} points; dynamic/int8 |Δ| <= "
        f"{report.tolerances.quant_max_delta} points; the review's 'not a digit' flag from an artifact's "
        f"features the same as from Keras' on >= {report.tolerances.review_min_agreement:.2%} of the images. "
        "Latency: median ms per call on this machine.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(row) + " |" for row in table_rows(report)),
        "",
        "Result: " + ("**passed**" if not report.failures else "**failed**"),
        *(f"- {f}" for f in report.failures),
        "",
    ]
    return manifest.write_parity(folder, payload, "\n".join(lines))
