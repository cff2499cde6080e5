"""Datasets: where they are found, whether they are intact, and how IDX files are parsed.

This is the only module that knows file names, search order and the IDX format, so train, verify,
evaluate and the tests all see the same arrays. Nothing here imports TensorFlow; Keras is touched
only as the last resort, to download a dataset where the network allows.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from pipeline import defaults
from pipeline.errors import DataError
from pipeline.files import sha256


class Dataset(StrEnum):
    """The datasets the pipeline knows: same IDX layout, 10 classes, 28x28 grayscale."""

    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"


def parse_dataset(name: Dataset | str) -> Dataset:
    """A dataset by name; an unknown name is a user error listing the known ones."""
    try:
        return Dataset(name)
    except ValueError:
        known = ", ".join(d.value for d in Dataset)
        raise DataError(f"unknown dataset {name!r}; choose one of: {known}") from None


class Split(StrEnum):
    TRAIN = "train"
    TEST = "test"


# IDX file stems per split; each may be stored raw or gzip-compressed (".gz").
_STEMS: dict[Split, tuple[str, str]] = {
    Split.TRAIN: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    Split.TEST: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic numbers: 0x00000803 (unsigned byte, 3 dims) and 0x00000801 (unsigned byte, 1 dim).
_MAGIC_IMAGES = 2051
_MAGIC_LABELS = 2049
# Keras' cache keeps MNIST as one .npz and Fashion-MNIST as the four .gz files in a folder.
_KERAS_CACHE = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
_KERAS_NPZ = {Dataset.MNIST: "mnist.npz"}

CLASS_NAMES: dict[Dataset, tuple[str, ...]] = {
    Dataset.MNIST: tuple(str(d) for d in range(10)),
    Dataset.FASHION_MNIST: (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Location:
    """Where a dataset was found and how its integrity was established."""

    dataset: Dataset
    source: Path  # a folder of IDX files, or a Keras .npz file
    kind: str  # "idx" or "npz"
    checksum: str  # "verified (4 files)", "no checksum file", ...
    searched: tuple[Path, ...] = field(default_factory=tuple)


def parse_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (raw or gzip) into a uint8 array, refusing anything malformed.

    The checks catch the failures seen in practice: a truncated download, an HTML error page saved
    under the file's name, a gzip stream cut short, a header that promises more data than exists.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    if len(raw) < 8:
        raise DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path}: header truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    if ndim == 3 and not all(0 < d <= defaults.IDX_MAX_IMAGE_SIDE for d in dims[1:]):
        raise DataError(f"{path}: implausible image size {dims[1]}x{dims[2]}")
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header promises {expected} bytes of data, found {actual}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_idx(folder: Path) -> bool:
    return all(_idx_file(folder, s) is not None for stems in _STEMS.values() for s in stems)


def _check_sums(folder: Path) -> str:
    """Check every file listed in SHA256SUMS; a mismatch is an error, a missing list is reported."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return "no checksum file"
    checked = 0
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        digest, name = parts[0].lower(), parts[1].lstrip("*")
        target = folder / name
        if not target.is_file():
            continue
        if sha256(target) != digest:
            raise DataError(f"{target}: SHA-256 does not match {sums}; the file is corrupt or altered")
        checked += 1
    return f"verified ({checked} files)"


def search_paths(dataset: Dataset, data_dir: Path | None = None) -> list[Path]:
    """Folders searched for a dataset, in order: --data-dir, $PIPELINE_DATA_DIR, the defaults."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    env = os.environ.get(defaults.DATA_DIR_ENV)
    if env:
        roots.append(Path(env))
    roots.extend(defaults.DATA_SEARCH_ROOTS)
    candidates: list[Path] = []
    for root in roots:
        # A root may be the dataset folder itself or a folder of dataset folders.
        candidates.extend([root / dataset.value, root])
    candidates.append(_KERAS_CACHE / dataset.value)
    return candidates


def _find_on_disk(dataset: Dataset, searched: list[Path]) -> Location | None:
    for folder in searched:
        if folder.is_dir() and _has_idx(folder):
            return Location(dataset, folder.resolve(), "idx", _check_sums(folder), tuple(searched))
    npz_name = _KERAS_NPZ.get(dataset)
    if npz_name and (_KERAS_CACHE / npz_name).is_file():
        return Location(dataset, _KERAS_CACHE / npz_name, "npz", "no checksum file", tuple(searched))
    return None


def locate(dataset: Dataset | str = defaults.DATASET, data_dir: Path | None = None) -> Location:
    """Find a dataset on disk, else download it with Keras; say every place searched on failure."""
    dataset = parse_dataset(dataset)
    searched = search_paths(dataset, data_dir)
    found = _find_on_disk(dataset, searched)
    if found is None:
        _download(dataset, searched)
        found = _find_on_disk(dataset, searched)
    if found is None:
        places = ", ".join(str(p) for p in searched)
        raise DataError(f"dataset {dataset.value} not found after download (searched: {places})")
    return found


def test_images(dataset: Dataset | str, data_dir: Path | None = None) -> np.ndarray:
    """A dataset's test images, also from a folder that holds only the test split (such as a
    benchmark copy named `<dataset>-test`); else as `load` finds them."""
    dataset = parse_dataset(dataset)
    searched = search_paths(dataset, data_dir)
    folders = [*searched, *(p / f"{dataset.value}-test" for p in searched)]
    for folder in folders:
        found = _idx_file(folder, _STEMS[Split.TEST][0]) if folder.is_dir() else None
        if found is not None and _idx_file(folder, _STEMS[Split.TEST][1]) is not None:
            _check_sums(folder)
            return parse_idx(found)
    return load(Split.TEST, dataset, data_dir)[0]


def _download(dataset: Dataset, searched: list[Path]) -> None:
    """Last resort: Keras' own loader, which caches under ~/.keras/datasets."""
    places = ", ".join(str(p) for p in searched)
    if os.environ.get(defaults.NO_DOWNLOAD_ENV, "") not in ("", "0"):
        raise DataError(
            f"dataset {dataset.value} not found (searched: {places}); downloading is off "
            f"(${defaults.NO_DOWNLOAD_ENV}); pass --data-dir or set {defaults.DATA_DIR_ENV}"
        )
    import importlib.util

    from pipeline import quiet

    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("tensorflow") is None:
        raise DataError(
            f"dataset {dataset.value} not found (searched: {places}); downloading it needs Keras "
            f"(pip install 'pipeline[train]'); or pass --data-dir or set {defaults.DATA_DIR_ENV}"
        )
    try:
        keras = quiet.load("keras")
        loader = {
            Dataset.MNIST: keras.datasets.mnist,
            Dataset.FASHION_MNIST: keras.datasets.fashion_mnist,
        }[dataset]
        loader.load_data()
    except Exception as exc:  # network errors come in many types; all mean "not available here"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"dataset {dataset.value} not found (searched: {places}) and download failed "
            f"({reason}); pass --data-dir or set {defaults.DATA_DIR_ENV}"
        ) from exc


def load(
    split: Split | str,
    dataset: Dataset | str = defaults.DATASET,
    data_dir: Path | None = None,
    limit: int | None = None,
    location: Location | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N x 28 x 28, white digit on black) and labels (uint8, N) of one split."""
    split = Split(split)
    loc = location or locate(dataset, data_dir)
    if loc.kind == "npz":
        with np.load(loc.source) as npz:
            key = "train" if split is Split.TRAIN else "test"
            images, labels = npz[f"x_{key}"], npz[f"y_{key}"]
    else:
        img_stem, lbl_stem = _STEMS[split]
        img_path, lbl_path = _idx_file(loc.source, img_stem), _idx_file(loc.source, lbl_stem)
        assert img_path is not None and lbl_path is not None  # guaranteed by locate()
        images, labels = parse_idx(img_path), parse_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{loc.source}: image file must have 3 dimensions and labels 1")
    if len(images) != len(labels):
        raise DataError(f"{loc.source}: {len(images)} images but {len(labels)} labels in {split.value}")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{loc.source}: label {int(labels.max())} outside 0..9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)


def checksum_of(location: Location) -> str:
    """One SHA-256 over the dataset's files, recorded in metrics.json and the manifest."""
    h = hashlib.sha256()
    if location.kind == "npz":
        h.update(sha256(location.source).encode())
    else:
        for stems in _STEMS.values():
            for stem in stems:
                path = _idx_file(location.source, stem)
                assert path is not None
                h.update(sha256(path).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Summary:
    location: Location
    train_counts: list[int]
    test_counts: list[int]


def summarize(dataset: Dataset | str = defaults.DATASET, data_dir: Path | None = None) -> Summary:
    """What `pipeline data` prints: where the data is, its integrity, and counts per class."""
    loc = locate(dataset, data_dir)
    _, y_train = load(Split.TRAIN, location=loc)
    _, y_test = load(Split.TEST, location=loc)
    return Summary(
        loc,
        np.bincount(y_train, minlength=10).tolist(),
        np.bincount(y_test, minlength=10).tolist(),
    )
