"""The scan path's compiled loops: loaded only for scans, and working where numba cannot cache."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import preprocess
from pipeline.samples import render_form


def _python(code: str, *args: str) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet) and return what it printed."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_run_of_28x28_digits_never_loads_numba(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """numba's import and libraries cost a process a few tenths of a second and over 100 MiB: a
    run of MNIST-sized digits must not pay them; the first scan of a run loads them in the parent
    (`warm_up`), so forked workers share them."""
    Image.fromarray(test_digits[0][0]).save(tmp_path / "digit.png")
    render_form(test_digits[0][1], np.random.default_rng(1), "box").save(tmp_path / "field.jpg", quality=90)
    code = """
import json, sys
from pipeline import preprocess
loaded = lambda: "numba" in sys.modules or "pipeline.preprocess.kernels" in sys.modules
preprocess.warm_up(sys.argv[1])
preprocess.load_digit(sys.argv[1])
after_digit = loaded()
preprocess.warm_up(sys.argv[2])
print(json.dumps([after_digit, loaded()]))
"""
    after_digit, after_scan = json.loads(
        _python(code, str(tmp_path / "digit.png"), str(tmp_path / "field.jpg"))
    )
    assert not after_digit
    assert after_scan


def test_the_loops_work_where_numba_cannot_cache(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """With no cache location numba can use (a read-only install, no writable user cache), the
    loops are compiled in the process instead of failing, and give the same digits."""
    import numba.core.caching

    if not hasattr(numba.core.caching.CacheImpl, "_locator_classes"):
        pytest.skip("this numba has no CacheImpl._locator_classes to empty")
    rng = np.random.default_rng(2)
    paths = []
    for i, field in enumerate(("box", "underline", "comb")):
        buf = io.BytesIO()
        render_form(test_digits[0][10 + i], rng, field).save(buf, format="JPEG", quality=85)
        paths.append(tmp_path / f"{field}.jpg")
        paths[-1].write_bytes(buf.getvalue())
    expected = [preprocess.load_digit(p).tolist() for p in paths]
    code = """
import json, sys
import numba.core.caching
numba.core.caching.CacheImpl._locator_classes = []  # as if no folder were writable
from pipeline import preprocess
print(json.dumps([preprocess.load_digit(p).tolist() for p in sys.argv[1:]]))
"""
    assert json.loads(_python(code, *map(str, paths))) == expected


def test_a_first_file_that_breaks_a_decoder_does_not_stop_the_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`warm_up` reads the run's first file before the workers start; a file no decoder survives
    (or one that is not there any more) is the worker's to report in its row, not a crash."""
    from pipeline.preprocess import normalize

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a decoder bug")

    monkeypatch.setattr(normalize, "read_gray", broken)
    preprocess.warm_up(str(tmp_path / "field.jpg"))
    monkeypatch.undo()
    preprocess.warm_up(str(tmp_path / "gone.jpg"))
