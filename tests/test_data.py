"""IDX parsing, dataset lookup order, checksums and the samples writer, on slices of real MNIST."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline import data, defaults
from pipeline.errors import DataError


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0803 if array.ndim == 3 else 0x0801
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _write_dataset(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        for stem, arr in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            raw = _idx_bytes(arr)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
    return folder


def test_full_mnist_matches_its_readme(mnist: data.Location) -> None:
    x, y = data.load("train", location=mnist)
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert round(float(x.mean()), 4) == 33.3184
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.checksum.startswith("verified")


@pytest.mark.parametrize("gz", [True, False])
def test_parse_roundtrip_raw_and_gzip(
    tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray], gz: bool
) -> None:
    images, labels = test_digits[0][:50], test_digits[1][:50]
    folder = _write_dataset(tmp_path / "mnist", images, labels, gz=gz)
    x, y = data.load("test", data_dir=folder)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def _corrupt_variants(good: bytes) -> dict[str, bytes]:
    return {
        "bad magic": b"\x00\x00\x09\x03" + good[4:],
        "truncated data": good[:-100],
        "trailing bytes": good + b"\x00" * 7,
        "header truncated": good[:10],
        "tiny": good[:3],
        "html page": b"<html><body>404 Not Found</body></html>",
        "huge side": struct.pack(">IIII", 0x0803, 1, 100000, 28),
    }


@pytest.mark.parametrize("case", list(_corrupt_variants(b"\x00" * 20)))
def test_malformed_idx_is_one_clear_error(
    tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray], case: str
) -> None:
    good = _idx_bytes(test_digits[0][:5])
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_corrupt_variants(good)[case])
    with pytest.raises(DataError, match=str(path)):
        data.parse_idx(path)


def test_truncated_gzip_is_one_clear_error(
    tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    packed = gzip.compress(_idx_bytes(test_digits[0][:200]))
    path = tmp_path / "images.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="gzip"):
        data.parse_idx(path)


def test_images_and_labels_must_agree(tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]) -> None:
    folder = _write_dataset(tmp_path / "mnist", test_digits[0][:10], test_digits[1][:10])
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(test_digits[1][:9])))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        data.load("test", data_dir=folder)


def test_search_order_data_dir_then_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    first = _write_dataset(tmp_path / "a" / "mnist", test_digits[0][:10], test_digits[1][:10])
    second = _write_dataset(tmp_path / "b" / "mnist", test_digits[0][:20], test_digits[1][:20])
    monkeypatch.setenv(defaults.DATA_DIR_ENV, str(tmp_path / "b"))
    assert data.locate("mnist").source == second.resolve()
    assert data.locate("mnist", data_dir=tmp_path / "a").source == first.resolve()
    paths = data.search_paths(data.Dataset.MNIST, tmp_path / "a")
    assert paths[0] == tmp_path / "a" / "mnist" and paths[2] == tmp_path / "b" / "mnist"


def test_checksum_mismatch_is_refused(tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]) -> None:
    folder = _write_dataset(tmp_path / "mnist", test_digits[0][:10], test_digits[1][:10])
    (folder / "SHA256SUMS").write_text("0" * 64 + "  t10k-images-idx3-ubyte.gz\n")
    with pytest.raises(DataError, match="SHA-256 does not match"):
        data.locate("mnist", data_dir=folder)


def test_missing_dataset_names_every_place_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(defaults.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "_KERAS_CACHE", tmp_path / "keras")
    monkeypatch.setattr(defaults, "DATA_SEARCH_ROOTS", (Path("data"), tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        data.locate("mnist", data_dir=tmp_path / "given")
    message = str(err.value)
    for place in ("given", "nowhere", "keras"):
        assert place in message


def test_samples_write_labelled_pngs_and_scans(
    tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    from PIL import Image

    from pipeline.samples import write_samples

    write_samples(tmp_path / "m", 5, "mnist")
    first = sorted((tmp_path / "m").glob("*.png"))[0]
    np.testing.assert_array_equal(np.asarray(Image.open(first)), test_digits[0][0])
    assert first.name == f"00000_{test_digits[1][0]}.png"
    write_samples(tmp_path / "s", 3, "scan")
    scan = Image.open(sorted((tmp_path / "s").glob("*.jpg"))[0])
    assert scan.width > 28 and np.median(np.asarray(scan.convert("L"))) > 150  # light paper
    assert (tmp_path / "s" / "labels.csv").read_text().splitlines()[0] == "file,label"


def test_a_test_only_copy_is_found_for_benchmarks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Fashion-MNIST's test set is kept as `fashion-mnist-test` (a benchmark, no training split):
    `test_images` reads it where `load` would look for a whole data set."""
    folder = tmp_path / "fashion-mnist-test"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(test_digits[0][:7])))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(test_digits[1][:7])))
    monkeypatch.setenv(defaults.NO_DOWNLOAD_ENV, "1")
    monkeypatch.delenv(defaults.DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(data.test_images("fashion-mnist", data_dir=tmp_path), test_digits[0][:7])
    with pytest.raises(DataError):
        data.test_images("fashion-mnist", data_dir=tmp_path / "nowhere")
