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
