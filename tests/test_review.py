"""Rows for a person: images that are not one digit (pairs, letters, scribbles) or unsure ones."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from pipeline import manifest, preprocess, review, runtime
from pipeline.classify import ENCODING, ERRORS, classify, review_model_path
from pipeline.samples import letter_ink, pair_ink, render_scan, scanned, scribble_ink

pytestmark = pytest.mark.skipif(manifest.release_dir() is None, reason="no release models in this checkout")


@pytest.fixture(scope="module")
def checker() -> review.ReviewModel:
    return review.load(review_model_path())


@pytest.fixture(scope="module")
def light_model() -> runtime.Predictor:
    return runtime.load(manifest.release_dir() / "conv2d.int8.onnx")  # type: ignore[operator]


def _scan(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return scanned(ink, rng, quality=85)


def _reasons(checker: review.ReviewModel, model: runtime.Predictor, digits: np.ndarray) -> list[str]:
    return checker.reasons(digits, model.predict(preprocess.scale(digits)), 0.5)


def test_clean_digits_are_not_sent_to_review(
    checker: review.ReviewModel, light_model: runtime.Predictor, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Real single digits, as 28x28 files and rendered as scans: a few percent at most."""
    rng = np.random.default_rng(1)
    plain = test_digits[0][5000:5600]
    scans = np.stack([_scan(d, rng) for d in test_digits[0][6000:6300]])
    for digits in (plain, scans):
        flagged = np.mean([r != "" for r in _reasons(checker, light_model, digits)])
        assert flagged <= 0.06, flagged  # measured 2-5% (`pipeline bench review`)


def test_each_kind_of_non_digit_is_flagged_with_its_reason(
    checker: review.ReviewModel, light_model: runtime.Predictor, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Two digits side by side are `several_digits`; clothing, letters and scribbles are mostly
    `not_a_digit` (the share each reaches is pinned loosely below what `bench review` measures)."""
    rng = np.random.default_rng(2)
    x = test_digits[0]
    pairs = np.stack([_scan(pair_ink(x[i], x[i + 1], rng), rng) for i in range(0, 120, 2)])
    letters = np.stack([_scan(letter_ink(rng), rng) for _ in range(60)])
    scribbles = np.stack([_scan(scribble_ink(rng), rng) for _ in range(60)])
    blots = np.zeros((40, 28, 28), np.uint8)
    for k, blot in enumerate(blots):  # filled shapes, like a stamp or a smudge
        blot[4 + k % 5 : 24, 4 : 20 + k % 5] = 255
    for digits, reason, least in (
        (pairs, review.SEVERAL_DIGITS, 0.7),
        (blots, review.NOT_A_DIGIT, 0.95),
        (scribbles, review.NOT_A_DIGIT, 0.35),
        (letters, review.NOT_A_DIGIT, 0.15),
    ):
        reasons = _reasons(checker, light_model, digits)
        assert np.mean([r == reason for r in reasons]) >= least, (reason, reasons)


def test_digits_side_by_side_are_told_from_a_digit_in_pieces(
    test_digits: tuple[np.ndarray, np.ndarray],
) -> None:
    """Two components next to each other are several digits; a digit whose bar is detached
    (pieces above one another) is not."""
    pair = pair_ink(test_digits[0][0], test_digits[0][1], np.random.default_rng(0))
    assert review.side_by_side(preprocess.to_mnist(Image.fromarray(255 - pair)))
    five = np.zeros((28, 28), np.uint8)
    five[4:7, 8:20] = 255  # the bar, apart from the rest
    five[9:24, 8:11] = 255
    five[14:17, 8:20] = 255
    five[14:24, 17:20] = 255
    assert not review.side_by_side(five)


def test_the_fit_sets_each_limit_on_digits_it_did_not_see(test_digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Limits are quantiles of held-out digits, so about 1 - quantile of new digits pass each."""
    x, y = test_digits
    model = review.fit(x[:3000], y[:3000], x[3000:4000], y[3000:4000], 10, 0.95, {"data": "test slice"})
    assert model.fitted["fit_images"] == 3000 and model.fitted["held_out_images"] == 1000
    assert 0.05 <= model.fitted["held_out_flagged"] <= 0.10  # the union of two 5% tails
    probs = np.eye(10, dtype=np.float32)[y[4000:6000]]
    fresh = np.mean([r != "" for r in model.reasons(x[4000:6000], probs)])
    assert 0.04 <= fresh <= 0.16


def test_the_review_model_round_trips(checker: review.ReviewModel, tmp_path: Path) -> None:
    review.save(checker, tmp_path / "r.npz")
    again = review.load(tmp_path / "r.npz")
    assert again.fitted == checker.fitted and again.residual_limit == checker.residual_limit
    with pytest.raises(review.ReviewError):
        review.load(tmp_path / "missing.npz")
    (tmp_path / "torn.npz").write_bytes((tmp_path / "r.npz").read_bytes()[:1000])  # a torn copy
    (tmp_path / "text.npz").write_text("not a model")
    for name in ("torn.npz", "text.npz"):
        with pytest.raises(review.ReviewError, match="cannot read the review model"):
            review.load(tmp_path / name)


def _folder(tmp: Path, test_digits: tuple[np.ndarray, np.ndarray]) -> Path:
    folder = tmp / "fields"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(test_digits[0][i]).save(folder / f"digit{i}.png")
    rng = np.random.default_rng(4)
    render_scan(pair_ink(test_digits[0][10], test_digits[0][11], rng), rng).save(folder / "pair.jpg")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(folder / "zz_blot.png")
    return folder


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, encoding=ENCODING, errors=ERRORS, newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_classify_marks_rows_for_review_and_keeps_their_digit(
    tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    folder = _folder(tmp_path, test_digits)
    model = manifest.release_dir() / "conv2d.int8.onnx"  # type: ignore[operator]
    summary = classify(folder, tmp_path / "r.csv", model=model, workers=1)
    rows = _rows(tmp_path / "r.csv")
    pair_reason = rows["pair.jpg"]["reason"]
    assert rows["pair.jpg"]["status"] == "review" and pair_reason in (
        review.SEVERAL_DIGITS,
        review.NOT_A_DIGIT,
    )
    assert rows["pair.jpg"]["prediction"] != "" and float(rows["pair.jpg"]["confidence"]) > 0
    assert rows["zz_blot.png"]["status"] == "blank"  # no ink on white paper: blank, not review
    assert all(
        rows[f"digit{i}.png"]["status"] == "ok" and rows[f"digit{i}.png"]["reason"] == "" for i in range(4)
    )
    assert summary.review == {pair_reason: 1} and summary.classified == 5
    off = classify(folder, tmp_path / "off.csv", model=model, workers=1, review_rows=False)
    assert off.review == {} and _rows(tmp_path / "off.csv")["pair.jpg"]["status"] == "ok"
    unsure = classify(folder, tmp_path / "all.csv", model=model, workers=1, review_below=1.0)
    assert sum(unsure.review.values()) == 5


def test_fail_on_review_stops_the_job(tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]) -> None:
    folder = _folder(tmp_path, test_digits)
    model = str(manifest.release_dir() / "conv2d.int8.onnx")  # type: ignore[operator]
    result = run_cli(
        "classify", str(folder), "--out", str(tmp_path / "r.csv"), "--model", model, "--fail-on-review"
    )
    assert result.returncode == 12, result.stderr
    assert "1 row(s) need a person" in result.stderr
    quiet = run_cli(
        "classify", str(folder), "--out", str(tmp_path / "q.csv"), "--model", model, "--no-review"
    )
    assert quiet.returncode == 0, quiet.stderr


def test_the_fit_script_reads_only_training_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """scripts/fit_review.py asks for the training split and nothing else (a slice stands in)."""
    import importlib.util
    import sys

    from pipeline import data

    asked: list[str] = []

    def load(split: data.Split | str, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        asked.append(str(split))
        return test_digits[0][:1500], test_digits[1][:1500]

    monkeypatch.setattr(data, "load", load)
    script = Path(__file__).parent.parent / "scripts" / "fit_review.py"
    spec = importlib.util.spec_from_file_location("fit_review", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "review.npz"
    argv = ["fit_review", "--out", str(out), "--held-out", "500", "--scanned", "50", "--components", "5"]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    assert asked == ["train"] and review.load(out).fitted["fit_images"] == 1050
