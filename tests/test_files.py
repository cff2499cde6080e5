"""Outputs are never half-written, and a failed write is one named error (pipeline.files)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline import files
from pipeline.errors import OutputError


def test_a_full_disk_is_an_output_error_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    full = r"report.html: cannot write \(No space left on device\)"
    with pytest.raises(OutputError, match=full), files.atomic_open(target) as f:
        f.write("half of it")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_read_error_inside_the_block_is_not_called_a_write_failure(tmp_path: Path) -> None:
    """Only the errors that writing alone raises are the output's: a missing input read while
    writing stays what it is (the caller knows what it was reading)."""
    with pytest.raises(FileNotFoundError), files.atomic_open(tmp_path / "out.csv") as f:
        f.write("x")
        (tmp_path / "missing.png").read_bytes()
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_made_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the folder should be")
    with pytest.raises(OutputError, match=r"taken/out\.csv: cannot write"):
        files.write_json(tmp_path / "taken" / "out.csv", {})


def test_samples_leave_no_cut_image_when_the_disk_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pipeline data samples` writes each image under a temporary name: the disk filling during
    the third image leaves two whole images and no cut one (and no labels.csv)."""
    from pipeline.samples import write_samples

    save, saved = Image.Image.save, []

    def fills(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        saved.append(fp)
        if len(saved) == 3:
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n")  # what a full disk leaves of it
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", fills)
    with pytest.raises(OutputError, match=r"00002_1.png: cannot write \(No space left on device\)"):
        write_samples(tmp_path / "s", 5)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["00000_7.png", "00001_2.png"]


class _FullDisk:
    """A model or figure whose writer fills the disk halfway through its file."""

    def _write(self, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    save = savefig = _write


def test_a_model_or_figure_that_fills_the_disk_leaves_nothing(tmp_path: Path) -> None:
    """Training's model files and the reports' PNGs: one OutputError naming the file, and neither
    it nor a temporary file left behind (the optimizer-free copy goes the same way)."""
    from pipeline.report import _save
    from pipeline.train.rundir import save_model_file

    with pytest.raises(OutputError, match=r"model\.keras: cannot write \(No space left on device\)"):
        save_model_file(_FullDisk(), tmp_path / "model.keras", include_optimizer=True)
    pyplot = pytest.importorskip("matplotlib.pyplot")
    figure = pyplot.figure()
    figure.savefig = _FullDisk().savefig
    with pytest.raises(OutputError, match=r"curves\.png: cannot write"):
        _save(figure, tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []
