"""The manifest module: one reader of manifest.json and parity.json, the default model, and the
preprocessing an artifact expects (its own metadata first), with every bad file one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import one_clear_line, run_cli
from PIL import Image

from pipeline import manifest, runtime
from pipeline.errors import ArtifactError, ManifestError
from pipeline.formats import EXPORT_FORMATS, FORMATS, Format, Quantization, format_of, is_lossy

RELEASE = manifest.release_dir()
needs_release = pytest.mark.skipif(RELEASE is None, reason="no release models in this checkout")


def _tiny_onnx(path: Path, deskew: bool | None) -> Path:
    """A real ONNX model (28x28 image -> 10 probabilities: mean-pooled softmax), with or without the
    preprocessing metadata export writes."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 28, 28, 1])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 784])
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [784, 10], np.random.default_rng(0).normal(size=7840).tolist()
    )
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["image", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [image],
        [probs],
        [shape, weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if deskew is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "preprocessing", json.dumps({"deskew": deskew})
    onnx.save(model, str(path))
    return path


def _digits(folder: Path, count: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.zeros((28, 28), np.uint8)
        image[6:22, 12 + i % 3 : 15 + i % 3] = 255
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def test_formats_table_is_complete() -> None:
    """Every format's suffix maps back to it; every loader and exporter the table names exists."""
    for fmt, spec in FORMATS.items():
        assert format_of(Path(f"model{spec.suffix.upper()}")) is fmt
        assert callable(getattr(runtime, spec.loader))
        assert spec.exportable == (spec.exporter is not None)
    assert EXPORT_FORMATS == (Format.ONNX, Format.TFLITE)
    assert [q for q in Quantization if is_lossy(q)] == [Quantization.DYNAMIC, Quantization.INT8]
    with pytest.raises(ArtifactError, match="unknown artifact type"):
        format_of(Path("model.pt"))


def test_onnx_metadata_is_read_without_onnx(tmp_path: Path) -> None:
    """The hand-rolled protobuf reader returns what onnx itself reads, on a model of ours."""
    onnx = pytest.importorskip("onnx")
    model = _tiny_onnx(tmp_path / "m.onnx", deskew=True)
    expected = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert manifest.artifact_metadata(model) == expected
    assert manifest.expected_deskew(model) is True
    assert manifest.artifact_metadata(_tiny_onnx(tmp_path / "plain.onnx", deskew=None)) == {}


@needs_release
def test_release_metadata_matches_its_manifest() -> None:
    """Every shipped ONNX and TFLite file names its source model's SHA-256 in its own metadata."""
    assert RELEASE is not None
    release = manifest.read(RELEASE / "manifest.json")
    assert release.entries
    for entry in release.entries:
        own = manifest.artifact_metadata(release.file(entry))
        assert own["source_sha256"] == entry.source.sha256, entry.path
        assert json.loads(own["preprocessing"])["deskew"] == entry.deskew


def test_copied_model_keeps_its_preprocessing(tmp_path: Path) -> None:
    """A model moved away from its manifest still says it wants deskewed digits; classify uses it."""
    (tmp_path / "alone").mkdir()
    model = _tiny_onnx(tmp_path / "alone" / "m.onnx", deskew=True)
    assert not (tmp_path / "alone" / "manifest.json").exists()
    assert manifest.choose_model(model).deskew is True


def test_corrupt_manifest_beside_a_model_with_metadata_is_not_needed(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "m.onnx", deskew=False)
    (tmp_path / "manifest.json").write_text("{not json")
    result = run_cli(
        "classify", str(_digits(tmp_path / "d")), "--out", str(tmp_path / "r.csv"), "--model", str(model)
    )
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 6


@pytest.mark.parametrize(
    "content, expect",
    [
        ("{not json", "not valid JSON"),
        ('{"foo": 1}', "not a pipeline manifest"),
        ("[1, 2]", "not a pipeline manifest"),
    ],
)
def test_bad_manifest_beside_a_foreign_model_is_one_line(tmp_path: Path, content: str, expect: str) -> None:
    model = _tiny_onnx(tmp_path / "m.onnx", deskew=None)  # no metadata: the manifest must answer
    (tmp_path / "manifest.json").write_text(content)
    result = run_cli(
        "classify", str(_digits(tmp_path / "d")), "--out", str(tmp_path / "r.csv"), "--model", str(model)
    )
    one_clear_line(result, expect)
    assert result.returncode == ManifestError.exit_code
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize(
    "content, expect",
    [
        ("{not json", "not valid JSON"),
        ('{"artifacts": {"a": 1}}', "not a pipeline manifest"),
        (
            '{"artifacts": [{"path": "x.onnx", "format": "coreml", "quantization": "none"}]}',
            "bad artifact entry",
        ),
    ],
)
def test_foreign_manifests_are_one_line_everywhere(tmp_path: Path, content: str, expect: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    for args in (
        ["verify", "--manifest", str(tmp_path / "manifest.json")],
        ["bench", "artifacts", "--manifest", str(tmp_path / "manifest.json")],
    ):
        result = run_cli(*args)
        one_clear_line(result, expect)
        assert result.returncode == ManifestError.exit_code


def test_user_exports_win_and_parity_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default model: ./exports first, its most accurate int8 ONNX by parity.json when present."""
    exports = tmp_path / "exports"
    exports.mkdir()
    for name in ("a.int8.onnx", "b.int8.onnx"):
        _tiny_onnx(exports / name, deskew=False)
    for name, acc in (("a.int8.onnx", 0.99), ("b.int8.onnx", 0.98)):
        manifest.record(
            exports / "manifest.json",
            {"path": name, "format": "onnx", "quantization": "int8", "source": {"test_accuracy": acc}},
        )
    monkeypatch.chdir(tmp_path)
    assert manifest.choose_model(None).path.name == "a.int8.onnx"
    (exports / "parity.json").write_text(
        json.dumps({"results": [{"path": "b.int8.onnx", "accuracy": 0.999}]})
    )
    assert manifest.choose_model(None).path.name == "b.int8.onnx"
    (exports / "parity.json").write_text('{"results": 3}')
    with pytest.raises(ManifestError, match="not a pipeline parity report"):
        manifest.choose_model(None)


@needs_release
def test_release_reports_never_go_over_shipped_files(tmp_path: Path) -> None:
    assert RELEASE is not None
    assert manifest.report_dir(RELEASE / "manifest.json", None) == Path("release-reports")
    assert manifest.report_dir(RELEASE / "bncnn-x4.keras", None) == Path("release-reports")
    assert manifest.report_dir(RELEASE / "manifest.json", tmp_path) == tmp_path
    assert manifest.report_dir(tmp_path / "manifest.json", None) == tmp_path


@needs_release
@pytest.mark.slow
def test_verifying_the_release_leaves_it_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pipeline verify` in a checkout verifies the release and writes ./release-reports."""
    assert RELEASE is not None
    before = {p.name: p.read_bytes() for p in RELEASE.iterdir() if p.is_file()}
    result = run_cli("verify", "--limit", "200", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "release-reports" / "parity.json").is_file()
    assert (tmp_path / "release-reports" / "parity.md").is_file()
    assert {p.name: p.read_bytes() for p in RELEASE.iterdir() if p.is_file()} == before


def test_missing_runtime_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify without Keras installed: one line, before any work, saying what to install (the
    brackets of `pipeline[export]` survive the terminal's markup)."""
    import importlib.util

    from typer.testing import CliRunner

    from pipeline.cli import app

    model = _tiny_onnx(tmp_path / "m.onnx", deskew=False)
    manifest.record(
        tmp_path / "manifest.json", {"path": model.name, "format": "onnx", "quantization": "none"}
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "keras" else real(name, *a)
    )
    result = CliRunner().invoke(app, ["verify", "--manifest", str(tmp_path / "manifest.json")])
    assert result.exit_code == ArtifactError.exit_code
    assert "running .keras files needs keras: pip install 'pipeline[export]'" in result.output
    assert not (tmp_path / "parity.json").exists()


def test_a_re_recorded_artifact_keeps_its_place(tmp_path: Path) -> None:
    """Re-exporting one file of a release replaces its entry where it stands; a new one goes last."""
    path = tmp_path / "manifest.json"
    for name in ("a.int8.onnx", "b.int8.onnx", "c.int8.onnx"):
        manifest.record(path, {"path": name, "format": "onnx", "quantization": "int8", "bytes": 1})
    manifest.record(path, {"path": "a.int8.onnx", "format": "onnx", "quantization": "int8", "bytes": 2})
    manifest.record(path, {"path": "d.int8.onnx", "format": "onnx", "quantization": "int8", "bytes": 1})
    entries = json.loads(path.read_text())["artifacts"]
    assert [(e["path"], e["bytes"]) for e in entries] == [
        ("a.int8.onnx", 2), ("b.int8.onnx", 1), ("c.int8.onnx", 1), ("d.int8.onnx", 1)
    ]  # fmt: skip
