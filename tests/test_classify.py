"""classify: bad input of every kind, CSV quoting, odd names, links, order, resume after kill -9."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import kill_when
from PIL import Image
from typer.testing import CliRunner

from pipeline import review, runtime
from pipeline.classify import ENCODING, ERRORS, HEADER, classify, local, walk
from pipeline.cli import app
from pipeline.errors import ClassifyError, OutputError
from pipeline.manifest import choose_model
from pipeline.preprocess import scale


@pytest.fixture(scope="module")
def int8_onnx(exported: Path) -> Path:
    return exported / "conv2d.int8.onnx"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding=ENCODING, errors=ERRORS, newline="") as f:
        return list(csv.DictReader(f))


def _write_digits(folder: Path, images: np.ndarray, names: list[str] | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:05d}.png" for i in range(len(images))]
    for name, img in zip(names, images, strict=True):
        Image.fromarray(img).save(folder / name)
    return names


def test_mnist_pngs_classify_exactly_like_the_arrays(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images = test_digits[0][:1500]
    _write_digits(tmp_path / "digits", images)
    summary = classify(tmp_path / "digits", tmp_path / "out.csv", model=int8_onnx, workers=2, chunk_size=100)
    assert summary.files == summary.classified == 1500 and summary.errors == 0
    rows = _rows(tmp_path / "out.csv")
    expected = runtime.load(int8_onnx).predict(scale(images)).argmax(axis=1)
    assert [int(r["prediction"]) for r in rows] == expected.tolist()
    assert list(rows[0]) == HEADER
    assert all(0.0 <= float(r["confidence"]) <= 1.0 and r["second"] != r["prediction"] for r in rows)
    assert sum(summary.per_digit) == 1500


def _bad_files(folder: Path, good: np.ndarray) -> dict[str, str]:
    """Every kind of bad input, with the words its error row must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(good).save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))
    (folder / "notes.png").write_text("this is a text file, not an image\n")
    Image.new("L", (1, 1), 0).save(folder / "one_pixel.png")
    Image.new("1", (9000, 8000), 1).save(folder / "bomb.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.png")
    Image.new("L", (200, 120), 240).save(folder / "blank.png")
    (folder / "whole.png").unlink()
    return {
        "empty.png": "not an image",
        "truncated.png": "truncated",
        "corrupt.jpg": "",
        "notes.png": "not an image",
        "one_pixel.png": "too small",
        "bomb.png": "exceeds the limit",
        "dangling.png": "unreadable",
        "pipe.png": "not a regular file",
        "blank.png": "blank",
    }


def test_bad_files_become_error_rows_and_the_run_goes_on(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "scans"
    expected = _bad_files(folder, test_digits[0][0])
    _write_digits(folder, test_digits[0][:3], ["a.png", "b.png", "c.png"])
    summary = classify(folder, tmp_path / "out.csv", model=int8_onnx, workers=2, chunk_size=4)
    rows = {r["path"]: r for r in _rows(tmp_path / "out.csv")}
    assert set(rows) == set(expected) | {"a.png", "b.png", "c.png"}
    for name, words in expected.items():
        row = rows[name]
        assert row["status"] == ("blank" if name == "blank.png" else "error"), row
        assert words in row["error"] and "\n" not in row["error"] and row["prediction"] == ""
    # read as digits (the small test model is unsure of some: `review` keeps the digit)
    assert all(
        rows[n]["status"] in ("ok", "review") and rows[n]["prediction"] for n in ("a.png", "b.png", "c.png")
    )
    assert summary.errors == 8 and summary.blank == 1 and summary.classified == 3


def test_fail_on_error_exit_code(
    int8_onnx: Path, tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    folder = tmp_path / "scans"
    _write_digits(folder, test_digits[0][:2])
    (folder / "broken.png").write_bytes(b"nope")
    out = tmp_path / "r.csv"
    plain = CliRunner().invoke(app, ["classify", str(folder), "--out", str(out), "--model", str(int8_onnx)])
    assert plain.exit_code == 0, plain.output
    strict = CliRunner().invoke(
        app, ["classify", str(folder), "--out", str(out), "--model", str(int8_onnx), "--fail-on-error"]
    )
    assert strict.exit_code == 10 and "1 file(s) could not be classified" in strict.output


def test_csv_quoting_and_odd_names_round_trip(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "odd"
    names = ["comma,name.png", 'quote"name.png', "new\nline.png", "space name.png", "ünïcødé.png"]
    _write_digits(folder, test_digits[0][: len(names)], names)
    raw_name = os.fsdecode(b"latin1-\xe9\xff.png")  # not valid UTF-8
    Image.fromarray(test_digits[0][9]).save(os.path.join(os.fsencode(folder), os.fsencode(raw_name)))
    classify(folder, tmp_path / "out.csv", model=int8_onnx, workers=1)
    rows = _rows(tmp_path / "out.csv")
    assert sorted(r["path"] for r in rows) == sorted([*names, raw_name])
    assert all(r["status"] in ("ok", "review") and r["prediction"] for r in rows)  # every file read
    assert b"latin1-\xe9\xff.png" in (tmp_path / "out.csv").read_bytes()  # the name's own bytes
    assert b'"comma,name.png"' in (tmp_path / "out.csv").read_bytes()


@pytest.mark.parametrize("probabilities", [False, True])
def test_rows_are_the_lines_csv_writer_writes(tmp_path: Path, probabilities: bool) -> None:
    """`write_chunk` formats plain rows itself: every row is the line csv.writer wrote for it, for
    names that need quoting and names that do not, review reasons, blanks and errors, with and
    without the probability columns."""
    import io

    from pipeline.classify import ChunkResult, Summary
    from pipeline.classify.csvout import PROB_COLUMNS, Writer, write_chunk

    paths = [
        "a/0001_7.png", "comma,name.png", 'quote"name.png', "new\nline.png", "cr\rname.png",
        " leading space.png", "ünïcødé.png", os.fsdecode(b"latin1-\xe9\xff.png"), "blank.png",
        "broken.png", "tab\tname.png",
    ]  # fmt: skip
    status = ["ok"] * 8 + ["blank", "error", "ok"]
    errors = [""] * 8 + ["blank: no ink found", 'cannot decode, "odd", file', ""]
    probs = np.random.default_rng(0).dirichlet(np.ones(10) * 0.3, size=9).astype(np.float32)
    reasons = ["", "several_digits", "", "not_a_digit", "", "low_confidence", "", "", ""]
    chunk = ChunkResult(paths, np.zeros((9, 28, 28), np.uint8), status, errors, probs=probs, reasons=reasons)
    header = HEADER + (PROB_COLUMNS if probabilities else [])
    writer = Writer(tmp_path / "r.csv", tmp_path / "r.json", header, None)
    write_chunk(chunk, writer, Summary(out=tmp_path / "r.csv", model=tmp_path / "m.onnx"), probabilities)
    writer.close()
    expected = io.StringIO()
    rows = csv.writer(expected)
    rows.writerow(header)
    k = 0
    for path, state, error in zip(paths, status, errors, strict=True):
        if state == "ok":
            p = probs[k]
            order = np.argsort(-p, kind="stable")
            row = [path, int(order[0]), f"{p[order[0]]:.6f}", int(order[1]), f"{p[order[1]]:.6f}"]
            row += ["review" if reasons[k] else "ok", reasons[k], ""]
            row += [f"{v:.6f}" for v in p] if probabilities else []
            k += 1
        else:
            row = [path, "", "", "", "", state, "", error] + ([""] * 10 if probabilities else [])
        rows.writerow(row)
    written = (tmp_path / "r.csv").read_bytes()
    assert written == expected.getvalue().encode(ENCODING, ERRORS)


def test_walk_is_sorted_recursive_and_survives_link_loops(tmp_path: Path) -> None:
    for rel in [
        "b/2.png",
        "b/1.PNG",
        "a/z.jpg",
        "a/deeper/x.tif",
        "top.webp",
        "skip.txt",
        "c/ignored.gif.bak",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a link back to the root
    os.symlink(tmp_path / "a", tmp_path / "b" / "to_a")
    found = list(walk(tmp_path, ("png", "jpg", "tif", "webp", "gif")))
    assert found == ["a/deeper/x.tif", "a/z.jpg", "b/1.PNG", "b/2.png", "top.webp"]
    assert list(walk(tmp_path, ("png",), recursive=False)) == []


def test_a_names_suffix_is_what_splitext_gives() -> None:
    """`walk.suffix`, the walk's own splitext: hidden files, runs of dots, no dot, case."""
    from pipeline.classify.walk import suffix

    names = [
        "a.png", "A.PNG", ".png", "..png", "...png", ".hidden.png", "..a.png", "a.", ".", "..", "noext",
        "a.b.JPG", "a..png", ".a.", "x.tar.gz", "ünï.PnG", "", "a .png", " .png",
    ]  # fmt: skip
    for name in names:
        assert suffix(name) == os.path.splitext(name)[1].lower(), name


@pytest.mark.parametrize("count", [0, 1, 15, 255, 300, 767, 768, 1000, 10_000])
def test_chunks_keep_the_walk_order_and_shrink_at_the_end(count: int) -> None:
    """Every path once, in walk order; with two workers the run ends in chunks that shrink to the
    floor (so the workers finish together), and one process keeps chunks of the full size."""
    from pipeline import defaults

    paths = [f"{i:05d}.png" for i in range(count)]
    chunks = list(local._chunks(iter(paths), 256, 2))
    assert [p for chunk in chunks for p in chunk] == paths
    sizes = [len(chunk) for chunk in chunks]
    assert all(0 < size <= 256 for size in sizes)
    tail = [size for size in sizes if size < 256]
    assert tail == sorted(tail, reverse=True)[: len(tail) - 1] + tail[-1:]  # shrinking, then the rest
    if count > 2 * defaults.CLASSIFY_TAIL_CHUNK_MIN:
        assert sizes[-2] == defaults.CLASSIFY_TAIL_CHUNK_MIN and len(chunks) >= 4
    assert [len(chunk) for chunk in local._chunks(iter(paths), 256, 1)] == [256] * (count // 256) + (
        [count % 256] if count % 256 else []
    )


def test_output_is_deterministic(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "d"
    for sub in ("z", "a", "m"):
        _write_digits(folder / sub, test_digits[0][:50])
    classify(folder, tmp_path / "one.csv", model=int8_onnx, workers=2, chunk_size=7)
    classify(folder, tmp_path / "two.csv", model=int8_onnx, workers=1, chunk_size=64)
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    paths = [r["path"] for r in _rows(tmp_path / "one.csv")]
    assert paths == sorted(paths) and paths[0] == "a/00000.png"


def test_resume_after_kill_loses_and_duplicates_nothing(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    for sub in range(12):
        _write_digits(folder / f"{sub:02d}", test_digits[0][sub * 1000 % 9000 : sub * 1000 % 9000 + 1000])
    reference = tmp_path / "reference.csv"
    classify(folder, reference, model=int8_onnx, workers=1)

    out = tmp_path / "results.csv"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "classify",
        str(folder),
        "--out",
        str(out),
        "--model",
        str(int8_onnx),
    ]
    state = tmp_path / "results.csv.partial.json"
    kill_when([*cmd, "--workers", "1"], state, lambda s: int(s["rows"]) >= 4096, timeout=60)
    assert not out.exists() and (tmp_path / "results.csv.partial").exists()
    with open(tmp_path / "results.csv.partial", "a") as f:
        f.write("half/a/row.png,7,0.9")  # what a kill in the middle of a write leaves
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "from the interrupted run" in resumed.stdout
    assert out.read_bytes() == reference.read_bytes()
    assert not state.exists() and not (tmp_path / "results.csv.partial").exists()


def test_a_full_disk_ends_the_run_in_one_error_and_resume_finishes_it(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A write that fails mid-run (the disk fills up: ENOSPC from the third block's write) is one
    ClassifyError naming the file and the cause, not a traceback; the blocks committed before it
    are kept, and after room is made --resume writes the same file as an uninterrupted run."""
    import errno

    from pipeline import defaults
    from pipeline.classify import csvout

    _write_digits(tmp_path / "digits", test_digits[0][:100])
    reference = tmp_path / "reference.csv"
    classify(tmp_path / "digits", reference, model=int8_onnx, workers=1)
    monkeypatch.setattr(defaults, "CLASSIFY_FLUSH_ROWS", 20)
    syncs, fsync = [], os.fsync

    def full_disk(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 4:  # the header, two blocks of 20 rows, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(csvout.os, "fsync", full_disk)
    out = tmp_path / "out.csv"
    with pytest.raises(
        OutputError, match=r"out.csv.partial: cannot write \(No space left on device\).*--resume"
    ):
        classify(tmp_path / "digits", out, model=int8_onnx, workers=1, chunk_size=10)
    assert not out.exists() and json.loads((tmp_path / "out.csv.partial.json").read_text())["rows"] == 40
    monkeypatch.setattr(csvout.os, "fsync", fsync)
    summary = classify(tmp_path / "digits", out, model=int8_onnx, workers=1, chunk_size=10, resume=True)
    assert summary.resumed == 40 and summary.files == 100  # counted as written: no progress walk
    assert out.read_bytes() == reference.read_bytes()


def test_progress_gets_the_count_first_and_every_file(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """With a progress display the folder is counted first and every file is reported once, bad
    ones included; without one (a batch job) nothing is counted up front and the summary's count
    is what was written."""
    _write_digits(tmp_path / "digits", test_digits[0][:45])
    (tmp_path / "digits" / "bad.png").write_bytes(b"not an image")
    calls: list[tuple[int, int]] = []
    summary = classify(
        tmp_path / "digits", tmp_path / "a.csv", model=int8_onnx, workers=2, chunk_size=10,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    assert {total for _, total in calls} == {46} and sum(done for done, _ in calls) == 46
    assert summary.files == 46 and summary.errors == 1
    quiet = classify(tmp_path / "digits", tmp_path / "b.csv", model=int8_onnx, workers=2, chunk_size=10)
    assert quiet.files == 46 and (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_resume_refuses_a_changed_folder(
    int8_onnx: Path, tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    folder = tmp_path / "f"
    _write_digits(folder, test_digits[0][:20])
    partial = tmp_path / "r.csv.partial"
    partial.write_text(",".join(HEADER) + "\r\nother.png,1,0.9,2,0.1,ok,\r\n")
    (tmp_path / "r.csv.partial.json").write_text(json.dumps({"rows": 1, "bytes": partial.stat().st_size}))
    with pytest.raises(ClassifyError, match="folder changed"):
        classify(folder, tmp_path / "r.csv", model=int8_onnx, resume=True, workers=1)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["classify", "no-such-folder"], "no such folder"),
        (["classify", ".", "--out", "missing-dir/r.csv"], "output folder does not exist"),
        (["classify", ".", "--model", "nope.onnx"], "no such model file"),
        (["classify", ".", "--model", "model.pt"], "no such model file"),
    ],
)
def test_bad_arguments_fail_before_work(
    args: list[str], expect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and expect in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("*.partial"))


def test_default_model_is_the_best_int8_onnx_in_the_manifest(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(exported, tmp_path / "exports")
    monkeypatch.chdir(tmp_path)
    choice = choose_model(None)
    assert choice.path.resolve() == (tmp_path / "exports" / "conv2d.int8.onnx").resolve()
    assert choice.deskew is False


def test_shipped_default_model_classifies_out_of_the_box(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a fresh clone, with no training: classify picks the best shipped int8 ONNX (pins the
    release's accuracy loosely: above 97% on the first 200 test digits)."""
    shipped = Path(__file__).resolve().parent.parent / "exported" / "manifest.json"
    if not shipped.is_file():
        pytest.skip("no shipped exports in this checkout")
    monkeypatch.chdir(tmp_path)  # not the repo: the shipped manifest is found beside the package
    _write_digits(tmp_path / "digits", test_digits[0][:200])
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "digits"), "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    assert ".int8.onnx" in result.output
    predictions = [int(r["prediction"]) for r in _rows(tmp_path / "r.csv")]
    assert np.mean(np.array(predictions) == test_digits[1][:200]) > 0.97


def test_scans_are_classified_about_as_well_as_clean_digits(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """Pins a measured figure, loosely: rendered scans read within 5 points of the same digits as
    clean MNIST (the release models: 99.42% against 99.62% on 5,000, docs/benchmarks.md)."""
    from pipeline.samples import write_samples

    write_samples(tmp_path / "scans", 400, "scan", start=2000)
    summary = classify(tmp_path / "scans", tmp_path / "scans.csv", model=int8_onnx, workers=2)
    labels = {r["file"]: r["label"] for r in _rows(tmp_path / "scans" / "labels.csv")}
    rows = _rows(tmp_path / "scans.csv")
    scan_acc = np.mean([r["prediction"] == labels[r["path"]] for r in rows])
    clean = runtime.load(int8_onnx).predict(scale(test_digits[0][2000:2400])).argmax(axis=1)
    clean_acc = np.mean(clean == test_digits[1][2000:2400])
    assert summary.errors == 0 and scan_acc > clean_acc - 0.05, (scan_acc, clean_acc)


def test_a_timed_benchmark_run_is_not_sampled_for_memory() -> None:
    """`bench._measure`: with `memory=False` no sampler reads /proc while the command runs (the
    sampling took half a core from the runs it timed), so it reports no peak; with it, the
    process's peak."""
    import sys

    from pipeline.bench import _measure

    cmd = [sys.executable, "-c", 'import time; b = b"x" * (64 << 20); time.sleep(0.3)']
    assert _measure("unsampled", cmd, 1, memory=False).peak_mib == 0
    assert _measure("sampled", cmd, 1).peak_mib > 60


def test_form_fields_are_classified_with_their_lines_erased(int8_onnx: Path, tmp_path: Path) -> None:
    """`pipeline bench scans --style form`: digits in boxes, on underlines and in comb fields go
    through classify nearly as well as clean digits, and far better than with the lines left in
    (pins the measured gap loosely: 96.7% against 45.0% for the release model, docs/benchmarks.md)."""
    from pipeline.bench import bench_scans

    r = bench_scans([int8_onnx], 150, start=3000, style="form", folder=tmp_path / "forms", rounds=2)
    ceiling, run = r.runs
    assert r.style == "form" and r.images == 150 and ceiling.accuracy is None and ceiling.run.per_second > 0
    assert run.run.images == 150 and run.run.per_second > 0 and run.run.peak_mib > 0
    assert ceiling.run.peak_mib > 0  # both from a run of their own, the timed ones unsampled
    assert 0 < run.share_of_ceiling == run.run.per_second / run.ceiling
    # two rounds, each against its own ceiling: the row is the lower-middle one, here the lower
    assert len(run.shares) == 2 and run.shares == tuple(sorted(run.shares))
    assert run.share_of_ceiling == run.shares[0]
    assert run.accuracy is not None and run.accuracy > r.clean_accuracy[0] - 0.1, r
    assert run.accuracy > r.without_lines_accuracy[0] + 0.25, r


def test_inference_threads_follow_the_measured_costs() -> None:
    """t = cores / (1 + decode / inference), rounded: the figures measured on 2 cores, and more."""
    from pipeline.classify import inference_threads

    assert inference_threads(2, 141e-6, 625e-6) == 2  # bncnn-x4 on PNG digits
    assert inference_threads(2, 104e-6, 82e-6) == 1  # conv2d on PNG digits
    assert inference_threads(16, 141e-6, 625e-6) == 13
    assert inference_threads(16, 5e-3, 625e-6) == 2  # big scans: decoding needs the cores
    assert inference_threads(1, 0.0, 1e-3) == 1 and inference_threads(4, 1e-4, 0.0) == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_a_wider_inference_session_takes_over_after_the_probe(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, threads: int,
) -> None:  # fmt: skip
    """Predicting in this process (one worker), after the timed chunks the local engine switches
    to the thread count inference_threads gives, and the CSV is the same whichever it is."""
    import pipeline.classify.local as local_engine

    monkeypatch.setattr(local_engine.os, "cpu_count", lambda: 2)
    asked: list[tuple[float, float]] = []

    def decide(cores: int, decode: float, inference: float) -> int:
        asked.append((decode, inference))
        return threads

    monkeypatch.setattr(local_engine, "inference_threads", decide)
    _write_digits(tmp_path / "digits", test_digits[0][:400])
    summary = classify(tmp_path / "digits", tmp_path / "out.csv", model=int8_onnx, workers=1, chunk_size=40)
    assert summary.inference_threads == threads and len(asked) == 1
    assert asked[0][0] > 0 and asked[0][1] > 0  # CPU seconds per image, decoding and inference
    reference = runtime.load(int8_onnx, threads=1).predict(scale(test_digits[0][:400]))
    rows = _rows(tmp_path / "out.csv")
    assert [float(r["confidence"]) for r in rows] == [float(f"{p:.6f}") for p in reference.max(axis=1)]


def test_workers_predict_and_write_the_same_rows(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """With two workers an ONNX model runs in them, reasons included, and this process predicts
    nothing; the CSV is byte for byte the one that predicting here writes."""
    import pipeline.classify.local as local_engine

    digits = test_digits[0][:300].copy()
    digits[::7] = np.roll(digits[::7], 9, axis=2)  # some off-centre, for review reasons
    _write_digits(tmp_path / "digits", digits)
    here = classify(tmp_path / "digits", tmp_path / "here.csv", model=int8_onnx, workers=1, chunk_size=32)
    assert local_engine.predicts_in_workers(int8_onnx, 2) and not local_engine.predicts_in_workers(
        int8_onnx, 1
    )

    writer = os.getpid()

    def only_in_workers(original: Any) -> Any:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            assert os.getpid() != writer, f"{original.__name__} ran in the writing process"
            return original(*args, **kwargs)

        return guarded

    # The workers fork after this and run the originals; the writing process must not call them.
    monkeypatch.setattr(local_engine, "predict_digits", only_in_workers(local_engine.predict_digits))
    monkeypatch.setattr(review.ReviewModel, "reasons", only_in_workers(review.ReviewModel.reasons))
    there = classify(tmp_path / "digits", tmp_path / "there.csv", model=int8_onnx, workers=2, chunk_size=32)
    assert (tmp_path / "there.csv").read_bytes() == (tmp_path / "here.csv").read_bytes()
    assert there.review == here.review and sum(here.review.values()) > 0


def test_a_worker_that_cannot_load_the_model_ends_the_run(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A worker whose model fails to load (memory, a file changed under the run) ends the run with
    the error: it is raised by the worker's first chunk, not by the pool's initializer, where it
    would only say that a worker died."""
    from pipeline.errors import ArtifactError

    writer, load = os.getpid(), runtime.load

    def fails_in_workers(path: Path, threads: int | None = None) -> runtime.Predictor:
        if os.getpid() != writer:
            raise ArtifactError(f"{path}: cannot load it here")
        return load(path, threads)

    monkeypatch.setattr(runtime, "load", fails_in_workers)
    _write_digits(tmp_path / "digits", test_digits[0][:50])
    with pytest.raises(ArtifactError, match="cannot load it here"):
        classify(tmp_path / "digits", tmp_path / "out.csv", model=int8_onnx, workers=2, chunk_size=10)
    assert not (tmp_path / "out.csv").exists()


def test_a_killed_worker_ends_the_run_and_resume_finishes_it(
    int8_onnx: Path, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A worker killed mid-run (the OOM killer's SIGKILL) ends the run with one clear error instead
    of waiting for its chunk forever; the rows written so far are kept, and --resume writes the
    same file as a run that was never interrupted. Both pools: workers that predict (an ONNX
    model) and workers that only decode (what a Keras model gets)."""
    import signal

    from pipeline.classify import chunks

    writer, load_digit, killed = os.getpid(), chunks.preprocess.load_digit, tmp_path / "killed"

    def killed_once(path: str, **kwargs: object) -> np.ndarray:
        if os.getpid() != writer and path.endswith("00034.png") and not killed.exists():
            killed.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return load_digit(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chunks.preprocess, "load_digit", killed_once)
    _write_digits(tmp_path / "digits", test_digits[0][:60])
    clean = classify(tmp_path / "digits", tmp_path / "clean.csv", model=int8_onnx, workers=1, chunk_size=10)
    assert clean.classified == 60
    for predict_in_workers in (True, False):
        killed.unlink(missing_ok=True)
        out = tmp_path / f"out-{predict_in_workers}.csv"
        if not predict_in_workers:
            monkeypatch.setattr(local, "predicts_in_workers", lambda model, workers: False)
        with pytest.raises(ClassifyError, match=r"a worker process died.*--resume"):
            classify(tmp_path / "digits", out, model=int8_onnx, workers=2, chunk_size=10)
        assert killed.exists() and not out.exists()
        kept = len(_rows(out.with_name(out.name + ".partial")))
        assert kept < 60
        summary = classify(tmp_path / "digits", out, model=int8_onnx, workers=2, chunk_size=10, resume=True)
        assert summary.resumed == kept
        assert out.read_bytes() == (tmp_path / "clean.csv").read_bytes()


def test_one_writer_per_out(tmp_path: Path, test_digits: tuple[np.ndarray, np.ndarray]) -> None:
    """A second run on the same --out refuses in one line while the first holds it; a killed
    holder (kill -9) releases it, and the next run goes ahead."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import one_clear_line, run_cli

    _write_digits(tmp_path / "digits", test_digits[0][:20])
    out = tmp_path / "r.csv"
    hold = (
        "import sys, time\nfrom pathlib import Path\nfrom pipeline.classify.csvout import exclusive\n"
        "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = run_cli("classify", str(tmp_path / "digits"), "--out", str(out))
        one_clear_line(refused, f"process {holder.pid}")
        assert refused.returncode == 9 and "another classify run" in refused.stderr
        assert not out.exists() and not out.with_name("r.csv.partial.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.time()
    done = run_cli("classify", str(tmp_path / "digits"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert len(_rows(out)) == 20 and time.time() - started < 60
    assert not out.with_name("r.csv.lock").exists()
