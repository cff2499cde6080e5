"""Benchmarks that print figures: artifacts (size, accuracy, latency), classify throughput and
memory, accuracy on rendered scans, and how fast the host makes augmented training batches.
Speed targets live here, never in timed tests.

Classify runs are measured as separate processes (`python -m pipeline classify`) so start-up
cost is counted as a user pays it, and peak memory is the peak of the summed proportional set
size (PSS) of the process and its workers, sampled from /proc: forked workers share pages, which
RSS would count once per process. The sampling costs the machine as much as a busy process (the
kernel walks each process's memory map for its PSS), so the timed runs are not sampled: each
contender's peak memory comes from one more run of its own.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import calibration, data, defaults, preprocess, runtime
from pipeline.classify.walk import walk
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class ArtifactBench:
    path: Path
    bytes: int
    accuracy: float
    ms_batch1: float
    ms_batch256: float


def bench_artifacts(paths: list[Path], repeats: int = defaults.LATENCY_REPEATS) -> list[ArtifactBench]:
    """Size, test accuracy and median latency at batch 1 and 256 for each artifact."""
    from pipeline.verify import measure_latency

    images, labels = data.load(data.Split.TEST)
    x = preprocess.scale(images)
    out = []
    for path in paths:
        predictor = runtime.load(path)
        accuracy = float((predictor.predict(x).argmax(axis=1) == labels).mean())
        b1, b256 = defaults.LATENCY_BATCH_SIZES
        out.append(
            ArtifactBench(
                path,
                path.stat().st_size,
                accuracy,
                measure_latency(predictor, x, b1, repeats * 10),
                measure_latency(predictor, x, b256, repeats),
            )
        )
    return out


def make_digit_folder(folder: Path, count: int, per_dir: int = 10_000) -> Path:
    """`count` MNIST test digits as 28x28 PNG files named `index_label.png`, 10,000 per subfolder
    (reused if present)."""
    marker = folder / f".complete-labelled-{count}"
    if marker.exists():
        return folder
    from PIL import Image

    images, labels = data.load(data.Split.TEST)
    for i in range(count):
        sub = folder / f"{i // per_dir:03d}"
        if i % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        j = i % len(images)
        Image.fromarray(images[j]).save(sub / f"{i:07d}_{labels[j]}.png", compress_level=6)
    marker.touch()
    return folder


def make_scan_folder(folder: Path, count: int, style: str, start: int, seed: int) -> Path:
    """`pipeline data samples` files (`index_label.jpg`, rendered scans or form fields), reused if
    the same ones are already there."""
    marker = folder / f".complete-{style}-{start}-{count}-{seed}"
    if not marker.exists():
        from pipeline.samples import write_samples

        write_samples(folder, count, style, start=start, seed=seed)
        marker.touch()
    return folder


def warm_cache(folder: Path) -> None:
    """Read every file once so that each contender finds them in the page cache: otherwise the
    first one measured pays the disk reads for all the others."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


def _tree_pss_kib(pid: int) -> int:
    """Summed PSS of a process and all its descendants, in KiB (0 if it is gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


@dataclass(frozen=True)
class RunBench:
    name: str
    images: int
    seconds: float
    peak_mib: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _measure(name: str, cmd: list[str], images: int, memory: bool = True) -> RunBench:
    """Run `cmd`, timing it and, with `memory`, sampling its process tree's memory every 20 ms.

    The sampling is not free: for each process's PSS the kernel walks its memory map, and at
    this rate that took about half of one of this machine's two cores, from the command being
    timed (docs/benchmarks.md). A run timed for a share of the ceiling is therefore not sampled
    (`memory=False`, peak 0)."""
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss_kib(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True) if memory else None
    if sampler is not None:
        sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    if sampler is not None:
        sampler.join()
    if proc.returncode != 0:
        raise PipelineError(f"benchmark step {name!r} failed: {stderr.strip().splitlines()[-1:]}")
    reported = [line for line in stdout.splitlines() if line.startswith("SECONDS ")]
    if reported:  # the step timed its own work (after imports)
        seconds = float(reported[-1].split()[1])
    return RunBench(name, images, seconds, peak / 1024)


def _peak_mib(cmd: list[str]) -> float:
    """The peak memory of one more run of `cmd`, sampled (its time is not used)."""
    return _measure("memory", cmd, 0).peak_mib


# The contenders besides classify itself, each a small program run as its own process.
# The ceiling: every file opened and decoded to grayscale by PIL, in one process per worker, and
# nothing else; no classify can go faster on the same files. It is timed from the walk to the
# last file, without the interpreter's start-up, which classify runs pay: a conservative ratio.
_DECODE_ONLY = """
import os, sys, time
from multiprocessing import get_context
import numpy as np
from PIL import Image
from pipeline.classify.walk import walk
from pipeline.defaults import IMAGE_EXTENSIONS
root, workers = sys.argv[1], int(sys.argv[2])

def decode(paths):
    for path in paths:
        with Image.open(path) as img:
            np.asarray(img.convert("L"))
    return len(paths)

started = time.perf_counter()
files = [os.path.join(root, rel) for rel in walk(root, IMAGE_EXTENSIONS)]
chunks = [files[i : i + 256] for i in range(0, len(files), 256)]
with get_context("fork").Pool(workers) as pool:
    decoded = sum(pool.imap_unordered(decode, chunks))
print("SECONDS", time.perf_counter() - started)
"""
_NAIVE = """
import sys, time, os
import numpy as np
import onnxruntime as ort
from PIL import Image
from pipeline.classify.walk import walk
root, model = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
with open(os.devnull, "w") as out:
    for rel in walk(root, ("png",)):
        x = np.asarray(Image.open(os.path.join(root, rel)).convert("L"), np.float32)[None, :, :, None] / 255
        p = session.run(None, {"image": x})[0][0]
        out.write(f"{rel},{int(p.argmax())}\\n")
"""


@dataclass(frozen=True)
class ClassifyRun:
    """One whole-process run on a benchmark folder, against the decode-only ceiling on it: of
    several rounds, the one whose share of its ceiling is the median (`shares` has them all)."""

    run: RunBench
    ceiling: float  # images/s of the decode-only run on the same files, just before `run`
    accuracy: (
        float | None
    )  # right answers / files (blank and unreadable count as wrong); None: not a classifier
    model: Path | None = None
    ece: float | None = None  # of the CSV's confidence column, over the rows with a digit
    shares: tuple[float, ...] = ()  # every round's share of its ceiling, lowest first

    @property
    def share_of_ceiling(self) -> float:
        return self.run.per_second / self.ceiling if self.ceiling > 0 else 0.0


def _label(path: str) -> int:
    """The label in a benchmark file's name (`00042_7.jpg`, `0000042_7.png`)."""
    return int(Path(path).stem.rsplit("_", 1)[1])


def _classify_runs(
    folder: Path, models: list[Path], workers: int | None, naive: Path | None,
    rounds: int = defaults.BENCH_ROUNDS,
) -> list[ClassifyRun]:  # fmt: skip
    """The decode-only ceiling, then `pipeline classify` with each model, on the same files, in the
    page cache; each classify run is timed as a whole process (start-up included, as a user pays
    it), the ceiling without its start-up.

    Each model gets `rounds` rounds of the ceiling and then classify, and each round's share is of
    the ceiling measured just before it: a machine whose speed drifts by a third within minutes
    (this project's) would otherwise move a later run's share with the drift. The round with the
    median share is reported, and every round must write the same CSV. The first row is the
    median of all ceiling runs. The timed runs are not sampled for memory (`_measure`): each
    contender's peak memory is that of one more run, sampled and not timed."""
    from pipeline.classify import ENCODING, ERRORS

    if rounds < 1:
        raise PipelineError("--rounds must be at least 1")
    warm_cache(folder)
    count = sum(1 for _ in walk(folder, defaults.IMAGE_EXTENSIONS))
    n_workers = workers or os.cpu_count() or 1
    py = sys.executable
    decode_only = [py, "-c", _DECODE_ONLY, str(folder), str(n_workers)]
    ceilings = [_measure("decode only (ceiling)", decode_only, count, memory=False)]
    naive_run = None
    if naive is not None:
        naive_cmd = [py, "-c", _NAIVE, str(folder), str(naive)]
        run = replace(_measure("naive loop", naive_cmd, count, memory=False), peak_mib=_peak_mib(naive_cmd))
        naive_run = ClassifyRun(run, ceilings[0].per_second, None, naive)
    runs: list[ClassifyRun] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.csv"
        cmd = [py, "-m", "pipeline", "classify", str(folder), "--out", str(out)]
        if workers:
            cmd += ["--workers", str(workers)]
        for model in models:
            pairs: list[tuple[RunBench, RunBench]] = []
            written: bytes | None = None
            for _ in range(rounds):
                if naive_run is not None or pairs or runs:  # else the first ceiling is just before
                    ceilings.append(_measure("decode only", decode_only, count, memory=False))
                run = _measure(f"classify {model.name}", [*cmd, "--model", str(model)], count, memory=False)
                if written is None:
                    written = out.read_bytes()
                elif out.read_bytes() != written:
                    raise PipelineError(f"classify with {model.name} wrote a different CSV in a later round")
                pairs.append((ceilings[-1], run))
            peak = _peak_mib([*cmd, "--model", str(model)])
            if out.read_bytes() != written:
                raise PipelineError(f"classify with {model.name} wrote a different CSV in its memory run")
            with open(out, encoding=ENCODING, errors=ERRORS, newline="") as f:
                read = [r for r in csv.DictReader(f) if r["status"] in ("ok", "review")]
            right = np.array([r["prediction"] == str(_label(r["path"])) for r in read], dtype=bool)
            confidence = np.array([float(r["confidence"]) for r in read])
            ece = calibration.ece_of(calibration.binned(confidence, right)) if read else None
            pairs.sort(key=lambda pair: pair[1].per_second / pair[0].per_second)
            beside, run = pairs[(len(pairs) - 1) // 2]
            run = replace(run, peak_mib=peak)
            shares = tuple(r.per_second / c.per_second for c, r in pairs)
            runs.append(ClassifyRun(run, beside.per_second, int(right.sum()) / count, model, ece, shares))
    ceiling = sorted(ceilings, key=lambda c: c.per_second)[(len(ceilings) - 1) // 2]
    ceiling = replace(ceiling, name="decode only (ceiling)", peak_mib=_peak_mib(decode_only))
    head = [ClassifyRun(ceiling, ceiling.per_second, None)]
    return head + ([naive_run] if naive_run else []) + runs


def bench_classify(
    models: list[Path],
    count: int = 50_000,
    folder: Path | None = None,
    workers: int | None = None,
    naive: bool = True,
    rounds: int = defaults.BENCH_ROUNDS,
) -> list[ClassifyRun]:
    """Decode-only ceiling, the naive loop and `pipeline classify` on one folder of 28x28 PNGs."""
    folder = make_digit_folder(folder or Path(tempfile.gettempdir()) / f"pipeline-bench-{count}", count)
    return _classify_runs(folder, models, workers, models[0] if naive and models else None, rounds)


_RAY_STARTUP = """
import time
t = time.perf_counter()
import ray, ray.data
ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
ray.data.range(8).map_batches(lambda b: b).take_all()
ray.shutdown()
print("SECONDS", time.perf_counter() - t)
"""


def bench_engines(model: Path, count: int = 20_000, folder: Path | None = None) -> list[RunBench]:
    """The local engine and the Ray engine on the same folder, plus Ray's bare start-up cost
    (start a local Ray, run a one-block dataset, shut down)."""
    from pipeline.classify import ray

    ray.require_ray()
    folder = make_digit_folder(folder or Path(tempfile.gettempdir()) / f"pipeline-bench-{count}", count)
    warm_cache(folder)
    py = sys.executable
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "ray"):
            out = Path(tmp) / f"{engine}.csv"
            cmd = [py, "-m", "pipeline", "classify", str(folder), "--out", str(out), "--model", str(model)]
            results.append(_measure(f"classify --engine {engine}", [*cmd, "--engine", engine], count))
        if (Path(tmp) / "local.csv").read_bytes() != (Path(tmp) / "ray.csv").read_bytes():
            raise PipelineError("the two engines wrote different CSV files")
    results.append(_measure("ray start-up + shutdown", [py, "-c", _RAY_STARTUP], 0))
    return results


@dataclass(frozen=True)
class ScanBench:
    style: str
    images: int
    runs: list[ClassifyRun]  # the ceiling first, then classify with each model
    clean_accuracy: list[float]  # per model: the same test digits as the 28x28 MNIST images
    without_lines_accuracy: list[float]  # per model: the same files with form-line erasure off


def bench_scans(
    models: list[Path],
    count: int = 2000,
    start: int = 0,
    seed: int = defaults.SEED,
    style: str = "scan",
    folder: Path | None = None,
    workers: int | None = None,
    rounds: int = defaults.BENCH_ROUNDS,
) -> ScanBench:
    """Throughput and accuracy on MNIST test digits rendered as scans or form fields
    (`pipeline.samples`), from one run on the same files.

    The files go through the decode-only ceiling and `pipeline classify` as a user's would; the
    same files are then preprocessed again without form-line erasure, so the figures also show
    what that step is worth on forms and that it costs nothing on plain scans.
    """
    name = f"pipeline-bench-{style}-{start}-{count}-{seed}"
    folder = make_scan_folder(folder or Path(tempfile.gettempdir()) / name, count, style, start, seed)
    runs = _classify_runs(folder, models, workers, None, rounds)
    names = sorted(walk(folder, defaults.IMAGE_EXTENSIONS))
    truth = np.array([_label(n) for n in names])
    without = preprocess.scale(np.stack([_digit_or_blank(folder / n) for n in names]))
    images, y = data.load(data.Split.TEST)
    clean_x = preprocess.scale(images[start : start + count])
    clean, kept = [], []
    for model in models:
        predictor = runtime.load(model)
        kept.append(float(np.mean(predictor.predict(without).argmax(axis=1) == truth)))
        clean.append(float(np.mean(predictor.predict(clean_x).argmax(axis=1) == y[start : start + count])))
    return ScanBench(style, count, runs, clean, kept)


@dataclass(frozen=True)
class ReviewSet:
    name: str
    images: int
    reasons: dict[str, int]  # rows for review by reason, and "blank" for images with no ink

    @property
    def flagged(self) -> float:
        return sum(self.reasons.values()) / self.images if self.images else 0.0


@dataclass(frozen=True)
class ReviewBench:
    model: Path
    screen: Path | None  # the screen in front of the model, as classify runs it
    review_below: float
    sets: list[ReviewSet]
    auroc: float | None  # MNIST against Fashion-MNIST test images, on `ReviewModel.distance`
    fpr_at_95: float | None  # share of Fashion-MNIST passing where 95% of MNIST digits pass


def bench_review(
    model: Path, count: int = 2000, seed: int = defaults.SEED, review_below: float = defaults.REVIEW_BELOW,
    screened: bool = True,
) -> ReviewBench:  # fmt: skip
    """What classify sends to review: real single digits (MNIST test, as 28x28 and rendered as
    scans) against non-digits rendered as scans (two digits side by side, printed letters,
    scribbles) and Fashion-MNIST's test images; none of them was seen by the review model's fit.
    With `screened`, the model runs behind its screen where the release has one, as in classify."""

    from pipeline.classify import review_for, screen
    from pipeline.errors import BlankImageError
    from pipeline.samples import letter_ink, pair_ink, scanned, scribble_ink

    checker = review_for(model)
    source = screen.source_for(model, checker if screened else None)
    predictor = screen.load(source)
    x, _ = data.load(data.Split.TEST)
    rng = np.random.default_rng(seed)

    def scans(make: Any) -> tuple[np.ndarray, int]:
        digits, blank = [], 0
        for _ in range(count):
            try:
                digits.append(scanned(make(), rng))
            except BlankImageError:
                blank += 1
        return np.stack(digits), blank

    def pick() -> np.ndarray:
        return x[int(rng.integers(len(x)))]

    inputs: list[tuple[str, np.ndarray, int]] = [("MNIST test digits (28x28)", x[:count], 0)]
    inputs.append(("MNIST test digits as scans", *scans(pick)))
    inputs.append(("two digits side by side", *scans(lambda: pair_ink(pick(), pick(), rng))))
    inputs.append(("printed letters", *scans(lambda: letter_ink(rng))))
    inputs.append(("scribbles", *scans(lambda: scribble_ink(rng))))
    try:
        fashion: np.ndarray | None = data.test_images(data.Dataset.FASHION_MNIST)[:count]
    except PipelineError:
        fashion = None
    if fashion is not None:
        inputs.append(("Fashion-MNIST test (28x28)", fashion, 0))
    sets, distances = [], {}
    for name, digits, blank in inputs:
        probs, features = predictor.run(preprocess.scale(digits))
        counts = {"blank": blank} if blank else {}
        for reason in checker.reasons(digits, probs, review_below, features=features):
            if reason:
                counts[reason] = counts.get(reason, 0) + 1
        sets.append(ReviewSet(name, len(digits) + blank, counts))
        distances[name] = checker.distance(digits, probs, features=features)
    auroc = fpr = None
    if fashion is not None:
        digit_scores, other = distances["MNIST test digits (28x28)"], distances["Fashion-MNIST test (28x28)"]
        auroc = _auroc(other, digit_scores)
        fpr = float(np.mean(other <= np.quantile(digit_scores, 0.95)))
    return ReviewBench(model, source.screen, review_below, sets, auroc, fpr)


def _auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half): Mann-Whitney U."""
    scores = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average rank of tied scores
    u = mean_rank[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


@dataclass(frozen=True)
class PhotoBench:
    width: int
    height: int
    decode_ms: float  # PIL open + convert("L") at full size: the file's own decode time
    classify_ms: float  # what a classify worker does with it (`preprocess.load_digit`)

    @property
    def ratio(self) -> float:
        return self.classify_ms / self.decode_ms if self.decode_ms > 0 else 0.0


def bench_photo(
    size: tuple[int, int] = (4000, 3000), repeats: int = 5, seed: int = defaults.SEED
) -> PhotoBench:
    """A 12-megapixel phone photo of one test digit on paper (colour, uneven light, sensor noise,
    JPEG quality 90): its full decode against the whole preprocessing, best of `repeats` each."""
    from PIL import Image

    images, _ = data.load(data.Split.TEST)
    rng = np.random.default_rng(seed)
    w, h = size
    side = h // 3
    ink = np.zeros((h, w), np.float32)
    digit = np.asarray(Image.fromarray(images[0]).resize((side, side), Image.Resampling.BILINEAR), np.float32)
    ink[h // 3 : h // 3 + side, w // 3 : w // 3 + side] = digit / 255
    light = np.linspace(0.75, 1.0, w, dtype=np.float32)[None, :]
    gray = 225 * light - 180 * light * ink
    planes = [np.clip(gray + d + rng.normal(0, 3, (h, w)), 0, 255).astype(np.uint8) for d in (10, 0, -12)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        Image.merge("RGB", [Image.fromarray(p) for p in planes]).save(path, quality=90)

        def best(fn: Any) -> float:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            return 1e3 * min(times)

        def decode() -> None:
            with Image.open(path) as img:
                np.asarray(img.convert("L"))

        return PhotoBench(w, h, best(decode), best(lambda: preprocess.load_digit(path)))


def _digit_or_blank(path: Path) -> np.ndarray:
    """One file preprocessed without form-line erasure; a blank field counts as a wrong answer."""
    from pipeline.errors import ImageError

    try:
        return preprocess.load_digit(path, erase_lines=False)
    except ImageError:
        return np.zeros((defaults.FIELD_SIZE, defaults.FIELD_SIZE), dtype=np.uint8)


@dataclass(frozen=True)
class AugmentBench:
    workers: int
    images: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


def bench_augment(
    count: int = 60_000, batch_size: int = defaults.BATCH_SIZE, workers: list[int] | None = None
) -> list[AugmentBench]:
    """How many augmented training images a second the host supplies, per number of threads.

    One epoch of `train.augmented_batches` over `count` training digits, its batches made by a
    thread pool as Keras' ordered enqueuer makes them. A GPU step that takes less time than a
    batch takes here waits on the host, so compare the figure with the GPU's images/s.
    """
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.train import augmented_batches

    images, labels = data.load(data.Split.TRAIN)
    x = preprocess.scale(images[:count])
    y = np.eye(10, dtype=np.float32)[labels[:count].astype(np.int64)]
    cores = os.cpu_count() or 1
    counts = workers or sorted({1, defaults.AUGMENT_WORKERS, *(2**i for i in range(1, 5) if 2**i <= cores)})
    results = []
    for n in counts:
        batches = augmented_batches(x, y, batch_size, defaults.SEED, first_epoch=0, workers=n)
        batches[0]  # build the cached smoothing matrices outside the timing
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            made = sum(len(b[1]) for b in pool.map(batches.__getitem__, range(len(batches))))
        results.append(AugmentBench(n, made, time.perf_counter() - start))
    return results
