"""The one reader and writer of `manifest.json` and `parity.json`, and the answers drawn from them.

Export records each artifact here, verify reads the entries and writes the parity report here,
classify and the benchmarks choose the default model here, the report builds the results table from
what this module reads, and every stage asks this module which preprocessing an artifact expects.
No other module parses those files, so a corrupt or foreign manifest is the same one clear line
(`ManifestError`) wherever it is met.

The preprocessing question is answered from the artifact's own metadata first (what export wrote
into the ONNX `metadata_props` or the TFLite "pipeline" metadata buffer), so a model file copied
away from its manifest keeps its setting; then from the manifest entry beside it; then, for a
`.keras` file, from its run's config.json. Reading that metadata needs neither onnx nor TensorFlow:
classify must stay light.

Where things live: the release models ship inside the package (`pipeline/release/` in an installed
wheel, `exported/` in a checkout), and are read-only by convention; a user's own exports go to
`./exports` and reports about the release go to `./release-reports`, never over shipped files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import __version__, defaults
from pipeline.errors import ManifestError
from pipeline.files import atomic_open, sha256, sidecar_json, write_json
from pipeline.formats import Format, Quantization, format_of

PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"


# --- typed entries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceModel:
    """The Keras model an artifact was exported from, as the manifest records it."""

    model: str
    path: str  # relative to the manifest's folder
    sha256: str | None
    test_accuracy: float | None
    parameters: int | None
    training: dict[str, Any]


@dataclass(frozen=True)
class ArtifactEntry:
    """One exported file, as recorded; `record` keeps every field export wrote (`raw`)."""

    path: str  # relative to the manifest's folder
    format: Format
    quantization: Quantization
    sha256: str | None
    bytes: int
    deskew: bool
    source: SourceModel
    raw: dict[str, Any] = field(repr=False, compare=False)
    # a microcontroller artifact's C files, arena, operators and MACs (export --micro), else None
    micro: dict[str, Any] | None = None

    @classmethod
    def parse(cls, item: Any, where: Path) -> ArtifactEntry:
        """An entry from its JSON, or ManifestError naming what is wrong."""
        try:
            if not isinstance(item, dict):
                raise TypeError("an artifact entry is not an object")
            src = item.get("source") or {}
            if not isinstance(src, dict):
                raise TypeError("source is not an object")
            prep = item.get("preprocessing") or {}
            return cls(
                path=str(item["path"]),
                format=Format(item["format"]),
                quantization=Quantization(item["quantization"]),
                sha256=item.get("sha256"),
                bytes=int(item.get("bytes", 0)),
                deskew=bool(prep.get("deskew", False)) if isinstance(prep, dict) else False,
                source=SourceModel(
                    model=str(src.get("model", "?")),
                    path=str(src.get("path", "")),
                    sha256=src.get("sha256"),
                    test_accuracy=src.get("test_accuracy"),
                    parameters=src.get("parameters"),
                    training=dict(src.get("training") or {}),
                ),
                raw=item,
                micro=dict(item["micro"]) if item.get("micro") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: not a pipeline manifest (bad artifact entry: {exc})") from None


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: tuple[ArtifactEntry, ...]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def file(self, entry: ArtifactEntry) -> Path:
        return self.folder / entry.path

    def entry(self, name: str) -> ArtifactEntry | None:
        return next((e for e in self.entries if e.path == name), None)


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the {what} ({exc})") from None
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON, so not a usable {what} ({exc})") from None


def read(path: Path, missing_ok: bool = False) -> Manifest:
    """The manifest at `path`; a missing one is empty when `missing_ok`, else ManifestError."""
    if not path.is_file():
        if missing_ok and not path.exists():
            return Manifest(path, ())
        raise ManifestError(f"{path}: manifest not found; run `pipeline export` first")
    loaded = _load_json(path, "manifest")
    if not isinstance(loaded, dict) or not isinstance(loaded.get("artifacts"), list):
        raise ManifestError(f"{path}: not a pipeline manifest (no list of artifacts)")
    return Manifest(path, tuple(ArtifactEntry.parse(item, path) for item in loaded["artifacts"]))


def record(path: Path, entry: dict[str, Any]) -> None:
    """Replace the entry for entry['path'] where it stands, or add it at the end, then rewrite the
    manifest atomically (a re-exported file keeps its place: the release's diff is its entry)."""
    current = read(path, missing_ok=True)
    ArtifactEntry.parse(entry, path)  # what is written can be read back
    entries = [entry if e.path == entry["path"] else e.raw for e in current.entries]
    if all(e.path != entry["path"] for e in current.entries):
        entries.append(entry)
    write_json(path, {"pipeline_version": __version__, "artifacts": entries})


# --- the parity report --------------------------------------------------------------------------


def read_parity(folder: Path) -> dict[str, dict[str, Any]]:
    """parity.json's results by artifact path; {} when verify has not written one there."""
    path = folder / PARITY_JSON
    if not path.is_file():
        return {}
    loaded = _load_json(path, "parity report")
    results = loaded.get("results") if isinstance(loaded, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) and "path" in r for r in results):
        raise ManifestError(f"{path}: not a pipeline parity report (no list of results)")
    return {str(r["path"]): r for r in results}


def write_parity(folder: Path, report: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write parity.json and parity.md into `folder`, each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / PARITY_JSON, folder / PARITY_MD
    write_json(json_path, report)
    with atomic_open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown)
    return json_path, md_path


# --- where models live --------------------------------------------------------------------------


def release_dir() -> Path | None:
    """The shipped release: `pipeline/release/` in an installed package, `exported/` in a checkout."""
    package = Path(__file__).resolve().parent
    candidates = [package / "release"]
    if (package.parent / "pyproject.toml").is_file():  # a source checkout (editable install)
        candidates.append(package.parent / "exported")
    return next((c for c in candidates if (c / defaults.MANIFEST_NAME).is_file()), None)


def is_release(path: Path) -> bool:
    """Whether `path` is a shipped release file (or the release folder itself)."""
    release = release_dir()
    if release is None:
        return False
    target = path.resolve()
    return target == release or release in target.parents


def is_installed_release(path: Path) -> bool:
    """Whether `path` is the release folder inside an installed package (never written to)."""
    return path.resolve() == (Path(__file__).resolve().parent / "release")


def report_dir(about: Path, given: Path | None) -> Path:
    """Where reports about `about` (a manifest or a model) go: `given`, else beside it, except for
    the shipped release, whose files are never overwritten: then ./release-reports."""
    if given is not None:
        return given
    return defaults.RELEASE_REPORT_DIR if is_release(about) else about.parent


def find_manifests() -> list[Path]:
    """Manifests that hold models to use, in order: the user's own exports, then the release."""
    release = release_dir()
    found = [defaults.EXPORT_DIR / defaults.MANIFEST_NAME]
    if release is not None:
        found.append(release / defaults.MANIFEST_NAME)
    return [m for m in found if m.is_file()]


def default_manifest() -> Path:
    """The manifest `pipeline verify` and `bench artifacts` take without --manifest."""
    found = find_manifests()
    if not found:
        raise ManifestError(
            f"no {defaults.EXPORT_DIR / defaults.MANIFEST_NAME} and no release models installed; "
            "pass --manifest"
        )
    return found[0]


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    deskew: bool


def choose_model(model: Path | None) -> ModelChoice:
    """`--model` as given, else the most accurate int8 ONNX of the first manifest that lists one
    (./exports/manifest.json, then the release's).

    Accuracy comes from parity.json (measured on the artifact itself) when verify has run, else
    from the source model's test accuracy.
    """
    if model is not None:
        if not model.is_file():
            raise ManifestError(f"{model}: no such model file")
        format_of(model)
        return ModelChoice(model, expected_deskew(model))
    for path in find_manifests():  # the user's own exports win over the release
        manifest = read(path)
        parity = read_parity(manifest.folder)
        candidates = []
        for entry in manifest.entries:
            if entry.format is Format.ONNX and entry.quantization is Quantization.INT8:
                file = manifest.file(entry)
                if file.is_file():
                    measured = parity.get(entry.path, {}).get("accuracy")
                    accuracy = measured if measured is not None else entry.source.test_accuracy or 0.0
                    candidates.append((float(accuracy), file))
        if candidates:
            best = max(candidates, key=lambda c: c[0])[1]
            return ModelChoice(best, expected_deskew(best))
    raise ManifestError(
        f"no --model given and no int8 ONNX model in {defaults.EXPORT_DIR / defaults.MANIFEST_NAME} "
        "or the installed release"
    )


# --- the preprocessing an artifact expects ------------------------------------------------------


def expected_deskew(path: Path) -> bool:
    """Whether `path` expects deskewed digits: its own metadata, else its manifest entry, else (a
    .keras file) its run's config.json or metrics.json, else no."""
    own = artifact_metadata(path).get("preprocessing")
    if own is not None:
        try:
            described = json.loads(own)
        except ValueError:
            described = None
        if isinstance(described, dict) and "deskew" in described:
            return bool(described["deskew"])
    beside = path.parent / defaults.MANIFEST_NAME
    if beside.is_file():
        entry = read(beside).entry(path.name)
        if entry is not None:
            return entry.deskew
    if format_of(path) is Format.KERAS:
        metrics = sidecar_json(path, "metrics.json")
        return bool(sidecar_json(path, "config.json").get("deskew", metrics.get("deskew", False)))
    return False


def source_sha256(path: Path) -> str | None:
    """The SHA-256 of the Keras file an artifact was exported from (written into it by export),
    or of the file itself for a Keras model; None where neither is known."""
    if format_of(path) is Format.KERAS:
        return sha256(path) if path.is_file() else None
    return artifact_metadata(path).get("source_sha256")


def artifact_metadata(path: Path) -> dict[str, str]:
    """The key/value metadata export wrote into an ONNX or TFLite file ({} for others or none)."""
    try:
        fmt = format_of(path)
        if fmt is Format.ONNX:
            return _onnx_metadata_props(path.read_bytes())
        if fmt is Format.TFLITE:
            return _tflite_pipeline_metadata(path.read_bytes())
    except OSError:
        return {}
    return {}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of one protobuf message (number, bytes); others are skipped."""
    out, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            out.append((number, buf[pos : pos + size]))
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


# ONNX ModelProto field numbers: metadata_props = 14; StringStringEntryProto key = 1, value = 2.
_ONNX_METADATA_PROPS, _KEY, _VALUE = 14, 1, 2


def _onnx_metadata_props(model: bytes) -> dict[str, str]:
    """ModelProto.metadata_props read straight from the protobuf wire format: the graph is
    skipped over, not parsed, and neither onnx nor onnxruntime is needed."""
    try:
        props = {}
        for number, payload in _fields(model):
            if number == _ONNX_METADATA_PROPS:
                pair = dict(_fields(payload))
                props[pair.get(_KEY, b"").decode()] = pair.get(_VALUE, b"").decode()
        return props
    except (ValueError, UnicodeDecodeError):
        return {}


def _tflite_pipeline_metadata(model: bytes) -> dict[str, str]:
    """The JSON object export appends as the TFLite model's "pipeline" metadata buffer.

    It is found by its opening bytes (export writes it with "labels" first) and decoded as JSON up
    to its end; the flatbuffer's weights cannot hold a valid JSON object of that shape by chance.
    """
    start = model.rfind(b'{"labels": ')
    if start < 0:
        return {}
    try:
        found, _ = json.JSONDecoder().raw_decode(model[start:].decode("utf-8", errors="replace"))
    except ValueError:
        return {}
    if not isinstance(found, dict) or "preprocessing" not in found:
        return {}
    return {str(k): str(v) for k, v in found.items()}
